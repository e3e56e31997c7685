"""The fake Gerrit as a separate process for the benchmarks (Gerrit is not in the listener's process).

Usage: python3 bench/ci_fake_server.py PUBLIC_KEY_FILE KNOWN_HOSTS_FILE
Prints its port, then reads commands on stdin, one per line:
  prepare COUNT FIRST_CHANGE   build COUNT event lines (10% matching), print "ready BYTES"
  send                         publish the prepared lines, print "sent"
  ping                         publish one matching event stamped with the sender's wall clock
  wait-stream [N]              print "streaming" once stream connection N (default 1) is followed
  quit
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import ci_common
from cislaves.clouds.base import wait_for
from tests.ci.fake_gerrit import FakeGerrit


def main(public_key: str, known_hosts: str) -> None:
    fake = FakeGerrit(Path(public_key).read_text(), buffer=10 ** 9).start()
    fake.write_known_hosts(Path(known_hosts))
    print(fake.port, flush=True)
    blocks: list[bytes] = []
    change = 10 ** 6
    try:
        for command in sys.stdin:
            words = command.split()
            if words[:1] == ["prepare"]:
                lines = list(ci_common.lines(int(words[1]), int(words[2])))
                blocks = [b"".join(lines[i:i + 2000]) for i in range(0, len(lines), 2000)]
                print("ready", sum(len(b) for b in blocks), flush=True)
            elif words[:1] == ["send"]:
                for block in blocks:
                    fake.publish_raw(block)
                print("sent", flush=True)
            elif words[:1] == ["ping"]:
                change += 1
                fake.publish_raw(next(ci_common.lines(1, change, stamp=time.time)))
            elif words[:1] == ["wait-stream"]:
                number = int(words[1]) if len(words) > 1 else 1
                wait_for(lambda: fake.streaming() > 0 and fake.stream_connections >= number,
                         f"stream connection {number} to be followed", 60)
                print("streaming", flush=True)
            elif words[:1] == ["quit"]:
                break
    finally:
        fake.stop()


if __name__ == "__main__":
    main(*sys.argv[1:3])
