"""The manifest of baked images (as Packer's manifest post-processor writes it) and image listings."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cislaves.clouds.base import Image
from cislaves.errors import ConfigError


def record(manifest: Path, images: list[Image], *, distribution: str, run_id: str, name: str,
           source_image: str | None) -> dict[str, Any]:
    """Append one build record per image to the manifest (created if missing); return the data."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(str(manifest) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read(manifest)
        now = int(time.time())
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
        fd, tmp = tempfile.mkstemp(dir=manifest.parent, prefix=".manifest.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2)
                fh.write("\n")
            os.replace(tmp, manifest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return data


def read(manifest: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(manifest).read_text())
    except FileNotFoundError:
        return {"builds": [], "last_run_uuid": None}
    except ValueError as exc:
        raise ConfigError(f"{manifest}: manifest is not valid JSON ({exc}); fix or move it aside") from None
    if not isinstance(data, dict) or not isinstance(data.get("builds"), list):
        raise ConfigError(f"{manifest}: manifest: expected an object with a 'builds' list")
    return data


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    """Plain aligned columns."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*[str(c) for c in r]).rstrip() for r in rows]
