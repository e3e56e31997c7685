"""The records every layer shares (the bottom floor: imports nothing of cislaves but the tool's name).

Instance, Image and LaunchSpec; the tags every resource of a run carries; run ids; UTC time helpers.
state.py, images.py, remote.py and the clouds all build on these, so none of them imports the clouds.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cislaves import TOOL

# Tag keys put on every resource a run creates (clouds with stricter key rules map them, e.g. GCE labels).
TAG_TOOL = "cislaves:tool"
TAG_RUN = "cislaves:run-id"
TAG_OWNER = "cislaves:owner"  # the stable id of the data dir (the host) that made it: cleanup's boundary
TAG_DISTRIBUTION = "cislaves:distribution"
TAG_EXPIRES = "cislaves:expires"
TAG_ROLE = "cislaves:role"  # "bake" (ephemeral, made by `it`), "instance" (made by `up`), "image", "job"
TAG_BUILD = "cislaves:build-id"  # CI builds: the build an instance runs

ROLES = ("bake", "instance", "image", "job", "validate", "ready")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def isoformat(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> _dt.datetime | None:
    """An ISO 8601 time as the tags and APIs write it (Z or an offset; GCE labels' compact form
    20261202t131500z too); None when absent or unreadable."""
    if not text:
        return None
    value = str(text).strip()
    compact = value.upper()
    if len(compact) == 16 and compact[8] == "T" and compact.endswith("Z") and compact[:8].isdigit():
        value = f"{compact[:4]}-{compact[4:6]}-{compact[6:8]}T{compact[9:11]}:{compact[11:13]}:{compact[13:15]}Z"
    try:
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def new_run_id() -> str:
    """A short unique id for one run: UTC time plus randomness, sortable, safe in every cloud's names."""
    return utcnow().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def standard_tags(run_id: str, distribution: str, role: str, name: str | None = None,
                  ttl_hours: float = 24, extra: dict[str, str] | None = None,
                  owner: str | None = None) -> dict[str, str]:
    """The tags every resource of a run carries; cleanup finds leaks by them (run, owner, expiry)."""
    tags = {
        TAG_TOOL: TOOL,
        TAG_RUN: run_id,
        TAG_DISTRIBUTION: distribution,
        TAG_ROLE: role,
        TAG_EXPIRES: isoformat(utcnow() + _dt.timedelta(hours=ttl_hours)),
    }
    if owner:
        tags[TAG_OWNER] = owner
    if name:
        tags["Name"] = name
    tags.update(extra or {})
    return tags


def expired(tags: dict[str, str], now: _dt.datetime | None = None) -> bool:
    """Whether the resource's cislaves:expires time has passed (no or unreadable tag: not expired)."""
    when = parse_time(tags.get(TAG_EXPIRES))
    return when is not None and when <= (now or utcnow())


@dataclass
class Instance:
    """A machine a cloud runs for us. Serialisable to the state file (no secrets in it)."""

    id: str
    cloud: str
    name: str
    distribution: str
    run_id: str
    state: str = "unknown"  # running, stopped, pending, terminated, error, unknown
    address: str | None = None  # what SSH connects to (after overrides)
    port: int = 22
    user: str = "root"
    key_file: str | None = None  # path of the private key file (0600); the key itself never leaves it
    proxy_command: str | None = None  # an OpenSSH ProxyCommand, e.g. via a bastion
    jump_host: str | None = None  # user@host:port of a bastion (like ssh -J)
    region: str | None = None
    image_id: str | None = None  # the image it was booted from
    created: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # driver data: key pair name, group id, disks...

    @property
    def ssh_target(self) -> str:
        """user@address:port, as the output shows where an instance is reached."""
        return f"{self.user}@{self.address}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Instance":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Image:
    """An image a cloud holds (a baked one, or a base image)."""

    id: str
    cloud: str
    name: str
    distribution: str | None = None
    region: str | None = None
    created: str | None = None  # UTC, ISO 8601
    source_image: str | None = None
    run_id: str | None = None
    state: str = "available"
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Image":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LaunchSpec:
    """What `launch` needs. `image` is an Image (usually from base_image, or one the user named)."""

    distribution: Any  # cislaves.distros.Distribution
    image: Image
    run_id: str
    name: str
    tags: dict[str, str]
    key_dir: Path  # where the driver writes a per-instance private key if it makes one
    role: str = "instance"  # "bake" for `it`, "instance" for `up`, "job" for CI
