"""Tags on OpenStack resources that have no metadata: Nova key pairs carry them in their name, Neutron
floating IPs in their description. Cleanup reads them back and asks the one CleanupPolicy, as it does
for servers (metadata) and images (Glance properties).
"""
from __future__ import annotations

import re
import uuid

from cislaves import TOOL
from cislaves.records import TAG_EXPIRES, TAG_OWNER, TAG_RUN, TAG_TOOL, parse_time

NONE = "x"  # no owner / no expiry
# cislaves-<run>-<owner>-<expires, compact>-<random>; before owners: cislaves-<run>-<random>
KEY_NAME = re.compile(rf"^{TOOL}-(?P<run>.+)-(?P<owner>[0-9a-z]+)-(?P<expires>\d{{8}}t\d{{6}}z|{NONE})"
                      r"-(?P<random>[0-9a-f]{6})$")
OLD_KEY_NAME = re.compile(rf"^{TOOL}-(?P<run>.+)-[0-9a-f]{{6}}$")
FIP_PREFIX = f"{TOOL} run "
FIP_DESCRIPTION = re.compile(rf"^{FIP_PREFIX}(?P<run>\S+)(?: owner (?P<owner>\S+))?(?: expires (?P<expires>\S+))?$")


def key_pair_name(tags: dict[str, str]) -> str:
    """A unique key pair name carrying the run, owner and expiry of `tags`."""
    return (f"{TOOL}-{tags[TAG_RUN]}-{_safe(tags.get(TAG_OWNER))}-{_compact(tags.get(TAG_EXPIRES))}-"
            f"{uuid.uuid4().hex[:6]}")


def key_pair_tags(name: str) -> dict[str, str] | None:
    """The tags a key pair name carries; None when the key pair is not one this tool made."""
    match = KEY_NAME.match(name)
    if match:
        return _tags(match.group("run"), match.group("owner"), match.group("expires"))
    match = OLD_KEY_NAME.match(name)
    return _tags(match.group("run"), NONE, NONE) if match else None


def fip_description(tags: dict[str, str]) -> str:
    return (f"{FIP_PREFIX}{tags[TAG_RUN]} owner {_safe(tags.get(TAG_OWNER))} "
            f"expires {tags.get(TAG_EXPIRES) or NONE}")


def fip_tags(description: str | None) -> dict[str, str] | None:
    match = FIP_DESCRIPTION.match(description or "")
    if not match:
        return None
    return _tags(match.group("run"), match.group("owner") or NONE, match.group("expires") or NONE)


def _tags(run: str, owner: str, expires: str) -> dict[str, str]:
    tags = {TAG_TOOL: TOOL, TAG_RUN: run}
    if owner != NONE:
        tags[TAG_OWNER] = owner
    if expires != NONE:
        tags[TAG_EXPIRES] = expires
    return tags


def _safe(owner: str | None) -> str:
    return owner if owner and re.fullmatch(r"[0-9a-z]+", owner) else NONE


def _compact(expires: str | None) -> str:
    when = parse_time(expires)
    return when.strftime("%Y%m%dt%H%M%Sz") if when else NONE
