"""The ZooKeeper build queue, locks and settings against a real ZooKeeper (no builds)."""
from __future__ import annotations

import threading

import pytest
import yaml
from kazoo.client import KazooClient

from cislaves import config as cfg
from cislaves.coord import locks
from cislaves.coord.builds import BuildQueue, worker_identity
from cislaves.errors import ConfigError, Locked
from cislaves.waiting import wait_for


def client(hosts, timeout=4.0):
    zk = KazooClient(hosts=hosts, timeout=timeout, connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5})
    zk.start(timeout=30)
    return zk


def test_a_build_is_queued_once_and_run_by_one_worker_at_a_time(zk, zookeeper):
    queue = BuildQueue(zk, "/q1")
    assert queue.submit("patchset-created:1:1:check", "unit", {"cloud": "local", "job": {"change": 1}})
    assert not queue.submit("patchset-created:1:1:check", "unit", {"cloud": "local", "job": {"change": 1}})
    assert queue.submit("patchset-created:1:1:check", "lint", {"cloud": "ec2", "job": {"change": 1}})
    other = client(zookeeper.hosts)
    try:
        theirs = BuildQueue(other, "/q1")
        mine = queue.take({"local"}, worker_identity("a"))
        assert mine is not None and mine.data["name"] == "unit"
        assert theirs.take({"local"}, worker_identity("b")) is None  # locked by the first
        assert queue.take({"local"}, worker_identity("a")) is None
        lint = theirs.take({"ec2", "local"}, worker_identity("b"))
        assert lint.data["name"] == "lint"
        queue.started(mine, "build-1", worker_identity("a"))
        pending, done = queue.listing()
        assert [p["running"]["build_id"] for p in pending if p["name"] == "unit"] == ["build-1"]
        assert queue.finish(mine, {"result": "SUCCESS", "build_id": "build-1"})
        assert not theirs.finish(mine, {"result": "FAILURE"})  # not their lock
        pending, done = theirs.listing()
        assert [(d["name"], d["result"]) for d in done] == [("unit", "SUCCESS")]
        assert [p["name"] for p in pending] == ["lint"]
        # a finished build is never queued again, whoever sees its event again
        assert not theirs.submit("patchset-created:1:1:check", "unit", {"cloud": "local", "job": {}})
    finally:
        other.stop()
        other.close()


def test_a_dead_workers_lock_goes_with_its_session_and_the_attempt_is_remembered(zk, zookeeper):
    queue = BuildQueue(zk, "/q2")
    queue.submit("k", "unit", {"cloud": "local", "job": {}})
    # stop() below ends the session; a 1 s session could expire on a loaded machine before started()
    dying = client(zookeeper.hosts, timeout=10.0)
    item = BuildQueue(dying, "/q2").take(None, worker_identity("dying"))
    BuildQueue(dying, "/q2").started(item, "build-a", worker_identity("dying"))
    assert queue.take(None, worker_identity("other")) is None
    dying.stop()  # the session ends: ZooKeeper removes its ephemeral lock
    dying.close()
    again = wait_for(lambda: queue.take(None, worker_identity("other")), "the lock to go with the session", 60,
                     first_delay=0.05, max_delay=0.2)
    assert again.attempts == ["build-a"]


def test_zookeeper_restarted_keeps_queue_locks_and_results(zookeeper):
    # the server's maxSessionTimeout: longer than a JVM restart on a loaded machine (20 s was not always)
    holder = client(zookeeper.hosts, timeout=60.0)
    try:
        queue = BuildQueue(holder, "/q3")
        for n in range(5):
            queue.submit(f"k{n}", "unit", {"cloud": "local", "job": {}})
        item = queue.take(None, worker_identity("w"))
        zookeeper.restart()  # same data dir: the session survives a restart shorter than its timeout
        wait_for(lambda: holder.connected or None, "the client to reconnect", 60, first_delay=0.05)
        assert queue.holds(item)
        assert queue.finish(item, {"result": "SUCCESS"})
        pending, done = queue.listing()
        assert len(pending) == 4 and len(done) == 1
    finally:
        holder.stop()
        holder.close()


def _config(tmp_path, zookeeper, **extra):
    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                    "zookeeper": {"hosts": zookeeper.hosts, "root": "/locks-test"}, **extra}))
    return cfg.load(path, environ={})


def test_the_rebake_lock_is_one_across_hosts(tmp_path, zookeeper):
    config = _config(tmp_path, zookeeper)
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with locks.held(config, "rebake"):
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert inside.wait(30)
    with pytest.raises(Locked, match="another rebake is running"):
        with locks.held(config, "rebake"):
            pass
    leave.set()
    thread.join(30)
    with locks.held(config, "rebake"):  # free again
        pass


def test_settings(tmp_path, zookeeper):
    from cislaves.ci.settings import ci_settings, uses_zookeeper

    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d")}))
    config = cfg.load(plain, environ={})
    assert ci_settings(config).backend == "local" and not uses_zookeeper(config, ci_settings(config))
    plain.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"), "ci": {"backend": "zookeeper"}}))
    config = cfg.load(plain, environ={})
    with pytest.raises(ConfigError, match="ci.backend: zookeeper needs a zookeeper section"):
        uses_zookeeper(config, ci_settings(config))
    plain.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"), "zookeeper": {"hosts": "a b"}}))
    from cislaves.coord.settings import zookeeper_settings

    with pytest.raises(ConfigError, match="zookeeper.hosts"):
        zookeeper_settings(cfg.load(plain, environ={}))


def test_worker_bad_input_is_one_line(tmp_path):
    from tests.cli import cislaves, fab

    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    env = {"CISLAVES_CONFIG": str(path)}
    for result in (fab("worker:concurrency=x", env=env, timeout=60),
                   cislaves("worker", "--concurrency", "0", env=env, timeout=60)):
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: argument 'concurrency': expected a whole number >= 1, got {result.args[-1][-1]!r}"]
    result = fab("worker", env=env, timeout=60)
    assert result.returncode == 2 and "worker needs a zookeeper section" in result.stderr
    assert "Traceback" not in result.stderr
