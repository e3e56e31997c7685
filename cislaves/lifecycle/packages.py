"""What changed in an image: the installed package list, recorded with each image after its checks.

No anchor of the seed's procedure records this, yet "what changed since the last image" is the first
question when a rebuilt image breaks a job. The list is `dpkg-query` (apt family) or `rpm -qa`
(yum/dnf) output, kept as <data_dir>/packages/<image id>.json ({name: version}); `fab image_diff`
and the rebake summary compare two of them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from cislaves import remote
from cislaves.errors import ConfigError
from cislaves.records import Image
from cislaves.util import write_json

log = logging.getLogger(__name__)

QUERIES = {
    "apt": ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
    "yum": ["rpm", "-qa", "--qf", "%{NAME}.%{ARCH}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"],
}
QUERIES["dnf"] = QUERIES["yum"]


def collect(instance, distribution, config) -> dict[str, str]:
    """The installed packages of `instance`, name -> version, over SSH."""
    conn = remote.wait_for_ssh(instance, config.data_dir, config.timeouts.ssh)
    try:
        result = remote.run(conn, QUERIES[distribution.family], hide=True)
    finally:
        conn.close()
    return parse(result.stdout)


def parse(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, _, version = line.partition("\t")
        if name.strip():
            found[name.strip()] = version.strip()
    return found


def save(data_dir: Path, images: Iterable[Image], installed: dict[str, str]) -> None:
    """Record the list with every image of a bake (the region copies hold the same packages)."""
    for image in images:
        write_json(path_of(data_dir, image.id), installed, mode=0o644)


def load(data_dir: Path, image_id: str) -> dict[str, str] | None:
    try:
        return json.loads(path_of(data_dir, image_id).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{path_of(data_dir, image_id)}: package list is not valid JSON ({exc})") from None


def remove(data_dir: Path, image_id: str) -> None:
    path_of(data_dir, image_id).unlink(missing_ok=True)


def path_of(data_dir: Path, image_id: str) -> Path:
    safe = image_id.replace("/", "_")
    return Path(data_dir) / "packages" / f"{safe}.json"


def diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list]:
    """{"added": [(name, version)], "removed": [(name, version)], "changed": [(name, old, new)]}."""
    return {
        "added": sorted((n, new[n]) for n in new.keys() - old.keys()),
        "removed": sorted((n, old[n]) for n in old.keys() - new.keys()),
        "changed": sorted((n, old[n], new[n]) for n in old.keys() & new.keys() if old[n] != new[n]),
    }


def count(changes: dict[str, list]) -> int:
    return sum(len(v) for v in changes.values())


def diff_lines(data_dir: Path, old_id: str, new_id: str) -> list[str]:
    """`fab image_diff:OLD,NEW`: one line per package added (+), removed (-) or changed (~)."""
    lists = []
    for image_id in (old_id, new_id):
        found = load(data_dir, image_id)
        if found is None:
            raise ConfigError(f"image {image_id}: no package list in {path_of(data_dir, image_id).parent} "
                              f"(lists are recorded by bakes of this data dir after their checks)")
        lists.append(found)
    changes = diff(*lists)
    lines = [f"+ {n} {v}" for n, v in changes["added"]]
    lines += [f"- {n} {v}" for n, v in changes["removed"]]
    lines += [f"~ {n} {a} -> {b}" for n, a, b in changes["changed"]]
    lines.append(f"{len(changes['added'])} added, {len(changes['removed'])} removed, "
                 f"{len(changes['changed'])} changed between {old_id} and {new_id}")
    return lines
