"""Benchmark: `fab it` on the local cloud with a cached base image; prints the tool's own overhead.

overhead = wall time of `fab it` - provisioning (the bootstrap step) - snapshot (the create_image step)
Target: at most 3 s. The bootstrap step includes its SSH connect and upload, so the overhead printed
is a slight under-estimate of what the tool adds around provisioning; each step's time is printed too.

Run as root after ./setup.sh:  .venv/bin/python bench/bake_local.py [--runs 3] [--package-set minimal]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STEP = re.compile(r"\[local/debian12\] (\w+): done in ([0-9.]+)s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--package-set", default="minimal", choices=["minimal", "full"])
    parser.add_argument("--cache-dir", default=os.environ.get("CISLAVES_TEST_CACHE", "/var/tmp/cislaves-test-cache"))
    args = parser.parse_args()
    overheads, walls = [], []
    with tempfile.TemporaryDirectory(prefix="cislaves-bench-") as tmp:
        config = Path(tmp) / "cislaves.yaml"
        config.write_text(yaml.safe_dump({"data_dir": f"{tmp}/data",
                                          "clouds": {"local": {"cache_dir": args.cache_dir}},
                                          "provision": {"package_set": args.package_set}}))
        env = {**os.environ, "CISLAVES_CONFIG": str(config), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        # warm the base-image cache first, so the runs measure a cached bake
        subprocess.run(["fab", "up:cloud=local", "destroy"], cwd=REPO, env=env, capture_output=True, check=True)
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            result = subprocess.run(["fab", "it:cloud=local,distribution=debian12"], cwd=REPO, env=env,
                                    capture_output=True, text=True)
            wall = time.monotonic() - started
            if result.returncode != 0:
                print(result.stderr[-3000:], file=sys.stderr)
                return 1
            steps = {name: float(sec) for name, sec in STEP.findall(result.stderr)}
            overhead = wall - steps["bootstrap"] - steps["create_image"]
            overheads.append(overhead)
            walls.append(wall)
            print(f"run {run}: wall {wall:.2f}s  " + "  ".join(f"{k} {v:.2f}s" for k, v in steps.items())
                  + f"  overhead {overhead:.2f}s")
    print(f"it (local, debian12, {args.package_set}): wall median {statistics.median(walls):.2f}s; "
          f"tool overhead median {statistics.median(overheads):.2f}s (target <= 3.00s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
