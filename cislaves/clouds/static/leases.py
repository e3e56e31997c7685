"""Leases of static hosts: which run holds which host, shared by every process of a data dir.

A lease is a record file `<lease_dir>/<host>.json` (the Instance, the holding process, the lease's
state); the record IS the lock, so a lease outlives the `fab up` that took it and ends with `destroy`.
Taking and releasing happen under an flock on `<lease_dir>/.lock`, so two runs never take one host.
A lease whose holder process died is reclaimable when it was never finished ("taking") or was taken
for an ephemeral role (a bake, a CI job): only `up`'s kept instances outlive their process. One whose
cislaves:expires time passed is reclaimable whoever holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from cislaves.records import TAG_OWNER, Instance, expired, isoformat, utcnow
from cislaves.state import alive, me
from cislaves.util import write_json

log = logging.getLogger(__name__)

KEPT_ROLES = ("instance", "ready")  # leases of these roles outlive the process that took them


class Leases:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The lease folder's lock: hold it to read-then-take or to release."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def get(self, host: str) -> dict[str, Any] | None:
        try:
            record = json.loads((self.folder / f"{host}.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("static: ignoring unreadable lease %s: %s", self.folder / f"{host}.json", exc)
            return None
        return record if isinstance(record, dict) and "instance" in record else None

    def all(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        records = (self.get(path.stem) for path in sorted(self.folder.glob("*.json")))
        return [r for r in records if r is not None]

    def put(self, instance: Instance, state: str) -> None:
        """Write the lease of instance.id (hold `locked()`): state "taking" until SSH answered, then "leased"."""
        write_json(self.folder / f"{instance.id}.json",
                   {"instance": instance.to_dict(), "state": state, "holder": me(), "since": isoformat(utcnow())})

    def release(self, host: str, run_id: str) -> bool:
        """End the lease of `host` if `run_id` holds it (never another run's); True if it did."""
        with self.locked():
            record = self.get(host)
            if record is None or record["instance"].get("run_id") != run_id:
                return False
            (self.folder / f"{host}.json").unlink(missing_ok=True)
            return True


def stale(record: dict[str, Any]) -> str | None:
    """Why a lease may be taken over (its holder is gone, or it expired), or None while it holds."""
    instance = record["instance"]
    if expired(instance.get("tags") or {}):
        return "expired"
    role = (instance.get("extra") or {}).get("role")
    if not alive(record.get("holder")) and (record.get("state") != "leased" or role not in KEPT_ROLES):
        return f"its holder (pid {(record.get('holder') or {}).get('pid')}) has exited"
    return None


def holder_text(record: dict[str, Any]) -> str:
    """Who holds a lease, for messages: run, role, owner."""
    instance = record["instance"]
    tags = instance.get("tags") or {}
    owner = tags.get(TAG_OWNER, "no owner")
    return f"run {instance.get('run_id')} ({(instance.get('extra') or {}).get('role')}, owner {owner})"
