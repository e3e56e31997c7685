"""Retention: keep the `keep` newest validated images per cloud/region/distribution, delete the rest.

Never deleted, whatever their age: an image the published YAML names (anywhere in the file), one an
instance of this tool boots from (a bake, a CI job, a ready instance, a kept `fab up` instance: the
cloud lists them), one of a run that is still going, and other owners' images (their host prunes
them). An image that is not validated is deleted only once a newer validated image of its group
exists (a fresh manual `fab it` bake survives until a rebake supersedes it). Deleting goes through
the cloud interface (EC2 deletes the snapshots with the AMI; the local cloud frees the layer).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from cislaves import TOOL, clouds, images as manifest
from cislaves.errors import CislavesError, ConfigError
from cislaves.lifecycle import packages
from cislaves.records import TAG_DISTRIBUTION, TAG_OWNER, TAG_ROLE, TAG_RUN, TAG_TOOL, Image
from cislaves.state import State

log = logging.getLogger(__name__)


@dataclass
class Decision:
    image: Image
    action: str  # "delete" or "keep"
    reason: str

    def line(self, dry_run: bool) -> str:
        verb = ("would delete" if dry_run else "deleted") if self.action == "delete" else "keep"
        return (f"{verb} {self.image.cloud} {self.image.region or '-'} {self.image.distribution or '-'} "
                f"{self.image.id} ({self.reason})")


def prune(config, targets: Iterable, keep: int, *, published: set[str], dry_run: bool = False,
          out: Callable[[str], None] = print, drivers: dict[tuple, Any] | None = None) -> list[Decision]:
    """Apply retention to the clouds/regions of `targets` (lifecycle.settings.Target). `drivers`:
    drivers built already, by group_key (a rebake's: building one is a new SDK session), kept open;
    one is built (and closed) for each other cloud/region."""
    drivers = drivers or {}
    state = State(config.data_dir)
    owner = state.owner_id()
    live_runs = set(state.runs())
    builds = manifest.records(config.manifest)
    validated = {b.get("artifact_id") for b in builds if b.get("validated")}
    order = {b.get("artifact_id"): index for index, b in enumerate(builds)}  # bake order breaks time ties
    decisions: list[Decision] = []
    seen: set[tuple[str, str]] = set()
    for key, (cloud, cfg, distributions) in _clouds_of(config, targets).items():
        driver = drivers.get(key) or clouds.get(cloud, cfg)
        try:
            decisions += _prune_group(config, driver, state, owner, distributions, keep, validated, published,
                                      live_runs, order, seen, dry_run)
        finally:
            if key not in drivers:
                driver.close()
    for d in decisions:
        out(d.line(dry_run))
    return decisions


def group_key(target) -> tuple:
    """The cloud and region retention lists a target's images in (None on clouds without regions)."""
    return (target.cloud, target.region if clouds.driver_class(target.cloud).capabilities.regions else None)


def _prune_group(config, driver, state, owner, distributions, keep, validated, published, live_runs, order,
                 seen: set, dry_run: bool) -> list[Decision]:
    """Retention in one cloud/region with its driver (one for listing and deleting)."""
    in_use = images_in_use(driver, state)
    found = [i for i in driver.list_images({TAG_TOOL: TOOL}) if (i.id, i.region or "") not in seen]
    seen.update((i.id, i.region or "") for i in found)  # a region copy is listed once
    groups: dict[tuple, list[Image]] = {}
    for image in found:
        dist = image.distribution or image.tags.get(TAG_DISTRIBUTION)
        if image.tags.get(TAG_ROLE) != "image" or dist not in distributions:
            continue
        if image.tags.get(TAG_OWNER) != owner:
            continue  # another host's: it prunes its own
        image.distribution = dist
        groups.setdefault((image.region, dist), []).append(image)
    here = [d for group in groups.values() for d in decide(group, keep, validated, published, in_use,
                                                          live_runs, order)]
    gone = []
    for d in here:
        if d.action == "delete" and not dry_run:
            try:
                driver.delete_image(d.image)
            except CislavesError as exc:
                d.action, d.reason = "keep", f"delete failed: {exc}"
                log.error("prune: could not delete %s: %s", d.image.id, exc)
                continue
            gone.append(d.image.id)
    if gone:
        manifest.forget(config.manifest, gone)
        for image_id in gone:
            packages.remove(config.data_dir, image_id)
    return here


def decide(group: list[Image], keep: int, validated: set[str], published: set[str], in_use: set[str],
           live_runs: set[str], order: dict[str, int] | None = None) -> list[Decision]:
    """The retention rule for one cloud/region/distribution group, newest first."""
    order = order or {}
    group = sorted(group, key=lambda i: (i.created or "", order.get(i.id, -1), i.id), reverse=True)
    kept_validated = 0
    out = []
    for image in group:
        newer_validated = kept_validated > 0 or any(d.image.id in validated for d in out)
        if image.id in published:
            out.append(Decision(image, "keep", "published"))
        elif image.id in in_use:
            out.append(Decision(image, "keep", "in use by an instance"))
        elif (image.run_id or image.tags.get(TAG_RUN)) in live_runs:
            out.append(Decision(image, "keep", "its run is still going"))
        elif image.id in validated:
            kept_validated += 1
            if kept_validated <= keep:
                out.append(Decision(image, "keep", f"validated, newest {kept_validated} of {keep}"))
            else:
                out.append(Decision(image, "delete", f"validated, older than the newest {keep}"))
        elif newer_validated:
            out.append(Decision(image, "delete", "not validated, superseded by a validated image"))
        else:
            out.append(Decision(image, "keep", "not validated, newer than any validated image"))
    return out


def images_in_use(driver, state: State) -> set[str]:
    """Ids of the images this tool's live instances (the cloud's list and the state's) boot from."""
    used = {e.instance.image_id for e in state.entries(driver.name) if e.instance.image_id}
    for instance in driver.list_instances({TAG_TOOL: TOOL}):
        if instance.state not in ("terminated", "shutting-down") and instance.image_id:
            used.add(instance.image_id)
    return used


def published_ids(path: Path | None) -> set[str]:
    """Every string in the publish YAML (ids are compared against all of them: cheap and safe)."""
    if path is None or not Path(path).exists():
        return set()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or exc}); retention "
                          f"needs it to know which images are published") from None
    found: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack += list(node.values()) + list(node.keys())
        elif isinstance(node, list):
            stack += node
        elif isinstance(node, str):
            found.add(node)
    return found


def delete_image(config, cloud: str, image_id: str, *, published: set[str], force: bool = False,
                 out: Callable[[str], None] = print) -> None:
    """`fab delete_image:ID`: delete one image of this tool (refusing a published or in-use one
    unless force), and forget it in the manifest."""
    driver = clouds.get(cloud, config)
    try:
        image = driver.get_image(image_id)
        if image.tags.get(TAG_TOOL) != TOOL:
            raise ConfigError(f"image {image_id} on {cloud} was not made by cislaves; not deleting it")
        if not force:
            if image_id in published:
                raise ConfigError(f"image {image_id} is named in the published YAML; publish another "
                                  f"one first, or pass force=true")
            if image_id in images_in_use(driver, State(config.data_dir)):
                raise ConfigError(f"image {image_id} is in use by an instance; pass force=true to "
                                  f"delete it anyway")
        driver.delete_image(image)
    finally:
        driver.close()
    manifest.forget(config.manifest, [image_id])
    packages.remove(config.data_dir, image_id)
    out(f"Deleted image {image_id} on {cloud}")


def _clouds_of(config, targets) -> dict[tuple, tuple]:
    """group_key -> (cloud, config copy, distributions), once per cloud and region of the targets."""
    by_key: dict[tuple, tuple] = {}
    for target in targets:
        key = group_key(target)
        if key not in by_key:
            by_key[key] = (target.cloud, target.session_config(config), set())
        by_key[key][2].add(target.distribution)
    return by_key

