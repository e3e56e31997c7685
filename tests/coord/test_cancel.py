"""Cancelling builds that run on workers: `fab cancel:job=N` (queued: ended here; running: aborted by its
worker) and a newer patch set superseding the older one's builds; ABORTED, not reported, no instance
left. One listener, one worker (concurrency 1), the local cloud."""
from __future__ import annotations

import json

import pytest
from kazoo.exceptions import NoNodeError

from cislaves.waiting import wait_for
from tests.cli import fab
from tests.coord.helpers import Processes, children, values, zk_config
from tests.fixtures_local import tool_leftovers
from tests.runner.conftest import have_git, running_instances

pytestmark = pytest.mark.skipif(not have_git(), reason="git is needed for the fake Gerrit's repositories")


def items(zk, root):
    out = []
    for child in children(zk, f"{root}/queue"):
        try:
            data = json.loads(zk.get(f"{root}/queue/{child}")[0])
        except NoNodeError:
            continue
        data["locked"] = zk.exists(f"{root}/locks/{child.split('~')[1]}") is not None
        out.append(data)
    return out


def test_cancel_and_supersede_reach_the_worker(make_config, gerrit, zookeeper, zk, tmp_path, runner_data_dir):
    body = ("echo started $GERRIT_CHANGE_NUMBER $GERRIT_PATCHSET_NUMBER\n"  # only 502,2 ends by itself
            '[ "$GERRIT_CHANGE_NUMBER" = 502 ] && [ "$GERRIT_PATCHSET_NUMBER" = 2 ] && exit 0\nsleep 600\n')
    config = make_config([{"name": "long", "body": body}])
    root = "/cancel"
    procs = Processes(tmp_path)
    try:
        workers = zk_config(config, zookeeper, tmp_path, "workers", root)
        procs.start("listener", zk_config(config, zookeeper, tmp_path, "listener", root), "listen")
        procs.start("worker", workers, "worker:concurrency=1,clouds=local")
        wait_for(lambda: gerrit.stream_connections >= 1 or None, "the leader to follow the stream", 60)
        gerrit.upload_commit(500, {"a.py": "x = 500\n"})
        running = wait_for(lambda: [i for i in items(zk, root) if i["locked"] and i["job"]["change"] == 500] or None,
                           "change 500's build to run", 120)[0]
        gerrit.upload_commit(501, {"a.py": "x = 501\n"})
        queued = wait_for(lambda: [i for i in items(zk, root) if i["job"]["change"] == 501] or None,
                          "change 501's build to be queued", 60)[0]
        assert not queued["locked"]  # concurrency 1: it waits behind change 500's
        env = {"CISLAVES_CONFIG": str(workers)}
        out = fab(f"cancel:job={queued['job']['id']}", env=env, timeout=120)
        assert out.returncode == 0 and "1 queued build(s) cancelled, 0 running" in out.stdout, out.stdout + out.stderr
        wait_for(lambda: json.loads(zk.get(f"{root}/locks/{_name(running)}")[0]).get("build_id"),
                 "change 500's build to start on the worker", 60)
        out = fab(f"cancel:job={running['job']['id']}", env=env, timeout=120)
        assert out.returncode == 0 and "0 queued build(s) cancelled, 1 running" in out.stdout, out.stdout + out.stderr

        def result_of(change, patchset=1):
            return [r for r in values(zk, f"{root}/results")
                    if r["job"]["change"] == change and r["job"]["patchset"] == patchset] or None

        aborted = wait_for(lambda: result_of(500), "change 500's build to be aborted by its worker", 60)
        assert [r["result"] for r in aborted] == ["ABORTED"] and "fab cancel" in aborted[0]["detail"], aborted
        assert [r["result"] for r in result_of(501)] == ["ABORTED"]
        # a newer patch set supersedes the running build of the older one
        gerrit.upload_commit(502, {"a.py": "x = 502\n"})
        wait_for(lambda: [i for i in items(zk, root) if i["locked"] and i["job"]["change"] == 502] or None,
                 "change 502 patch set 1 to run", 120)
        gerrit.upload_commit(502, {"a.py": "x = 502 again\n"})
        old = wait_for(lambda: result_of(502), "patch set 1 to be superseded", 120)
        assert [r["result"] for r in old] == ["ABORTED"] and "superseded by patch set 2" in old[0]["detail"], old
        new = wait_for(lambda: result_of(502, 2), "patch set 2's build", 180)
        assert [r["result"] for r in new] == ["SUCCESS"], new
        wait_for(lambda: [a for a in gerrit.reviews if a[-1] == "502,2"] or None, "patch set 2's report", 60)
        procs.stop_all()
        # ABORTED builds are not reported: only 502,2 got a comment
        assert [a[-1] for a in gerrit.reviews if a[-1].split(",")[0] in ("500", "501", "502")] == ["502,2"]
        assert children(zk, f"{root}/queue") == [] and children(zk, f"{root}/locks") == []
        assert running_instances(config) == []
        assert tool_leftovers(runner_data_dir) == []
    finally:
        procs.stop_all()


def _name(item):
    from cislaves.coord.builds import item_name

    return item_name(item["key"], item["name"])
