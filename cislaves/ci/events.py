"""Typed records for Gerrit's stream-events JSON.

Gerrit writes one JSON object per line. Any field may be missing and numbers may arrive as strings,
so every field here is optional and numbers are coerced. A line that is not a JSON object, has no
`type`, or carries a field of the wrong shape (a change number that is not a number, an account that
is not an object) raises BadEvent; the stream counts it and goes on.

Known types get a typed record (patchset-created, comment-added, change-merged, change-restored,
wip-state-changed, private-state-changed, ref-updated, dropped-output); every other type is an `Event`
with only `type`, `created_on` and `raw`. Times are seconds since the epoch: a time in milliseconds
is divided by 1000, and one that is neither (negative, absurdly large) counts as missing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

PATCHSET_CREATED = "patchset-created"
COMMENT_ADDED = "comment-added"
CHANGE_MERGED = "change-merged"
REF_UPDATED = "ref-updated"
DROPPED_OUTPUT = "dropped-output"
CHANGE_RESTORED = "change-restored"
WIP_STATE_CHANGED = "wip-state-changed"
PRIVATE_STATE_CHANGED = "private-state-changed"
MANUAL = "manual"  # made by `fab enqueue`, never by Gerrit
ACCOUNT_FIELD = {PATCHSET_CREATED: "uploader", COMMENT_ADDED: "author", CHANGE_MERGED: "submitter",
                 CHANGE_RESTORED: "restorer", WIP_STATE_CHANGED: "changer", PRIVATE_STATE_CHANGED: "changer",
                 MANUAL: "submitter"}
READY_STATE_CHANGED = (WIP_STATE_CHANGED, PRIVATE_STATE_CHANGED)  # may complete a skipped upload
MILLIS = 10 ** 11  # larger times are milliseconds (10**11 s is the year 5138)
PATCH_SET_KINDS = ("REWORK", "TRIVIAL_REBASE", "MERGE_FIRST_PARENT_UPDATE", "NO_CODE_CHANGE", "NO_CHANGE")
_DECODE = json.JSONDecoder().decode
CHANGE_REF = re.compile(r"refs/changes/(\d\d)/([1-9]\d{0,9})/([1-9]\d{0,5})")


class BadEvent(ValueError):
    """A stream line that is not a usable event; the message says which field is wrong."""


@dataclass(slots=True)
class Account:
    name: str | None = None
    email: str | None = None
    username: str | None = None

    def matches(self, who: str) -> bool:
        """True when `who` is this account's username or e-mail address."""
        return bool(who) and who in (self.username, self.email)

    def label(self) -> str:
        return self.username or self.email or self.name or "?"


@dataclass(slots=True)
class PatchSet:
    number: int | None = None
    revision: str | None = None
    ref: str | None = None
    kind: str | None = None
    created_on: int | None = None
    uploader: Account | None = None


@dataclass(slots=True)
class Change:
    number: int | None = None
    project: str | None = None
    branch: str | None = None
    id: str | None = None
    subject: str | None = None
    url: str | None = None
    status: str | None = None
    topic: str | None = None
    wip: bool = False
    private: bool = False
    owner: Account | None = None


@dataclass(slots=True)
class Approval:
    type: str | None = None
    value: int | None = None
    old_value: int | None = None
    by: Account | None = None


@dataclass(slots=True)
class Event:
    """Any event: its type, when Gerrit created it (seconds since the epoch) and the decoded JSON."""

    type: str
    created_on: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    change: Change | None = None
    patchset: PatchSet | None = None
    account: Account | None = None  # uploader, author or submitter
    comment: str | None = None
    approvals: tuple[Approval, ...] = ()
    ref_name: str | None = None  # ref-updated only
    project: str | None = None  # ref-updated only
    line: bytes | None = field(default=None, repr=False)  # the stream line it was decoded from

    @property
    def change_number(self) -> int | None:
        return self.change.number if self.change else None

    @property
    def patchset_number(self) -> int | None:
        return self.patchset.number if self.patchset else None


def parse_line(line: bytes | str, max_bytes: int = 1 << 20) -> Event:
    """Decode one stream line into an Event; raise BadEvent (with the reason) if it is unusable."""
    return from_dict(decode_line(line, max_bytes))


def decode_line(line: bytes | str, max_bytes: int = 1 << 20) -> Any:
    """The JSON value of one stream line (BadEvent if it is too long or not JSON)."""
    if len(line) > max_bytes:
        raise BadEvent(f"line of {len(line)} bytes is longer than the limit of {max_bytes}")
    try:
        return _DECODE(line.decode() if line.__class__ is bytes else line)
    except UnicodeDecodeError as exc:
        raise BadEvent(f"not UTF-8: {exc}") from None
    except ValueError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    except RecursionError:
        raise BadEvent("JSON nested too deeply") from None


def seconds(value: Any) -> int | None:
    """A Gerrit time as whole seconds since the epoch: milliseconds are divided by 1000; a value that
    is not a time (not a number, negative, beyond the year 5138 even as milliseconds) is None."""
    if value.__class__ is not int:
        if isinstance(value, str) and value.strip().isdigit() and len(value) < 20:
            value = int(value)
        elif isinstance(value, float) and 0 <= value < 1e15:
            value = int(value)
        else:
            return None
    if value >= MILLIS:
        value //= 1000
    return value if 0 <= value < MILLIS else None


def from_dict(data: Any) -> Event:
    """Build an Event from decoded stream-events (or synthesised) JSON."""
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadEvent("field 'type' is missing or not a string")
    event = Event(type=kind, created_on=seconds(data.get("eventCreatedOn")), raw=data)
    if kind in ACCOUNT_FIELD:
        event.change = _change(_obj(data, "change"))
        event.patchset = _patchset(_obj(data, "patchSet"))
        event.account = _account(data, ACCOUNT_FIELD[kind])
        if kind == COMMENT_ADDED:
            event.comment = _str(data, "comment")
            event.approvals = tuple(_approval(a, i) for i, a in enumerate(_list(data, "approvals")))
    elif kind == REF_UPDATED:
        update = _obj(data, "refUpdate") or {}
        event.account = _account(data, "submitter")
        event.ref_name = _str(update, "refName", "refUpdate.")
        event.project = _str(update, "project", "refUpdate.")
    return event


def change_ref(change: int, patchset: int) -> str:
    """The ref Gerrit keeps a patch set under: refs/changes/NN/CHANGE/PATCHSET (NN: last two digits)."""
    return f"refs/changes/{change % 100:02d}/{change}/{patchset}"


def check_ref(ref: str | None, change: int | None, patchset: int | None) -> str:
    """Return `ref` if it is exactly the ref of this change's patch set, else raise BadEvent."""
    if not isinstance(ref, str) or change is None or patchset is None:
        raise BadEvent(f"ref {ref!r} cannot be checked without a change and patch set number")
    if CHANGE_REF.fullmatch(ref) is None or ref != change_ref(change, patchset):
        raise BadEvent(f"ref {ref!r} is not {change_ref(change, patchset)} (refs/changes/NN/CHANGE/PATCHSET)")
    return ref


# -- helpers: each names the field it rejects

def _obj(data: dict, key: str, prefix: str = "") -> dict | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadEvent(f"field '{prefix}{key}' should be an object, got {type(value).__name__}")
    return value


def _list(data: dict, key: str) -> list:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadEvent(f"field '{key}' should be a list, got {type(value).__name__}")
    return value


def _str(data: dict, key: str, prefix: str = "") -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadEvent(f"field '{prefix}{key}' should be a string, got {type(value).__name__}")


def _int(data: dict, key: str, prefix: str = "") -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 40:
        return int(value)
    raise BadEvent(f"field '{prefix}{key}' should be a number, got {value!r:.40}")


def _bool(data: dict, *keys: str) -> bool:
    for key in keys:
        value = data.get(key)
        if value is not None:
            return value is True or (isinstance(value, str) and value.lower() == "true")
    return False


def _account(data: dict | None, key: str, prefix: str = "") -> Account | None:
    value = data.get(key) if data else None
    if value is None:
        return None
    if value.__class__ is not dict:
        _obj(data, key, prefix)
    name, email, username = value.get("name"), value.get("email"), value.get("username")
    if not (name.__class__ is str or name is None) or not (email.__class__ is str or email is None) \
            or not (username.__class__ is str or username is None):
        where = f"{prefix}{key}."
        name, email, username = _str(value, "name", where), _str(value, "email", where), \
            _str(value, "username", where)
    return Account(name, email, username)


def _fields(data: dict, names: tuple[str, ...], numbers: tuple[str, ...], prefix: str) -> list:
    """The values of `names` (strings) and `numbers` (ints), checked: the common case costs a few
    look-ups; a value of another type goes through the coercing helpers (BadEvent if impossible)."""
    out = []
    get = data.get
    for name in names:
        value = get(name)
        if value is not None and value.__class__ is not str:
            value = _str(data, name, prefix)
        out.append(value)
    for name in numbers:
        value = get(name)
        if value is not None and value.__class__ is not int:
            value = _int(data, name, prefix)
        out.append(value)
    return out


CHANGE_STRINGS = ("project", "branch", "id", "subject", "url", "status", "topic")
PATCHSET_STRINGS = ("revision", "ref", "kind")


def _change(data: dict | None) -> Change | None:
    if data is None:
        return None
    project, branch, change_id, subject, url, status, topic, number = _fields(
        data, CHANGE_STRINGS, ("number",), "change.")
    return Change(number, project, branch, change_id, subject, url, status, topic,
                  _bool(data, "wip", "workInProgress"), _bool(data, "private", "isPrivate"),
                  _account(data, "owner", "change."))


def _patchset(data: dict | None) -> PatchSet | None:
    if data is None:
        return None
    revision, ref, kind, number, created_on = _fields(data, PATCHSET_STRINGS, ("number", "createdOn"),
                                                      "patchSet.")
    return PatchSet(number, revision, ref, kind, seconds(created_on), _account(data, "uploader", "patchSet."))


def _approval(data: Any, index: int) -> Approval:
    p = f"approvals[{index}]."
    if not isinstance(data, dict):
        raise BadEvent(f"field 'approvals[{index}]' should be an object, got {type(data).__name__}")
    return Approval(type=_str(data, "type", p), value=_int(data, "value", p), old_value=_int(data, "oldValue", p),
                    by=_account(data, "by", p))
