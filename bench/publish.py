"""Benchmark: publishing builds' logs; prints figures, asserts nothing.

For each target (local, rsync over SSH to a private sshd on 127.0.0.1, S3 on moto's server), publish N
builds laid out as the runner writes them (job-output.txt of --lines timestamped lines, two artifacts,
build.json) and time publish_build (index.html + copy), then the status page over all of them, then
expire(30) with N/2 builds older than 30 days. The figures are the time a report waits for its publish.

Run as root after ./setup.sh:  .venv/bin/python bench/publish.py [--builds 20] [--lines 5000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cislaves import config as cfg  # noqa: E402
from bench.figures import latency_ms  # noqa: E402
from cislaves.ci.publish import Publisher  # noqa: E402
from tests.publish.conftest import Sshd, all_builds, make_build  # noqa: E402


def run(name: str, logs: dict, base: Path, builds: int, lines: int) -> None:
    path = base / name / "cislaves.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"data_dir": str(base / name / "data"),
                                    "ci": {"logs": {"dir": str(base / name / "logs"), **logs}}}))
    config = cfg.load(path, environ={})
    output = "".join(f"line {i} of the job's output, as long as a typical tempest line\n" for i in range(lines))
    made = [make_build(config, change=1000 + i, ended_days_ago=40 if i % 2 else 0,
                       artifacts={"logs/tempest.log": output, "logs/syslog": output[: len(output) // 4]})
            for i in range(builds)]
    publisher = Publisher.from_config(config)
    times = []
    for build in made:
        began = time.perf_counter()
        publisher.publish_build(Path(build.log_dir))
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    publisher.publish_status(all_builds(config))
    status = time.perf_counter() - began
    began = time.perf_counter()
    removed = publisher.expire(30)
    expire = time.perf_counter() - began
    publisher.close()
    size = sum(p.stat().st_size for p in Path(made[0].log_dir).rglob("*") if p.is_file())
    print(f"{name:6} publish_build {latency_ms(times)} ({size / 1e6:.2f} MB a build) | "
          f"status page {status * 1000:6.1f} ms ({builds} builds) | "
          f"expire {expire * 1000:6.1f} ms ({len(removed)} removed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--lines", type=int, default=5000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.builds} builds, {args.lines} output lines each")
    run("local", {}, base, args.builds, args.lines)
    host = Sshd(base / "loghost")
    host.start()
    try:
        run("rsync", {"publish": "rsync", "rsync": {"target": f"root@127.0.0.1:{base / 'remote'}",
                                                    "key_file": str(host.key), "port": host.port,
                                                    "known_hosts": str(host.known_hosts)}},
            base, args.builds, args.lines)
    finally:
        host.stop()
    from moto.server import ThreadedMotoServer
    import boto3

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://%s:%d" % server.get_host_and_port()
        boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint).create_bucket(Bucket="bench-logs")
        run("s3", {"publish": "s3", "s3": {"bucket": "bench-logs", "endpoint_url": endpoint}},
            base, args.builds, args.lines)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
