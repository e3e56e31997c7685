"""The functions behind `fab listen`, `fab jobs` and `fab enqueue`.

User mistakes and Gerrit failures raise cislaves.errors classes (ConfigError, GerritError); the
fabfile prints them as one line.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path

from cislaves.ci import events as ev
from cislaves.ci.dispatcher import Service, Work
from cislaves.ci.queue import JobQueue
from cislaves.ci.settings import ci_settings, gerrit_settings, queue_path, uses_zookeeper
from cislaves.ci.stream import Gerrit
from cislaves.config import Config
from cislaves.errors import ConfigError, GerritError
from cislaves.util import table

log = logging.getLogger(__name__)


def listen(config: Config, work: Work | None = None) -> None:
    """Follow Gerrit's events and run jobs in the foreground until SIGINT or SIGTERM.

    `work(job, stopping)` runs one job (default: log it and mark it succeeded). On a signal the
    listener stops reading, lets running jobs finish for ci.stop_grace seconds and re-queues the rest.
    Must run in the main thread (it installs the signal handlers).
    """
    gerrit, ci = gerrit_settings(config), ci_settings(config)
    path = queue_path(config, ci)
    if work is None and uses_zookeeper(config, ci):  # elected leader, builds into ZooKeeper's queue
        from cislaves.coord import election

        return election.listen(config, gerrit, ci, path, _exclusive)
    runner = None
    if work is None and ci.jobs:  # the job runner (CI part 2); settings checked before anything starts
        from cislaves.ci import jobsettings, pool

        jobsettings.check(config, ci)
        runner = work = pool.Runner(config)
    with _exclusive(path):
        service = Service(gerrit, ci, path, work)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        metrics = None
        try:
            if runner is not None:
                runner.start()  # first: reaps what a killed listener left behind
            from cislaves.ci import metrics as metrics_mod

            metrics = metrics_mod.serve(config, service)  # ci.metrics: /metrics and /healthz
            service.start()
            log.info("listening to %s:%d as %s (%d worker(s), queue %s)", gerrit.host, gerrit.port,
                     gerrit.user, ci.workers, path)
            threading.Thread(target=lambda: (service.failed.wait(), stop.set()), daemon=True,
                             name="ci-watch").start()
            stop.wait()
        finally:
            service.stop()
            if runner is not None:
                runner.stop()
            if metrics is not None:
                metrics.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if service.error is not None:
            raise service.error
        log.info("stopped: %s", service.stats)


def jobs(config: Config, limit: int = 200) -> list[str]:
    """The queue as printable lines: id, state, change, patch set, project, trigger, age; newest first."""
    ci = ci_settings(config)
    path = queue_path(config, ci)
    if uses_zookeeper(config, ci):
        from cislaves.coord import cli as coord_cli

        return coord_cli.jobs(config, limit)
    if not path.exists():
        return [f"no jobs (no queue at {path})"]
    db = JobQueue(path)
    try:
        rows = db.jobs(limit=limit)
        counts = db.counts()
    finally:
        db.close()
    if not rows:
        return [f"no jobs (queue {path} is empty)"]
    now = time.time()
    from cislaves.ci import buildcli  # one row per build of the job (its buildset)

    built = buildcli.columns(config, [j.id for j in rows])  # {} until the runner has made builds
    extra = buildcli.HEADER if any(built.values()) else []
    lines = table([[j.id, j.state, j.change, j.patchset, printable(j.project or "-"), printable(j.trigger),
                    _age(now - j.created), *build] for j in rows
                   for build in (built.get(j.id) or [["-"] * len(extra)])],
                  ["ID", "STATE", "CHANGE", "PS", "PROJECT", "TRIGGER", "AGE", *extra])
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n) + f" (queue {printable(str(path))})")
    from cislaves.ci import report  # buildsets whose Gerrit comment is still owed

    lines += [printable(line) for line in report.unreported(config)]
    return lines


def printable(text: str) -> str:
    """`text` with every control or format character (escape sequences, bidi overrides, line breaks)
    written as a Python escape, so that text from Gerrit cannot drive the terminal; a backslash is
    doubled, so the escapes are unambiguous."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def enqueue(config: Config, change: int | str, patchset: int | str, job: str | None = None) -> str:
    """Queue a manual run of CHANGE,PATCHSET (looked up on Gerrit); return a one-line confirmation.

    Every call queues a new job. Manual jobs take no part in supersession: a newer patch set (uploaded
    or enqueued) does not cancel them, and they cancel nothing (an operator asked for this run)."""
    change, patchset = _positive("change", change), _positive("patchset", patchset)
    gerrit_cfg, ci = gerrit_settings(config), ci_settings(config)
    if job is not None and job not in [j.name for j in ci.jobs]:
        raise ConfigError(f"argument job: {job!r} is not in ci.jobs ({', '.join(j.name for j in ci.jobs) or 'none'})")
    gerrit = Gerrit(gerrit_cfg)
    try:
        records = gerrit.query(f"change:{change}", "--patch-sets")
    finally:
        gerrit.close()
    record = next((r for r in records if str(r.get("number")) == str(change)), None)
    if record is None:
        raise GerritError(f"{gerrit.where}: change {change} not found")
    patch_set = next((p for p in record.get("patchSets") or [] if isinstance(p, dict)
                      and str(p.get("number")) == str(patchset)), None)
    if patch_set is None:
        raise GerritError(f"{gerrit.where}: change {change} has no patch set {patchset}")
    raw = {"type": ev.MANUAL, "eventCreatedOn": int(time.time()),
           "change": {k: v for k, v in record.items() if k != "patchSets"},
           "patchSet": {k: v for k, v in patch_set.items() if k not in ("approvals", "comments", "files")},
           "submitter": {"name": "fab enqueue"}}
    if job is not None:
        raw["cislaves"] = {"jobs": [job]}  # the runner runs this job only
    try:
        event = ev.from_dict(raw)
        db = JobQueue(queue_path(config, ci))
        try:
            job_id = db.enqueue(event, "manual", manual=True)
        finally:
            db.close()
    except ev.BadEvent as exc:
        raise GerritError(f"{gerrit.where}: change {change} patch set {patchset}: {exc}") from None
    return f"job {job_id} queued: change {change} patch set {patchset} ({printable(event.change.project or '-')})"


def _positive(name: str, value: int | str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"argument {name}: expected a positive whole number, got {value!r}")
    return number


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


class _exclusive:
    """Hold an exclusive lock next to the queue: one listener per queue."""

    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")

    def __enter__(self) -> "_exclusive":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"job queue {self.path.parent}: cannot create: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError(f"another listener is already using {self.path.with_suffix('')}; "
                              f"stop it first") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
