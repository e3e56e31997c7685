"""Images of the local cloud: base images in the cache dir, baked ones (one overlay layer each, over
their parent chain) in <data_dir>/local/images; metadata files, ids, and removal of deleted images
once nothing builds on them any more.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

from cislaves.clouds.local import host
from cislaves.clouds.base import Image
from cislaves.errors import CloudError
from cislaves import util

log = logging.getLogger(__name__)

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # instance and image ids (folder names)


class ImageStore:
    """The images one LocalCloud sees (and the instance folders whose layers keep images alive)."""

    def __init__(self, cloud: str, images_dir: Path, cache_dir: Path, instances_dir: Path):
        self.cloud = cloud
        self.images_dir = images_dir
        self.cache_dir = cache_dir
        self.instances_dir = instances_dir

    def get(self, image_id: str) -> Image:
        meta = self.meta(image_id)
        if meta is None:
            raise CloudError(f"local: no image {image_id!r} (in {self.images_dir} or {self.cache_dir}); "
                             "`fab images:cloud=local` lists them")
        return self.record(meta)

    def find(self, filters: dict[str, str] | None = None) -> list[Image]:
        found = []
        for folder in (self.cache_dir, self.images_dir):
            if folder.is_dir():
                for path in sorted(folder.glob("*/meta.json")):
                    meta = self.meta(path.parent.name)
                    if meta is not None:
                        found.append(self.record(meta))
        return [i for i in found if matches(i, i.tags, filters)]

    def mark_deleted(self, image_id: str) -> None:
        meta_path = self.images_dir / image_id / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            meta["deleted"] = True
            write_json(meta_path, meta)

    def meta(self, image_id: str) -> dict[str, Any] | None:
        if not ID.fullmatch(image_id or ""):
            return None
        for path in (self.images_dir / image_id / "meta.json", self.cache_dir / image_id / "meta.json"):
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            return None if meta.get("deleted") or meta.get("state", "available") != "available" else meta
        return None

    def record(self, meta: dict[str, Any]) -> Image:
        return Image(id=meta["id"], cloud=self.cloud, name=meta.get("name", meta["id"]),
                     distribution=meta.get("distribution"), created=meta.get("created"),
                     source_image=meta.get("source_image"), run_id=meta.get("run_id"),
                     tags=dict(meta.get("tags", {})),
                     extra={"layers": meta.get("layers", [])})

    def new_id(self, run_id: str) -> str:
        base = f"img-{slug(run_id)}"
        image_id, n = base, 1
        while (self.images_dir / image_id).exists():
            n += 1
            image_id = f"{base}-{n}"
        return image_id

    def collect_garbage(self) -> None:
        """Remove deleted images nothing builds on any more."""
        if not self.images_dir.is_dir():
            return
        metas = {}
        for path in self.images_dir.glob("*/meta.json"):
            with contextlib.suppress(OSError, ValueError):
                metas[path.parent.name] = json.loads(path.read_text())
        used = set()
        for meta in metas.values():
            if not meta.get("deleted"):
                used.update(meta.get("layers", [])[1:])
        for path in self.instances_dir.glob("*/meta.json") if self.instances_dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                used.update(json.loads(path.read_text()).get("extra", {}).get("layers", []))
        for image_id, meta in metas.items():
            source = self.instances_dir / str(meta.get("source_instance"))
            if meta.get("state") == "pending" and not source.exists():
                meta["deleted"] = True  # made by a create_image that crashed; its machine is gone
            if meta.get("deleted") and image_id not in used:
                host.remove_tree(self.images_dir / image_id)
                log.info("local: removed image %s", image_id)

    def layer_paths(self, layers: list[str]) -> list[Path]:
        paths = []
        for image_id in layers:
            if (self.images_dir / image_id / "layer").is_dir():
                paths.append(self.images_dir / image_id / "layer")
            elif (self.cache_dir / image_id / "rootfs").is_dir():
                paths.append(self.cache_dir / image_id / "rootfs")
            else:
                raise CloudError(f"local: image layer {image_id!r} is missing (looked in {self.images_dir} "
                                 f"and {self.cache_dir}); the instance cannot boot")
        return paths


def matches(record, tags: dict[str, str], filters: dict[str, str] | None) -> bool:
    """Filters match tags first, then a record attribute of that name (e.g. name, distribution)."""
    for key, value in (filters or {}).items():
        if key in tags:
            if tags[key] != value:
                return False
        elif str(getattr(record, key, None)) != str(value):
            return False
    return True


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "run"


# The local cloud's metadata files: atomic, world-readable as before.
write_json = functools.partial(util.write_json, mode=0o644, indent=1)

