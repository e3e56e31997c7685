"""Benchmark: `fab rebake` wall time in parallel against one bake; prints the figures.

1. EC2 on moto (127.0.0.1, started here): one target, then eight targets (eight regions) at
   `parallel: 8`; each target's SSH steps reach a fresh local-cloud machine of its own through
   ssh_host (provisioning with the minimal package set), and each image is validated (a second
   instance, the checks again). Target: the eight at most 1.5x the one.
2. The local cloud: one target, then four targets in parallel.
Every run uses fresh machines (a machine provisioned before would make the next bake faster). The
figures depend on the machine and on the Debian mirror: say how loaded it was when quoting them.

Run as root from the repository root:  .venv/bin/python bench/rebake.py [--skip-ec2] [--skip-local]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REGIONS = ["us-west-2", "eu-west-1", "us-east-1", "us-east-2", "eu-central-1", "ap-southeast-2",
           "ap-northeast-1", "sa-east-1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("CISLAVES_TEST_CACHE", "/var/tmp/cislaves-test-cache"))
    parser.add_argument("--skip-ec2", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("rebake benchmark: needs root (local-cloud machines)")
        return 0
    from cislaves import clouds, config as config_mod, distros
    from cislaves.clouds.base import CleanupPolicy
    from cislaves.keys import generate_keypair
    from tests.ec2.moto_env import moto_server

    with tempfile.TemporaryDirectory(prefix="cislaves-bench-rebake-") as tmp:
        tmp = Path(tmp)
        host_config = tmp / "host.yaml"
        host_config.write_text(yaml.safe_dump({"data_dir": str(tmp / "host-data"),
                                               "clouds": {"local": {"cache_dir": args.cache_dir}}}))
        local = clouds.get("local", config_mod.load(host_config, environ={}))
        debian12 = distros.get("debian12")
        ci_key = generate_keypair(tmp / "ci-key", comment="jenkins@bench")
        try:
            if not args.skip_ec2:
                (tmp / "moto").mkdir()
                with moto_server(tmp / "moto") as url:
                    one = rebake_ec2(tmp / "ec2-1", url, local, debian12, ci_key, 1)
                    eight = rebake_ec2(tmp / "ec2-8", url, local, debian12, ci_key, 8)
                    print(f"ec2 (moto, SSH to fresh local machines): 1 target {one:.1f}s; 8 targets at parallel 8 "
                          f"{eight:.1f}s = {eight / one:.2f}x one (target: at most 1.5x)")
                    # the same on machines provisioned once already: the SSH work is light (apt finds
                    # everything installed), so this shows what the tool itself adds when bakes overlap
                    one = rebake_ec2(tmp / "ec2-1b", url, local, debian12, ci_key, 1, reprovision=True)
                    eight = rebake_ec2(tmp / "ec2-8b", url, local, debian12, ci_key, 8, reprovision=True)
                    print(f"ec2 (moto, SSH to provisioned local machines): 1 target {one:.1f}s; 8 targets at "
                          f"parallel 8 {eight:.1f}s = {eight / one:.2f}x one")
            if not args.skip_local:
                one = rebake_local(tmp / "local-1", ci_key, args.cache_dir, 1)
                four = rebake_local(tmp / "local-4", ci_key, args.cache_dir, 4)
                print(f"local: 1 target {one:.1f}s; 4 targets in parallel {four:.1f}s = {four / one:.2f}x one")
        finally:
            local.cleanup(CleanupPolicy(owner=None, all_owners=True))
    return 0


def rebake_ec2(folder: Path, url, local, debian12, ci_key, count: int, reprovision: bool = False) -> float:
    """Wall time of a rebake of `count` EC2 targets (reprovision: a warm-up rebake first, untimed)."""
    from cislaves.records import LaunchSpec, new_run_id, standard_tags

    machines = []
    try:
        for _ in range(count):
            run_id = new_run_id()
            spec = LaunchSpec(distribution=debian12, image=local.base_image(debian12), run_id=run_id,
                              name=f"bench-{run_id}", tags=standard_tags(run_id, "debian12", "instance"),
                              key_dir=folder / "machine-keys")
            machines.append(local.launch(spec))
        targets = [{"cloud": "ec2", "distribution": "debian12", "region": region,
                    "config": {"clouds": {"ec2": {"ssh_host": m.address, "ssh_port": m.port, "ssh_user": "root",
                                                  "ssh_private_key_file": str(m.key_file)}}}}
                   for region, m in zip(REGIONS, machines)]
        clouds_section = {"ec2": {"endpoint_url": url, "poll_max_delay": 0.2}}
        if reprovision:
            run(folder / "warm-up", targets, clouds_section, ci_key, parallel=count, quiet=True)
        return run(folder, targets, clouds_section, ci_key, parallel=count)
    finally:
        for machine in machines:
            local.destroy(machine)


def rebake_local(folder: Path, ci_key, cache_dir, count: int) -> float:
    targets = [{"cloud": "local", "distribution": "debian12", "region": f"lab-{i}"} for i in range(count)]
    return run(folder, targets, {"local": {"cache_dir": cache_dir}}, ci_key, parallel=count)


def run(folder: Path, targets, clouds_section, ci_key, parallel: int, quiet: bool = False) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"data_dir": str(folder / "data"), "provision": {"package_set": "minimal"},
              "ci_user": {"authorized_key": ci_key}, "clouds": clouds_section,
              "rebake": {"targets": targets, "parallel": parallel, "per_cloud": {"ec2": 8, "local": 8},
                         "validate": True}}
    path = folder / "cislaves.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "CISLAVES_CONFIG": str(path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    started, cpu = time.monotonic(), _children_cpu()
    done = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "rebake"], cwd=REPO, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=1800)
    wall, cpu = time.monotonic() - started, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"rebake failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if quiet:
        return wall
    durations = [float(x) for x in re.findall(r"^\S+ +ok +\S+ +([0-9.]+)s ", done.stdout, re.M)]
    steps: dict[str, list[float]] = {}
    for step, seconds in re.findall(r"\] (up|bootstrap|tests|packages|create_image|destroy): done in ([0-9.]+)s",
                                    done.stderr):
        steps.setdefault(step, []).append(float(seconds))
    mean = ", ".join(f"{k} {sum(v) / len(v):.1f}s" for k, v in steps.items())
    print(f"  {len(targets)} target(s), parallel {parallel}: wall {wall:.1f}s (fab's own CPU {cpu:.1f}s), per target "
          f"{', '.join(f'{d:.1f}s' for d in durations)}; mean step times (bake and validation): {mean}", flush=True)
    return wall


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
