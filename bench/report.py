"""Report latency: a finished buildset to its comment accepted by Gerrit, over SSH and REST.

Buildsets of two finished builds each are written as the runner writes them (BuildStore rows, the
OpenStack log path, job-output.txt, build.json), then handed to a Reporter one at a time (`submit`, as
the runner's pool does): publish both builds locally (index.html), write the comment, send it to the
fake Gerrit of the tests (SSH: asyncssh with `gerrit review`; REST: an HTTP server with basic auth),
mark it reported. Prints p50/p90/max of submit -> accepted, and then N buildsets submitted at once.

    python3 bench/report.py [--runs 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.figures import latency_ms  # noqa: E402
from cislaves import config as cfg  # noqa: E402
from cislaves.ci.builds import BuildStore, path_for  # noqa: E402
from cislaves.ci.report import Reporter  # noqa: E402
from cislaves.ci.runner import log_dir_for  # noqa: E402
from cislaves.ci.settings import ci_settings, queue_path  # noqa: E402
from cislaves.keys import generate_keypair  # noqa: E402
from cislaves.waiting import wait_for  # noqa: E402
from tests.report.fakes import RestGerrit, ReviewGerrit  # noqa: E402


def buildset(store: BuildStore, logs: Path, job_id: int) -> None:
    job = SimpleNamespace(id=job_id, attempts=1, change=1000 + job_id, patchset=1, project="openstack/nova",
                          branch="master", ref=f"refs/changes/{job_id % 100:02d}/{1000 + job_id}/1",
                          revision="ab" * 20, trigger="check", event_type="patchset-created",
                          event={"change": {"id": "I" + f"{job_id:040d}"}, "eventCreatedOn": int(time.time())})
    for name, voting, result in (("unit", True, "SUCCESS"), ("lint", False, "FAILURE")):
        build = store.create(job, name, voting)
        folder = log_dir_for(logs, build)
        folder.mkdir(parents=True)
        (folder / "job-output.txt").write_text("2026-01-01 00:00:00.000000 | hello\n" * 200)
        (folder / "build.json").write_text(json.dumps({"job": name, "result": result}))
        store.start(build, folder)
        store.finish(build, result)


def measure(kind: str, runs: int, folder: Path, gerrit: ReviewGerrit, rest: RestGerrit) -> None:
    path = folder / kind / "cislaves.yaml"
    path.parent.mkdir(parents=True)
    data = {"data_dir": str(folder / kind / "data"),
            "gerrit": {"host": "127.0.0.1", "port": gerrit.port, "user": "acme-ci",
                       "key_file": str(folder / "id_ed25519"), "known_hosts": str(folder / "known_hosts"),
                       "http_url": rest.url, "http_user": "acme-ci", "http_password": "bench-password"},
            "ci": {"name": "acme-ci", "queue": str(folder / kind / "ci" / "queue.sqlite"), "report": kind,
                   "vote": "plus", "wiki_url": "https://wiki.example.org/Acme_CI",
                   "logs": {"dir": str(folder / kind / "logs"), "url": "https://logs.example.org"}}}
    path.write_text(yaml.safe_dump(data))
    config = cfg.load(path, environ={})
    store = BuildStore(path_for(queue_path(config, ci_settings(config))))
    total = 2 * runs
    for job_id in range(1, total + 1):
        buildset(store, folder / kind / "logs", job_id)
    reporter = Reporter(config)
    reporter.start()
    sent = lambda: len(gerrit.reviews) if kind == "ssh" else len(rest.reviews)  # noqa: E731
    before = sent()
    one = []
    try:
        for job_id in range(1, runs + 1):
            began = time.perf_counter()
            reporter.submit(job_id)
            wait_for(lambda: sent() >= before + job_id or None, f"report {job_id}", 30, first_delay=0.001,
                     max_delay=0.005)
            one.append(time.perf_counter() - began)
        began = time.perf_counter()
        for job_id in range(runs + 1, total + 1):
            reporter.submit(job_id)
        wait_for(lambda: sent() >= before + total or None, f"{runs} reports at once", 120, first_delay=0.005,
                 max_delay=0.02)
        burst = time.perf_counter() - began
    finally:
        reporter.stop()
        store.close()
    print(f"{kind:4}: one buildset at a time: {latency_ms(one)}; "
          f"{runs} submitted at once: {burst:.2f} s ({burst / runs * 1000:.0f} ms each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gerrit = ReviewGerrit(generate_keypair(folder / "id_ed25519"), folder / "repos").start()
        gerrit.write_known_hosts(folder / "known_hosts")
        rest = RestGerrit("acme-ci", "bench-password")
        try:
            for kind in ("ssh", "rest"):
                measure(kind, args.runs, folder, gerrit, rest)
        finally:
            rest.stop()
            gerrit.stop()


if __name__ == "__main__":
    main()
