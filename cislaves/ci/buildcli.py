"""The build side of `fab jobs`, and `fab cancel:job=N` and `fab logs:job=N`.

N is the queued job's id as `fab jobs` shows it (one queued job is one buildset: a build per
configured job its trigger runs). Cancelling works from any process: a queued job is marked cancelled
in the queue; a running one's builds are asked to stop through the builds database, which the runner
watches (the script is killed and the instance destroyed within seconds).
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

from cislaves.ci import builds as store_mod
from cislaves.ci.builds import BuildStore
from cislaves.ci.queue import JobQueue
from cislaves.ci.settings import ci_settings, queue_path, uses_zookeeper
from cislaves.errors import ConfigError

HEADER = ["JOB", "RESULT", "DURATION", "LOGS"]


def columns(config, job_ids: list[int]) -> dict[int, list[list[str]]]:
    """For each queued job, one [job, result, duration, log dir] per configured job (its newest build)."""
    path = store_mod.path_for(queue_path(config, ci_settings(config)))
    if not path.exists():
        return {}
    store = BuildStore(path)
    try:
        out: dict[int, list[list[str]]] = {}
        for job_id in job_ids:
            latest = sorted(store.latest(job_id).values(), key=lambda b: b.name)
            out[job_id] = [[b.name, b.result or b.state, duration(b.duration), b.log_dir or "-"] for b in latest]
        return out
    finally:
        store.close()


def cancel(config, job: int | str) -> str:
    """Abort queued job N: cancel it if it waits, stop its builds if they run; one line saying which."""
    job_id = _job_id(job)
    ci = ci_settings(config)
    if uses_zookeeper(config, ci):  # the builds run on workers: cancel them through ZooKeeper
        from cislaves.coord import cli as coord_cli

        return coord_cli.cancel(config, job_id)
    path = queue_path(config, ci)
    if not path.exists():
        raise ConfigError(f"job {job_id}: no queue at {path}")
    db = JobQueue(path)
    try:
        row = db.get(job_id)
        if row is None:
            raise ConfigError(f"job {job_id}: no such job in {path} (`fab jobs` lists them)")
        waiting = db.cancel(job_id, "cancelled by fab cancel")
    finally:
        db.close()
    store = BuildStore(store_mod.path_for(path))
    try:
        stopping = store.request_cancel(job_id, "cancelled by fab cancel")
    finally:
        store.close()
    if waiting:
        return f"job {job_id} cancelled (it was queued)"
    if stopping:
        return f"job {job_id}: {stopping} running build(s) asked to stop"
    return f"job {job_id} is {row.state}: nothing to cancel"


def logs(config, job: int | str, lines: int = 20) -> list[str]:
    """Where each build of job N keeps its output, and the output's last lines."""
    job_id = _job_id(job)
    path = store_mod.path_for(queue_path(config, ci_settings(config)))
    store = BuildStore(path) if path.exists() else None
    try:
        found = store.for_job(job_id) if store else []
    finally:
        if store:
            store.close()
    if not found:
        raise ConfigError(f"job {job_id}: no builds yet (`fab jobs` lists jobs and their builds)")
    out: list[str] = []
    for build in sorted(found, key=lambda b: b.created):
        output = Path(build.log_dir or "-") / "job-output.txt"
        out.append(f"== {build.name} build {build.id}: {build.result or build.state} "
                   f"({duration(build.duration)}) {output}")
        try:
            with open(output, errors="replace") as fh:
                tail = deque(fh, maxlen=lines)
        except OSError:
            tail = deque(["(no output yet)"])
        out += [printable(line.rstrip("\n")) for line in tail]
    return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def printable(text: str) -> str:
    from cislaves.ci.cli import printable as escape

    return escape(text)


def _job_id(value: int | str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"argument job: expected a job id (a positive whole number, see `fab jobs`), "
                          f"got {value!r}")
    return number
