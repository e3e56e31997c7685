"""Latency from an event's arrival to its job starting, with idle workers: p50 and p99.

The fake Gerrit (a separate process) stamps each matching event with its wall clock when it publishes
it; the job's work function notes the difference when it starts. One event at a time, each after the
previous job started, so workers are idle. Target: p99 <= 20 ms.
Usage: python3 bench/ci_latency.py [SAMPLES]
"""
from __future__ import annotations

import statistics
import sys
import threading
import time

import ci_common
from cislaves.ci.dispatcher import Service
from cislaves.clouds.base import wait_for


def main(samples: int = 300) -> None:
    fake, gerrit, ci, queue = ci_common.setup()
    delays: list[float] = []
    lock = threading.Lock()

    def work(job, stop):
        delay = time.time() - job.event["benchSent"]
        with lock:
            delays.append(delay)

    service = Service(gerrit, ci, queue, work=work)
    try:
        service.start()
        fake.command("wait-stream 1", "streaming")
        for i in range(samples):
            fake.command("ping")
            wait_for(lambda: len(delays) > i, f"job {i + 1} to start", 30)
    finally:
        service.stop(grace=5)
        fake.stop()
    ms = sorted(d * 1000 for d in delays)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"samples: {len(ms)}, workers: {ci.workers} (idle)")
    print(f"event published -> job started: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
          f"max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
