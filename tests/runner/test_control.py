"""Stopping builds: a newer patch set aborts the older one's running build (script killed, instance
gone; how fast, target 5 s, is figure 5 of bench/ci_runner.py, not asserted here); `fab cancel` aborts
one; stopping the listener aborts and re-queues (the next start runs it again); SIGTERM to `fab listen`
mid-build aborts and re-queues; SIGKILL: the next start reaps the instance by tag and reruns."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from cislaves.ci import buildcli
from cislaves.ci.runner import log_dir_for
from cislaves.waiting import wait_for
from tests.ci.helpers import job_rows, stop_process
from tests.cli import REPO, fab
from tests.runner.conftest import builds_of, running_instances, wait_for_builds

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_leftovers")]
SLEEPER = "echo running\nsleep 600\n"


def wait_running(config, count=1, timeout=60):
    """Wait until `count` builds print `running` from their scripts; return those builds."""
    def probe():
        found = []
        for build in builds_of(config):
            output = log_dir_for(config.relative("logs"), build) / "job-output.txt"
            if build.state == "running" and output.exists() and "| running\n" in output.read_text():
                found.append(build)
        return found if len(found) >= count else None
    return wait_for(probe, f"{count} script(s) running", timeout, first_delay=0.05, max_delay=0.2)


def test_a_newer_patch_set_aborts_and_cancel_aborts(make_config, listener, gerrit):
    config = make_config([{"name": "unit", "body": SLEEPER}])
    listener(config)
    gerrit.upload_commit(90, {"a.py": "x = 1\n"})
    [first] = wait_running(config)
    [machine] = running_instances(config)
    gerrit.upload_commit(90, {"a.py": "x = 2\n"})

    def first_aborted():
        build = next(b for b in builds_of(config) if b.id == first.id)
        gone = machine.id not in [i.id for i in running_instances(config)]
        return build if build.state == "finished" and gone else None
    aborted = wait_for(first_aborted, "the old patch set's build aborted and its instance gone", 120,
                       first_delay=0.05, max_delay=0.1)  # the script sleeps 600 s: only an abort ends it
    assert (aborted.result, aborted.detail) == ("ABORTED", "superseded by patch set 2")
    [second] = [b for b in wait_running(config) if b.patchset == 2]
    assert buildcli.cancel(config, second.job_id) == f"job {second.job_id}: 1 running build(s) asked to stop"
    [done, _] = wait_for_builds(config, 2)
    assert (done.id, done.result, done.detail) == (second.id, "ABORTED", "cancelled by fab cancel")
    assert {j.id: j.state for j in job_rows(config)} == {first.job_id: "cancelled", second.job_id: "cancelled"}
    lines = buildcli.logs(config, second.job_id, lines=3)
    assert lines[0].startswith(f"== unit build {second.id}: ABORTED") and "[cislaves] result: ABORTED" in lines[-1]
    assert running_instances(config) == []


def test_a_stopping_listener_aborts_and_the_next_start_reruns(make_config, listener, gerrit):
    config = make_config([{"name": "unit", "body": SLEEPER}])
    service = listener(config)
    gerrit.upload_commit(91, {"a.py": "x = 1\n"})
    [first] = wait_running(config)
    service.stop(grace=10)
    service.runner.stop()
    [stopped] = builds_of(config)
    assert (stopped.result, stopped.rerun) == ("ABORTED", True)
    assert [j.state for j in job_rows(config)] == ["queued"]
    assert running_instances(config) == []
    config = make_config([{"name": "unit", "body": "echo second run\n"}])
    listener(config)
    [rerun, old] = wait_for_builds(config, 2)
    assert rerun.result == "SUCCESS" and rerun.job_id == old.job_id == first.job_id
    assert [j.state for j in job_rows(config)] == ["succeeded"]


def test_sigterm_then_sigkill_of_fab_listen_mid_build(make_config, gerrit):
    config = make_config([{"name": "unit", "body": SLEEPER}])
    env = {**os.environ, "CISLAVES_CONFIG": str(config.path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}

    def listen():
        before = gerrit.stream_connections
        proc = subprocess.Popen(["fab", "listen"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        wait_for(lambda: gerrit.stream_connections > before, "fab listen to stream events", 30)
        return proc
    proc = listen()
    try:
        gerrit.upload_commit(92, {"a.py": "x = 1\n"})
        [first] = wait_running(config)
        status, err = stop_process(proc)  # SIGTERM: the build is aborted, its instance destroyed, re-queued
        assert status == 0, err
        assert running_instances(config) == [] and [j.state for j in job_rows(config)] == ["queued"]
        proc = listen()  # runs it again ...
        [second] = [b for b in wait_running(config) if b.id != first.id]
        [machine] = running_instances(config)
        proc.send_signal(signal.SIGKILL)  # ... and is killed
        proc.wait(30)
        assert machine.id in [i.id for i in running_instances(config)]  # left behind by the killed listener
        config = make_config([{"name": "unit", "body": "echo third run\n"}])
        proc = listen()
        [rerun, killed, stopped] = wait_for_builds(config, 3)
        assert (stopped.id, stopped.result, stopped.rerun) == (first.id, "ABORTED", True)
        assert (killed.id, killed.result, killed.rerun) == (second.id, "ABORTED", True)
        assert rerun.result == "SUCCESS" and rerun.job_id == first.job_id
        assert running_instances(config) == []
        jobs = fab("jobs", env={"CISLAVES_CONFIG": str(config.path)})
        row = [line for line in jobs.stdout.splitlines() if line.startswith(f"{first.job_id} ") and "nova" in line]
        assert len(row) == 1 and "unit" in row[0] and "SUCCESS" in row[0] and rerun.log_dir in row[0]
        logs = fab(f"logs:job={first.job_id},lines=2", env={"CISLAVES_CONFIG": str(config.path)}).stdout
        assert f"== unit build {rerun.id}: SUCCESS" in logs and f"{rerun.log_dir}/job-output.txt" in logs
        assert logs.rstrip().endswith("[cislaves] result: SUCCESS")
    finally:
        status, err = stop_process(proc)
    assert status == 0, err


def test_enqueue_runs_the_one_job_named(make_config, listener, gerrit):
    from cislaves.ci import cli
    from cislaves.errors import ConfigError

    config = make_config([{"name": "unit", "body": "echo unit\n"}, {"name": "lint", "body": "echo lint\n"}])
    gerrit.upload_commit(93, {"a.py": "x = 1\n"}, publish=False)
    with pytest.raises(ConfigError, match=r"argument job: 'tempest' is not in ci.jobs \(unit, lint\)"):
        cli.enqueue(config, 93, 1, job="tempest")
    assert cli.enqueue(config, 93, 1).startswith("job 1 queued")
    assert buildcli.cancel(config, 1) == "job 1 cancelled (it was queued)"
    assert buildcli.cancel(config, 1) == "job 1 is cancelled: nothing to cancel"
    assert cli.enqueue(config, 93, 1, job="lint").startswith("job 2 queued")
    listener(config)
    [build] = wait_for_builds(config, 1)
    assert (build.name, build.result, build.trigger, build.job_id) == ("lint", "SUCCESS", "manual", 2)
    assert [j.state for j in job_rows(config)] == ["succeeded", "cancelled"]
