"""Events per second from the fake Gerrit over SSH through parse, triggers and enqueue (10% match).

Prints the rate at which the listener consumed the stream (events parsed and dispatched, matching ones
written as jobs into the SQLite queue). Meanwhile each worker holds one job, as real (minutes-long)
jobs do; afterwards the jobs are released and all run. Target: >= 30,000 events/s.
Usage: python3 bench/ci_throughput.py [EVENTS]
"""
from __future__ import annotations

import os
import sys
import threading
import time

import ci_common
from cislaves.ci.dispatcher import Service
from cislaves.clouds.base import wait_for


def main(count: int = 200_000) -> None:
    fake, gerrit, ci, queue = ci_common.setup()
    release = threading.Event()
    service = Service(gerrit, ci, queue, work=lambda job, stop: release.wait(60) and None)
    try:
        fake.command(f"prepare {count} 100", "ready")
        size = sum(len(line) for line in ci_common.lines(count))
        service.start()
        fake.command("wait-stream", "streaming")
        start, cpu = time.perf_counter(), time.process_time()
        fake.command("send")
        wait_for(lambda: service.stats.events >= count, f"{count} events dispatched", 300,
                 describe=lambda: str(service.stats))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        release.set()
        wait_for(lambda: service.stats.finished >= count // 10, "all jobs run", 300,
                 describe=lambda: str(service.stats))
        total = time.perf_counter() - start
    finally:
        service.stop(grace=5)
        fake.stop()
    s = service.stats
    print(f"events: {count} ({size / count:.0f} bytes each, {size / 2**20:.0f} MiB), matching: {s.jobs}, "
          f"bad lines: {s.bad_lines}")
    print(f"stream -> parse -> triggers -> enqueue: {count / elapsed:,.0f} events/s ({elapsed:.2f} s)")
    print(f"listener CPU time: {cpu * 1e6 / count:.1f} us per event, i.e. {count / cpu:,.0f} events per "
          f"CPU-second (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"then all {s.finished} jobs run (no-op work, {ci.workers} workers) after {total:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
