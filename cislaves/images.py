"""The manifest of baked images, as Packer's manifest post-processor writes it."""
from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from cislaves.records import Image
from cislaves.errors import ConfigError
from cislaves.util import write_json


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
        write_json(manifest, data, sort_keys=False)
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

