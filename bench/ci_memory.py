"""Resident memory while 1,000,000 events go through parse, triggers and enqueue: it must stay flat.

Feeds real-format stream lines in-process (Service.feed, the path the SSH reader uses after it has
split the stream into lines; a million events over SSH from the fake would take too long here), 10%
matching, workers running no-op jobs. Prints RSS every 100,000 events.
Usage: python3 bench/ci_memory.py [EVENTS]
"""
from __future__ import annotations

import sys
import time

import ci_common
from cislaves.ci.dispatcher import Service
from cislaves.ci.settings import CISettings, GerritSettings
from cislaves.clouds.base import wait_for

CHUNK = 67  # lines per 64 KiB stream chunk, as the reader hands them over


def main(count: int = 1_000_000) -> None:
    workdir = ci_common.scratch()
    ci = CISettings(name="acme-ci", workers=2, triggers=[{"projects": [ci_common.MATCHING_PROJECT]}])
    service = Service(GerritSettings(host="gerrit.invalid", user="acme-ci"), ci, workdir / "queue.sqlite",
                      work=lambda job, stop: None)
    service.start(follow=False)
    start = time.perf_counter()
    try:
        chunk: list[bytes] = []
        fed = 0
        for line in ci_common.lines(count):
            chunk.append(line[:-1])  # the reader hands over lines without their newline
            if len(chunk) == CHUNK:
                service.feed(chunk)
                fed += len(chunk)
                chunk = []
                if fed % 100_000 < CHUNK:
                    wait_for(lambda: service.stats.events >= fed, "the dispatcher to catch up", 120)
                    print(f"{fed:>9,} events  rss {ci_common.rss_mib():6.1f} MiB  jobs {service.stats.jobs:,}  "
                          f"{fed / (time.perf_counter() - start):,.0f} events/s", flush=True)
        service.feed(chunk)
        wait_for(lambda: service.stats.events >= count, "all events", 120)
        wait_for(lambda: service.stats.finished >= service.stats.jobs, "all jobs to run", 300)
    finally:
        service.stop(grace=5)
    size = sum(p.stat().st_size for p in workdir.glob("queue.sqlite*"))
    print(f"done: {count:,} events, {service.stats.jobs:,} jobs, rss {ci_common.rss_mib():.1f} MiB, "
          f"queue on disk {size / 2**20:.0f} MiB, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
