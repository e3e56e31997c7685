"""cislaves.progress in a worker thread (a rebake target, a CI build): its wait lines carry the thread's
name, and no live line is drawn from it. The command-line behaviour (live line on a terminal, 30 s log
lines, provisioning's heartbeat) is tested through fab in tests/ec2/test_progress.py and
tests/test_failures.py."""
from __future__ import annotations

import itertools
import logging
import threading

from cislaves import progress
from cislaves.waiting import Pending, wait_for


def test_a_worker_threads_wait_logs_with_its_name_and_draws_no_live_line(caplog, capsys):
    ticks = itertools.count(0, 7.0)  # a clock the wait reads: each reading 7 s later (no real waiting)
    states = iter(["pending"] * 6 + ["available"])
    result = {}

    def probe():
        state = next(states)
        return state if state == "available" else Pending(state)

    def worker():
        result["live"] = progress.live_allowed()
        result["value"] = wait_for(probe, "image ami-0abc in us-west-2 to become available", 1800,
                                   first_delay=0.001, max_delay=0.001, clock=lambda: next(ticks))

    with caplog.at_level(logging.INFO, logger="cislaves.progress"):
        thread = threading.Thread(target=worker, name="rebake ec2/centos7/us-west-2")
        thread.start()
        thread.join(10)
    assert result == {"live": False, "value": "available"}
    lines = [r.getMessage() for r in caplog.records if r.name == "cislaves.progress"]
    assert lines == ["[rebake ec2/centos7/us-west-2] waiting for image ami-0abc in us-west-2 to become "
                     "available: pending, 35s of 30m"]
    assert "\x1b[" not in capsys.readouterr().err


def test_the_duration_reads_like_the_issue_says():
    assert progress.line("ami-0abc", "pending", 130, 1800) == "waiting for ami-0abc: pending, 2m10s of 30m"
    assert [progress.duration(s) for s in (4, 60, 3600, 3900)] == ["4s", "1m", "1h", "1h05m"]
