"""The cloud interface every driver implements, its records, and the shared bounded wait loop.

A driver is a subclass of `Cloud`. Every method blocks until its effect is real (or a deadline
passes, raising WaitTimeout), and is safe to call twice (destroying a destroyed instance is a no-op).
The bake pipeline and the CI runner use clouds only through this interface.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from cislaves import TOOL
from cislaves.errors import NotSupported, WaitTimeout

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tag keys put on every resource a run creates (clouds with stricter key rules map them, e.g. GCE labels).
TAG_TOOL = "cislaves:tool"
TAG_RUN = "cislaves:run-id"
TAG_DISTRIBUTION = "cislaves:distribution"
TAG_EXPIRES = "cislaves:expires"
TAG_ROLE = "cislaves:role"  # "bake" (ephemeral, made by `it`), "instance" (made by `up`), "image"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def isoformat(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    """A short unique id for one run: UTC time plus randomness, sortable, safe in every cloud's names."""
    return utcnow().strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def standard_tags(run_id: str, distribution: str, role: str, name: str | None = None,
                  ttl_hours: float = 24, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags every resource of a run carries; cleanup finds leaks by them."""
    tags = {
        TAG_TOOL: TOOL,
        TAG_RUN: run_id,
        TAG_DISTRIBUTION: distribution,
        TAG_ROLE: role,
        TAG_EXPIRES: isoformat(utcnow() + _dt.timedelta(hours=ttl_hours)),
    }
    if name:
        tags["Name"] = name
    tags.update(extra or {})
    return tags


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


class Cloud:
    """Base class of the drivers. `settings` is the driver's validated config section (a pydantic
    model or a dict), `data_dir` the tool's data directory (the driver may keep files below it)."""

    name = "base"

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        self.settings = settings
        self.data_dir = Path(data_dir)
        if name:
            self.name = name

    # -- the interface ------------------------------------------------------------------
    def base_image(self, distribution) -> Image:
        raise NotSupported(self.name, "base_image")

    def get_image(self, image_id: str) -> Image:
        """The image with this id; CloudError naming the id if there is none."""
        raise NotSupported(self.name, "get_image")

    def launch(self, spec: LaunchSpec) -> Instance:
        raise NotSupported(self.name, "launch")

    def refresh(self, instance: Instance) -> Instance:
        """The instance as the cloud sees it now (state 'terminated' if it is gone)."""
        raise NotSupported(self.name, "refresh")

    def start(self, instance: Instance) -> Instance:
        raise NotSupported(self.name, "start")

    def stop(self, instance: Instance) -> Instance:
        raise NotSupported(self.name, "stop")

    def destroy(self, instance: Instance) -> None:
        raise NotSupported(self.name, "destroy")

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        raise NotSupported(self.name, "create_image")

    def copy_image(self, image: Image, regions: list[str]) -> list[Image]:
        raise NotSupported(self.name, "copy_image")

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        raise NotSupported(self.name, "list_images")

    def delete_image(self, image: Image) -> None:
        raise NotSupported(self.name, "delete_image")

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        raise NotSupported(self.name, "list_instances")

    def cleanup(self, keep_run_ids: set[str] = frozenset()) -> list[str]:
        """Remove resources tagged by this tool whose run is not in keep_run_ids; return what was removed."""
        raise NotSupported(self.name, "cleanup")

    # -- hooks with defaults ------------------------------------------------------------
    def reboot(self, instance: Instance, timeout: float) -> Instance:
        """Reboot and wait until SSH answers from the new boot (default: `systemctl reboot` over SSH,
        then wait for a different /proc/sys/kernel/random/boot_id)."""
        from cislaves import remote

        return remote.reboot(instance, self.data_dir, timeout)

    def copy_regions(self) -> list[str]:
        """Regions the pipeline copies a new image to (settings), none by default."""
        return []

    def image_lines(self, images: list[Image]) -> list[str]:
        """Extra lines printed after a bake, for procedures that grep logs (e.g. EC2's 'Image:<ami>')."""
        return []

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for `status` (region, endpoint...)."""
        return {}

    def close(self) -> None:
        """Release clients and sessions."""


def wait_for(probe: Callable[[], T | None], what: str, timeout: float, *, first_delay: float = 0.05,
              max_delay: float = 2.0, factor: float = 1.6, describe: Callable[[], str] | None = None,
              clock: Callable[[], float] = time.monotonic) -> T:
    """Poll `probe` until it returns something other than None/False, with backoff, until `timeout`.

    On timeout raises WaitTimeout naming `what`, the time waited, and (if given) `describe()`, the last
    state seen. Exceptions from `probe` propagate (a probe decides which errors are final).
    """
    deadline = clock() + timeout
    delay = first_delay
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        now = clock()
        if now >= deadline:
            seen = ""
            if describe is not None:
                try:
                    seen = f" (last seen: {describe()})"
                except Exception as exc:  # describing must not hide the timeout
                    seen = f" (could not read state: {exc})"
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * factor, max_delay)


def generate_keypair(path: Path, comment: str = TOOL) -> str:
    """Write a new ed25519 private key (OpenSSH format, mode 0600) to `path`; return the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    Path(str(path) + ".pub").write_text(f"{public} {comment}\n")
    return f"{public} {comment}"


def public_key_of(private_key_file: Path) -> str:
    """The OpenSSH public key line of an existing private key file (RSA, ECDSA or ed25519)."""
    from cryptography.hazmat.primitives import serialization

    data = Path(private_key_file).read_bytes()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
