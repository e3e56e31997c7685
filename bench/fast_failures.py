"""Benchmark: how fast a failure is a line. Prints wall times of the real `fab`, started here.

1. An endpoint that refuses connections (a bound, never listening port on 127.0.0.1), per cloud:
   `fab it:cloud=ec2`, `fab up:cloud=openstack`, `fab up:cloud=gce`      (target: under 10 s each;
   before issue 14: EC2 128 s, OpenStack 115 s, GCE 50 s).
2. (root, with the local cloud's cached debian12 image; --interrupt) a remote step of 97 s in `fab
   bootstrap`: the time from one SIGINT to fab's exit, the remote process tree killed
   (target: under 2 s; before: 88 s, the step's remaining time).

Run from the repository root:  python3 bench/fast_failures.py [--runs 3] [--interrupt]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FAB = str(REPO / ".venv" / "bin" / "fab")
sys.path.insert(0, str(REPO))

from tests.refused import aws_env, refused_clouds  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interrupt", action="store_true", help="also time one SIGINT during a remote step (root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = refused_config(folder)
        for task in ("it:cloud=ec2,distribution=centos7", "up:cloud=openstack", "up:cloud=gce"):
            times = []
            for _ in range(args.runs):
                started = time.monotonic()
                result = subprocess.run([FAB, task], cwd=REPO, env=env, capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL, timeout=300)
                times.append(time.monotonic() - started)
            error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            print(f"refused endpoint, fab {task}: median {statistics.median(times):.2f}s "
                  f"(min {min(times):.2f}, max {max(times):.2f}, {args.runs} runs), exit {result.returncode}")
            print(f"    {error[-1] if error else result.stderr.strip()[-300:]}")
        if args.interrupt:
            interrupt(folder, args.runs)
    return 0


def refused_config(folder: Path) -> dict[str, str]:
    (folder / "cislaves.yaml").write_text(yaml.safe_dump({"data_dir": str(folder / "data"),
                                                          "clouds": refused_clouds(folder)}))
    return {**os.environ, "CISLAVES_CONFIG": str(folder / "cislaves.yaml"), "CISLAVES_DATA_DIR": "",
            "CISLAVES_MANIFEST": "", **aws_env(folder)}


def interrupt(folder: Path, runs: int) -> None:
    cache = os.environ.get("CISLAVES_TEST_CACHE") or "/var/tmp/cislaves-test-cache"
    (folder / "slow.sh").write_text("#!/bin/sh\necho 'slow step: started'\nsleep 97\n")
    config = {"data_dir": str(folder / "local-data"), "clouds": {"local": {"cache_dir": cache}},
              "provision": {"package_set": "minimal", "extra_scripts": {"debian12": ["slow.sh"]}}}
    (folder / "local.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "CISLAVES_CONFIG": str(folder / "local.yaml"), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    up = subprocess.run([FAB, "up:cloud=local,distribution=debian12"], cwd=REPO, env=env, capture_output=True,
                        text=True, stdin=subprocess.DEVNULL, timeout=600)
    if up.returncode:
        print(f"interrupt: fab up failed: {up.stderr.strip()[-300:]}")
        return
    try:
        times = []
        for _ in range(runs):
            proc = subprocess.Popen([FAB, "bootstrap:cloud=local"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            for line in proc.stdout:
                if "slow step: started" in line:
                    break
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            times.append(time.monotonic() - started)
            left = subprocess.run([FAB, "ssh:cloud=local", "--", "pgrep", "-f", "^sleep 97$"], cwd=REPO, env=env,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
            print(f"    SIGINT -> exit {proc.returncode} in {times[-1]:.2f}s; remote sleep left: "
                  f"{'yes' if left.returncode == 0 else 'no'}")
        print(f"one SIGINT during a 97 s remote step: median {statistics.median(times):.2f}s to exit "
              f"(min {min(times):.2f}, max {max(times):.2f}, {runs} runs)")
    finally:
        subprocess.run([FAB, "destroy:cloud=local"], cwd=REPO, env=env, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=300)


if __name__ == "__main__":
    sys.exit(main())
