"""The manifest of baked images, as Packer's manifest post-processor writes it.

Every image a bake makes must end in one of two places: the manifest (and the output's `Image:` line),
or deleted. So the manifest is checked before a bake starts (`check`: readable, the right shape,
writable), and a write that still fails is a ManifestError that the pipeline answers by deleting
the new image. Rebakes add `validated` / `published` marks to the records (`mark`); retention reads them.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from cislaves.errors import ConfigError
from cislaves.records import Image
from cislaves.util import write_json

TAG_SOURCE = "cislaves:source-image"  # the base image a baked image was made from (`fab images` SOURCE)


class ManifestError(ConfigError):
    """The manifest cannot be read or written (corrupt, wrong shape, unwritable, disk full)."""


def check(manifest: Path) -> None:
    """Fail now, before anything is created, if the manifest could not take a new record: it must
    be valid JSON of the right shape (or absent) and its folder and file writable."""
    manifest = Path(manifest)
    read(manifest)
    folder = manifest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{manifest.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
        if manifest.exists():
            with open(manifest, "r+"):
                pass
    except OSError as exc:
        raise ManifestError(f"{manifest}: manifest is not writable ({exc.strerror}); fix its folder's "
                            f"permissions or set `manifest:` (or CISLAVES_MANIFEST) elsewhere") from None


def record(manifest: Path, images: list[Image], *, distribution: str, run_id: str, name: str,
           source_image: str | None) -> dict[str, Any]:
    """Append one build record per image to the manifest (created if missing); return the data.
    Any failure to write (disk full, permissions) is one ManifestError line."""
    manifest = Path(manifest)
    now = int(time.time())

    def add(data):
        for image in images:
            data["builds"].append({
                "name": name,
                "cloud": image.cloud,
                "region": image.region,
                "distribution": distribution,
                "artifact_id": image.id,
                "build_time": now,
                "created": image.created,
                "run_id": run_id,
                "source_image": source_image,
                "copy_of": image.extra.get("copy_of"),
            })
        data["last_run_uuid"] = run_id

    return _edit(manifest, add)


def mark(manifest: Path, image_ids: Iterable[str], **fields: Any) -> None:
    """Set fields (validated=True, published="<file>", packages_changed=3...) on the records of these images."""
    ids = set(image_ids)

    def change(data):
        for build in data["builds"]:
            if build.get("artifact_id") in ids:
                build.update(fields)

    _edit(Path(manifest), change)


def forget(manifest: Path, image_ids: Iterable[str]) -> None:
    """Drop the records of deleted images (retention, `fab delete_image`)."""
    ids = set(image_ids)

    def drop(data):
        data["builds"] = [b for b in data["builds"] if b.get("artifact_id") not in ids]

    _edit(Path(manifest), drop)


def read(manifest: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(manifest).read_text())
    except FileNotFoundError:
        return {"builds": [], "last_run_uuid": None}
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot read the manifest ({exc.strerror})") from None
    except ValueError as exc:
        raise ManifestError(f"{manifest}: manifest is not valid JSON ({exc}); fix or move it aside") from None
    if not isinstance(data, dict) or not isinstance(data.get("builds"), list) or \
            not all(isinstance(b, dict) for b in data["builds"]):
        raise ManifestError(f"{manifest}: manifest: expected an object with a 'builds' list of objects; "
                            f"fix or move it aside")
    return data


def builds(manifest: Path) -> list[dict[str, Any]]:
    return read(manifest)["builds"]


def _edit(manifest: Path, change) -> dict[str, Any]:
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(str(manifest) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = read(manifest)
            change(data)
            write_json(manifest, data, sort_keys=False)
    except OSError as exc:
        what = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise ManifestError(f"{manifest}: cannot write the manifest ({what})") from None
    return data
