"""The build queue in ZooKeeper, its locks, results and states (what every host reads).

<root>/queue/<cloud>~<item>~<sequence>
                        a build to run: JSON {key, name, voting, cloud, job, enqueued}; <item> is
                        a digest of the event's identity and the job name; the name alone says
                        the cloud and the order, so a worker reads only the item it locked
<root>/seen/<item>      created with the queue item in one transaction: the same build is never
                        queued twice, whichever listener (leader) sees the event again
<root>/locks/<item>     EPHEMERAL, created by the worker running it ({worker, host, build_id,
                        started}): a dead worker's session expires and the item is free again
<root>/attempts/<item>  the build ids of every attempt (to find a dead worker's instances by tag)
<root>/results/<item>   the result, written before the queue item and the lock are removed (in one
                        transaction): an item with a result is never run again
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

log = logging.getLogger(__name__)
KINDS = ("queue", "seen", "locks", "attempts", "results")


def item_name(key: str, name: str) -> str:
    return hashlib.sha1(f"{key}\0{name}".encode()).hexdigest()[:24]


@dataclass
class Item:
    name: str  # the digest: locks/, attempts/ and results/ are named by it
    data: dict[str, Any]
    attempts: list[str] = field(default_factory=list)  # earlier attempts' build ids
    child: str = ""  # its node's name in queue/


class BuildQueue:
    """The queue under <root>; one per client (kazoo clients are thread-safe)."""

    def __init__(self, zk, root: str):
        self.zk, self.root = zk, root.rstrip("/")
        for kind in KINDS:
            zk.ensure_path(self._path(kind))

    def _path(self, kind: str, name: str | None = None) -> str:
        return f"{self.root}/{kind}" + (f"/{name}" if name else "")

    # -- the leader
    def submit(self, key: str, name: str, data: dict[str, Any]) -> bool:
        """Queue a build once: False when this (event, job) was queued before, by any leader."""
        item = item_name(key, name)
        body = json.dumps({"key": key, "name": name, "enqueued": time.time(), **data},
                          separators=(",", ":")).encode()
        tx = self.zk.transaction()
        tx.create(self._path("seen", item), b"")
        tx.create(self._path("queue", f"{data.get('cloud') or '-'}~{item}~"), body, sequence=True)
        results = tx.commit()
        if any(isinstance(r, NodeExistsError) for r in results):
            return False
        for r in results:
            if isinstance(r, Exception):
                raise r
        return True

    # -- workers
    def take(self, clouds: set[str] | None, worker: dict[str, Any], watch=None) -> Item | None:
        """Lock the oldest queued build for one of `clouds` (None: any); None when there is none.
        `watch` is called once when the queue's children change (kazoo's one-shot watch)."""
        entries = []
        for child in self.zk.get_children(self._path("queue"), watch=watch):
            cloud, _, rest = child.partition("~")
            name, _, sequence = rest.partition("~")
            if clouds is None or cloud in clouds:
                entries.append((sequence, name, child))
        for _, name, child in sorted(entries):
            try:
                self.zk.create(self._path("locks", name), json.dumps(worker).encode(), ephemeral=True)
            except NodeExistsError:
                continue  # another worker runs it
            if self.zk.exists(self._path("results", name)):  # its worker died between result and removal
                self._remove(name, child)
                continue
            try:
                data = json.loads(self.zk.get(self._path("queue", child))[0])
            except NoNodeError:  # finished and removed since the listing
                self.zk.delete(self._path("locks", name))
                continue
            try:
                attempts = json.loads(self.zk.get(self._path("attempts", name))[0])
            except NoNodeError:
                attempts = []
            return Item(name, data, attempts, child)
        return None

    def started(self, item: Item, build_id: str, worker: dict[str, Any]) -> None:
        """Record the attempt (before anything is booted) and the running state in the lock."""
        ids = json.dumps(item.attempts + [build_id]).encode()
        try:
            self.zk.create(self._path("attempts", item.name), ids)
        except NodeExistsError:
            self.zk.set(self._path("attempts", item.name), ids)
        self.zk.set(self._path("locks", item.name),
                    json.dumps({**worker, "build_id": build_id, "started": time.time()}).encode())

    def holds(self, item: Item) -> bool:
        """True while this client's session still owns the item's lock."""
        stat = self.zk.exists(self._path("locks", item.name))
        return stat is not None and stat.ephemeralOwner == self.zk.client_id[0]

    def finish(self, item: Item, result: dict[str, Any]) -> bool:
        """Store the result, then remove the item and its lock (one transaction). False when the lock
        is no longer ours (the session expired: another worker runs it again; this result is dropped)."""
        if not self.holds(item):
            return False
        body = json.dumps({**result, "name": item.data.get("name"), "key": item.data.get("key"),
                           "job": item.data.get("job"), "enqueued": item.data.get("enqueued"),
                           "stored": time.time()}, separators=(",", ":")).encode()
        tx = self.zk.transaction()
        tx.create(self._path("results", item.name), body)
        tx.delete(self._path("queue", item.child))
        tx.delete(self._path("locks", item.name))
        outcome = tx.commit()
        failed = [r for r in outcome if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        return True

    def release(self, item: Item) -> None:
        """Give the item back without a result (a worker stopping: it runs again elsewhere)."""
        if self.holds(item):
            self.zk.delete(self._path("locks", item.name))

    def _remove(self, name: str, child: str) -> None:
        tx = self.zk.transaction()
        tx.delete(self._path("queue", child))
        tx.delete(self._path("locks", name))
        tx.commit()

    # -- anyone (`fab jobs`)
    def listing(self) -> tuple[list[dict], list[dict]]:
        """(queued or running items with their lock's data, results), oldest first."""
        pending, done = [], []
        for child in self.zk.get_children(self._path("queue")):
            try:
                data = json.loads(self.zk.get(self._path("queue", child))[0])
            except NoNodeError:
                continue
            try:
                data["running"] = json.loads(self.zk.get(self._path("locks", child.split("~")[1]))[0])
            except NoNodeError:
                pass
            pending.append(data)
        for name in self.zk.get_children(self._path("results")):
            try:
                done.append(json.loads(self.zk.get(self._path("results", name))[0]))
            except NoNodeError:
                continue
        pending.sort(key=lambda d: d.get("enqueued", 0))
        done.sort(key=lambda d: d.get("stored", 0))
        return pending, done

    def result(self, key: str, name: str) -> dict | None:
        try:
            return json.loads(self.zk.get(self._path("results", item_name(key, name)))[0])
        except NoNodeError:
            return None


def worker_identity(name: str) -> dict[str, Any]:
    import os

    return {"worker": name, "host": socket.gethostname(), "pid": os.getpid()}
