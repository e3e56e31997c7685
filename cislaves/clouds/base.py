"""The cloud interface every driver implements, the capabilities a driver declares, and cleanup's policy.

A driver is a subclass of `Cloud`. Every method blocks until its effect is real (or a deadline
passes, raising WaitTimeout), and is safe to call twice (destroying a destroyed instance is a no-op).
The bake pipeline and the CI runner use clouds only through this interface. The records (Instance,
Image, LaunchSpec, tags), the wait loop and the key helpers live below the clouds, in
cislaves.records, cislaves.waiting and cislaves.keys; they are re-exported here for drivers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cislaves import TOOL
from cislaves.errors import NotSupported
from cislaves.keys import generate_keypair, public_key_of  # noqa: F401 (re-exported for drivers)
from cislaves.records import (TAG_BUILD, TAG_DISTRIBUTION, TAG_EXPIRES, TAG_OWNER, TAG_ROLE,  # noqa: F401
                              TAG_RUN, TAG_TOOL, Image, Instance, LaunchSpec, expired, isoformat,
                              new_run_id, parse_time, standard_tags, utcnow)
from cislaves.waiting import Pending, wait_for  # noqa: F401 (re-exported for drivers)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What differs by cloud, declared by each driver instead of callers testing its name."""

    stop_start: bool = True  # `down` keeps the disk and `up` starts it again
    images: bool = True  # create_image works (a static host cannot be imaged)
    copy_image: bool = False  # images can be copied to other regions
    docker_inside: bool = True  # a docker daemon can run inside an instance (not in an nspawn machine)
    regions: bool = False  # the cloud has regions a target can name


@dataclass
class CleanupPolicy:
    """Which tool-tagged resources `cleanup` may remove (one rule for every driver).

    A resource is ours to remove when it carries the tool's tag and either its `cislaves:expires`
    time has passed (whoever owns it), or its run is not one this host keeps (a live run, a kept
    instance) and it belongs to this owner (or `all_owners` was asked for explicitly). Resources
    without an owner tag (made before owners existed) count as this owner's only under all_owners.
    """

    owner: str | None
    keep_run_ids: set[str] = field(default_factory=set)
    all_owners: bool = False

    def reason(self, tags: dict[str, str] | None) -> str | None:
        """Why this resource may be removed, or None to leave it alone."""
        tags = tags or {}
        if tags.get(TAG_TOOL) != TOOL:
            return None
        run = tags.get(TAG_RUN)
        mine = self.owner is not None and tags.get(TAG_OWNER) == self.owner
        if run and run in self.keep_run_ids and (mine or not tags.get(TAG_OWNER)):
            return None  # this host's live run or kept instance
        if expired(tags):
            return "expired"
        if mine:
            return "run ended"
        if self.all_owners:
            return "all owners"
        return None

    def removable(self, tags: dict[str, str] | None) -> bool:
        return self.reason(tags) is not None


class Cloud:
    """Base class of the drivers. `settings` is the driver's validated config section (a pydantic
    model or a dict), `data_dir` the tool's data directory (the driver may keep files below it)."""

    name = "base"
    capabilities: ClassVar[Capabilities] = Capabilities()
    # Optional hook: a cloud-level reboot(instance, timeout) -> Instance. None: provisioning reboots over
    # SSH (cislaves.remote.reboot), which suits every cloud whose machines run systemd.
    reboot = None

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

    def cleanup(self, policy: CleanupPolicy) -> list[str]:
        """Remove the tool-tagged resources `policy` allows (instances, key pairs, security groups, disks,
        unfinished images...); return one line per removed resource ("security group sg-123")."""
        raise NotSupported(self.name, "cleanup")

    # -- hooks with defaults ------------------------------------------------------------
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
