"""The durable job queue: SQLite in WAL mode in the tool's data directory.

Every accepted event becomes one job row (queued, running, succeeded, failed, cancelled) that keeps
the event. The same event twice is one job: its key is built only from what the stream and catch-up
(`gerrit query`) both report (type, change, patch set, trigger; for a comment its author and text and,
within a tolerance, its time; never the approvals, which the stream lists in full and the query only
as real votes). A newer patch set of a change cancels the queued jobs of older ones; manual jobs
(`fab enqueue`) neither cancel nor get cancelled. Jobs found `running` when a listener starts were
interrupted (crash or stop) and are queued again. Each thread opens its own JobQueue (SQLite
connections are not shared between threads).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cislaves.ci import events as ev
from cislaves.errors import ConfigError

log = logging.getLogger(__name__)
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    stem TEXT NOT NULL,
    event_time INTEGER,
    state TEXT NOT NULL,
    change INTEGER NOT NULL,
    patchset INTEGER NOT NULL,
    project TEXT,
    branch TEXT,
    ref TEXT NOT NULL,
    revision TEXT,
    trigger TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_change ON jobs (change, state);
CREATE INDEX IF NOT EXISTS jobs_stem ON jobs (stem);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""
_WRITERS: dict[str, threading.RLock] = {}  # one per database file: threads take turns without SQLite's
_WRITERS_GUARD = threading.Lock()           # busy handler, which sleeps in steps of milliseconds
COLUMNS = ("id", "key", "state", "change", "patchset", "project", "branch", "ref", "revision", "trigger",
           "event_type", "event", "created", "updated", "started", "finished", "attempts", "result")


@dataclass
class Job:
    """One row of the queue. `event` is the Gerrit event (decoded JSON) that made it."""

    id: int
    key: str
    state: str
    change: int
    patchset: int
    project: str | None
    branch: str | None
    ref: str
    revision: str | None
    trigger: str
    event_type: str
    event: dict[str, Any] = field(repr=False)
    created: float
    updated: float
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    result: str | None = None

    def env(self) -> dict[str, str]:
        """The Jenkins Gerrit Trigger variables for this job (values are data: pass them as env, never
        paste them into a shell command)."""
        change = self.event.get("change") if isinstance(self.event.get("change"), dict) else {}
        values = {
            "GERRIT_PROJECT": self.project, "GERRIT_BRANCH": self.branch, "GERRIT_REFSPEC": self.ref,
            "GERRIT_CHANGE_NUMBER": str(self.change), "GERRIT_PATCHSET_NUMBER": str(self.patchset),
            "GERRIT_PATCHSET_REVISION": self.revision, "GERRIT_CHANGE_ID": change.get("id"),
            "GERRIT_EVENT_TYPE": self.event_type,
        }
        return {k: str(v) for k, v in values.items() if v is not None}


def open_db(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """One thread's connection to a CI database (the queue, the build records): autocommit, WAL, the
    schema applied; a failure is one line naming `what` and the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"{what} {path}: cannot open: {exc}") from None
    return db


class JobQueue:
    """A connection to the queue database (one per thread)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.db = open_db(self.path, SCHEMA, "job queue")
        with _WRITERS_GUARD:
            self.writer = _WRITERS.setdefault(str(self.path.resolve()), threading.RLock())

    def close(self) -> None:
        self.db.close()

    # -- adding jobs
    def enqueue(self, event: ev.Event, trigger: str, *, tolerance: float = 0, manual: bool = False) -> int | None:
        """Add a job for `event` (already accepted by `trigger`); return its id, or None for a duplicate.

        The ref must be refs/changes/NN/CHANGE/PATCHSET (BadEvent otherwise). With `tolerance`, an
        event of the same kind, change, patch set, author and comment within that many seconds counts as
        the same event (catch-up sees comment times that may differ slightly from the stream's). A
        manual job is always new and takes no part in supersession.
        """
        change, patchset = event.change_number, event.patchset_number
        ref = ev.check_ref(event.patchset.ref if event.patchset else None, change, patchset)
        stem, key = event_key(event, trigger)
        if manual:
            key = f"{stem}:{uuid.uuid4().hex}"
        now = time.time()
        with self.batch():
            if tolerance and stem != key and event.created_on is not None and self.db.execute(
                    "SELECT 1 FROM jobs WHERE stem=? AND event_time BETWEEN ? AND ? LIMIT 1",
                    (stem, event.created_on - tolerance, event.created_on + tolerance)).fetchone():
                return None
            row = self.db.execute(
                "INSERT OR IGNORE INTO jobs (key, stem, event_time, state, change, patchset, project, branch, "
                "ref, revision, trigger, event_type, event, created, updated, result) "
                "SELECT ?,?,?, CASE WHEN newer.ps IS NULL THEN 'queued' ELSE 'cancelled' END, ?,?,?,?,?,?,?,?,?,?,?,"
                " CASE WHEN newer.ps IS NULL THEN NULL ELSE 'superseded by patch set ' || newer.ps END "
                "FROM (SELECT max(patchset) AS ps FROM jobs WHERE change=? AND patchset>? AND ?=0 "
                "      AND state IN ('queued','running') AND event_type!='manual') AS newer "
                "RETURNING id, state",
                (key, stem, event.created_on, change, patchset, event.change.project, event.change.branch, ref,
                 event.patchset.revision, trigger, event.type,
                 event.line.decode() if event.line else json.dumps(event.raw, separators=(",", ":")),
                 now, now, change, patchset, int(manual))).fetchone()
            job_id = row[0] if row else None
            if row and row[1] == "queued" and not manual and patchset > 1:
                self.db.execute(
                    "UPDATE jobs SET state='cancelled', updated=?, result=? "
                    "WHERE change=? AND patchset<? AND state='queued' AND event_type!='manual'",
                    (now, f"superseded by patch set {patchset}", change, patchset))
        return job_id

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several enqueues (nested use joins the outer transaction)."""
        if self.db.in_transaction:
            yield
            return
        with self.writer:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- running jobs
    def claim(self) -> Job | None:
        """Take the oldest queued job (mark it running), or None when nothing is queued."""
        now = time.time()
        with self.writer:
            row = self.db.execute(
                f"UPDATE jobs SET state='running', started=?, updated=?, attempts=attempts+1, result=NULL "
                f"WHERE id=(SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1) "
                f"RETURNING {','.join(COLUMNS)}", (now, now)).fetchone()
        return _job(row) if row else None

    def finish(self, job: Job, state: str, result: str | None = None) -> bool:
        """Record the end of a run; False if the job was meanwhile re-queued or cancelled."""
        if state not in ("succeeded", "failed", "cancelled"):
            raise ValueError(f"not a final state: {state}")
        now = time.time()
        with self.writer:
            cursor = self.db.execute(
                "UPDATE jobs SET state=?, finished=?, updated=?, result=? WHERE id=? AND state='running' "
                "AND attempts=?", (state, now, now, result, job.id, job.attempts))
        return cursor.rowcount == 1

    def cancel(self, job_id: int, reason: str) -> bool:
        """Mark job `job_id` cancelled if it still waits; False if it runs, ended or is not there (a
        running job's builds are stopped through the builds database, cislaves.ci.buildcli.cancel)."""
        with self.batch():
            cursor = self.db.execute("UPDATE jobs SET state='cancelled', updated=?, result=? WHERE id=? AND "
                                     "state='queued'", (time.time(), reason, job_id))
        return cursor.rowcount == 1

    def requeue_running(self, reason: str = "interrupted; queued again") -> int:
        """Queue again every job marked running (after a stop or a crash); return how many."""
        cursor = self.db.execute("UPDATE jobs SET state='queued', updated=?, result=? WHERE state='running'",
                                 (time.time(), reason))
        return cursor.rowcount

    # -- reading
    def jobs(self, states: tuple[str, ...] = STATES, limit: int = 1000) -> list[Job]:
        """Jobs in the given states, newest first."""
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE state IN ({marks}) "
                               f"ORDER BY id DESC LIMIT ?", (*states, limit)).fetchall()
        return [_job(r) for r in rows]

    def get(self, job_id: int) -> Job | None:
        row = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        counts = dict.fromkeys(STATES, 0)
        counts.update(self.db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        return counts

    # -- where the stream left off
    def last_event_time(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE name='last_event_time'").fetchone()
        return int(row[0]) if row else None

    def set_last_event_time(self, when: int, *, reset: bool = False) -> None:
        """Remember the newest eventCreatedOn seen (never moves backwards unless `reset`)."""
        self.db.execute(
            "INSERT INTO meta (name, value) VALUES ('last_event_time', ?) ON CONFLICT(name) DO UPDATE "
            "SET value=excluded.value WHERE ? OR CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
            (str(int(when)), int(reset)))


def event_key(event: ev.Event, trigger: str) -> tuple[str, str]:
    """(stem, key) identifying an event, equal whichever way it arrived (stream, catch-up, restart).

    A patch set or merge is one job per trigger; a change leaving WIP or private state shares its
    upload's key (it completes an upload that was skipped, or is a duplicate of one that was not). A
    comment or restore is one job per author, text and time (the stem without the time: the caller's
    tolerance compares times)."""
    kind = ev.PATCHSET_CREATED if event.type in ev.READY_STATE_CHANGED else event.type
    base = f"{kind}:{event.change_number}:{event.patchset_number}:{trigger}"
    if kind in (ev.PATCHSET_CREATED, ev.CHANGE_MERGED):
        return base, base
    author = event.account.label() if event.account else "?"
    text = " ".join((event.comment or "").split())  # whitespace as either source may trim it
    digest = hashlib.sha1(json.dumps([author, text]).encode()).hexdigest()[:16]
    stem = f"{base}:{digest}"
    return stem, f"{stem}@{event.created_on}"


def _job(row: tuple) -> Job:
    values = dict(zip(COLUMNS, row))
    values["event"] = json.loads(values["event"])
    return Job(**values)
