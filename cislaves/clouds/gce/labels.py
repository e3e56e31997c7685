"""GCE's naming rules: resource names and labels from the tool's tags, and back.

GCE labels allow lowercase keys and values of [a-z0-9_-] (keys start with a letter), at most 63
characters each. The tool's tags ("cislaves:run-id" -> "2026...-abc123") are mapped to labels
("cislaves-run-id" -> "2026...-abc123"); the standard keys map back exactly, and the expiry time
(an ISO 8601 UTC instant) is written as "2026-11-23t02-35-25z" and read back as "2026-11-23T02:35:25Z".
Values are compared in label form (`label_value`), so an owner or run id that labels cannot hold as it
is (upper case, dots) still matches its resources.
"""
from __future__ import annotations

import re

from cislaves.records import TAG_BUILD, TAG_DISTRIBUTION, TAG_EXPIRES, TAG_OWNER, TAG_ROLE, TAG_RUN, TAG_TOOL

MAX = 63
_BAD = re.compile(r"[^a-z0-9_-]+")
_BAD_NAME = re.compile(r"[^a-z0-9-]+")
_NAME_RULE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_EXPIRES_LABEL = re.compile(r"^(\d{4}-\d\d-\d\d)t(\d\d)-(\d\d)-(\d\d)z$")

# Label keys of the standard tags, and "Name" (GCE keeps names apart, but the tag is kept as a label).
_KNOWN_KEYS = [TAG_TOOL, TAG_RUN, TAG_OWNER, TAG_BUILD, TAG_DISTRIBUTION, TAG_EXPIRES, TAG_ROLE, "Name"]


def label_key(key: str) -> str:
    """A GCE label key for a tag key: lowercase, [a-z0-9_-], starting with a letter, <= 63 chars."""
    out = _BAD.sub("-", key.lower()).strip("-_") or "tag"
    if not out[0].isalpha():
        out = "k-" + out
    return out[:MAX]


def label_value(value: str) -> str:
    """A GCE label value for a tag value: lowercase, [a-z0-9_-], <= 63 chars (may be empty)."""
    return _BAD.sub("-", str(value).lower())[:MAX]


def labels_from_tags(tags: dict[str, str]) -> dict[str, str]:
    """The labels for a resource carrying `tags` (later tags win when two keys map to one label)."""
    return {label_key(k): label_value(v) for k, v in tags.items()}


def tags_from_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """The tags read back from labels: standard keys restored, the expiry restored to ISO 8601."""
    known = {label_key(k): k for k in _KNOWN_KEYS}
    tags = {}
    for key, value in (labels or {}).items():
        tag = known.get(key, key)
        if tag == TAG_EXPIRES:
            match = _EXPIRES_LABEL.match(value)
            if match:
                value = f"{match[1]}T{match[2]}:{match[3]}:{match[4]}Z"
        tags[tag] = value
    return tags


def resource_name(text: str) -> str:
    """A valid GCE resource name from `text`: [a-z]([-a-z0-9]{0,61}[a-z0-9])?."""
    out = _BAD_NAME.sub("-", text.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = "cislaves-" + out
    out = out[:MAX].rstrip("-")
    assert _NAME_RULE.match(out), out
    return out


def label_filter(labels: dict[str, str]) -> str:
    """A compute list filter matching every label in `labels` (each expression parenthesised, ANDed)."""
    return " ".join(f'(labels.{k} = "{v}")' for k, v in sorted(labels.items()))
