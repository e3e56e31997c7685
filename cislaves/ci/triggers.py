"""Which events become jobs: projects, branches, event types, patch-set kinds, comments, approvals.

Built once from the `ci.triggers` settings; `Triggers.select(event)` returns the first trigger that
accepts the event (its name) or None. Comments by our own Gerrit account never trigger, so the CI's
own reports cannot start a loop. Work-in-progress and private changes are skipped unless a trigger
includes them; a change that leaves that state (wip-state-changed, private-state-changed) is accepted
as its upload would have been (the queue gives it the upload's identity, so a patch set tested once
is not tested again). The reader's quick filter `may_select_line` rejects most lines without decoding.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from cislaves.ci import events as ev
from cislaves.ci.settings import Trigger

log = logging.getLogger(__name__)
CATCH_UP = "cislavesCatchUp"  # marks an event rebuilt by catch-up from `gerrit query`
# Gerrit's preamble: "Patch Set 3: Code-Review+1", blank lines, "(2 comments)" (inline comments), blank
HEADER = re.compile(r"\A\s*Patch Set \d+:[^\n]*(\n\s*)*(\(\d+ (inline )?comments?\)[ \t]*(\n\s*)*)?")
ALWAYS = (ev.DROPPED_OUTPUT,)  # types the reader must decode whatever the triggers want


@dataclass
class Compiled:
    """One trigger with its patterns compiled."""

    name: str
    events: frozenset[str]
    projects: re.Pattern
    branches: re.Pattern
    skip_kinds: frozenset[str]
    comments: tuple[re.Pattern, ...]
    approvals: tuple
    include_wip: bool
    include_private: bool


class Triggers:
    """The configured triggers, compiled."""

    def __init__(self, triggers: list[Trigger], ci_name: str, own_user: str | None = None):
        self.own_user = own_user
        self.rules = [_compile(t, ci_name) for t in triggers]
        self.types = frozenset().union(*(r.events for r in self.rules)) if self.rules else frozenset()
        self._projects = _alternatives([p for t in triggers for p in t.projects])
        self._type_tokens = tuple(json.dumps(t).encode() for t in sorted(self.types) + list(ALWAYS))
        literal = all(not p.startswith("re:") for t in triggers for p in t.projects)
        self._project_values = frozenset(json.dumps(p, ensure_ascii=False)[1:-1].encode()
                                         for t in triggers for p in t.projects) if literal else None

    def may_select_line(self, line: bytes) -> bool:
        """False when a raw stream line certainly holds no event a trigger wants and no dropped-output;
        True otherwise (decode it). A line is passed over undecoded when it is shaped like an event
        object and either every "project" key in it names a project no trigger watches (when all are
        exact names), or it names none of the wanted types as a JSON string and has no \\u escape that
        could spell one. A line that does not look like an event object is decoded, so that it is
        reported."""
        if line[:1] != b"{" or line[-1:] != b"}":
            return True
        if self._project_values is not None and self._watched(line) is False:
            return False
        for token in self._type_tokens:
            if token in line:
                return True
        return b'"type"' not in line or b"\\u" in line

    def _watched(self, line: bytes) -> bool | None:
        """Whether any "project" key of the line names a watched project; None when that cannot be
        told without decoding (no such key, a value that is not a plain string)."""
        find = line.find
        at = find(b'"project":')
        if at < 0:
            return None
        while at >= 0:
            at += 10
            while line[at:at + 1] == b" ":
                at += 1
            if line[at:at + 1] != b'"':
                return None
            end = find(b'"', at + 1)
            value = line[at + 1:end]
            if end < 0 or b"\\" in value:
                return None
            if value in self._project_values:
                return True
            at = find(b'"project":', end)
        return False

    def may_select(self, data: Any) -> bool:
        """False when decoded stream JSON certainly cannot trigger (an event type no trigger wants, or
        a project no trigger watches): such events need no typed record. True otherwise."""
        if data.__class__ is not dict:
            return True
        kind = data.get("type")
        if kind.__class__ is not str or not kind:
            return True  # malformed: the typed record says why
        if kind not in self.types:
            return False
        change = data.get("change")
        project = change.get("project") if change.__class__ is dict else None
        return project.__class__ is not str or self._projects.fullmatch(project) is not None

    def select(self, event: ev.Event) -> str | None:
        """The name of the first trigger that accepts `event`, or None."""
        if event.type not in self.types:
            return None
        change = event.change
        if change is None or change.number is None or event.patchset_number is None:
            return None
        if event.type == ev.COMMENT_ADDED and self.own_user and event.account is not None \
                and event.account.matches(self.own_user):
            return None
        for rule in self.rules:
            if _accepts(rule, event, change):
                return rule.name
        return None


def comment_body(comment: str | None) -> str:
    """The comment without Gerrit's `Patch Set N: Label+1` header line and the blank lines after it."""
    return HEADER.sub("", comment or "", count=1)


def default_comment_patterns(ci_name: str) -> list[str]:
    """`recheck` and `recheck <ci name>`, alone on the first line (OpenStack third-party CI style)."""
    return [r"(?i)recheck[ \t]*(\n|$)", rf"(?i)recheck[ \t]+{re.escape(ci_name)}[ \t]*(\n|$)"]


def _compile(trigger: Trigger, ci_name: str) -> Compiled:
    comments = trigger.comments if trigger.comments is not None else default_comment_patterns(ci_name)
    return Compiled(
        name=trigger.name, events=frozenset(trigger.events),
        projects=_alternatives(trigger.projects), branches=_alternatives(trigger.branches),
        skip_kinds=frozenset(trigger.skip_kinds), comments=tuple(re.compile(c) for c in comments),
        approvals=tuple(trigger.approvals), include_wip=trigger.include_wip,
        include_private=trigger.include_private)


def _alternatives(patterns: list[str]) -> re.Pattern:
    """One regex matching the whole name against any of `patterns` (exact names or `re:` regexes)."""
    parts = [p[3:] if p.startswith("re:") else re.escape(p) for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts) or "(?!)")


def _accepts(rule: Compiled, event: ev.Event, change: ev.Change) -> bool:
    if event.type not in rule.events:
        return False
    if change.project is None or rule.projects.fullmatch(change.project) is None:
        return False
    if change.branch is None or rule.branches.fullmatch(change.branch) is None:
        return False
    if (change.wip and not rule.include_wip) or (change.private and not rule.include_private):
        return False
    if event.type in (ev.PATCHSET_CREATED, ev.WIP_STATE_CHANGED, ev.PRIVATE_STATE_CHANGED):
        return event.patchset.kind not in rule.skip_kinds  # a state change: the upload it completes
    if event.type == ev.COMMENT_ADDED:
        body = comment_body(event.comment)
        if any(p.match(body) for p in rule.comments):
            return True
        return any(_approved(a, event) for a in rule.approvals)
    return True  # change-merged, change-restored


def _approved(wanted, event: ev.Event) -> bool:
    if wanted.by is not None and (event.account is None or not event.account.matches(wanted.by)):
        return False
    rebuilt = event.raw.get(CATCH_UP) is True  # catch-up lists only the votes given with the comment
    for approval in event.approvals:
        if approval.type == wanted.label and approval.value == wanted.value and (
                approval.old_value != approval.value if approval.old_value is not None else rebuilt):
            return True
    return False  # the stream lists every label; a vote given in this comment carries its oldValue
