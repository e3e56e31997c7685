"""Events per second from the fake Gerrit over SSH through parse, triggers and durable enqueue (10%
matching), the listener's resident memory, and, in the same run against the same server, the rate of a
plain paramiko client that reads the same stream and discards it.

The fake Gerrit is a separate process. Events are about 1 KB in Gerrit 3.x's shape (commit message,
the full approvals list). Each worker holds one job meanwhile, as real (minutes-long) jobs do;
afterwards the jobs are released and all run. Resident memory is read from /proc while waiting, and
the kernel's high-water mark (ru_maxrss) gives the peak at any point of the listener's run.
Targets: >= 50,000 events/s end to end; resident memory <= 100 MiB at every point.
Usage: python3 bench/ci_throughput.py [EVENTS]
"""
from __future__ import annotations

import os
import sys
import threading
import time

import paramiko

import ci_common
from cislaves.ci.dispatcher import Service
from cislaves.ci.stream import Gerrit
from cislaves.clouds.base import wait_for


def main(count: int = 200_000) -> None:
    fake, gerrit, ci, queue = ci_common.setup()
    release = threading.Event()
    service = Service(gerrit, ci, queue, work=lambda job, stop: release.wait(60) and None)
    samples: list[float] = []

    def dispatched() -> bool:
        samples.append(ci_common.rss_mib())
        return service.stats.events >= count

    try:
        size = int(fake.command(f"prepare {count} 100", "ready"))
        service.start()
        fake.command("wait-stream 1", "streaming")
        start, cpu = time.perf_counter(), time.process_time()
        fake.command("send", "sent")
        wait_for(dispatched, f"{count} events dispatched", 300, first_delay=0.01, max_delay=0.05,
                 describe=lambda: str(service.stats))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = ci_common.peak_rss_mib()
        release.set()
        wait_for(lambda: service.stats.finished >= count // 10, "all jobs run", 300,
                 describe=lambda: str(service.stats))
        total = time.perf_counter() - start
    finally:
        service.stop(grace=5)
    try:
        raw_cpu = time.process_time()
        raw = raw_read(fake, gerrit, size)
        raw_cpu = time.process_time() - raw_cpu
    finally:
        fake.stop()
    s = service.stats
    rate = count / elapsed
    print(f"events: {count:,} ({size / count:.0f} bytes each, {size / 2**20:.0f} MiB), jobs: {s.jobs:,}, "
          f"bad lines: {s.bad_lines}")
    print(f"stream -> parse -> triggers -> durable enqueue: {rate:,.0f} events/s ({elapsed:.2f} s)")
    print(f"plain paramiko read of the same stream: {count / raw:,.0f} events/s ({raw:.2f} s); "
          f"listener / raw = {rate / (count / raw):.2f}; its CPU time {raw_cpu * 1e6 / count:.1f} us per event")
    print(f"resident memory: peak {peak:.1f} MiB (high-water mark), sampled {min(samples):.1f}-{max(samples):.1f} "
          f"MiB over {len(samples)} samples during the run")
    print(f"listener CPU time: {cpu * 1e6 / count:.1f} us per event, i.e. {count / cpu:,.0f} events per "
          f"CPU-second (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"then all {s.finished:,} jobs run (no-op work, {ci.workers} workers) after {total:.2f} s")


def raw_read(fake, settings, size: int) -> float:
    """Seconds a plain paramiko client takes to read `size` bytes of the stream, discarding them."""
    gerrit = Gerrit(settings)
    try:
        gerrit.connect()
        channel = gerrit.exec(["gerrit", "stream-events"])
        fake.command("wait-stream 2", "streaming")
        channel.settimeout(60)
        got = 0
        start = time.perf_counter()
        fake.command("send", "sent")
        while got < size:
            chunk = channel.recv(1 << 20)
            if not chunk:
                raise paramiko.SSHException(f"stream ended after {got} of {size} bytes")
            got += len(chunk)
        return time.perf_counter() - start
    finally:
        gerrit.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
