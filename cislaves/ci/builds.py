"""Durable build records: SQLite (WAL) in builds.sqlite next to the job queue.

A queued job (one event accepted by one trigger) runs as a buildset: one build per configured job
that the trigger runs. A build row holds everything the runner needs (the event, the ref, the job's
name) and everything the report needs (result, detail, times, log directory), so a runner on another
host could take it. Rows are written before anything is booted; results are stored before anything
is reported (CI part 3 reads `reported`).

The `slots` table counts instances per cloud (ci.max_instances), for builds and for ready instances
(ci.ready), each row owned by a process (pid + kernel start time): after a crash, the next start
finds the dead owners' rows and destroys their instances (cislaves.ci.pool.reap).

Results: SUCCESS, FAILURE, TIMED_OUT, NODE_FAILURE, ERROR, ABORTED. A build aborted because its
listener stopped or died has `rerun` set: the job's next attempt runs it again.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cislaves.ci.queue import open_db
from cislaves.state import alive, me

RESULTS = ("SUCCESS", "FAILURE", "TIMED_OUT", "NODE_FAILURE", "ERROR", "ABORTED")
SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    change INTEGER NOT NULL,
    patchset INTEGER NOT NULL,
    project TEXT,
    branch TEXT,
    ref TEXT NOT NULL,
    revision TEXT,
    trigger TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event TEXT NOT NULL,
    voting INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    result TEXT,
    detail TEXT,
    rerun INTEGER NOT NULL DEFAULT 0,
    cancel TEXT,
    cloud TEXT,
    image_id TEXT,
    instance_id TEXT,
    log_dir TEXT,
    node_attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS builds_job ON builds (job_id, name);
CREATE INDEX IF NOT EXISTS builds_state ON builds (state);
CREATE TABLE IF NOT EXISTS slots (
    id TEXT PRIMARY KEY,
    cloud TEXT NOT NULL,
    purpose TEXT NOT NULL,
    job TEXT,
    build_id TEXT,
    state TEXT NOT NULL,
    run_id TEXT NOT NULL,
    image_id TEXT,
    instance TEXT,
    owner TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS slots_cloud ON slots (cloud, state);
"""
COLUMNS = ("id", "job_id", "attempt", "name", "change", "patchset", "project", "branch", "ref", "revision",
           "trigger", "event_type", "event", "voting", "state", "result", "detail", "rerun", "cancel", "cloud",
           "image_id", "instance_id", "log_dir", "node_attempts", "owner", "created", "started", "finished",
           "reported")
SLOT_COLUMNS = ("id", "cloud", "purpose", "job", "build_id", "state", "run_id", "image_id", "instance", "owner",
                "created")
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass
class Build:
    """One build: a configured job run for one queued job (its event)."""

    id: str
    job_id: int
    attempt: int
    name: str
    change: int
    patchset: int
    project: str | None
    branch: str | None
    ref: str
    revision: str | None
    trigger: str
    event_type: str
    event: dict[str, Any] = field(repr=False)
    voting: bool = True
    state: str = "queued"  # queued, running, finished
    result: str | None = None
    detail: str | None = None
    rerun: bool = False
    cancel: str | None = None
    cloud: str | None = None
    image_id: str | None = None
    instance_id: str | None = None
    log_dir: str | None = None
    node_attempts: int = 0
    owner: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    reported: bool = False

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


@dataclass
class Slot:
    """One instance counted against its cloud's ci.max_instances (booting, ready or busy)."""

    id: str
    cloud: str
    purpose: str  # "build" or "ready"
    job: str | None
    build_id: str | None
    state: str  # booting, ready, busy
    run_id: str
    image_id: str | None
    instance: dict[str, Any] | None
    owner: dict[str, Any]
    created: float


def path_for(queue_path: Path) -> Path:
    """builds.sqlite in the queue's folder."""
    return Path(queue_path).parent / "builds.sqlite"


class BuildStore:
    """A connection to the builds database (one per thread, like JobQueue)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.db = open_db(self.path, SCHEMA, "build records")
        with _LOCKS_GUARD:
            self.lock = _LOCKS.setdefault(str(self.path.resolve()), threading.Lock())

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, args)

    # -- builds
    def create(self, job, name: str, voting: bool) -> Build:
        """A new queued build of configured job `name` for queued job `job` (a cislaves.ci.queue.Job)."""
        build = Build(id=uuid.uuid4().hex[:12], job_id=job.id, attempt=job.attempts, name=name,
                      change=job.change, patchset=job.patchset, project=job.project, branch=job.branch,
                      ref=job.ref, revision=job.revision, trigger=job.trigger, event_type=job.event_type,
                      event=job.event, voting=voting, created=time.time(), owner=json.dumps(me()))
        values = {c: getattr(build, c) for c in COLUMNS}
        values["event"] = json.dumps(build.event, separators=(",", ":"))
        self._write(f"INSERT INTO builds ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})",
                    tuple(values[c] for c in COLUMNS))
        return build

    def latest(self, job_id: int) -> dict[str, Build]:
        """The newest build of each configured job for queued job `job_id`."""
        out: dict[str, Build] = {}
        for build in self.for_job(job_id):
            out.setdefault(build.name, build)
        return out

    def for_job(self, job_id: int) -> list[Build]:
        """Every build of a queued job, newest first."""
        rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM builds WHERE job_id=? ORDER BY created DESC",
                               (job_id,)).fetchall()
        return [_build(r) for r in rows]

    def get(self, build_id: str) -> Build | None:
        row = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM builds WHERE id=?", (build_id,)).fetchone()
        return _build(row) if row else None

    def recent(self, limit: int = 1000) -> list[Build]:
        rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM builds ORDER BY created DESC LIMIT ?",
                               (limit,)).fetchall()
        return [_build(r) for r in rows]

    def update(self, build: Build, **values: Any) -> Build:
        """Set columns of a build (and on the record)."""
        for key, value in values.items():
            setattr(build, key, value)
        sets = ",".join(f"{k}=?" for k in values)
        self._write(f"UPDATE builds SET {sets} WHERE id=?", (*values.values(), build.id))
        return build

    def start(self, build: Build, log_dir: Path) -> Build:
        return self.update(build, state="running", started=time.time(), log_dir=str(log_dir),
                           owner=json.dumps(me()))

    def finish(self, build: Build, result: str, detail: str | None = None, *, rerun: bool = False) -> Build:
        """Record the result (stored before anything reports it)."""
        if result not in RESULTS:
            raise ValueError(f"not a build result: {result}")
        return self.update(build, state="finished", result=result, detail=detail, rerun=int(rerun),
                           finished=time.time())

    def request_cancel(self, job_id: int, reason: str) -> int:
        """Ask the runner to abort the builds of a queued job that have not finished; return how many."""
        return self._write("UPDATE builds SET cancel=? WHERE job_id=? AND state!='finished' AND cancel IS NULL",
                           (reason, job_id)).rowcount

    def cancel_reason(self, build_id: str) -> str | None:
        row = self.db.execute("SELECT cancel FROM builds WHERE id=?", (build_id,)).fetchone()
        return row[0] if row else None

    def orphans(self) -> list[Build]:
        """Builds marked queued or running whose process is gone (a crash or SIGKILL)."""
        rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM builds WHERE state!='finished'").fetchall()
        return [b for b in map(_build, rows) if not (b.owner and alive(json.loads(b.owner)))]

    # -- slots (instances counted against ci.max_instances)
    def take_slot(self, cloud: str, limit: int | None, purpose: str, *, job: str | None = None,
                  build_id: str | None = None, run_id: str) -> Slot | None:
        """Count one more instance on `cloud` if fewer than `limit` are counted; None when full."""
        slot = Slot(id=uuid.uuid4().hex[:12], cloud=cloud, purpose=purpose, job=job, build_id=build_id,
                    state="booting", run_id=run_id, image_id=None, instance=None, owner=me(), created=time.time())
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                used = self.db.execute("SELECT count(*) FROM slots WHERE cloud=?", (cloud,)).fetchone()[0]
                if limit is not None and used >= limit:
                    self.db.execute("ROLLBACK")
                    return None
                self.db.execute(f"INSERT INTO slots ({','.join(SLOT_COLUMNS)}) VALUES "
                                f"({','.join('?' * len(SLOT_COLUMNS))})", _slot_values(slot))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return slot

    def set_slot(self, slot: Slot, **values: Any) -> None:
        for key, value in values.items():
            setattr(slot, key, value)
        if "instance" in values and values["instance"] is not None:
            values["instance"] = json.dumps(values["instance"])
        sets = ",".join(f"{k}=?" for k in values)
        self._write(f"UPDATE slots SET {sets} WHERE id=?", (*values.values(), slot.id))

    def take_ready(self, job: str, image_id: str, build_id: str) -> Slot | None:
        """Claim a ready instance of `job` booted from `image_id` for a build (atomically)."""
        row = self._write(f"UPDATE slots SET state='busy', purpose='build', build_id=?, owner=? WHERE id=("
                          f"SELECT id FROM slots WHERE purpose='ready' AND state='ready' AND job=? AND image_id=? "
                          f"ORDER BY created LIMIT 1) RETURNING {','.join(SLOT_COLUMNS)}",
                          (build_id, json.dumps(me()), job, image_id)).fetchone()
        return _slot(row) if row else None

    def retire(self, slot: Slot) -> bool:
        """Take a ready instance out of the pool to destroy it; False if a build took it first."""
        return self._write("UPDATE slots SET state='retiring', owner=? WHERE id=? AND state='ready'",
                           (json.dumps(me()), slot.id)).rowcount == 1

    def release(self, slot: Slot) -> None:
        self._write("DELETE FROM slots WHERE id=?", (slot.id,))

    def slots(self, cloud: str | None = None) -> list[Slot]:
        sql = f"SELECT {','.join(SLOT_COLUMNS)} FROM slots" + (" WHERE cloud=?" if cloud else "")
        return [_slot(r) for r in self.db.execute(sql, (cloud,) if cloud else ()).fetchall()]

    def dead_slots(self) -> list[Slot]:
        return [s for s in self.slots() if not alive(s.owner)]


def _build(row: tuple) -> Build:
    values = dict(zip(COLUMNS, row))
    values["event"] = json.loads(values["event"])
    for key in ("voting", "rerun", "reported"):
        values[key] = bool(values[key])
    return Build(**values)


def _slot(row: tuple) -> Slot:
    values = dict(zip(SLOT_COLUMNS, row))
    values["owner"] = json.loads(values["owner"])
    values["instance"] = json.loads(values["instance"]) if values["instance"] else None
    return Slot(**values)


def _slot_values(slot: Slot) -> tuple:
    values = {c: getattr(slot, c) for c in SLOT_COLUMNS}
    values["owner"] = json.dumps(slot.owner)
    values["instance"] = json.dumps(slot.instance) if slot.instance else None
    return tuple(values[c] for c in SLOT_COLUMNS)
