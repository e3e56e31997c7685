"""`fab listen` with `ci.backend: zookeeper`: listeners on several hosts, one elected leader (kazoo's
Election recipe) follows the stream and puts builds into the ZooKeeper queue (cislaves.coord.builds).

The leader stores its stream position in <root>/listener/position: the newest event time seen, held
back to the oldest event whose job is not yet submitted, so a new leader that resumes from it (the
listener's restart catch-up, minus gerrit.catchup_margin) finds every event the old one had not
submitted; the queue's `seen` nodes make a re-seen event no second build. On a lost connection the
leader stops following (its unsubmitted jobs stay queued locally and are found again by whoever leads
next) and stands for election again once connected.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading

from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import KazooState

from cislaves.ci import jobsettings
from cislaves.ci.dispatcher import Service
from cislaves.ci.queue import JobQueue
from cislaves.coord.builds import BuildQueue
from cislaves.coord.reports import ZKReporter
from cislaves.coord.settings import connect, zookeeper_settings
from cislaves.errors import Interrupted

log = logging.getLogger(__name__)
KEEP = 0.2  # seconds between position writes while leading


class Submitter:
    """The listener's work function: a queued job becomes one ZooKeeper item per configured job."""

    def __init__(self, config, ci, queue: BuildQueue, connected: threading.Event):
        self.config, self.ci, self.queue, self.connected = config, ci, queue, connected

    def __call__(self, job, stopping: threading.Event):
        extra = job.event.get("cislaves")
        only = extra.get("jobs") if isinstance(extra, dict) else None
        wanted = jobsettings.jobs_for(self.ci.jobs, job.trigger, only)
        if not wanted:
            return "succeeded", f"no job in ci.jobs runs for trigger {job.trigger}"
        new = 0
        if job.event_type != "manual":  # a newer patch set supersedes the older ones' builds
            def supersede():
                for key in self.queue.older_patch_sets(job.change, job.patchset):
                    self.queue.cancel(key, f"superseded by patch set {job.patchset}")
            self._retry(supersede, job, stopping)
        self._retry(lambda: self.queue.declare(job.key, [spec.name for spec in wanted]), job, stopping)
        for spec in wanted:
            data = {"voting": spec.voting, "cloud": spec.cloud or self.config.defaults.cloud,
                    "job": dataclasses.asdict(job)}
            new += self._retry(lambda: self.queue.submit(job.key, spec.name, data), job, stopping)
        return "succeeded", f"submitted {new} build(s) to ZooKeeper ({len(wanted) - new} already queued)"

    def _retry(self, call, job, stopping):
        """`call()`'s return, retried while ZooKeeper is unavailable, until the listener stops leading."""
        while True:
            if stopping.is_set():
                raise Interrupted("the listener stopped leading before the job was submitted")
            try:
                return call()
            except KazooException as exc:
                log.info("job %d: ZooKeeper unavailable (%s); retrying", job.id, type(exc).__name__)
                self.connected.wait(0.5)


def listen(config, gerrit, ci, path, exclusive) -> None:
    """Stand for election until SIGINT/SIGTERM; lead (follow the stream) while elected."""
    settings = zookeeper_settings(config)
    if ci.jobs:
        jobsettings.check(config, ci)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with exclusive(path):
            zk = connect(settings)
            try:
                _stand(config, gerrit, ci, path, zk, settings, stop)
            finally:
                zk.stop()
                zk.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stand(config, gerrit, ci, path, zk, settings, stop: threading.Event) -> None:
    connected, lost = threading.Event(), threading.Event()
    connected.set()

    def on_state(state):
        if state == KazooState.CONNECTED:
            connected.set()
        else:
            connected.clear()
            lost.set()

    zk.add_listener(on_state)
    queue = BuildQueue(zk, settings.root)
    me = f"{socket.gethostname()}:{os.getpid()}"
    position = f"{settings.root}/listener/position"
    while not stop.is_set():
        if not connected.wait(0.5):
            continue
        lost.clear()
        election = zk.Election(f"{settings.root}/listener/election", me)
        canceller = threading.Thread(target=lambda: (_first(stop, lost), election.cancel()), daemon=True,
                                     name="zk-election-cancel")
        canceller.start()
        log.info("listener %s: standing for election (%s)", me, settings.hosts)
        try:
            election.run(_lead, config, gerrit, ci, path, zk, queue, position, stop, lost, connected, me)
        except KazooException as exc:
            log.info("election interrupted: %s", type(exc).__name__)


def _first(*events: threading.Event) -> None:
    while not any(e.wait(0.1) for e in events):
        pass


def _lead(config, gerrit, ci, path, zk, queue, position, stop, lost, connected, me) -> None:
    if stop.is_set() or lost.is_set():
        return
    try:
        stored = int(zk.get(position)[0] or 0)
    except NoNodeError:
        stored = None
    db = JobQueue(path)
    try:
        if stored:
            db.set_last_event_time(stored, reset=True)
    finally:
        db.close()
    log.info("listener %s: leader; resuming from %s", me, stored or "the local position")
    service = Service(gerrit, ci, path, Submitter(config, ci, queue, connected))
    reporter = ZKReporter(config, zk, queue.root)  # the leader sends the owed reports
    service.start()
    reporter.start()
    try:
        while not (stop.is_set() or lost.is_set() or service.failed.is_set()):
            stop.wait(KEEP)
            if not lost.is_set():
                _store_position(zk, path, position)
    finally:
        reporter.stop()
        service.stop()
        if not lost.is_set():
            try:
                _store_position(zk, path, position)
            except KazooException:
                pass
        log.info("listener %s: no longer leader (%s)", me,
                 "stopping" if stop.is_set() else "ZooKeeper connection lost" if lost.is_set() else "stream failed")
    if service.error is not None and not lost.is_set():
        stop.set()
        raise service.error


def _store_position(zk, path, position: str) -> None:
    """The newest event time, held back to the oldest job not yet submitted."""
    db = JobQueue(path)
    try:
        when = db.last_event_time()
        for job in db.jobs(states=("queued", "running")):
            created = job.event.get("eventCreatedOn")
            if isinstance(created, int) and when is not None:
                when = min(when, created)
    finally:
        db.close()
    if when is None:
        return
    value = str(int(when)).encode()
    try:
        zk.set(position, value)
    except NoNodeError:
        zk.create(position, value, makepath=True)
