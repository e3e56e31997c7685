"""Benchmark: the CI runner on the local cloud with a trivial job; prints figures, asserts nothing.

  1. event -> script start with a ready instance waiting (ci.ready: 1)      target p50 <= 1 s
  2. event -> script start without one, next to the boot time               target <= boot + 2 s
  3. everything but the script: boot + workspace + collect + destroy        target <= 5 s
  4. 8 builds at once with max_instances {local: 8} (8 workers)
  5. a newer patch set -> the older one's running build aborted and its instance gone   target <= 5 s
     (tests/runner/test_control.py proves the abort with a generous deadline; the figure is here)

"event" is the moment the fake Gerrit publishes patchset-created; "script start" is the time the
script itself prints (the machines share the host's clock). The job's repository is fetched over the
fake Gerrit's SSH (git-upload-pack), as in production. One debian12 image is baked first (minimal set).

Run as root after ./setup.sh:  .venv/bin/python bench/ci_runner.py [--runs 10]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cislaves import bake, clouds, config as cfg  # noqa: E402
from cislaves.ci import buildcli, jobsettings  # noqa: E402
from cislaves.ci.builds import BuildStore, path_for  # noqa: E402
from cislaves.ci.dispatcher import Service  # noqa: E402
from cislaves.ci.pool import Runner  # noqa: E402
from cislaves.ci.runner import log_dir_for  # noqa: E402
from cislaves.ci.settings import ci_settings, gerrit_settings, queue_path  # noqa: E402
from cislaves.keys import generate_keypair  # noqa: E402
from cislaves.waiting import wait_for  # noqa: E402
from tests.runner.gitgerrit import GitGerrit  # noqa: E402

SCRIPT = "#!/bin/sh\necho \"script-start $(date +%s.%N)\"\n"
SLEEPER = "#!/bin/sh\necho running\nsleep 600\n"


class Bench:
    def __init__(self, tmp: Path, cache_dir: str):
        self.tmp, self.cache_dir = tmp, cache_dir
        self.key = tmp / "id_ed25519"
        self.gerrit = GitGerrit(generate_keypair(self.key), tmp / "repos").start()
        self.gerrit.repository("openstack/nova", {"README": "bench\n"})
        self.change = 1000
        (tmp / "trivial.sh").write_text(SCRIPT)
        (tmp / "sleeper.sh").write_text(SLEEPER)

    def config(self, name: str, **ci):
        base = {"data_dir": str(self.tmp / "data"), "provision": {"package_set": "minimal"},
                "clouds": {"local": {"cache_dir": self.cache_dir}}}
        if not name:
            path = self.tmp / "bake.yaml"
        else:
            path = self.tmp / f"{name}.yaml"
            base["gerrit"] = {"host": "127.0.0.1", "port": self.gerrit.port, "user": "acme-ci",
                              "key_file": str(self.key), "known_hosts": str(self.gerrit.write_known_hosts(
                                  self.tmp / "known_hosts"))}
            base["ci"] = {"name": "acme-ci", "queue": str(self.tmp / name / "queue.sqlite"),
                          "logs": {"dir": str(self.tmp / name / "logs")}, "triggers": [{"name": "check"}],
                          "jobs": [{"name": "trivial", "run": "trivial.sh", "cloud": "local",
                                    "distribution": "debian12"}], **ci}
        path.write_text(yaml.safe_dump(base))
        return cfg.load(path, environ={})

    def bake(self) -> None:
        config = self.config("")
        session = bake.Session(config, "local", "debian12", out=lambda line: None)
        started = time.monotonic()
        try:
            bake.it(session)
        finally:
            session.close()
        print(f"baked the debian12 image in {time.monotonic() - started:.1f} s")

    def listen(self, config):
        ci = ci_settings(config)
        jobsettings.check(config, ci)
        runner = Runner(config)
        service = Service(gerrit_settings(config), ci, queue_path(config, ci), runner)
        before = self.gerrit.stream_connections
        runner.start()
        service.start()
        wait_for(lambda: self.gerrit.stream_connections > before, "the listener to stream events", 30)
        return service, runner

    def publish(self) -> tuple[int, float]:
        """A new change with one real commit; publish its patchset-created now (returns when)."""
        self.change += 1
        event = self.gerrit.upload_commit(self.change, {"a.py": f"x = {self.change}\n"}, publish=False)
        sent = time.time()
        self.gerrit.publish(event)
        return self.change, sent

    def stop(self) -> None:
        self.gerrit.stop()


def finished(config, change: int):
    store = BuildStore(path_for(queue_path(config, ci_settings(config))))
    try:
        return next((b for b in store.recent() if b.change == change and b.state == "finished"), None)
    finally:
        store.close()


def script_start(config, build) -> float:
    text = (log_dir_for(jobsettings.logs_dir(config, ci_settings(config)), build) / "job-output.txt").read_text()
    return float(next(line for line in text.splitlines() if "| script-start " in line).split()[-1])


def durations(config, build) -> dict:
    folder = log_dir_for(jobsettings.logs_dir(config, ci_settings(config)), build)
    return json.loads((folder / "build.json").read_text())["durations"]


def ready_waiting(config) -> bool:
    store = BuildStore(path_for(queue_path(config, ci_settings(config))))
    try:
        return any(s.purpose == "ready" and s.state == "ready" for s in store.slots())
    finally:
        store.close()


def sequential(bench: Bench, config, runs: int, ready: bool):
    latencies, builds = [], []
    service, runner = bench.listen(config)
    try:
        for _ in range(runs):
            if ready:
                wait_for(lambda: ready_waiting(config), "a ready instance", 60)
            change, sent = bench.publish()
            build = wait_for(lambda: finished(config, change), f"the build of change {change}", 120,
                             first_delay=0.02, max_delay=0.1)
            if build.result != "SUCCESS":
                raise SystemExit(f"build {build.id}: {build.result} ({build.detail})")
            latencies.append(script_start(config, build) - sent)
            builds.append(build)
    finally:
        service.stop(grace=30)
        runner.stop()
    return latencies, builds


def figures(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return f"p50 {statistics.median(values):.2f} s, p90 {p90:.2f} s, max {values[-1]:.2f} s (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--only-parallel", action="store_true", help="only the 8-at-once figures")
    parser.add_argument("--only-supersede", action="store_true", help="only the newer-patch-set abort figure")
    parser.add_argument("--cache-dir", default=os.environ.get("CISLAVES_TEST_CACHE", "/var/tmp/cislaves-test-cache"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="cislaves-bench-runner-") as tmp:
        bench = Bench(Path(tmp), args.cache_dir)
        try:
            bench.bake()
            if not (args.only_parallel or args.only_supersede):
                sequential_figures(bench, args.runs)
            if not args.only_supersede:
                parallel_figures(bench)
            if not args.only_parallel:
                supersede_figures(bench, args.runs)
        finally:
            bench.stop()
    print("(figures from a machine shared with other work: compare runs, not absolutes)")
    return 0


def sequential_figures(bench: Bench, runs: int) -> None:
    lat, _ = sequential(bench, bench.config("ready", workers=1, ready={"trivial": 1}), runs, True)
    print(f"1. event -> script start, ready instance waiting: {figures(lat)}   target p50 <= 1 s")
    cold = bench.config("cold", workers=1)
    lat, builds = sequential(bench, cold, runs, False)
    boots = [durations(cold, b)["boot"] for b in builds]
    print(f"2. event -> script start, no ready instance:      {figures(lat)}")
    print(f"   boot (launch + SSH) in the same builds:        {figures(boots)}")
    print(f"   minus boot:                                    {figures([a - b for a, b in zip(lat, boots)])}"
          f"   target <= 2 s")
    rest = [sum(v for k, v in durations(cold, b).items() if k != "script") for b in builds]
    print(f"3. boot + workspace + collect + destroy:          {figures(rest)}   target <= 5 s")
    parts = {k: statistics.median(durations(cold, b).get(k, 0) for b in builds)
             for k in ("boot", "workspace", "collect", "destroy")}
    print("   p50 by step: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


def parallel_figures(bench: Bench) -> None:
    config = bench.config("eight", workers=8, max_instances={"local": 8})
    service, runner = bench.listen(config)
    try:
        sent = [bench.publish() for _ in range(8)]
        done = [wait_for(lambda c=c: finished(config, c), f"the build of change {c}", 300,
                         first_delay=0.05, max_delay=0.2) for c, _ in sent]
        end = time.time()
    finally:
        service.stop(grace=30)
        runner.stop()
    starts = [script_start(config, b) - t for b, (_, t) in zip(done, sent)]
    results = sorted({b.result for b in done})
    rest = [sum(v for k, v in durations(config, b).items() if k != "script") for b in done]
    print(f"4. 8 builds at once (max_instances local: 8): all done {end - sent[0][1]:.2f} s after the first "
          f"event, results {results}")
    print(f"   event -> script start: {figures(starts)}")
    print(f"   boot + workspace + collect + destroy: {figures(rest)}")


def job_instances(config) -> list[str]:
    cloud = clouds.get("local", config)
    try:
        return [i.id for i in cloud.list_instances() if i.tags.get("cislaves:role") == "job"]
    finally:
        cloud.close()


def running_build(config, change: int, patchset: int):
    """The build of change,patchset once its script printed `running` (else None)."""
    store = BuildStore(path_for(queue_path(config, ci_settings(config))))
    try:
        builds = [b for b in store.recent() if (b.change, b.patchset, b.state) == (change, patchset, "running")]
    finally:
        store.close()
    for build in builds:
        output = log_dir_for(jobsettings.logs_dir(config, ci_settings(config)), build) / "job-output.txt"
        if output.exists() and "| running\n" in output.read_text():
            return build
    return None


def supersede_figures(bench: Bench, runs: int) -> None:
    """Figure 5: patch set 2 published while patch set 1's script runs -> that build ABORTED and its
    instance destroyed (the moment both are seen; polled every 20 ms)."""
    config = bench.config("supersede", workers=2, jobs=[{"name": "sleeper", "run": "sleeper.sh", "cloud": "local",
                                                         "distribution": "debian12"}])
    service, runner = bench.listen(config)
    latencies = []
    try:
        for _ in range(runs):
            bench.change += 1
            change = bench.change
            bench.gerrit.upload_commit(change, {"a.py": "x = 1\n"})
            first = wait_for(lambda: running_build(config, change, 1), f"change {change} patch set 1 running", 120,
                             first_delay=0.02, max_delay=0.1)
            [machine] = job_instances(config)
            event = bench.gerrit.upload_commit(change, {"a.py": "x = 2\n"}, publish=False)
            sent = time.monotonic()
            bench.gerrit.publish(event)

            def aborted():
                store = BuildStore(path_for(queue_path(config, ci_settings(config))))
                try:
                    build = next(b for b in store.recent() if b.id == first.id)
                finally:
                    store.close()
                return build if build.state == "finished" and machine not in job_instances(config) else None
            build = wait_for(aborted, f"change {change} patch set 1 aborted, its instance gone", 120,
                             first_delay=0.02, max_delay=0.02)
            latencies.append(time.monotonic() - sent)
            if build.result != "ABORTED":
                raise SystemExit(f"build {build.id}: {build.result} ({build.detail}), expected ABORTED")
            second = wait_for(lambda: running_build(config, change, 2), f"change {change} patch set 2 running",
                              120, first_delay=0.02, max_delay=0.1)
            buildcli.cancel(config, second.job_id)
            wait_for(lambda: not job_instances(config), "the cancelled build's instance to go", 120)
    finally:
        service.stop(grace=30)
        runner.stop()
    print(f"5. newer patch set -> old build aborted, instance gone: {figures(latencies)}   target <= 5 s")


if __name__ == "__main__":
    sys.exit(main())
