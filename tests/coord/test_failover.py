"""Two `fab listen` processes on one ZooKeeper: the leader SIGKILLed mid-stream, the other takes over
from the stored position, and every matching event becomes exactly one queued build."""
from __future__ import annotations

import collections
import signal
import threading

import pytest

from cislaves.waiting import wait_for
from tests.coord.helpers import Processes, children, values, zk_config
from tests.runner.conftest import have_git

pytestmark = pytest.mark.skipif(not have_git(), reason="git is needed for the fake Gerrit's repositories")


def test_a_killed_leaders_successor_queues_every_event_once(make_config, gerrit, zookeeper, zk, tmp_path):
    config = make_config([{"name": "unit", "body": "true\n"}, {"name": "lint", "body": "true\n"}],
                         ci={"report": False})
    root = "/failover"
    procs = Processes(tmp_path)
    try:
        first = procs.start("l1", zk_config(config, zookeeper, tmp_path, "l1", root), "listen")
        wait_for(lambda: gerrit.stream_connections >= 1 or None, "the first listener to lead", 60)
        procs.start("l2", zk_config(config, zookeeper, tmp_path, "l2", root), "listen")
        wait_for(lambda: len(children(zk, f"{root}/listener/election")) == 2 or None,
                 "the second listener to stand for election", 60)
        changes = list(range(400, 424))
        uploaded = threading.Event()

        def upload():
            for change in changes:
                gerrit.upload_commit(change, {"b.py": f"y = {change}\n"})
            uploaded.set()

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        wait_for(lambda: len(children(zk, f"{root}/queue")) >= 6 or None, "the leader to queue some builds", 60,
                 first_delay=0.01, max_delay=0.05)
        first.send_signal(signal.SIGKILL)  # mid-stream: the uploads go on
        first.wait(30)
        thread.join(120)
        assert uploaded.is_set()
        items = wait_for(lambda: (lambda v: v if len(v) >= 2 * len(changes) else None)(values(zk, f"{root}/queue")),
                         f"{2 * len(changes)} queued builds", 90, first_delay=0.1, max_delay=0.5,
                         describe=lambda: f"{len(children(zk, root + '/queue'))} queued; " + procs.log("l2")[-1500:])
        per_build = collections.Counter((i["job"]["change"], i["name"]) for i in items)
        assert per_build == {(c, n): 1 for c in changes for n in ("unit", "lint")}
        assert len(children(zk, f"{root}/seen")) == 2 * len(changes)
        assert "leader; resuming from 1" in procs.log("l2")  # the position the killed leader stored
        # the new leader follows the stream: a new event is queued and its time becomes the position
        event = gerrit.upload_commit(500, {"b.py": "y = 500\n"})
        wait_for(lambda: int(zk.get(f"{root}/listener/position")[0]) >= event["eventCreatedOn"] or None,
                 "the new leader to store the new event's time as its position", 30, first_delay=0.05)
        wait_for(lambda: len(children(zk, f"{root}/queue")) == 2 * len(changes) + 2 or None,
                 "the new event's builds", 30, first_delay=0.05)
    finally:
        procs.stop_all()
