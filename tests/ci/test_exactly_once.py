"""Exactly once through real faults: a TCP proxy between the listener and the fake Gerrit drops
connections (at random points, right after a matching event), refuses them, stalls them; the fake
serves Gerrit 3.x shapes (comment-added with the full approvals list, votes as strings)."""
from __future__ import annotations

import calendar
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cislaves.ci.queue import JobQueue
from cislaves.ci.settings import ci_settings, queue_path
from cislaves.clouds.base import wait_for
from tests.ci.helpers import job_rows
from tests.ci.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]


def reconnected(gerrit, service, count: int, what: str = "") -> None:
    """Wait for the listener's stream connection `count`, registered by the fake (so events published
    from now on go to it), and its catch-up."""
    wait_for(lambda: service.stream.connections >= count and gerrit.stream_connections >= count
             and service.stats.caught_up >= count - 1,
             f"stream connection {count} and its catch-up{what}", 30, describe=lambda: str(service.stats))


def final_catch_up(gerrit, proxy, service) -> None:
    """One more drop and catch-up, so that anything a late catch-up would add is in the queue."""
    count = service.stream.connections + 1
    wait_for(lambda: proxy.drop() or service.stream.connections >= count, "a last drop", 30)
    reconnected(gerrit, service, count, " after the last drop")
    wait_for(lambda: service.inbox.empty(), "the dispatcher to write the last catch-up", 30)


def test_twenty_drops_every_matching_event_is_one_job(gerrit, proxy, make_config, service_for):
    config = make_config(via=proxy)
    service = service_for(config)
    ledger = Ledger(gerrit)
    reconnected(gerrit, service, 1)
    rng = random.Random(20)
    for drop in range(20):
        ledger.round(rechecks=2)
        if drop % 2:
            proxy.drop_after(0)  # right after the next server write: the recheck just published
            ledger.recheck(ledger.changes[-1])
        else:
            proxy.drop_after(rng.randrange(1, 4000))  # anywhere, often in the middle of a line
            ledger.round(rechecks=1)
            ledger.round(rechecks=1)
        ledger.round(rechecks=1)  # published around the drop and the reconnect
        reconnected(gerrit, service, drop + 2, f" after drop {drop + 1}")
    ledger.settle(config, service)
    final_catch_up(gerrit, proxy, service)
    ledger.check(config)
    assert proxy.drops >= 20 and service.stats.bad_lines == 0 and service.error is None
    assert len(ledger.expected) > 150


def test_refused_period_is_caught_up(gerrit, proxy, make_config, service_for):
    config = make_config(via=proxy)
    service = service_for(config)
    ledger = Ledger(gerrit, 20_000)
    reconnected(gerrit, service, 1)
    ledger.round(rechecks=2)
    proxy.refuse()
    proxy.drop()
    for _ in range(5):
        ledger.round(rechecks=2)  # nobody is listening
    wait_for(lambda: service.stream.failures >= 4, "four refused connection attempts", 30,
             describe=lambda: f"{service.stream.failures} failures")
    assert service.stream.backoff(100) <= service.gerrit_settings.backoff_max
    proxy.refuse(False)
    reconnected(gerrit, service, 2)
    ledger.settle(config, service)
    final_catch_up(gerrit, proxy, service)
    ledger.check(config)


def test_outage_longer_than_query_limit_pages_the_catch_up(gerrit, proxy, make_config, service_for, caplog):
    config = make_config(via=proxy, gerrit_extra={"query_limit": 3})
    service = service_for(config)
    ledger = Ledger(gerrit, 30_000)
    reconnected(gerrit, service, 1)
    first = ledger.upload()
    proxy.refuse()
    proxy.drop()
    for _ in range(6):
        ledger.round(rechecks=2)  # 6 new changes and more updated: several pages of 3
    ledger.upload(first)  # a missed REWORK patch set followed by a trivial rebase: still tested
    ledger.upload(first, kind="TRIVIAL_REBASE")
    ledger.recheck(first)
    proxy.refuse(False)
    reconnected(gerrit, service, 2)
    ledger.settle(config, service)
    ledger.check(config)
    starts = [c for c in gerrit.commands if c.startswith("gerrit query") and "--start" in c]
    assert len(starts) >= 2, gerrit.commands  # 7 changes in pages of 3
    assert not any("more changes" in r.getMessage() for r in caplog.records)


def test_stalled_stream_is_detected_and_caught_up(gerrit, proxy, make_config, service_for, caplog):
    config = make_config(via=proxy, gerrit_extra={"idle_probe": 0.5, "probe_timeout": 1})
    service = service_for(config)
    ledger = Ledger(gerrit, 40_000)
    reconnected(gerrit, service, 1)
    ledger.round(rechecks=1)
    ledger.settle(config, service)
    wait_for(lambda: "gerrit version" in gerrit.commands, "an idle probe answered by Gerrit", 30)
    assert proxy.stall() == 1  # no FIN, no RST: the connection just goes silent
    ledger.round(rechecks=2)  # sent into the stalled connection
    wait_for(lambda: service.stream.stalls >= 1, "the stall to be detected", 30)
    reconnected(gerrit, service, 2, " after the stall")
    ledger.settle(config, service)
    ledger.check(config)
    assert any("stalled; reconnecting" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


LISTEN = """
import sys
from cislaves import config
from cislaves.ci.cli import listen

def work(job, stopping):  # a job that runs until the listener stops
    stopping.wait()
    raise RuntimeError("stopped")

listen(config.load(sys.argv[1]), work=work)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stop_and_start_with_rechecks_in_flight(gerrit, make_config, service_for, sig):
    """A listener whose jobs run until stopped is stopped (SIGTERM) or killed (SIGKILL) right after a
    burst of events and rechecks; more arrive while it is down; the next start runs every one once."""
    config = make_config(ci={"workers": 2, "stop_grace": 0})
    ledger = Ledger(gerrit, 50_000 + sig * 1000)
    proc = subprocess.Popen([sys.executable, "-c", LISTEN, str(config.path)], cwd=REPO, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: gerrit.streaming() > 0 or proc.poll() is not None, "the listener to connect", 90)
        for _ in range(3):
            ledger.round(rechecks=2)
        ledger.settle(config)
        wait_for(lambda: sum(j.state == "running" for j in job_rows(config)) == 2, "two running jobs", 30)
        for _ in range(3):
            ledger.round(rechecks=3)  # in flight when the signal comes
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err
    assert proc.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL), err
    for _ in range(3):
        ledger.round(rechecks=2)  # while nobody listens
    service = service_for(config)
    ledger.settle(config, service)
    wait_for(lambda: service.stats.caught_up >= 1 and service.inbox.empty(), "the restart's catch-up", 30)
    wait_for(lambda: all(j.state in ("succeeded", "cancelled") for j in job_rows(config)), "every job run", 60,
             describe=lambda: str(service.stats))
    ledger.check(config)
    assert max(j.attempts for j in job_rows(config)) == 2, "the interrupted jobs ran again"


def test_hostile_lines_leave_the_service_running_with_a_sane_position(gerrit, make_config, service_for):
    config = make_config(gerrit_extra={"max_line_bytes": 2 << 20})
    service = service_for(config)
    ledger = Ledger(gerrit, 60_000)
    wait_for(lambda: gerrit.streaming() > 0 and service.stream.connections == 1, "the stream", 30)
    now = int(time.time())
    deep = 100_000
    hostile = [
        b"[" * deep + b"]" * deep,  # RecursionError in json
        b'{"type":"comment-added","change":' + b'{"a":' * deep + b"1" + b"}" * deep + b"}",
        b'{"type":"patchset-created","eventCreatedOn":' + b"9" * 5000 + b"}",  # not a time
        b'{"type":"patchset-created","change":{"number":"' + b"9" * 5000 + b'"}}',  # int() limit
        b'{"type":"patchset-created","change":{"number":' + str(10 ** 30).encode() + b',"project":"p",'
        b'"branch":"master"},"patchSet":{"number":1,"ref":"refs/changes/00/1/1"}}',
    ]
    gerrit.publish_raw(b"\n".join(hostile) + b"\n")
    future = gerrit.upload(60_100, publish=False, when=now + 10 * 365 * 86400)  # ten years ahead
    gerrit.publish(future)
    ledger.expected.append(("patchset-created", 60_100, 1, None))
    millis = gerrit.upload(60_101, publish=False)
    millis["eventCreatedOn"] = now * 1000 + 123  # milliseconds
    gerrit.publish(millis)
    ledger.expected.append(("patchset-created", 60_101, 1, None))
    gerrit.publish({"type": "dropped-output", "eventCreatedOn": now * 1000})  # catch up after all that
    ledger.round(rechecks=2)
    ledger.settle(config, service)
    wait_for(lambda: service.stats.caught_up >= 1, "the dropped-output catch-up", 30)
    gerrit.drop()  # and a reconnect's catch-up from the position those lines left
    ledger.round(rechecks=1)
    wait_for(lambda: service.stream.connections >= 2 and service.stats.caught_up >= 2, "the reconnect's catch-up", 30)
    ledger.settle(config, service)
    ledger.check(config)
    assert service.error is None and service.stats.bad_lines >= 3 and service.stats.future_times >= 1
    assert all(t.is_alive() for t in service._threads + service._workers)
    db = JobQueue(queue_path(config, ci_settings(config)))
    try:
        position = db.last_event_time()
    finally:
        db.close()
    assert now - 5 <= position <= time.time() + service.gerrit_settings.max_clock_skew
    since = _since_times(gerrit.commands)
    margin = service.gerrit_settings.catchup_margin
    assert len(since) >= 2 and all(now - margin - 5 <= t <= time.time() for t in since), since


def _since_times(commands: list[str]) -> list[int]:
    """The times of the since:"..." terms of the catch-up queries (UTC)."""
    found = [re.search(r'since:"([^"]+)"', c) for c in commands]
    return [calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) for m in found if m]


def test_a_remembered_position_in_the_future_is_reset_at_start(gerrit, make_config, service_for):
    """A queue written by an older listener that trusted a future eventCreatedOn: the next start
    catches up from now minus the margin, not from the future."""
    config = make_config()
    path = queue_path(config, ci_settings(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    db = JobQueue(path)
    try:
        db.set_last_event_time(int(time.time()) + 10 * 365 * 86400)
    finally:
        db.close()
    gerrit.upload(70_000)  # before the start, within the margin: catch-up finds it
    started = int(time.time())
    service = service_for(config)
    wait_for(lambda: [j.change for j in job_rows(config)] == [70_000], "the caught-up job", 60,
             describe=lambda: str(service.stats))
    since = _since_times(gerrit.commands)
    margin = int(service.gerrit_settings.catchup_margin)  # from the start's "now", however long the start took
    assert since and started - margin <= since[0] <= time.time() - margin, since
