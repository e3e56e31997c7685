"""Scale-out end to end on a real ZooKeeper: `fab listen` processes (one leader) and `fab worker`
processes running real builds (the CI runner, local cloud, the session's image, the fake Gerrit's git)."""
from __future__ import annotations

import collections
import json
import signal

import pytest
from kazoo.exceptions import NoNodeError

from cislaves.records import TAG_BUILD
from cislaves.waiting import wait_for
from tests.cli import fab
from tests.coord.helpers import Processes, children, values, zk_config
from tests.fixtures_local import tool_leftovers
from tests.runner.conftest import have_git, running_instances

pytestmark = pytest.mark.skipif(not have_git(), reason="git is needed for the fake Gerrit's repositories")


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def test_thirty_builds_on_three_workers_survive_a_killed_worker_and_a_zookeeper_restart(
        make_config, gerrit, zookeeper, zk, procs, tmp_path, runner_data_dir):
    # 15 changes x 2 jobs: 30 builds; a buildset's two builds usually run on two workers
    config = make_config([{"name": "unit", "body": "echo running $GERRIT_CHANGE_NUMBER\nsleep 1\n"},
                          {"name": "lint", "body": "echo lint $GERRIT_CHANGE_NUMBER\nsleep 1\n"}])
    root = "/scale"
    listener = zk_config(config, zookeeper, tmp_path, "listener", root)
    procs.start("listener", listener, "listen")
    wait_for(lambda: children(zk, f"{root}/listener/election") or None, "the listener to stand for election", 60)
    workers = [procs.start(f"worker{i}", zk_config(config, zookeeper, tmp_path, "workers", root),
                           "worker:concurrency=2,clouds=local") for i in range(3)]
    wait_for(lambda: gerrit.stream_connections >= 1 or None, "the leader to follow the stream", 60)
    # every worker past its start-up (its reap of what dead workers of this host left): else a worker
    # still starting would reap worker0's builds after the kill, before any worker retakes them by tag
    wait_for(lambda: all(", concurrency 2, clouds local" in procs.log(f"worker{i}") for i in range(3)) or None,
             "the three workers to start", 120)
    changes = list(range(300, 315))
    for change in changes:
        gerrit.upload_commit(change, {"a.py": f"x = {change}\n"})

    def running_on(pid):
        out = {}
        for name in children(zk, f"{root}/locks"):
            try:
                data = json.loads(zk.get(f"{root}/locks/{name}")[0])
            except NoNodeError:
                continue
            if data.get("pid") == pid and data.get("build_id"):
                out[name] = data["build_id"]
        return out

    victim = workers[0]
    def booted_on(pid):  # a build of worker0 whose instance exists (so that one is left to remove)
        builds = running_on(pid)
        tagged = {i.tags.get(TAG_BUILD) for i in running_instances(config)}
        return builds if tagged & set(builds.values()) else None

    killed = wait_for(lambda: booted_on(victim.pid), "a build running on worker0 with its instance", 120,
                      first_delay=0.05, max_delay=0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    zookeeper.restart()  # mid-run, with builds running and queued

    def done():
        results = values(zk, f"{root}/results")
        return results if len(results) >= 2 * len(changes) else None

    results = wait_for(done, f"{2 * len(changes)} results", 240, first_delay=0.2, max_delay=1,
                       describe=lambda: f"{len(children(zk, root + '/results'))} results, queue "
                                        f"{len(children(zk, root + '/queue'))}; " + procs.log("worker1")[-1500:])
    per_change = collections.Counter((r["job"]["change"], r["name"]) for r in results)
    assert per_change == {(c, n): 1 for c in changes for n in ("unit", "lint")}
    assert {r["result"] for r in results} == {"SUCCESS"}, [r for r in results if r["result"] != "SUCCESS"]
    assert children(zk, f"{root}/queue") == [] and children(zk, f"{root}/locks") == []
    # the killed worker's builds ran again elsewhere, after their instances were found by tag and removed
    for name, build_id in killed.items():
        attempts = json.loads(zk.get(f"{root}/attempts/{name}")[0])
        result = json.loads(zk.get(f"{root}/results/{name}")[0])
        assert attempts[0] == build_id and len(attempts) == 2, attempts
        assert result["build_id"] == attempts[1] and result["pid"] != victim.pid
    assert "removed instance" in procs.log("worker1") + procs.log("worker2")
    # the ZooKeeper restart stopped the leader's following; it followed again once leader again
    assert "no longer leader (ZooKeeper connection lost)" in procs.log("listener")
    wait_for(lambda: procs.log("listener").count("leader; resuming") >= 2 or None,
             "the listener to lead again after the restart", 60)
    # `fab jobs` on any host with the configuration shows every build from ZooKeeper
    shown = fab("jobs", env={"CISLAVES_CONFIG": str(tmp_path / "workers.yaml")}, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"0 queued or running, {2 * len(changes)} finished" in shown.stdout, shown.stdout
    assert sum(" finished  SUCCESS " in line for line in shown.stdout.splitlines()) == 2 * len(changes)
    # exactly one report per buildset, by the leader, naming both builds' published logs
    reviewed = lambda: [a for a in gerrit.reviews if a[-1] in {f"{c},1" for c in changes}]  # noqa: E731
    wait_for(lambda: len(reviewed()) >= len(changes) or None, f"{len(changes)} reports", 60,
             describe=lambda: f"{len(reviewed())} reports; " + procs.log("listener")[-1500:])
    # the leader's status page shows every host's builds from ZooKeeper
    page = tmp_path / "logs" / "index.html"
    wait_for(lambda: page.exists() and all(str(c) in page.read_text() for c in changes) or None,
             "the status page to show every change", 60)
    procs.stop_all()
    reports = values(zk, f"{root}/reports")
    assert len(reports) == len(changes) and {r["state"] for r in reports} == {"reported"}, reports
    assert collections.Counter(a[-1] for a in reviewed()) == {f"{c},1": 1 for c in changes}
    for argv in reviewed():
        text = argv[argv.index("--message") + 1]
        assert "* lint " in text and "* unit " in text and "SUCCESS" in text, text
        for result in results:  # each build's logs were published by its worker; the report links there
            if f"{result['job']['change']},1" == argv[-1]:
                assert result["url"] and f"* {result['name']} {result['url']} : SUCCESS" in text, text
    assert running_instances(config) == []
    assert tool_leftovers(runner_data_dir) == []
