"""The listener service: a reader thread, a dispatcher thread and worker threads.

reader      follows the stream (cislaves.ci.stream), parses the lines a trigger may want (a bad line
            is logged and counted, never fatal; the others are only counted) and puts events on a
            small in-memory queue; on every reconnect (after a drop, a refusal or a stalled stream) and
            on a start with a remembered position it asks Gerrit for what it missed (cislaves.ci.catchup).
dispatcher  takes events off that queue, runs them through the triggers, writes jobs into the SQLite
            queue (the durable record) in the same transaction as the position (the newest event
            time seen, never beyond now + gerrit.max_clock_skew), wakes a worker; a dropped-output
            event makes it catch up. An event that fails in any way is logged and skipped.
workers     (ci.workers of them) claim queued jobs and call the work function. Until the job runner
            exists, the default work logs the job and marks it succeeded.
`stop()` lets running jobs finish within a grace period, then marks the rest queued again, so the next
start runs them.
"""
from __future__ import annotations

import logging
import queue as _queue
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
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
Work = Callable[[Job, threading.Event], "str | tuple[str, str] | None"]
BATCH = 256  # most events in one batch from reader to dispatcher
INBOX = 8  # batches between reader and dispatcher; a full inbox slows the reader (bounded memory)
CREATED_ON = re.compile(rb'"eventCreatedOn":\s*"?(\d{1,16})')  # the time of a line not decoded
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
    failed_events: int = 0
    future_times: int = 0
    catchups: int = 0  # catch-up queries answered
    caught_up: int = 0  # catch-up results the dispatcher has written
    started: int = 0
    finished: int = 0
    by_type: dict = field(default_factory=dict)  # events by type; "other": lines no trigger wants (not decoded)


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
        self._dropped: int | None = None  # position when a dropped-output came: catch up from there

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
            now = int(time.time())
            if self._resume_from is not None and self._resume_from > self._horizon():
                log.warning("remembered position %d is in the future; catching up from now instead",
                            self._resume_from)
                self._resume_from = now
                db.set_last_event_time(now, reset=True)
            self._last_seen = self._resume_from or now
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
        """Parse a chunk's lines; hand the events to the dispatcher in one batch. Lines no trigger can
        want (and that are not dropped-output) are only counted (the quick byte filter), or decoded
        and dropped (the filter on decoded JSON); the chunk's last line gives the position."""
        batch: list[ev.Event] = []
        passed = bad = 0
        first = self.stats.lines
        self.stats.lines += len(lines)
        limit = self.gerrit_settings.max_line_bytes
        may_select_line, may_select = self.triggers.may_select_line, self.triggers.may_select
        for number, line in enumerate(lines, first + 1):
            if not may_select_line(line):
                continue
            try:
                data = ev.decode_line(line, limit)
                if may_select(data) or data.get("type") == ev.DROPPED_OUTPUT:
                    event = ev.from_dict(data)
                    event.line = line  # stored as it came: no second encoding
                    batch.append(event)
                    if len(batch) >= BATCH:
                        passed += len(batch)
                        self.inbox.put(("events", batch, 0, 0))
                        batch = []
            except Exception as exc:  # BadEvent, or a surprise: one line never stops the reader
                bad += 1
                self._bad_line(number, str(exc) if isinstance(exc, ev.BadEvent) else f"{type(exc).__name__}: {exc}")
        match = CREATED_ON.search(lines[-1]) if lines else None
        newest = (ev.seconds(int(match.group(1))) or 0) if match else 0
        self.inbox.put(("events", batch, len(lines) - bad - passed - len(batch), newest))

    def _on_long_line(self, reason: str) -> None:
        self.stats.lines += 1
        self._bad_line(self.stats.lines, reason)

    def _bad_line(self, number: int, reason: str) -> None:
        self.stats.bad_lines += 1
        log.warning("stream line %d skipped: %s", number, reason)

    def _on_connect(self, gerrit: Gerrit, reconnected: bool) -> None:
        if not (reconnected or self._resume_from is not None):
            return
        found = self._catch_up(gerrit, "reconnect" if reconnected else "restart")
        self.inbox.put(("catch-up", found))

    def _catch_up(self, gerrit: Gerrit | None, why: str, position: int | None = None) -> list[ev.Event]:
        """The events Gerrit's query shows since `position` (default: the last event seen) minus the
        margin, every page. On any failure the connection is closed: the reader reconnects and
        catches up again."""
        if gerrit is None:
            return []
        s = self.gerrit_settings
        position = self._last_seen if position is None else position
        since = max(0, min(position, int(time.time())) - int(s.catchup_margin))
        try:
            changes = catchup.fetch(gerrit.query_page, since, s.query_limit)
            found = catchup.events_from_changes(changes, since)
        except Exception as exc:  # GerritError, or a surprise in Gerrit's answer
            log.warning("catch-up after %s failed; reconnecting to try again: %s", why,
                        exc if isinstance(exc, GerritError) else f"{type(exc).__name__}: {exc}")
            gerrit.close()
            return []
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
                horizon = self._horizon()
                with db.batch():  # jobs are durable before any worker is woken, with the position
                    for item in items:
                        if item is None:
                            running = False
                            break
                        kind, batch = item[:2]
                        if kind == "events" and item[2]:
                            self.stats.events += item[2]
                            self.stats.by_type["other"] = self.stats.by_type.get("other", 0) + item[2]
                            self._advance(item[3], horizon)
                        for event in batch:
                            if kind == "catch-up" or self._seen(event, horizon):
                                new += self._accept(db, event, catchup.TOLERANCE)
                        self.stats.caught_up += kind == "catch-up"
                    db.set_last_event_time(self._last_seen)
                if self._dropped is not None:  # query Gerrit outside the transaction
                    since, self._dropped = self._dropped, None
                    found = self._catch_up(self.stream.gerrit, "dropped-output", since)
                    with db.batch():
                        new += sum(self._accept(db, event, catchup.TOLERANCE) for event in found)
                    self.stats.caught_up += 1
                if new:
                    self._notify()
        finally:
            db.close()

    def _horizon(self) -> float:
        """The latest event time the position may take: now plus the allowed clock skew."""
        return time.time() + self.gerrit_settings.max_clock_skew

    def _advance(self, when: int | None, horizon: float) -> None:
        """Move the position to `when` if it is newer and not beyond `horizon` (a time from the future
        would make every later catch-up start after the events it should find)."""
        if not when or when <= self._last_seen:
            return
        if when <= horizon:
            self._last_seen = when
            return
        self.stats.future_times += 1
        if self.stats.future_times in (1, 10, 100) or self.stats.future_times % 1000 == 0:
            log.warning("event time %d is %.0f s ahead of this clock; not used as position (%d such event(s))",
                        when, when - horizon + self.gerrit_settings.max_clock_skew, self.stats.future_times)

    def _seen(self, event: ev.Event, horizon: float) -> bool:
        """Count a stream event and note its time; False for dropped-output (which starts a catch-up)."""
        self.stats.events += 1
        self.stats.by_type[event.type] = self.stats.by_type.get(event.type, 0) + 1
        self._advance(event.created_on, horizon)
        if event.type == ev.DROPPED_OUTPUT:
            log.warning("Gerrit dropped events for this connection; catching up")
            if self._dropped is None:
                self._dropped = self._last_seen
            return False
        return True

    def _accept(self, db: JobQueue, event: ev.Event, tolerance: float) -> bool:
        """Enqueue `event` if a trigger accepts it; True when that made a new job. An event that fails
        in any way (a bad ref, a value SQLite cannot store, ...) is logged and skipped."""
        try:
            trigger = self.triggers.select(event)
            if trigger is None:
                return False
            self.stats.matched += 1
            job_id = db.enqueue(event, trigger, tolerance=tolerance)  # a failed statement undoes itself
        except ev.BadEvent as exc:
            self.stats.refused += 1
            log.warning("change %.20s patch set %.20s refused: %s", event.change_number, event.patchset_number, exc)
            return False
        except sqlite3.OperationalError:
            raise  # the database itself is failing (disk, locks): the service stops and says so
        except Exception as exc:
            self._event_failed(event, exc)
            return False
        if job_id is None:
            self.stats.duplicates += 1
            return False
        self.stats.jobs += 1
        log.info("job %d queued: change %s patch set %s (%s, trigger %s)", job_id, event.change_number,
                 event.patchset_number, event.type, trigger)
        return True

    def _event_failed(self, event: ev.Event, exc: Exception) -> None:
        self.stats.failed_events += 1
        log.warning("%s event of change %.20s skipped: %s: %s", event.type, event.change_number,
                    type(exc).__name__, exc)

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
            result, state = self.work(job, self.stopping), "succeeded"
            if isinstance(result, tuple):  # (final state, result): e.g. a runner whose builds were aborted
                state, result = result
            result = None if result is None else str(result)
        except Exception as exc:  # one failing job never kills a worker
            if self.stopping.is_set():
                log.info("job %d interrupted by the stop (%s): it runs again at the next start", job.id, exc)
                return
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
