"""Benchmark of the local cloud: boot to SSH-ready, create_image of a provisioned machine, destroy.

Run as root: python3 bench/local_cloud.py [--runs 5] [--packages "git build-essential default-jre-headless"]
Uses the test cache ($CISLAVES_TEST_CACHE or /var/tmp/cislaves-test-cache) for the base image and a
temporary data dir that it removes at the end. Prints each figure with its target.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cislaves import distros  # noqa: E402
from cislaves.clouds.base import CleanupPolicy, LaunchSpec, new_run_id, standard_tags  # noqa: E402
from cislaves.clouds.local import LocalCloud  # noqa: E402

TARGETS = {"up": 1.5, "create_image": 15.0, "destroy": 2.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packages", default="git build-essential default-jre-headless")
    args = parser.parse_args()
    cache = os.environ.get("CISLAVES_TEST_CACHE") or "/var/tmp/cislaves-test-cache"
    debian = distros.get("debian12")
    with tempfile.TemporaryDirectory(prefix="cislaves-bench-local-") as data_dir:
        cloud = LocalCloud({"cache_dir": cache}, Path(data_dir))
        try:
            started = time.monotonic()
            base = cloud.base_image(debian)
            print(f"base image {base.id}: ready in {time.monotonic() - started:.1f} s "
                  "(cached after the first build)")
            ups, destroys = [], []
            for _ in range(args.runs):
                started = time.monotonic()
                instance = cloud.launch(spec(cloud, debian, base, data_dir))
                ups.append(time.monotonic() - started)
                started = time.monotonic()
                cloud.destroy(instance)
                destroys.append(time.monotonic() - started)
            report("up (launch from a cached image to SSH-ready)", ups, "up")
            report("destroy", destroys, "destroy")

            instance = cloud.launch(spec(cloud, debian, base, data_dir))
            started = time.monotonic()
            ssh(instance, f"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                          f"--no-install-recommends {args.packages}", quiet=True)
            size = subprocess.run(["du", "-sh", str(cloud.instances_dir / instance.id / "upper")],
                                  capture_output=True, text=True).stdout.split()[0]
            print(f"provisioning ({args.packages}): {time.monotonic() - started:.1f} s, upper layer {size}")
            started = time.monotonic()
            image = cloud.create_image(instance, "bench", standard_tags(instance.run_id, "debian12", "image"))
            report("create_image of the provisioned machine", [time.monotonic() - started], "create_image")
            cloud.destroy(instance)
            started = time.monotonic()
            booted = cloud.launch(spec(cloud, debian, image, data_dir))
            report("up from the baked image", [time.monotonic() - started], "up")
            ssh(booted, "git --version && gcc --version | head -1 && java -version 2>&1 | head -1")
            started = time.monotonic()
            cloud.destroy(booted)
            report("destroy of a provisioned machine", [time.monotonic() - started], "destroy")
            cloud.delete_image(image)
        finally:
            cloud.cleanup(CleanupPolicy(owner=None, all_owners=True))
    return 0


def spec(cloud, distribution, image, data_dir) -> LaunchSpec:
    run_id = new_run_id()
    return LaunchSpec(distribution=distribution, image=image, run_id=run_id, name=f"bench-{run_id}",
                      tags=standard_tags(run_id, distribution.name, "bake"), key_dir=Path(data_dir) / "keys")


def ssh(instance, command: str, quiet: bool = False) -> None:
    argv = ["ssh", "-i", instance.key_file, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"root@{instance.address}", command]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed: {done.stderr.strip()[-500:]}")
    if done.stdout.strip() and not quiet:
        print("  " + done.stdout.strip().replace("\n", "\n  "))


def report(what: str, seconds: list[float], target: str) -> None:
    median = statistics.median(seconds)
    verdict = "ok" if median <= TARGETS[target] else "OVER TARGET"
    spread = f" (n={len(seconds)}, min {min(seconds):.2f}, max {max(seconds):.2f})" if len(seconds) > 1 else ""
    print(f"{what}: median {median:.2f} s{spread}; target <= {TARGETS[target]:g} s: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
