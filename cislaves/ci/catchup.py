"""Catch up on events missed while away (reconnect, restart, dropped-output, a stalled stream).

`gerrit query --format=JSON --patch-sets --comments --all-approvals 'since:"..." limit:N'` lists the
changes updated since the last event seen (minus a margin for clock skew), newest first, one page at a
time: the next page starts (`--start`) after the rows read so far while the stats line says
`moreChanges: true`. From each change this module rebuilds the events the stream would have carried:
patchset-created for every patch set created since then (not only the current one), comment-added
for every later comment (with the votes its author gave at that time), change-restored for a
"Restored" message, and change-merged for a change merged since then. Open changes give patch sets
and comments; merged ones only their merge. The caller runs them through the triggers and enqueues
them with a time tolerance, so an event seen on the stream and again here is one job.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from typing import Any, Callable

from cislaves.ci import events as ev
from cislaves.ci.triggers import CATCH_UP

log = logging.getLogger(__name__)
PATCH_SET_HEADER = re.compile(r"\A\s*Patch Set (\d+)")
RESTORED = re.compile(r"\ARestored(\n|$)")
QUERY_OPTIONS = ("--patch-sets", "--comments", "--all-approvals")
TOLERANCE = 5  # seconds between a comment's time in a query and its event's time on the stream
MAX_PAGES = 1000  # a query that never says it is complete is cut here (and says so)


def query_for(since: int, limit: int, now: float | None = None) -> str:
    """The Gerrit query for changes updated at or after `since` (seconds since the epoch, UTC; kept
    between the epoch and now, so no stored or received time can make it fail or look ahead)."""
    since = min(max(0, int(since)), int(time.time() if now is None else now))
    when = _dt.datetime.fromtimestamp(since, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f'since:"{when}" limit:{int(limit)}'


def fetch(query: Callable[..., tuple[list[dict], bool]], since: int, limit: int) -> list[dict]:
    """Every change record the query has for `since`, read page by page (`--start`) until Gerrit says
    there are no more; a change seen on two pages (it moved while we paged) is kept once."""
    text = query_for(since, limit)
    records: dict[Any, dict] = {}
    start = 0
    for _ in range(MAX_PAGES):
        rows, more = query(text, *QUERY_OPTIONS, *(("--start", str(start)) if start else ()))
        for row in rows:
            records[row.get("number", id(row))] = row
        start += len(rows)
        if not more or not rows:
            return list(records.values())
    log.warning("catch-up: stopped after %d pages of %d changes; Gerrit still reports more", MAX_PAGES, limit)
    return list(records.values())


def events_from_changes(changes: list[dict], since: int) -> list[ev.Event]:
    """The events the stream would have carried for these query records since `since`, oldest first.
    Records of the wrong shape are logged and skipped."""
    found: list[ev.Event] = []
    for record in changes:
        try:
            found.extend(_events_of(record, since))
        except ev.BadEvent as exc:
            log.warning("catch-up: change %.20r skipped: %s", record.get("number", "?"), exc)
        except Exception as exc:  # a surprising record must not stop the catch-up of the others
            log.warning("catch-up: change %.20r skipped: %s: %s", record.get("number", "?"),
                        type(exc).__name__, exc)
    found.sort(key=lambda e: e.created_on or 0)
    return found


def _events_of(record: dict[str, Any], since: int) -> list[ev.Event]:
    if not isinstance(record, dict):
        raise ev.BadEvent(f"expected a JSON object, got {type(record).__name__}")
    change = {k: v for k, v in record.items() if k not in ("currentPatchSet", "patchSets", "comments")}
    patch_sets: dict[str, dict] = {}
    for ps in _list(record.get("patchSets")) + [record.get("currentPatchSet")]:
        if isinstance(ps, dict):
            patch_sets[str(ps.get("number"))] = ps
    latest = max(patch_sets.values(), key=lambda p: _time(p.get("number")), default=None)
    status = record.get("status")
    if status == "MERGED":
        when = _time(record.get("lastUpdated"))
        if latest is None or when < since:
            return []
        return [_event(ev.CHANGE_MERGED, when, change, latest, submitter=None)]
    if status not in (None, "NEW"):  # abandoned: nothing to test
        return []
    out = []
    for ps in patch_sets.values():
        when = _time(ps.get("createdOn"))
        if when >= since:
            out.append(_event(ev.PATCHSET_CREATED, when, change, ps, uploader=ps.get("uploader")))
    for comment in _list(record.get("comments")):
        if not isinstance(comment, dict) or _time(comment.get("timestamp")) < since:
            continue
        when = _time(comment.get("timestamp"))
        message = comment.get("message") if isinstance(comment.get("message"), str) else ""
        reviewer = comment.get("reviewer") if isinstance(comment.get("reviewer"), dict) else {}
        if RESTORED.match(message) and latest is not None:
            out.append(_event(ev.CHANGE_RESTORED, when, change, latest, restorer=reviewer,
                              reason=message.partition("\n\n")[2] or None))
            continue
        header = PATCH_SET_HEADER.match(message)
        ps = patch_sets.get(header.group(1)) if header else None
        if ps is None:
            continue
        approvals = [
            {"type": a.get("type"), "description": a.get("description"), "value": a.get("value")}
            for a in _list(ps.get("approvals"))
            if isinstance(a, dict) and _same_account(a.get("by"), reviewer)
            and abs(_time(a.get("grantedOn")) - when) <= TOLERANCE]
        out.append(_event(ev.COMMENT_ADDED, when, change, ps, author=reviewer, comment=message,
                          approvals=approvals))
    return out


def _event(kind: str, when: int, change: dict, ps: dict, **fields: Any) -> ev.Event:
    patch_set = {k: v for k, v in ps.items() if k not in ("approvals", "comments", "files")}
    return ev.from_dict({"type": kind, "eventCreatedOn": when, "change": change, "patchSet": patch_set,
                         CATCH_UP: True, **fields})


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _time(value: Any) -> int:
    """A query time in seconds (milliseconds divided), 0 if it is not a time."""
    return ev.seconds(value) or 0


def _same_account(one: Any, other: dict) -> bool:
    if not isinstance(one, dict):
        return False
    return any(one.get(k) and one.get(k) == other.get(k) for k in ("username", "email"))
