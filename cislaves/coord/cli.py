"""The bodies of `fab worker` and, with ci.backend: zookeeper, `fab jobs`."""
from __future__ import annotations

import signal
import threading
import time

from cislaves.errors import ConfigError
from cislaves.util import table


def worker(config, concurrency: int | str = 1, clouds: str | None = None) -> None:
    """Run builds from ZooKeeper until SIGINT/SIGTERM (main thread: installs the signal handlers)."""
    from cislaves.coord.worker import Worker

    try:
        n = int(concurrency)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"argument 'concurrency': expected a whole number >= 1, got {concurrency!r}")
    names = [c.strip() for c in (clouds or "").replace("+", ",").split(",") if c.strip()] or None
    w = Worker(config, n, names)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        w.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def jobs(config, limit: int = 200) -> list[str]:
    """Every host's view: queued and running builds, then results, newest last (ZooKeeper)."""
    from cislaves.ci.cli import printable
    from cislaves.coord.builds import BuildQueue
    from cislaves.coord.settings import connect, zookeeper_settings

    settings = zookeeper_settings(config)
    zk = connect(settings)
    try:
        pending, done = BuildQueue(zk, settings.root).listing()
    finally:
        zk.stop()
        zk.close()
    now = time.time()
    rows = []
    for d in (done + pending)[-int(limit):]:
        job = d.get("job") or {}
        run = d.get("running") or {}
        state = "finished" if "result" in d else "running" if run else "queued"
        where = d.get("host") or run.get("host") or "-"
        rows.append([job.get("id", "-"), job.get("change", "-"), job.get("patchset", "-"),
                     printable(job.get("project") or "-"),
                     printable(d.get("name") or "-"), state, d.get("result") or "-",
                     d.get("build_id") or run.get("build_id") or "-", printable(f"{where}"),
                     f"{now - d.get('enqueued', now):.0f}s" if "enqueued" in d else "-"])
    if not rows:
        return [f"no builds (ZooKeeper {settings.hosts}{settings.root})"]
    lines = table(rows, ["ID", "CHANGE", "PS", "PROJECT", "JOB", "STATE", "RESULT", "BUILD", "HOST", "AGE"])
    lines.append(f"{len(pending)} queued or running, {len(done)} finished (ZooKeeper {settings.hosts}{settings.root})")
    return lines


def cancel(config, job_id: int) -> str:
    """`fab cancel:job=N` with ci.backend: zookeeper: N is the listener's job id (the ID column of
    `fab jobs`); its buildset's queued builds end ABORTED, its running ones are aborted by their
    workers. One line saying which."""
    from cislaves.coord.builds import BuildQueue
    from cislaves.coord.settings import connect, zookeeper_settings
    from cislaves.errors import ConfigError

    settings = zookeeper_settings(config)
    zk = connect(settings)
    try:
        queue = BuildQueue(zk, settings.root)
        keys = queue.find_job(job_id)
        if not keys:
            raise ConfigError(f"job {job_id}: no queued or running build of it in ZooKeeper "
                              f"{settings.hosts}{settings.root} (`fab jobs` lists them)")
        ended = running = 0
        for key in sorted(keys):
            done, asked = queue.cancel(key, "cancelled by fab cancel")
            ended, running = ended + done, running + asked
    finally:
        zk.stop()
        zk.close()
    return f"job {job_id}: {ended} queued build(s) cancelled, {running} running build(s) asked to stop"
