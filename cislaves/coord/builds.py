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
<root>/buildsets/<set>  the job names of one event's buildset ({key, names}), written by the leader
                        before its items; every result's transaction bumps its version (checked), so
                        two workers storing a buildset's last two results are serialized
<root>/cancels/<set>    a buildset cancelled (`fab cancel`, or superseded by a newer patch set):
                        {reason}; its queued items get an ABORTED result, workers abort the running
                        ones (a ChildrenWatch: within their stop check's 0.25 s) and store ABORTED
<root>/reports/<set>    created in the transaction that stores a buildset's last result: its one
                        report is owed ({state: owed|reported|silent|skipped|failed, attempts,
                        next_try, error}); the leader's reporter (cislaves.coord.reports) sends it
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError

log = logging.getLogger(__name__)
KINDS = ("queue", "seen", "locks", "attempts", "results", "buildsets", "reports", "cancels")


def item_name(key: str, name: str) -> str:
    return hashlib.sha1(f"{key}\0{name}".encode()).hexdigest()[:24]


def buildset_name(key: str) -> str:
    return hashlib.sha1(f"{key}\0".encode()).hexdigest()[:24]


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
        # items whose lock this session may hold without running them: the answer to a lock's create
        # was lost (ZooKeeper restarting: created or not, nobody knows), or a call after it failed.
        # The session outlives the connection, so such a lock would keep its item from ever running
        # again; release_strays() removes the ones still ours before the next take.
        self.strays: set[str] = set()
        for kind in KINDS:
            zk.ensure_path(self._path(kind))

    def _path(self, kind: str, name: str | None = None) -> str:
        return f"{self.root}/{kind}" + (f"/{name}" if name else "")

    # -- the leader
    def declare(self, key: str, names: list[str]) -> None:
        """Record a buildset's job names (once; before its items, so a worker always finds it)."""
        body = json.dumps({"key": key, "names": sorted(names)}).encode()
        try:
            self.zk.create(self._path("buildsets", buildset_name(key)), body)
        except NodeExistsError:
            pass

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
            with self._locked(name, worker) as ours:
                item = self._claimed(name, child) if ours else None  # not ours: another worker runs it
            if item is not None:
                return item
        return None

    @contextlib.contextmanager
    def _locked(self, name: str, holder: dict[str, Any]):
        """Create item `name`'s lock (ephemeral, `holder` as its data) for the block, which gets True, or
        False when another session holds it. A ZooKeeper error at the create or inside the block makes
        the item a stray (see __init__): the error propagates, release_strays removes the lock later."""
        try:
            self.zk.create(self._path("locks", name), json.dumps(holder).encode(), ephemeral=True)
        except NodeExistsError:
            created = False
        except KazooException:
            self.strays.add(name)
            raise
        else:
            created = True
        if not created:
            yield False
            return
        try:
            yield True
        except KazooException:
            self.strays.add(name)
            raise

    def _claimed(self, name: str, child: str) -> Item | None:
        """The item whose lock was just created, or None when it is not to run (its lock then released)."""
        if self.zk.exists(self._path("results", name)):  # its worker died between result and removal
            self._remove(name, child)
            return None
        try:
            data = json.loads(self.zk.get(self._path("queue", child))[0])
        except NoNodeError:  # finished and removed since the listing
            self.zk.delete(self._path("locks", name))
            return None
        try:
            attempts = json.loads(self.zk.get(self._path("attempts", name))[0])
        except NoNodeError:
            attempts = []
        item = Item(name, data, attempts, child)
        reason = self.cancelled(data.get("key") or "")
        if reason:  # cancelled while it waited: never started
            self.finish(item, {"result": "ABORTED", "detail": reason, "rerun": False})
            return None
        return item

    def release_strays(self) -> list[str]:
        """Delete the locks in `strays` that this session still holds (see __init__); their names.
        A ZooKeeper error leaves the rest for the next call."""
        released = []
        for name in sorted(self.strays):
            path = self._path("locks", name)
            stat = self.zk.exists(path)
            if stat is not None and stat.ephemeralOwner == self.zk.client_id[0]:
                try:
                    self.zk.delete(path, version=stat.version)
                except NoNodeError:
                    pass
                released.append(name)
            self.strays.discard(name)
        return released

    def cancelled(self, key: str) -> str | None:
        """The reason a buildset was cancelled, or None."""
        try:
            return json.loads(self.zk.get(self._path("cancels", buildset_name(key)))[0])["reason"]
        except NoNodeError:
            return None

    def cancel(self, key: str, reason: str) -> tuple[int, int]:
        """Cancel a buildset: its queued items end ABORTED here; its running ones are aborted by their
        workers (which watch cancels/). (queued items ended, running items asked to stop)."""
        try:
            self.zk.create(self._path("cancels", buildset_name(key)), json.dumps({"reason": reason}).encode())
        except NodeExistsError:
            pass
        me = {"worker": "cancel", **worker_identity("cancel")}
        ended = running = 0
        self.release_strays()  # a call of ours that failed before (the leader retries a supersede)
        for child in self.zk.get_children(self._path("queue")):
            name = child.split("~")[1]
            try:
                data = json.loads(self.zk.get(self._path("queue", child))[0])
            except NoNodeError:
                continue
            if data.get("key") != key:
                continue
            with self._locked(name, me) as ours:
                if not ours:  # its worker runs it
                    running += 1
                elif self.zk.exists(self._path("results", name)):
                    self._remove(name, child)
                else:
                    self.finish(Item(name, data, [], child), {"result": "ABORTED", "detail": reason,
                                                              "rerun": False})
                    ended += 1
        return ended, running

    def older_patch_sets(self, change: int, patchset: int) -> set[str]:
        """Keys of queued or running non-manual buildsets of `change` at an older patch set."""
        keys = set()
        for data in self._queued():
            job = data.get("job") or {}
            if (job.get("change") == change and (job.get("patchset") or 0) < patchset
                    and job.get("event_type") != "manual"):
                keys.add(data.get("key"))
        return keys

    def find_job(self, job_id: int) -> set[str]:
        """Keys of queued or running buildsets whose listener job id is `job_id`."""
        return {data.get("key") for data in self._queued() if (data.get("job") or {}).get("id") == job_id}

    def _queued(self):
        """Every queued or running item's data (read one by one: a cancel's look, not the hot path)."""
        for child in self.zk.get_children(self._path("queue")):
            try:
                yield json.loads(self.zk.get(self._path("queue", child))[0])
            except NoNodeError:
                continue

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
        if not self.holds(item):  # or the answer to this very call was lost after it committed
            stored = self._result_of(item.name)
            return bool(stored and result.get("build_id") and stored.get("build_id") == result["build_id"])
        body = json.dumps({**result, "name": item.data.get("name"), "key": item.data.get("key"),
                           "job": item.data.get("job"), "enqueued": item.data.get("enqueued"),
                           "stored": time.time()}, separators=(",", ":")).encode()
        key = item.data.get("key") or ""
        bs_path = self._path("buildsets", buildset_name(key))
        while True:
            try:
                raw, stat = self.zk.get(bs_path)
                names = json.loads(raw).get("names", [])
            except NoNodeError:  # submitted before buildsets existed: no report is claimed
                raw, stat, names = None, None, []
            last = stat is not None and all(
                self.zk.exists(self._path("results", item_name(key, n))) for n in names
                if n != item.data.get("name"))
            tx = self.zk.transaction()
            tx.create(self._path("results", item.name), body)
            tx.delete(self._path("queue", item.child))
            tx.delete(self._path("locks", item.name))
            if stat is not None:
                tx.set_data(bs_path, raw, version=stat.version)
            if last:
                now = time.time()
                tx.create(self._path("reports", buildset_name(key)),
                          json.dumps({"key": key, "state": "owed", "attempts": 0, "next_try": now,
                                      "created": now}).encode())
            outcome = tx.commit()
            if any(isinstance(r, BadVersionError) for r in outcome):
                continue  # another result of this buildset was stored meanwhile: look again
            failed = [r for r in outcome if isinstance(r, Exception)]
            if failed:
                raise failed[0]
            if last:
                log.info("buildset %s: last result stored; its report is owed", buildset_name(key))
            return True

    def _result_of(self, name: str) -> dict | None:
        try:
            return json.loads(self.zk.get(self._path("results", name))[0])
        except NoNodeError:
            return None

    def release(self, item: Item) -> None:
        """Give the item back without a result (a worker stopping: it runs again elsewhere)."""
        if self.holds(item):
            self.zk.delete(self._path("locks", item.name))

    def _remove(self, name: str, child: str) -> None:
        """The queue item of a stored result and our lock on it. One by one, not in a transaction: the
        item is usually gone already (its worker finished it between our listing and our lock), and a
        transaction would then fail as a whole and leave our lock behind."""
        for path in (self._path("queue", child), self._path("locks", name)):
            try:
                self.zk.delete(path)
            except NoNodeError:
                pass

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
        return self._result_of(item_name(key, name))


def worker_identity(name: str) -> dict[str, Any]:
    import os

    return {"worker": name, "host": socket.gethostname(), "pid": os.getpid()}
