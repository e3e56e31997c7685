"""Catch up on events missed while away (reconnect, restart, dropped-output).

`gerrit query --format=JSON --current-patch-set --patch-sets --comments 'status:open since:"..."'`
lists the open changes updated since the last event seen (minus a margin for clock skew). From each
change this module rebuilds the events the stream would have carried: patchset-created for the
current patch set if it was created since then, and comment-added for each later comment (with the
votes its author gave at that time). The caller runs them through the triggers and enqueues them
with a time tolerance, so an event seen on the stream and again here is one job.
Merged changes are not revisited (status:open).
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Any

from cislaves.ci import events as ev

log = logging.getLogger(__name__)
PATCH_SET_HEADER = re.compile(r"\A\s*Patch Set (\d+)")
QUERY_OPTIONS = ("--current-patch-set", "--patch-sets", "--comments")
TOLERANCE = 5  # seconds between a comment's time in a query and its event's time on the stream


def query_for(since: int, limit: int) -> str:
    """The Gerrit query for open changes updated at or after `since` (seconds since the epoch, UTC)."""
    when = _dt.datetime.fromtimestamp(since, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f'status:open since:"{when}" limit:{int(limit)}'


def events_from_changes(changes: list[dict], since: int) -> list[ev.Event]:
    """The events the stream would have carried for these query records since `since`, oldest first.
    Records of the wrong shape are logged and skipped."""
    found: list[ev.Event] = []
    for record in changes:
        try:
            found.extend(_events_of(record, since))
        except ev.BadEvent as exc:
            log.warning("catch-up: change %s skipped: %s", record.get("number", "?"), exc)
    found.sort(key=lambda e: e.created_on or 0)
    return found


def _events_of(record: dict[str, Any], since: int) -> list[ev.Event]:
    change = {k: v for k, v in record.items() if k not in ("currentPatchSet", "patchSets", "comments")}
    patch_sets = {}
    for ps in record.get("patchSets") or []:
        if isinstance(ps, dict):
            patch_sets[str(ps.get("number"))] = ps
    current = record.get("currentPatchSet")
    if isinstance(current, dict):
        patch_sets[str(current.get("number"))] = current
    out = []
    if isinstance(current, dict) and _time(current.get("createdOn")) >= since:
        out.append(ev.from_dict({"type": ev.PATCHSET_CREATED, "eventCreatedOn": current.get("createdOn"),
                                 "change": change, "patchSet": current, "uploader": current.get("uploader")}))
    for comment in record.get("comments") or []:
        if not isinstance(comment, dict) or _time(comment.get("timestamp")) < since:
            continue
        header = PATCH_SET_HEADER.match(str(comment.get("message") or ""))
        ps = patch_sets.get(header.group(1)) if header else None
        if ps is None:
            continue
        when = _time(comment.get("timestamp"))
        reviewer = comment.get("reviewer") if isinstance(comment.get("reviewer"), dict) else {}
        approvals = [
            {"type": a.get("type"), "description": a.get("description"), "value": a.get("value")}
            for a in ps.get("approvals") or []
            if isinstance(a, dict) and _same_account(a.get("by"), reviewer)
            and abs(_time(a.get("grantedOn")) - when) <= TOLERANCE]
        patch_set = {k: v for k, v in ps.items() if k not in ("approvals", "comments", "files")}
        out.append(ev.from_dict({"type": ev.COMMENT_ADDED, "eventCreatedOn": comment.get("timestamp"),
                                 "change": change, "patchSet": patch_set, "author": reviewer,
                                 "comment": comment.get("message"), "approvals": approvals}))
    return out


def _time(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _same_account(one: Any, other: dict) -> bool:
    if not isinstance(one, dict):
        return False
    return any(one.get(k) and one.get(k) == other.get(k) for k in ("username", "email"))
