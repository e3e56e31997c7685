"""ZooKeeper answers lost on the way to a worker (a restart or a network blip while a request is in
flight): the request was done, the worker only saw a lost connection.

A lost answer to the lock's create left the item locked by the worker's own live session: every later
take found the lock taken ("another worker runs it") and the build stayed queued for as long as the
worker lived (the CI's 30-build scale test once ended 29 results, queue 1). A lost answer to the
transaction storing the result made the worker log its result as dropped although it was stored.
"""
from __future__ import annotations

import json

import pytest
from kazoo.exceptions import NoNodeError

from cislaves.waiting import wait_for
from tests.coord.helpers import Processes, children, values, zk_config
from tests.coord.zkproxy import ZooKeeperProxy
from tests.fixtures_local import tool_leftovers
from tests.runner.conftest import have_git, running_instances

pytestmark = pytest.mark.skipif(not have_git(), reason="git is needed for the fake Gerrit's repositories")


def test_a_worker_recovers_from_lost_answers_to_its_lock_and_its_result(
        make_config, gerrit, zookeeper, zk, tmp_path, runner_data_dir):
    config = make_config([{"name": "unit", "body": "echo running\nsleep 1\n"}])
    root = "/lost"
    proxy = ZooKeeperProxy(zookeeper.hosts)
    procs = Processes(tmp_path)
    try:
        procs.start("listener", zk_config(config, zookeeper, tmp_path, "listener", root), "listen")
        wait_for(lambda: gerrit.stream_connections >= 1 or None, "the leader to follow the stream", 60)
        proxy.lose_answer_to(f"{root}/locks/".encode())  # the worker's first lock: done, answer lost
        procs.start("worker", zk_config(config, proxy, tmp_path, "workers", root), "worker:concurrency=1,clouds=local")
        gerrit.upload_commit(700, {"a.py": "x = 700\n"})
        wait_for(lambda: proxy.lost or None, "the answer to the worker's lock to be lost", 120)

        def running():
            for name in children(zk, f"{root}/locks"):
                try:
                    data = json.loads(zk.get(f"{root}/locks/{name}")[0])
                except NoNodeError:
                    continue
                if data.get("build_id"):
                    return name
            return None

        name = wait_for(running, "the worker to take the build again and start it", 60,
                        describe=lambda: f"locks {children(zk, root + '/locks')}; " + procs.log("worker")[-1500:])
        assert "released the lock of item " + name in procs.log("worker")
        proxy.lose_answer_to(f"{root}/results/".encode())  # the transaction storing the result
        results = wait_for(lambda: values(zk, f"{root}/results") or None, "the build's result", 120,
                           describe=lambda: procs.log("worker")[-1500:])
        assert len(proxy.lost) == 2, proxy.lost
        assert [r["result"] for r in results] == ["SUCCESS"], results
        wait_for(lambda: children(zk, f"{root}/queue") == [] and children(zk, f"{root}/locks") == [] or None,
                 "the queue item and its lock to be gone", 30)
        wait_for(lambda: [a for a in gerrit.reviews if a[-1] == "700,1"] or None, "the report", 60)
        procs.stop_all()
        log = procs.log("worker")
        assert "its lock was lost" not in log and "crashed" not in log, log[-3000:]
        assert len(values(zk, f"{root}/results")) == 1
        assert [a[-1] for a in gerrit.reviews if a[-1] == "700,1"] == ["700,1"]
        assert running_instances(config) == []
        assert tool_leftovers(runner_data_dir) == []
    finally:
        procs.stop_all()
        proxy.stop()


def test_a_cancel_whose_lock_answer_was_lost_ends_the_build_when_retried(zookeeper):
    """The leader cancels superseded buildsets and retries on a ZooKeeper error; a lost answer to its
    lock must not leave the queued build locked by the leader's session (never cancelled, never run)."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import ConnectionLoss

    from cislaves.coord.builds import BuildQueue

    proxy = ZooKeeperProxy(zookeeper.hosts)
    zk = KazooClient(hosts=proxy.hosts, timeout=10, connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5})
    zk.start(timeout=30)
    try:
        queue = BuildQueue(zk, "/lost-cancel")
        queue.declare("event-1", ["unit"])
        assert queue.submit("event-1", "unit", {"cloud": "local", "job": {"id": 1, "change": 5, "patchset": 1}})
        proxy.lose_answer_to(b"/lost-cancel/locks/")
        with pytest.raises(ConnectionLoss):
            queue.cancel("event-1", "superseded by patch set 2")
        assert len(proxy.lost) == 1
        wait_for(lambda: zk.connected or None, "the client to reconnect", 30)
        assert queue.cancel("event-1", "superseded by patch set 2") == (1, 0)  # ended here, none running
        assert zk.get_children("/lost-cancel/queue") == [] and zk.get_children("/lost-cancel/locks") == []
        assert queue.result("event-1", "unit")["result"] == "ABORTED"
    finally:
        zk.stop()
        zk.close()
        proxy.stop()
