"""Which runs and instances this tool started, and where they are: <data_dir>/state.json.

Written atomically (temp file + rename) under an exclusive lock, so concurrent `fab` processes never
lose each other's records. A run is recorded before anything is created (with its owner process), so a
crash at any point leaves a record that the next run uses to find and remove what was made.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cislaves.records import Instance, isoformat, utcnow
from cislaves.errors import StateError
from cislaves.util import start_time, write_json

log = logging.getLogger(__name__)
VERSION = 1


def me() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "start": start_time(pid)}


def alive(owner: dict[str, Any] | None) -> bool:
    if not owner:
        return False
    return start_time(int(owner.get("pid", -1))) == owner.get("start")


@dataclass
class Entry:
    key: str
    instance: Instance
    role: str  # "bake" (an `it` run's, removed when the run ends) or "instance" (kept until destroy)
    owner: dict[str, Any]


class State:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "state.json"

    # -- the owner: this data dir's stable id, tagged on everything its runs create
    def owner_id(self) -> str:
        """Made once (random, 12 hex digits after 'o') and kept in <data_dir>/owner; cleanup removes
        only this owner's dead runs (and what has expired), so hosts can share one cloud account."""
        path = self.data_dir / "owner"
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if not value:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.data_dir / "state.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    value = path.read_text().strip()
                except FileNotFoundError:
                    value = ""
                if not value:
                    value = "o" + secrets.token_hex(6)
                    tmp = path.with_name(".owner.tmp")
                    tmp.write_text(value + "\n")
                    os.replace(tmp, path)
        return value

    # -- reading
    def read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"version": VERSION, "runs": {}, "instances": {}}
        try:
            data = json.loads(text)
            shape_problem = _shape_problem(data)
            if shape_problem:
                raise ValueError(shape_problem)
        except ValueError as exc:
            raise StateError(f"{self.path}: state file is corrupt ({exc}); move it aside and run "
                             f"`fab cleanup` to find what it tracked") from None
        data.setdefault("runs", {})
        data.setdefault("instances", {})
        return data

    def entries(self, cloud: str | None = None) -> list[Entry]:
        data = self.read()
        out = []
        for key, rec in data["instances"].items():
            inst = Instance.from_dict(rec["instance"])
            if cloud is None or inst.cloud == cloud:
                out.append(Entry(key, inst, rec.get("role", "instance"), rec.get("owner", {})))
        return sorted(out, key=lambda e: (e.instance.created or "", e.key))

    def runs(self) -> dict[str, dict[str, Any]]:
        return self.read()["runs"]

    # -- writing
    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Lock, read, let the caller change the dict, write it back atomically."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.data_dir / "state.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            write_json(self.path, data)

    def start_run(self, run_id: str, cloud: str, distribution: str, role: str) -> None:
        with self.edit() as data:
            data["runs"][run_id] = {"cloud": cloud, "distribution": distribution, "role": role,
                                    "owner": me(), "started": isoformat(utcnow())}

    def end_run(self, run_id: str) -> None:
        with self.edit() as data:
            data["runs"].pop(run_id, None)

    def put(self, instance: Instance, role: str) -> None:
        with self.edit() as data:
            data["instances"][key_of(instance)] = {"instance": instance.to_dict(), "role": role,
                                                   "owner": me()}

    def remove(self, instance: Instance, end_run: str | None = None) -> None:
        """Forget the instance; with `end_run`, end that run in the same write (one fsync, not two)."""
        with self.edit() as data:
            data["instances"].pop(key_of(instance), None)
            if end_run is not None:
                data["runs"].pop(end_run, None)

    # -- choosing
    def current(self, cloud: str | None, instance_id: str | None = None) -> Instance:
        """The instance a task acts on: the one named, or the only one the state knows on `cloud`."""
        entries = self.entries()
        if instance_id:
            matches = [e for e in entries if e.instance.id == instance_id
                       and (cloud is None or e.instance.cloud == cloud)]
            if not matches:
                raise StateError(f"no instance {instance_id!r} in {self.path}; `fab status` lists them")
            return matches[0].instance
        on_cloud = [e for e in entries if cloud is None or e.instance.cloud == cloud]
        if not on_cloud:
            others = sorted({e.instance.cloud for e in entries})
            hint = f" (the state knows instances on: {', '.join(others)}; pass cloud=...)" if others else \
                " (run `fab up` first)"
            raise StateError(f"no current instance on cloud {cloud!r}{hint}")
        if len(on_cloud) > 1:
            ids = ", ".join(e.instance.id for e in on_cloud)
            raise StateError(f"several instances on cloud {cloud!r}: {ids}; choose one with instance=ID")
        return on_cloud[0].instance

    def only_cloud(self) -> str | None:
        """The cloud of the state's instances, if they are all on one."""
        clouds = {e.instance.cloud for e in self.entries()}
        return clouds.pop() if len(clouds) == 1 else None


def _shape_problem(data: Any) -> str | None:
    """What is wrong with the shape of a state file's JSON (None when it is what this module writes):
    valid JSON of another shape (hand-edited, another tool's) must be one line, not a traceback."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    for section in ("runs", "instances"):
        value = data.get(section, {})
        if not isinstance(value, dict):
            return f"'{section}' should be an object, got {type(value).__name__}"
        for key, record in value.items():
            if not isinstance(record, dict):
                return f"{section}.{key} should be an object, got {type(record).__name__}"
    for key, record in data.get("instances", {}).items():
        instance = record.get("instance")
        if not isinstance(instance, dict) or not all(isinstance(instance.get(f), str) for f in ("id", "cloud")):
            return f"instances.{key}.instance should be an object with an 'id' and a 'cloud'"
        try:
            Instance.from_dict(instance)
        except (TypeError, ValueError) as exc:
            return f"instances.{key}.instance: {exc}"
    return None


def key_of(instance: Instance) -> str:
    return f"{instance.cloud}:{instance.id}"
