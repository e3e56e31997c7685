"""Benchmark: `fab it:cloud=ec2` against moto; prints the tool's overhead and the EC2 API calls per bake.

Two measurements, both against moto's EC2 server (127.0.0.1, started here) behind the tests' counting
proxy:
1. driver only, in process: base_image, launch, create_image, copy_image (one region), destroy, with
   no SSH; prints the time of each call and the EC2 API calls (and HTTP requests) of one bake; then one
   cleanup on an account another host shares (its kept instances stay; two dead runs go).
2. (root, with the local cloud's cached debian12 image) the real `fab it:cloud=ec2,distribution=debian12`
   whose SSH steps reach a local-cloud machine through the ssh_host override, provisioning with the
   minimal package set plus a trivial extra script:
       overhead = wall time of `fab it` - bootstrap step - tests step   (target: at most 2 s)
   The bootstrap step includes its SSH connect and upload, so this slightly under-states what the
   tool adds around SSH and provisioning; fab's own start-up is included.

Run from the repository root:  python3 bench/ec2_bake.py [--runs 3]
"""
from __future__ import annotations

import argparse
import collections
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
sys.path.insert(0, str(REPO))
STEP = re.compile(r"\[ec2/debian12\] (\w+): done in ([0-9.]+)s")
COPY_REGION = "eu-west-1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", default=os.environ.get("CISLAVES_TEST_CACHE", "/var/tmp/cislaves-test-cache"))
    args = parser.parse_args()
    from tests.ec2.moto_env import moto_server
    from tests.ec2.proxy import EC2Proxy

    with tempfile.TemporaryDirectory(prefix="cislaves-bench-ec2-") as tmp, moto_server(Path(tmp)) as url:
        proxy = EC2Proxy(url).start()
        try:
            driver_only(proxy, Path(tmp))
            cleanup_on_a_shared_account(proxy, Path(tmp))
            if os.geteuid() != 0:
                print("fab it: skipped (needs root for the local-cloud machine the SSH steps reach)")
                return 0
            return fab_it(proxy, url, Path(tmp), args)
        finally:
            proxy.stop()


def driver_only(proxy, tmp: Path) -> None:
    from cislaves import distros
    from cislaves.clouds.base import LaunchSpec, new_run_id, standard_tags
    from cislaves.clouds.ec2 import EC2Cloud

    cloud = EC2Cloud({"endpoint_url": proxy.url, "poll_max_delay": 0.2, "copy_regions": [COPY_REGION]}, tmp)
    debian12 = distros.get("debian12")
    cloud.base_image(debian12)  # moto loads its models on the first call: keep that out of the figures
    cloud.clients.calls.clear()
    cloud.clients.requests = 0
    before = len(proxy.actions)
    times = {}

    def timed(name, fn, *a):
        started = time.monotonic()
        result = fn(*a)
        times[name] = time.monotonic() - started
        return result

    run_id = new_run_id()
    name = f"cislaves-debian12-{run_id}"
    base = timed("base_image", cloud.base_image, debian12)
    spec = LaunchSpec(distribution=debian12, image=base, run_id=run_id, name=name,
                      tags=standard_tags(run_id, "debian12", "bake", name=name), key_dir=tmp / "keys", role="bake")
    instance = timed("launch", cloud.launch, spec)
    image = timed("create_image", cloud.create_image, instance, name, standard_tags(run_id, "debian12", "image"))
    copies = timed("copy_image", cloud.copy_image, image, cloud.copy_regions())
    timed("destroy", cloud.destroy, instance)
    actions = collections.Counter(proxy.actions[before:])
    print(f"driver only (moto, 1 copy region): {sum(times.values()):.2f}s  "
          + "  ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    print(f"EC2 API calls per bake (driver only): {sum(cloud.clients.calls.values())} "
          f"({cloud.clients.requests} HTTP requests): "
          + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
    for made in [image, *copies]:
        cloud.delete_image(made)
    cloud.close()


def cleanup_on_a_shared_account(proxy, tmp: Path, others: int = 3) -> None:
    """One cleanup on an account where another host keeps `others` instances and one run of this host
    crashed and one expired run of the other host lies around: time, calls, what it removed."""
    from cislaves import distros
    from cislaves.clouds.base import CleanupPolicy, LaunchSpec, new_run_id, standard_tags
    from cislaves.clouds.ec2 import EC2Cloud

    cloud = EC2Cloud({"endpoint_url": proxy.url, "poll_max_delay": 0.2}, tmp)
    centos7 = distros.get("centos7")
    base = cloud.base_image(centos7)

    def launch(owner: str, ttl_hours: float = 24):
        run_id = new_run_id()
        name = f"bench-{run_id}"
        return cloud.launch(LaunchSpec(distribution=centos7, image=base, run_id=run_id, name=name, key_dir=tmp / name,
                                       tags=standard_tags(run_id, "centos7", "bake", name=name, owner=owner,
                                                          ttl_hours=ttl_hours)))

    kept = [launch("obenchother01") for _ in range(others)]
    launch("obenchmine001")  # crashed: this host's state does not know it
    launch("obenchother01", ttl_hours=-1)  # expired
    before, calls = len(proxy.actions), sum(cloud.clients.calls.values())
    started = time.monotonic()
    removed = cloud.cleanup(CleanupPolicy(owner="obenchmine001"))
    wall = time.monotonic() - started
    kinds = collections.Counter(line.rsplit(" (", 1)[0].rsplit(" ", 1)[0] for line in removed)
    print(f"cleanup on a shared account (moto; another host keeps {others} instances): {wall:.2f}s, "
          f"{sum(cloud.clients.calls.values()) - calls} EC2 API calls ({len(proxy.actions) - before} requests); "
          f"removed " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    for instance in kept:
        cloud.destroy(instance)
    cloud.close()


def fab_it(proxy, moto_url: str, tmp: Path, args) -> int:
    import boto3

    from cislaves import clouds, config as config_mod, distros
    from cislaves.clouds.base import LaunchSpec, new_run_id, standard_tags

    trivial = tmp / "trivial.sh"
    trivial.write_text("#!/bin/sh\ntrue\n")
    trivial.chmod(0o755)
    local_config = tmp / "local.yaml"
    local_config.write_text(yaml.safe_dump({"data_dir": str(tmp / "local-data"),
                                            "clouds": {"local": {"cache_dir": args.cache_dir}}}))
    local = clouds.get("local", config_mod.load(local_config, environ={}))
    debian12 = distros.get("debian12")
    overheads, walls, calls = [], [], []
    for run in range(1, args.runs + 1):
        run_id = new_run_id()
        name = f"bench-{run_id}"
        machine = local.launch(LaunchSpec(distribution=debian12, image=local.base_image(debian12), run_id=run_id,
                                          name=name, tags=standard_tags(run_id, "debian12", "instance", name=name),
                                          key_dir=tmp / "local-keys"))
        try:
            env = prepare(tmp, machine, moto_url, proxy, trivial, run)
            before = len(proxy.actions)
            started = time.monotonic()
            result = subprocess.run(["fab", "it:cloud=ec2,distribution=debian12"], cwd=REPO, env=env,
                                    capture_output=True, text=True)
            wall = time.monotonic() - started
        finally:
            local.destroy(machine)
        if result.returncode != 0:
            print(result.stdout[-2000:] + result.stderr[-3000:], file=sys.stderr)
            return 1
        steps = {step: float(sec) for step, sec in STEP.findall(result.stderr)}
        overhead = wall - steps["bootstrap"] - steps["tests"]
        overheads.append(overhead)
        walls.append(wall)
        calls.append(len(proxy.actions) - before)
        print(f"run {run}: wall {wall:.2f}s  " + "  ".join(f"{k} {v:.2f}s" for k, v in steps.items())
              + f"  overhead {overhead:.2f}s  EC2 requests {calls[-1]}")
        moto = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
        for ami in re.findall(r"^Image:(ami-\w+) us-west-2$", result.stdout, re.M):
            moto.deregister_image(ImageId=ami)
    local.close()
    print(f"fab it (ec2 on moto, debian12, minimal + trivial script, 1 copy region): wall median "
          f"{statistics.median(walls):.2f}s; tool overhead median {statistics.median(overheads):.2f}s "
          f"(target <= 2.00s); EC2 API requests per bake {statistics.median(calls):.0f}")
    return 0


def prepare(tmp: Path, machine, moto_url: str, proxy, trivial: Path, run: int) -> dict[str, str]:
    """Config and environment for one `fab it` whose SSH goes to the local machine."""
    import boto3

    moto = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
    pair = f"bench-{run}"
    moto.delete_key_pair(KeyName=pair)
    moto.import_key_pair(KeyName=pair, PublicKeyMaterial=Path(f"{machine.key_file}.pub").read_bytes())
    moto.close()
    config = tmp / f"ec2-{run}.yaml"
    public = Path(f"{machine.key_file}.pub").read_text().strip()
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp / "data"), "ci_user": {"authorized_key": public},
        "provision": {"package_set": "minimal", "extra_scripts": {"debian12": [str(trivial)]}},
        "clouds": {"ec2": {"ssh_host": machine.address, "ssh_port": machine.port, "ssh_user": "root",
                           "copy_regions": [COPY_REGION], "poll_max_delay": 0.2}}}))
    return {**os.environ, "CISLAVES_CONFIG": str(config), "AWS_ENDPOINT_URL_EC2": proxy.url,
            "AWS_REGION": "us-west-2", "AWS_KEY_PAIR": pair, "AWS_KEY_FILENAME": str(machine.key_file),
            "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": "",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


if __name__ == "__main__":
    sys.exit(main())
