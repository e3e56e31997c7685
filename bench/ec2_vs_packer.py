"""Benchmark: a bake's own overhead, `fab it:cloud=ec2` against Packer's amazon-ebs, side by side.

Both tools bake on one moto EC2 server (127.0.0.1, started here, behind the tests' counting proxy)
with the same base-image filter (debian12's owner and name pattern, newest wins), the same instance
type, an existing key pair, a temporary security group and one region copy (eu-west-1). Their SSH
goes to the same local-cloud machine (real sshd, booted once here) through the address override
(cislaves' ssh_host/ssh_port, Packer's ssh_host/ssh_port). Runs alternate (Packer, cislaves, then
cislaves, Packer, ...) after one warm-up run of each that is not counted.

    overhead = wall time - provisioning
    cislaves' provisioning: its bootstrap and tests steps (as the tool reports them; both include
        their SSH connection set-up)
    Packer's provisioning: from "Waiting for SSH to become available" to the first builder line
        after its shell provisioner (SSH connection and provisioner, timed by when Packer's lines
        arrive here)

Also printed: CPU seconds of each bake (user + system of the tool and its reaped children, as `time`
reports them: all of the bake, provisioning included; far steadier than wall times when the shared
machine is loaded), peak resident memory of each (the largest process, as `time -v` reports it, and the
whole process tree sampled every 10 ms: Packer runs its builder and provisioner as plugin processes),
EC2 requests per bake, a floor (the `fab` program's own start and the bake's 18 EC2 requests sent by
botocore alone, bench/ec2_floor.py: what the overhead costs before any cislaves code), cislaves'
start-up (spawn to its first log line), steps and exit (its
"it: done" line to exit), the `tests` step alone (the minimal package set's checks), and `fab -l`.
Needs root (the local machine) and Packer (Debian's `packer` package, 1.6.6; CHECKPOINT_DISABLE=1
keeps it off the network). The proxy answers with TCP_NODELAY: with Nagle's algorithm its two-write
answers cost botocore (not Go) about 40 ms a request. --baseline REV adds a third bake to the
rotation: the same bake by the code of git revision REV (exported with `git archive` into the bench's
temporary folder; the venv is this one), so what a change bought is measured side by side, in the
same minutes of a shared machine, not against figures of another hour.

Run from the repository root:  python3 bench/ec2_vs_packer.py [--runs 5] [--baseline REV]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REGION, COPY_REGION = "us-west-2", "eu-west-1"
KEY_PAIR = "bench-target"
STEP = re.compile(r"\] (\w+): done in ([0-9.]+)s")
PACKER_SSH = "Waiting for SSH to become available"
PACKER_PROVISION = "Provisioning with shell script"
FAB = Path(sys.executable).parent / "fab"


@dataclass
class Run:
    """One bake: what it cost and where its time went (seconds, MiB)."""

    tool: str
    wall: float
    provisioning: float
    rss: float  # the largest process
    tree_rss: float  # the process tree, sampled
    requests: int
    cpu: float  # user + system seconds of the tool's processes (less disturbed by a loaded machine than wall)
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return self.wall - self.provisioning


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs of each tool (default 5)")
    parser.add_argument("--cache-dir", default=os.environ.get("CISLAVES_TEST_CACHE", "/var/tmp/cislaves-test-cache"),
                        help="the local cloud's base-image cache")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time a third bake in the rotation: the code of git revision REV (what a change "
                             "bought, side by side)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("skipped: needs root (the local-cloud machine both tools reach over SSH)")
        return 0
    if shutil.which("packer") is None:
        print("skipped: no packer on PATH (apt-get install -y packer)")
        return 0
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine)")
    from tests.ec2.moto_env import moto_server
    from tests.ec2.proxy import EC2Proxy

    with tempfile.TemporaryDirectory(prefix="cislaves-bench-packer-") as name, moto_server(Path(name)) as url:
        tmp = Path(name)
        proxy = EC2Proxy(url).start()  # with TCP_NODELAY (see tests/ec2/proxy.py)
        local = machine = None
        try:
            local, machine = boot_target(tmp, args.cache_dir)
            bench = Bench(tmp, url, proxy, machine)
            bench.packer()  # warm-up (not counted): moto loads its models, Packer's files reach the page cache
            bench.cislaves()  # warm-up: provisions the machine once; later bootstraps find it provisioned
            bakes = [bench.packer, bench.cislaves]
            if args.baseline:
                checkout = export(args.baseline, tmp / "baseline")
                bench.cislaves(checkout, "baseline")  # warm-up of that code (its own caches, if any)
                bakes.append(lambda: bench.cislaves(checkout, "baseline"))
            runs: list[Run] = []
            for i in range(args.runs):
                order = bakes if i % 2 == 0 else bakes[::-1]
                for bake in order:
                    runs.append(bake())
                    print(row(runs[-1]), flush=True)
            floors = [bench.floor() for _ in range(args.runs)]
            report(runs, fab_list_times(), floors)
        finally:
            if local is not None:
                if machine is not None:
                    local.destroy(machine)
                local.close()
            proxy.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def boot_target(tmp: Path, cache_dir: str):
    """One local-cloud debian12 machine: the SSH target of every bake."""
    from cislaves import clouds, config as config_mod, distros
    from cislaves.clouds.base import LaunchSpec, new_run_id, standard_tags

    local_config = tmp / "local.yaml"
    local_config.write_text(yaml.safe_dump({"data_dir": str(tmp / "local-data"),
                                            "clouds": {"local": {"cache_dir": cache_dir}}}))
    local = clouds.get("local", config_mod.load(local_config, environ={}))
    debian12 = distros.get("debian12")
    run_id = new_run_id()
    name = f"bench-packer-{run_id}"
    machine = local.launch(LaunchSpec(distribution=debian12, image=local.base_image(debian12), run_id=run_id,
                                      name=name, tags=standard_tags(run_id, "debian12", "instance", name=name),
                                      key_dir=tmp / "local-keys"))
    return local, machine


class Bench:
    """The two bakes on one moto server and one SSH target."""

    def __init__(self, tmp: Path, moto_url: str, proxy, machine):
        import boto3

        self.tmp, self.proxy, self.machine, self.count = tmp, proxy, machine, 0
        self.moto = {r: boto3.client("ec2", region_name=r, endpoint_url=moto_url) for r in (REGION, COPY_REGION)}
        public = Path(f"{machine.key_file}.pub").read_bytes()
        self.moto[REGION].import_key_pair(KeyName=KEY_PAIR, PublicKeyMaterial=public)
        trivial = tmp / "trivial.sh"
        trivial.write_text("#!/bin/sh\ntrue\n")
        trivial.chmod(0o755)
        (tmp / "packer.json").write_text(json.dumps(self._packer_template(trivial)))
        (tmp / "cislaves.yaml").write_text(yaml.safe_dump({
            "data_dir": str(tmp / "data"), "ci_user": {"authorized_key": public.decode().strip()},
            "provision": {"package_set": "minimal", "extra_scripts": {"debian12": [str(trivial)]}},
            "clouds": {"ec2": {"ssh_host": machine.address, "ssh_port": machine.port, "ssh_user": "root",
                               "copy_regions": [COPY_REGION], "poll_max_delay": 0.2}}}))

    def _packer_template(self, trivial: Path) -> dict:
        ec2 = {"type": "amazon-ebs", "region": REGION, "access_key": os.environ["AWS_ACCESS_KEY_ID"],
               "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"], "custom_endpoint_ec2": self.proxy.url,
               "skip_region_validation": True, "skip_metadata_api_check": True, "skip_credential_validation": True,
               "source_ami_filter": {"owners": ["136693071363"], "filters": {"name": "debian-12-amd64-*"},
                                     "most_recent": True},
               "instance_type": "t2.medium", "ssh_username": "root", "ssh_host": self.machine.address,
               "ssh_port": self.machine.port, "ssh_keypair_name": KEY_PAIR,
               "ssh_private_key_file": str(self.machine.key_file),
               "ami_name": "packer-bench-{{user `run`}}", "ami_regions": [COPY_REGION]}
        return {"variables": {"run": ""}, "builders": [ec2],
                "provisioners": [{"type": "shell", "script": str(trivial)}]}

    def packer(self) -> Run:
        self.count += 1
        env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(self.tmp / "packer-cache")}
        argv = ["packer", "build", "-color=false", "-var", f"run={self.count}", str(self.tmp / "packer.json")]
        done = self._spawn("packer", argv, env, self.tmp)
        ssh = first_arrival(done.lines, PACKER_SSH)
        began = first_arrival(done.lines, PACKER_PROVISION)
        ended = next(t for t, line in done.lines if t > began and line.startswith("==> amazon-ebs: ")
                     and PACKER_PROVISION not in line)
        return done.run(ended - ssh, {"start-up": done.lines[0][0], "ssh": began - ssh})

    def cislaves(self, checkout: Path = REPO, tool: str = "cislaves") -> Run:
        env = {**os.environ, "CISLAVES_CONFIG": str(self.tmp / "cislaves.yaml"), "AWS_ENDPOINT_URL_EC2": self.proxy.url,
               "AWS_REGION": REGION, "AWS_KEY_PAIR": KEY_PAIR, "AWS_KEY_FILENAME": str(self.machine.key_file),
               "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": "", "PATH": f"{FAB.parent}:{os.environ['PATH']}"}
        done = self._spawn(tool, [str(FAB), "it:cloud=ec2,distribution=debian12"], env, checkout)
        steps = {step: float(sec) for _, line in done.lines for step, sec in STEP.findall(line)}
        parts = {"start-up": first_arrival(done.lines, "up: started"), **steps,
                 "exit": done.wall - first_arrival(done.lines, "it: done")}
        return done.run(steps["bootstrap"] + steps["tests"], parts)

    def floor(self) -> dict[str, float]:
        """What the parts cislaves cannot do without cost at the least, each timed alone: the `fab` program's
        own start (Fabric, invoke and paramiko imported, `fab --version`: no fabfile is read), the
        interpreter's start (`python -c pass`, counted in both of the others), and the bake's 18 EC2
        requests sent by botocore alone (bench/ec2_floor.py) to the same proxy and moto."""
        models = sorted((self.tmp / "data" / "botocore").glob("*/ec2"))
        if not models:
            raise SystemExit("no trimmed EC2 model under the bench's data dir: the cislaves warm-up did not make one")
        env = {**os.environ, "AWS_ENDPOINT_URL_EC2": self.proxy.url, "AWS_REGION": REGION}
        python = str(FAB.parent / "python")
        commands = {"fab --version": [str(FAB), "--version"], "python": [python, "-c", "pass"],
                    "requests": [python, str(REPO / "bench" / "ec2_floor.py"), str(models[-1].parent), REGION,
                                 COPY_REGION, KEY_PAIR]}
        walls = {}
        for name, argv in commands.items():
            before = len(self.proxy.actions)
            started = time.monotonic()
            subprocess.run(argv, cwd=self.tmp, env=env, stdout=subprocess.DEVNULL, check=True)
            walls[name] = time.monotonic() - started
            if name == "requests" and len(self.proxy.actions) - before != 18:
                raise SystemExit(f"bench/ec2_floor.py sent {len(self.proxy.actions) - before} requests, not 18")
        self._remove_images()
        walls["floor"] = walls["fab --version"] + walls["requests"] - walls["python"]
        return walls

    def _spawn(self, tool: str, argv: list[str], env: dict, cwd: Path) -> "Done":
        """Run one bake; the time each output line arrived, wall time, peak memory; its AMIs removed after."""
        before = len(self.proxy.actions)
        rss_file = self.tmp / "rss"
        # Through GNU time: a child forked from this big process inherits its peak until exec, so its
        # own getrusage figure would be ours; time's child is forked from time.
        argv = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *argv]
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        sampler = TreeSampler(proc.pid)
        lines = [(time.monotonic() - started, line.rstrip("\n")) for line in proc.stdout]
        proc.wait()
        wall = time.monotonic() - started
        sampler.stop()
        requests = len(self.proxy.actions) - before
        self._remove_images()
        if proc.returncode != 0:
            text = "\n".join(line for _, line in lines[-60:])
            raise SystemExit(f"{tool} failed (exit {proc.returncode}):\n{text}")
        peak, user, system = rss_file.read_text().split()[-3:]  # KiB (the largest process of the tree), s, s
        return Done(tool, lines, wall, int(peak) / 1024, sampler.peak / 1024, requests, float(user) + float(system))

    def _remove_images(self) -> None:
        """Every run starts from the same moto state: no AMIs or snapshots of earlier runs."""
        for client in self.moto.values():
            for image in client.describe_images(Owners=["self"])["Images"]:
                client.deregister_image(ImageId=image["ImageId"])
                for mapping in image.get("BlockDeviceMappings", []):
                    if mapping.get("Ebs", {}).get("SnapshotId"):
                        client.delete_snapshot(SnapshotId=mapping["Ebs"]["SnapshotId"])


@dataclass
class Done:
    tool: str
    lines: list[tuple[float, str]]
    wall: float
    rss: float
    tree_rss: float
    requests: int
    cpu: float

    def run(self, provisioning: float, parts: dict[str, float]) -> Run:
        return Run(self.tool, self.wall, provisioning, self.rss, self.tree_rss, self.requests, self.cpu, parts)


class TreeSampler:
    """Peak resident memory (KiB) of a process's descendants (not itself: GNU time), from /proc every 10 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, sum(rss_kib(p) for p in descendants(self.pid)[1:]))


def export(revision: str, folder: Path) -> Path:
    """The tree of `revision` in `folder` (fab run there imports that cislaves: invoke puts the
    fabfile's folder first on sys.path, ahead of the venv's editable install)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    label = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s", revision], check=True,
                           capture_output=True, text=True).stdout.strip()
    print(f"baseline: {label[:100]}")
    return folder


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def first_arrival(lines: list[tuple[float, str]], text: str) -> float:
    return next(t for t, line in lines if text in line)


def fab_list_times(runs: int = 10) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([str(FAB), "-l"], cwd=REPO, stdout=subprocess.DEVNULL, check=True)
        times.append(time.monotonic() - started)
    return times


def row(run: Run) -> str:
    parts = "  ".join(f"{k} {v:.2f}" for k, v in run.parts.items())
    return (f"{run.tool:<8} wall {run.wall:.2f}s  provisioning {run.provisioning:.2f}s  overhead {run.overhead:.2f}s  "
            f"cpu {run.cpu:.2f}s  peak {run.rss:.0f} MiB (tree {run.tree_rss:.0f})  EC2 requests {run.requests}  [{parts}]")


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    return (f"median {statistics.median(values):.{digits}f}{unit} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f})")


def report(runs: list[Run], fab_list: list[float], floors: list[dict[str, float]]) -> None:
    by_tool = {tool: [r for r in runs if r.tool == tool] for tool in ("packer", "cislaves", "baseline")}
    by_tool = {tool: mine for tool, mine in by_tool.items() if mine}
    print(f"\n{len(by_tool['cislaves'])} runs each, alternating; debian12 minimal + a trivial script, 1 copy region")
    for tool, mine in by_tool.items():
        print(f"{tool}:")
        print(f"  wall          {spread([r.wall for r in mine])}")
        print(f"  provisioning  {spread([r.provisioning for r in mine])}")
        print(f"  overhead      {spread([r.overhead for r in mine])}")
        print(f"  cpu (all)     {spread([r.cpu for r in mine])}")
        print(f"  peak memory   {spread([r.rss for r in mine], ' MiB', 0)}; process tree "
              f"{spread([r.tree_rss for r in mine], ' MiB', 0)}")
        print(f"  EC2 requests  {statistics.median([r.requests for r in mine]):.0f}")
        names = list(mine[0].parts)
        print("  parts (median s): " + ", ".join(
            f"{n} {statistics.median([r.parts[n] for r in mine]):.2f}" for n in names))
    packer = statistics.median([r.overhead for r in by_tool["packer"]])
    cislaves = statistics.median([r.overhead for r in by_tool["cislaves"]])
    ratio = cislaves / packer
    print(f"ratio of median overheads, cislaves / packer: {ratio:.2f} (target <= 1.00)")
    floor = statistics.median([f["floor"] for f in floors])
    print(f"floor of cislaves' overhead (timed alone, {len(floors)} runs, medians): `fab --version` "
          f"{statistics.median([f['fab --version'] for f in floors]):.2f}s + the bake's 18 EC2 requests by botocore "
          f"alone {statistics.median([f['requests'] for f in floors]):.2f}s - one interpreter start "
          f"{statistics.median([f['python'] for f in floors]):.2f}s = {floor:.2f}s: "
          f"{floor / packer:.2f}x Packer's overhead before cislaves' own code runs a line "
          f"(cislaves' overhead is {cislaves - floor:.2f}s above it)")
    if "baseline" in by_tool:
        before = statistics.median([r.overhead for r in by_tool["baseline"]]) / packer
        print(f"baseline (the --baseline revision): ratio {before:.2f}, peak memory "
              f"{statistics.median([r.rss for r in by_tool['baseline']]):.0f} MiB")
    print(f"cislaves peak memory: median {statistics.median([r.rss for r in by_tool['cislaves']]):.0f} MiB "
          f"(target <= 70)")
    tests = spread([r.parts["tests"] for r in by_tool["cislaves"]])
    print(f"tests step alone (minimal set): {tests} (target <= 0.50s)")
    print(f"fab -l: {spread(fab_list)} over {len(fab_list)} runs (target <= 0.30s)")


if __name__ == "__main__":
    sys.exit(main())
