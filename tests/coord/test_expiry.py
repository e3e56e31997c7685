"""A worker whose ZooKeeper session expires (SIGSTOP past session_timeout, then SIGCONT) aborts its build
and drops its result; the build runs again on the other worker: exactly one result, one report."""
from __future__ import annotations

import json
import signal

import pytest
from kazoo.exceptions import NoNodeError

from cislaves.waiting import wait_for
from tests.coord.helpers import Processes, children, values, zk_config
from tests.fixtures_local import tool_leftovers
from tests.runner.conftest import have_git, running_instances

pytestmark = pytest.mark.skipif(not have_git(), reason="git is needed for the fake Gerrit's repositories")


def test_an_expired_session_aborts_the_build_which_runs_again_elsewhere(
        make_config, gerrit, zookeeper, zk, tmp_path, runner_data_dir):
    config = make_config([{"name": "unit", "body": "echo running\nsleep 6\n"}])
    root = "/expiry"
    procs = Processes(tmp_path)
    try:
        workers = zk_config(config, zookeeper, tmp_path, "workers", root)
        procs.start("listener", zk_config(config, zookeeper, tmp_path, "listener", root), "listen")
        first = procs.start("first", workers, "worker:concurrency=1,clouds=local")
        wait_for(lambda: gerrit.stream_connections >= 1 or None, "the leader to follow the stream", 60)

        def lock():
            for name in children(zk, f"{root}/locks"):
                try:
                    return name, json.loads(zk.get(f"{root}/locks/{name}")[0])
                except NoNodeError:
                    continue
            return None

        gerrit.upload_commit(600, {"a.py": "x = 600\n"})
        name, held = wait_for(lambda: (lock() or (None, {}))[1].get("build_id") and lock(),
                              "the first worker to start the build", 120)
        assert held["pid"] == first.pid
        second = procs.start("second", workers, "worker:concurrency=1,clouds=local")
        first.send_signal(signal.SIGSTOP)  # its session expires after session_timeout (3 s)
        try:
            wait_for(lambda: (lock() or (None, {}))[1].get("pid") == second.pid or None,
                     "the second worker to lock the build once the first one's session expired", 60)
        finally:
            first.send_signal(signal.SIGCONT)
        wait_for(lambda: "session expired" in procs.log("first") or None, "the first worker to see the expiry", 60)
        result = wait_for(lambda: values(zk, f"{root}/results") or None, "the build's result", 180)
        assert len(result) == 1 and result[0]["result"] == "SUCCESS" and result[0]["pid"] == second.pid, result
        attempts = json.loads(zk.get(f"{root}/attempts/{name}")[0])
        assert attempts[0] == held["build_id"] and result[0]["build_id"] == attempts[1], attempts
        wait_for(lambda: [a for a in gerrit.reviews if a[-1] == "600,1"] or None, "the report", 60)
        wait_for(lambda: "dropped" in procs.log("first") or "ABORTED" in procs.log("first") or None,
                 "the first worker to end its aborted build", 60, describe=lambda: procs.log("first")[-1500:])
        procs.stop_all()
        assert len(values(zk, f"{root}/results")) == 1  # the aborted attempt stored nothing
        assert [a[-1] for a in gerrit.reviews if a[-1] == "600,1"] == ["600,1"]
        assert running_instances(config) == []
        assert tool_leftovers(runner_data_dir) == []
    finally:
        procs.stop_all()
