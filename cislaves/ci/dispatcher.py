"""The listener service: a reader thread, a dispatcher thread and worker threads.

reader      follows the stream (cislaves.ci.stream), parses each line (a bad line is logged and
            counted, never fatal) and puts events on an in-memory queue; on every reconnect (and on a
            start with a remembered position) it asks Gerrit for what it missed (cislaves.ci.catchup).
dispatcher  takes events off that queue, runs them through the triggers, writes jobs into the SQLite
            queue (the durable record), remembers the newest event time, wakes a worker; a
            dropped-output event makes it catch up.
workers     (ci.workers of them) claim queued jobs and call the work function. Until the job runner
            exists, the default work logs the job and marks it succeeded.
`stop()` lets running jobs finish within a grace period, then marks the rest queued again, so the next
start runs them.
"""
from __future__ import annotations

import logging
import queue as _queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cislaves.ci import catchup
from cislaves.ci import events as ev
from cislaves.ci.queue import Job, JobQueue
from cislaves.ci.settings import CISettings, GerritSettings
from cislaves.ci.stream import EventStream, Gerrit
from cislaves.ci.triggers import Triggers
from cislaves.errors import GerritError

log = logging.getLogger(__name__)
Work = Callable[[Job, threading.Event], "str | None"]
BATCH = 256  # most events in one batch from reader to dispatcher
INBOX = 100  # batches between reader and dispatcher; a full inbox slows the reader (bounded memory)
DRAIN = 200  # most stream chunks the dispatcher writes in one transaction
POLL = 1.0  # seconds an idle worker waits before looking at the queue again (jobs from `fab enqueue`)


def default_work(job: Job, stop: threading.Event) -> str:
    """Placeholder until the job runner exists: log the job and report success."""
    log.info("job %d: change %d patch set %d (%s, %s): no runner configured, marked succeeded",
             job.id, job.change, job.patchset, job.project, job.trigger)
    return "no runner configured; marked succeeded"


@dataclass
class Stats:
    """Counters for logs, tests and benchmarks."""

    lines: int = 0
    bad_lines: int = 0
    events: int = 0
    matched: int = 0
    jobs: int = 0
    duplicates: int = 0
    refused: int = 0
    catchups: int = 0
    started: int = 0
    finished: int = 0


class Service:
    """The listener: start() the threads, stop() them; `error` holds a fatal stream error."""

    def __init__(self, gerrit: GerritSettings, ci: CISettings, queue_path: Path, work: Work | None = None):
        self.gerrit_settings, self.ci, self.queue_path = gerrit, ci, Path(queue_path)
        self.work = work or default_work
        self.triggers = Triggers(ci.triggers, ci.name, gerrit.user)
        self.stats = Stats()
        self.inbox: _queue.Queue = _queue.Queue(maxsize=INBOX)
        self.stopping = threading.Event()  # passed to work: stop soon
        self.failed = threading.Event()  # set with `error` when the stream cannot go on
        self.error: Exception | None = None
        self.stream = EventStream(gerrit, self._on_lines, self._on_connect, self._on_long_line)
        self._wake = threading.Condition()
        self._generation = 0
        self._threads: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._resume_from: int | None = None
        self._last_seen = 0
        self._started = self._stopped = False
        self._dropped = False  # a dropped-output event was seen: catch up after this batch

    # -- life cycle
    def start(self, follow: bool = True) -> None:
        """Re-queue interrupted jobs, then start the reader (unless not `follow`: then lines come from
        `feed`), the dispatcher and the workers."""
        db = JobQueue(self.queue_path)
        try:
            requeued = db.requeue_running()
            if requeued:
                log.info("re-queued %d job(s) interrupted by the last stop", requeued)
            self._resume_from = db.last_event_time()
            self._last_seen = self._resume_from or int(time.time())
            db.set_last_event_time(self._last_seen)
        finally:
            db.close()
        self._threads = [threading.Thread(target=self._guard(self._dispatch), name="ci-dispatcher", daemon=True)]
        if follow:
            self._threads.append(threading.Thread(target=self._guard(self._read), name="ci-reader", daemon=True))
        self._workers = [threading.Thread(target=self._guard(self._worker), name=f"ci-worker-{i}", daemon=True)
                         for i in range(self.ci.workers)]
        self._started = True
        for thread in self._threads + self._workers:
            thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop reading, let running jobs finish within `grace` seconds, re-queue the rest."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        grace = self.ci.stop_grace if grace is None else grace
        self.stopping.set()
        self.stream.close()
        self.inbox.put(None)
        self._notify()
        deadline = time.monotonic() + grace
        for thread in self._threads + self._workers:
            thread.join(max(0.0, deadline - time.monotonic()) if thread in self._workers else 30)
        db = JobQueue(self.queue_path)
        try:
            if self._last_seen:
                db.set_last_event_time(self._last_seen)
            still = db.requeue_running("stopped while running; queued again")
            if still:
                log.warning("stopped with %d job(s) still running: they will run again at the next start", still)
        finally:
            db.close()

    def notify(self) -> None:
        """Tell idle workers there may be new jobs (e.g. after an enqueue in this process)."""
        self._notify()

    # -- reader thread
    def _read(self) -> None:
        self.stream.run()

    def feed(self, lines: list[bytes]) -> None:
        """Take stream lines as if read from Gerrit (benchmarks, replaying a capture)."""
        self._on_lines(lines)

    def _on_lines(self, lines: list[bytes]) -> None:
        """Parse a chunk's lines; hand the events to the dispatcher in one batch. Events no trigger
        can want (and that are not dropped-output) are only counted and timed, not built."""
        batch: list[ev.Event] = []
        skipped, newest = 0, 0
        limit = self.gerrit_settings.max_line_bytes
        may_select = self.triggers.may_select
        for line in lines:
            self.stats.lines += 1
            try:
                data = ev.decode_line(line, limit)
                if may_select(data) or data.get("type") == ev.DROPPED_OUTPUT:
                    batch.append(ev.from_dict(data))
                    if len(batch) >= BATCH:
                        self.inbox.put(("events", batch, skipped, newest))
                        batch, skipped = [], 0
                    continue
            except ev.BadEvent as exc:
                self._on_bad_line(str(exc))
                continue
            skipped += 1
            when = data.get("eventCreatedOn")
            if when.__class__ is int and when > newest:
                newest = when
        if batch or skipped:
            self.inbox.put(("events", batch, skipped, newest))

    def _on_long_line(self, reason: str) -> None:
        self.stats.lines += 1
        self._on_bad_line(reason)

    def _on_bad_line(self, reason: str) -> None:
        self.stats.bad_lines += 1
        log.warning("stream line %d skipped: %s", self.stats.lines, reason)

    def _on_connect(self, gerrit: Gerrit, reconnected: bool) -> None:
        if not (reconnected or self._resume_from is not None):
            return
        try:
            found = self._catch_up(gerrit, "reconnect" if reconnected else "restart")
        except Exception:  # a surprise in Gerrit's answer must not stop the stream
            log.exception("catch-up failed")
            return
        self.inbox.put(("catch-up", found))

    def _catch_up(self, gerrit: Gerrit | None, why: str) -> list[ev.Event]:
        """The events Gerrit's query shows since the last event seen (minus the margin)."""
        since = max(0, self._last_seen - int(self.gerrit_settings.catchup_margin))
        if gerrit is None:
            return []
        try:
            changes = gerrit.query(catchup.query_for(since, self.gerrit_settings.query_limit),
                                   *catchup.QUERY_OPTIONS)
        except GerritError as exc:
            log.warning("catch-up after %s failed; reconnecting to try again: %s", why, exc)
            gerrit.close()  # the reader reconnects (with backoff) and catches up again
            return []
        found = catchup.events_from_changes(changes, since)
        self.stats.catchups += 1
        log.info("catch-up after %s: %d change(s), %d event(s) since %d", why, len(changes), len(found), since)
        return found

    # -- dispatcher thread
    def _dispatch(self) -> None:
        db = JobQueue(self.queue_path)
        try:
            running = True
            while running:
                items = [self.inbox.get()]
                while len(items) < DRAIN:  # under load, take what is waiting: fewer, larger transactions
                    try:
                        items.append(self.inbox.get_nowait())
                    except _queue.Empty:
                        break
                new = 0
                with db.batch():  # jobs are durable before any worker is woken
                    for item in items:
                        if item is None:
                            running = False
                            break
                        kind, batch = item[:2]
                        if kind == "events" and item[2]:
                            self.stats.events += item[2]
                            self._last_seen = max(self._last_seen, item[3])
                        for event in batch:
                            if kind == "catch-up":
                                new += self._accept(db, event, catchup.TOLERANCE)
                            elif self._seen(event):
                                new += self._accept(db, event, 0)
                    db.set_last_event_time(self._last_seen)
                if self._dropped:  # query Gerrit outside the transaction
                    self._dropped = False
                    found = self._catch_up(self.stream.gerrit, "dropped-output")
                    with db.batch():
                        new += sum(self._accept(db, event, catchup.TOLERANCE) for event in found)
                if new:
                    self._notify()
        finally:
            db.close()

    def _seen(self, event: ev.Event) -> bool:
        """Count a stream event and note its time; False for dropped-output (which starts a catch-up)."""
        self.stats.events += 1
        if event.created_on and event.created_on > self._last_seen:
            self._last_seen = event.created_on
        if event.type == ev.DROPPED_OUTPUT:
            log.warning("Gerrit dropped events for this connection; catching up")
            self._dropped = True
            return False
        return True

    def _accept(self, db: JobQueue, event: ev.Event, tolerance: float) -> bool:
        """Enqueue `event` if a trigger accepts it; True when that made a new job."""
        trigger = self.triggers.select(event)
        if trigger is None:
            return False
        self.stats.matched += 1
        try:
            job_id = db.enqueue(event, trigger, tolerance=tolerance)
        except ev.BadEvent as exc:
            self.stats.refused += 1
            log.warning("change %s patch set %s refused: %s", event.change_number, event.patchset_number, exc)
            return False
        if job_id is None:
            self.stats.duplicates += 1
            return False
        self.stats.jobs += 1
        log.info("job %d queued: change %s patch set %s (%s, trigger %s)", job_id, event.change_number,
                 event.patchset_number, event.type, trigger)
        return True

    # -- worker threads
    def _worker(self) -> None:
        db = JobQueue(self.queue_path)
        try:
            while not self.stopping.is_set():
                with self._wake:
                    generation = self._generation
                job = db.claim()
                if job is None:
                    with self._wake:
                        if self._generation == generation and not self.stopping.is_set():
                            self._wake.wait(POLL)
                    continue
                self._run(db, job)
        finally:
            db.close()

    def _run(self, db: JobQueue, job: Job) -> None:
        self.stats.started += 1
        log.info("job %d started (attempt %d)", job.id, job.attempts)
        try:
            result = self.work(job, self.stopping)
            result, state = (None if result is None else str(result)), "succeeded"
        except Exception as exc:  # one failing job never kills a worker
            log.exception("job %d failed", job.id)
            state, result = "failed", f"{type(exc).__name__}: {exc}"
        if self.stopping.is_set() and state == "failed":
            return  # interrupted by the stop: left running, re-queued by stop()
        if db.finish(job, state, result):
            self.stats.finished += 1
            log.info("job %d %s", job.id, state)

    # -- helpers
    def _notify(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.error("%s stopped: %s", threading.current_thread().name, exc,
                          exc_info=not isinstance(exc, GerritError))
                self.error = exc
                self.failed.set()
        return run
