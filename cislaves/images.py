"""The manifest of baked images, in the shape Packer's manifest post-processor writes.

A tool that reads Packer manifests reads ours: `builds[]` of {name, builder_type, build_time, files,
artifact_id, packer_run_uuid, custom_data} and `last_run_uuid`. One bake is one build; its region
copies are in `artifact_id` as Packer's amazon-ebs writes them (`us-east-1:ami-1,us-west-2:ami-2`, the
first the image baked, the others its copies; an image without a region is its bare id). Our own
fields live under `custom_data`, which Packer types as map[string]string, so every value there is a
string (`validated: "true"`). Manifests of the earlier shape (one record per image with cloud, region,
copy_of...) are converted when read and written back in this shape by the next change.

Code reads the manifest through `records()`: one flat dict per image (artifact_id, cloud, region,
distribution, run_id, build_time, created, source_image, copy_of, validated, published...), so no
reader depends on the file's layout.

Every image a bake makes must end in one of two places: the manifest (and the output's `Image:` line),
or deleted. So the manifest is checked before a bake starts (`check`: readable, the right shape,
writable), and a write that still fails is a ManifestError that the pipeline answers by deleting
the new image. Rebakes add `validated` / `published` marks to the builds (`mark`); retention reads them.
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
BUILDER_PREFIX = "cislaves-"  # builder_type: cislaves-<cloud>
_BOOLEAN = {"validated"}  # custom_data strings read back as booleans by records()
_OLD_KEYS = ("name", "cloud", "region", "distribution", "artifact_id", "build_time", "created", "run_id",
             "source_image", "copy_of")


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
    """Append one build for this bake (its image and region copies) to the manifest (created if
    missing); return the data. Any failure to write (disk full, permissions) is one ManifestError line."""
    manifest = Path(manifest)
    now = int(time.time())
    first = images[0]
    custom = {"cloud": first.cloud, "distribution": distribution, "run_id": run_id,
              "source_image": source_image or "", "created": first.created or ""}
    for image in images[1:]:
        if image.created:
            custom[f"created:{image.region}"] = image.created
    build = _build(name, first.cloud, now, [(i.region, i.id) for i in images], run_id, custom)

    def add(data):
        data["builds"].append(build)
        data["last_run_uuid"] = run_id

    return _edit(manifest, add)


def mark(manifest: Path, image_ids: Iterable[str], **fields: Any) -> None:
    """Set fields (validated=True, published="<file>") on the builds holding these images; a value
    becomes a string in custom_data (True -> "true"), None removes the field."""
    ids = set(image_ids)

    def change(data):
        for build in data["builds"]:
            if _ours(build) and ids & {i for _, i in artifacts(build)}:
                custom = build.setdefault("custom_data", {})
                for key, value in fields.items():
                    if value is None:
                        custom.pop(key, None)
                    else:
                        custom[key] = _text(value)

    _edit(Path(manifest), change)


def forget(manifest: Path, image_ids: Iterable[str]) -> None:
    """Drop deleted images (retention, `fab delete_image`) from their builds' artifact_id, and a
    build once none of its images is left."""
    ids = set(image_ids)

    def drop(data):
        kept = []
        for build in data["builds"]:
            pairs = artifacts(build) if _ours(build) else []
            left = [(r, i) for r, i in pairs if i not in ids]
            if len(left) != len(pairs):
                if not left:
                    continue
                build["artifact_id"] = _artifact_id(left)
            kept.append(build)
        data["builds"] = kept

    _edit(Path(manifest), drop)


def records(manifest: Path | dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per image the manifest names (a path, or data from `read`), in bake order, the
    baked image before its copies: artifact_id (the one id), cloud, region, distribution, run_id,
    build_time, created, source_image, copy_of (the baked image's id, for a copy), name, and the marks
    set on it (validated as a bool, published) and any other custom_data field. Builds not made by this tool are skipped."""
    data = manifest if isinstance(manifest, dict) else read(Path(manifest))
    out = []
    for build in data["builds"]:
        if not _ours(build):
            continue  # another tool's build (e.g. Packer's, in a shared file)
        custom = build["custom_data"]
        pairs = artifacts(build)
        origin = custom.get("origin") or (pairs[0][1] if pairs else None)
        shared = {k: _value(k, v) for k, v in custom.items()
                  if not k.startswith("created:") and k not in ("origin", "created")}
        for region, image_id in pairs:
            copy = image_id != origin
            out.append({"name": build.get("name"), "build_time": build.get("build_time"), **shared,
                        "source_image": custom.get("source_image") or None,
                        "artifact_id": image_id, "region": region,
                        "created": custom.get(f"created:{region}" if copy else "created") or None,
                        "copy_of": origin if copy else None})
    return out


def artifacts(build: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(region, id) pairs of a build's artifact_id (`region:id,region:id`, or a bare id)."""
    pairs = []
    for part in str(build.get("artifact_id") or "").split(","):
        if part:
            region, sep, image_id = part.partition(":")
            pairs.append((region, image_id) if sep else (None, part))
    return pairs


def read(manifest: Path) -> dict[str, Any]:
    """The manifest's data in Packer's shape (an earlier shape converted in memory)."""
    try:
        data = json.loads(Path(manifest).read_text())
    except FileNotFoundError:
        return {"builds": [], "last_run_uuid": None}
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot read the manifest ({exc.strerror})") from None
    except ValueError as exc:
        raise ManifestError(f"{manifest}: manifest is not valid JSON ({exc}); fix or move it aside") from None
    if not isinstance(data, dict) or not isinstance(data.get("builds"), list) or \
            not all(isinstance(b, dict) for b in data["builds"]) or \
            not all(isinstance(b.get("custom_data") or {}, dict) for b in data["builds"]):
        raise ManifestError(f"{manifest}: manifest: expected an object with a 'builds' list of objects; "
                            f"fix or move it aside")
    data["builds"] = _convert(data["builds"])
    data.setdefault("last_run_uuid", None)
    return data


# -- helpers -------------------------------------------------------------------------------------
def _build(name: str, cloud: str, build_time: Any, pairs: list[tuple[str | None, str]], run_id: str,
           custom: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "builder_type": BUILDER_PREFIX + cloud, "build_time": build_time, "files": None,
            "artifact_id": _artifact_id(pairs), "packer_run_uuid": run_id,
            "custom_data": {**custom, "origin": pairs[0][1]}}


def _ours(build: dict[str, Any]) -> bool:
    return bool((build.get("custom_data") or {}).get("cloud"))


def _artifact_id(pairs: list[tuple[str | None, str]]) -> str:
    return ",".join(f"{region}:{image_id}" if region else image_id for region, image_id in pairs)


def _convert(builds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Builds of the earlier shape (one record per image, no custom_data, a `cloud` key) become one
    Packer build per bake: a baked image with the copies whose copy_of names it, marks kept."""
    if not any("custom_data" not in b and "cloud" in b for b in builds):
        return builds
    out: list[dict[str, Any]] = []
    by_origin: dict[str, dict[str, Any]] = {}
    for old in builds:
        if "custom_data" in old or "cloud" not in old:
            out.append(old)
            continue
        image_id, region = str(old.get("artifact_id") or ""), old.get("region")
        parent = by_origin.get(old.get("copy_of") or "")
        if parent is not None:  # a copy joins its baked image's build
            pairs = artifacts(parent) + [(region, image_id)]
            parent["artifact_id"] = _artifact_id(pairs)
            if old.get("created"):
                parent["custom_data"][f"created:{region}"] = str(old["created"])
            continue
        custom = {"cloud": str(old["cloud"]), "distribution": str(old.get("distribution") or ""),
                  "run_id": str(old.get("run_id") or ""), "source_image": str(old.get("source_image") or ""),
                  "created": str(old.get("created") or "")}
        for key, value in old.items():  # the rebake marks and anything else a record carried
            if key not in _OLD_KEYS and value is not None:
                custom[key] = _text(value)
        build = _build(str(old.get("name") or ""), str(old["cloud"]), old.get("build_time"),
                       [(region, image_id)], custom["run_id"], custom)
        if old.get("copy_of"):  # a copy whose baked image was forgotten: still a copy of it
            build["custom_data"]["origin"] = str(old["copy_of"])
            build["custom_data"][f"created:{region}"] = custom["created"]
        by_origin[str(old.get("copy_of") or image_id)] = build
        out.append(build)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _value(key: str, value: Any) -> Any:
    return value == "true" if key in _BOOLEAN else value


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
