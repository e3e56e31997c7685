"""A patch set streamed by the fake Gerrit runs on a fresh local machine booted from the baked image:
the script sees the patch set's files (fetched over Gerrit's SSH with git-upload-pack) and every
GERRIT_* variable; the build directory holds the timestamped output, the artifacts and build.json;
no instance remains. Also a failing script, a boot failure, a timeout and hostile change text."""
from __future__ import annotations

import json
import re

import pytest

from cislaves.ci.runner import log_dir_for
from tests.ci.helpers import job_rows
from tests.runner.conftest import running_instances, wait_for_builds

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_leftovers")]

ENV_DUMP = """
mkdir -p "$LOG_DIR"
env -0 > "$LOG_DIR/env.bin"
id -un > "$LOG_DIR/whoami"
pwd > "$LOG_DIR/pwd"
cat feature.txt
git -C "$WORKSPACE" log -1 --format=%H > "$LOG_DIR/head"
mkdir -p out/sub && echo artifact > out/sub/result.txt
"""
STAMP = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \| ")


def read_env(path):
    items = [entry.split("=", 1) for entry in path.read_bytes().decode().split("\0") if entry]
    return dict(items)


def test_patch_set_runs_on_a_fresh_machine(make_config, listener, gerrit, baked_image):
    config = make_config([{"name": "unit", "body": ENV_DUMP + "echo done\n", "artifacts": ["out/**"],
                           "env": {"EXTRA": "x y"}}])
    listener(config)
    event = gerrit.upload_commit(1234, {"feature.txt": "the patch set's content\n"})
    [build] = wait_for_builds(config, 1)
    assert build.result == "SUCCESS", build.detail
    folder = log_dir_for(config.relative("logs"), build)
    assert build.log_dir == str(folder)
    assert str(folder).endswith(f"/34/1234/1/check/unit/{build.id}")
    output = (folder / "job-output.txt").read_bytes().splitlines()
    assert output and all(STAMP.match(line) for line in output)
    assert any(line.endswith(b"| the patch set's content") for line in output)
    env = read_env(folder / "logs" / "env.bin")
    change = event["change"]
    assert {k: v for k, v in env.items() if k.startswith("GERRIT_")} == {
        "GERRIT_PROJECT": "openstack/nova", "GERRIT_BRANCH": "master",
        "GERRIT_REFSPEC": "refs/changes/34/1234/1", "GERRIT_CHANGE_NUMBER": "1234", "GERRIT_PATCHSET_NUMBER": "1",
        "GERRIT_PATCHSET_REVISION": event["patchSet"]["revision"], "GERRIT_CHANGE_ID": change["id"],
        "GERRIT_CHANGE_URL": change["url"], "GERRIT_CHANGE_SUBJECT": change["subject"],
        "GERRIT_CHANGE_OWNER_EMAIL": "alice@example.org", "GERRIT_EVENT_TYPE": "patchset-created"}
    assert env["BUILD_ID"] == build.id and env["JOB_NAME"] == "unit" and env["EXTRA"] == "x y"
    assert env["WORKSPACE"] == "/home/jenkins/workspace/openstack/nova" and env["LOG_DIR"] == "/home/jenkins/logs"
    assert (folder / "logs" / "whoami").read_text().strip() == "jenkins"
    assert (folder / "logs" / "pwd").read_text().strip() == env["WORKSPACE"]
    assert (folder / "logs" / "head").read_text().strip() == event["patchSet"]["revision"]
    assert (folder / "out" / "sub" / "result.txt").read_text() == "artifact\n"
    meta = json.loads((folder / "build.json").read_text())
    assert meta["result"] == "SUCCESS" and meta["job"] == "unit" and meta["change"] == 1234
    assert meta["patchset"] == 1 and meta["cloud"] == "local" and meta["image_id"] == baked_image.id
    assert meta["distribution"] == "debian12" and "instance_type" in meta
    assert meta["start"].endswith("Z") and meta["end"].endswith("Z")
    assert set(meta["durations"]) == {"boot", "workspace", "script", "collect", "destroy"}
    assert gerrit.fetches == ["/openstack/nova"]
    assert running_instances(config) == []


def test_a_failing_script_is_a_failure_with_its_artifacts(make_config, listener, gerrit):
    # two jobs on one trigger: one buildset, run in parallel; the failing one keeps its artifacts
    config = make_config([{"name": "lint", "body": "mkdir -p out; echo broken > out/report.txt\nexit 3\n",
                           "artifacts": ["out/*", "/etc/hostname"], "voting": False},
                          {"name": "unit", "body": "echo fine\n", "triggers": ["check"]}])
    listener(config)
    gerrit.upload_commit(77, {"a.py": "x = 1\n"})
    both = {b.name: b for b in wait_for_builds(config, 2)}
    assert both["unit"].result == "SUCCESS" and both["unit"].voting and not both["lint"].voting
    assert both["unit"].job_id == both["lint"].job_id
    [job] = job_rows(config)
    assert (job.state, job.result) == ("failed", "FAILURE lint, SUCCESS unit")
    build = both["lint"]
    assert (build.result, build.detail) == ("FAILURE", "the script exited 3")
    folder = log_dir_for(config.relative("logs"), build)
    assert (folder / "out" / "report.txt").read_text() == "broken\n"
    assert (folder / "etc" / "hostname").exists()
    assert json.loads((folder / "build.json").read_text())["result"] == "FAILURE"
    assert running_instances(config) == []


def test_a_boot_failure_is_retried_then_a_node_failure(make_config, listener, gerrit):
    # a launch deadline no machine can meet: every boot fails for real (the driver gives up and cleans up)
    config = make_config([{"name": "unit", "body": "echo never\n"}], local={"launch_timeout": 0.01})
    listener(config)
    gerrit.upload_commit(78, {"a.py": "x = 1\n"})
    [build] = wait_for_builds(config, 1)
    assert build.result == "NODE_FAILURE" and build.node_attempts == 2
    assert "boot failed" in build.detail
    text = (log_dir_for(config.relative("logs"), build) / "job-output.txt").read_text()
    assert text.count("node failure (attempt") == 2
    assert running_instances(config) == []


def test_a_script_past_its_timeout_is_stopped(make_config, listener, gerrit):
    config = make_config([{"name": "slow", "body": "echo started\nsleep 600\n", "timeout": 2}])
    listener(config)
    gerrit.upload_commit(79, {"a.py": "x = 1\n"})
    [build] = wait_for_builds(config, 1)
    assert build.result == "TIMED_OUT"
    assert "started" in (log_dir_for(config.relative("logs"), build) / "job-output.txt").read_text()
    assert running_instances(config) == []


HOSTILE = "$(touch /tmp/pwned-1)`touch /tmp/pwned-2`'; touch /tmp/pwned-3; echo '\"\n$HOME;|&"


def test_hostile_branch_topic_and_subject_are_inert(make_config, listener, gerrit, tmp_path):
    body = 'env -0 > "$LOG_DIR/env.bin"\nif ls /tmp/pwned-* 2>/dev/null; then exit 9; fi\n'
    config = make_config([{"name": "unit", "body": body}])
    listener(config)
    branch = "stable/$(touch /tmp/pwned-4)"
    gerrit.upload_commit(80, {"a.py": "x = 1\n"}, branch=branch, subject=HOSTILE, topic=HOSTILE)
    [build] = wait_for_builds(config, 1)
    assert build.result == "SUCCESS", build.detail
    env = read_env(log_dir_for(config.relative("logs"), build) / "logs" / "env.bin")
    assert env["GERRIT_BRANCH"] == branch
    assert env["GERRIT_CHANGE_SUBJECT"] == HOSTILE and env["GERRIT_TOPIC"] == HOSTILE
    assert not list(__import__("pathlib").Path("/tmp").glob("pwned-*"))


def test_a_project_name_that_is_not_plain_is_an_error_before_any_boot(make_config, listener, gerrit):
    config = make_config([{"name": "unit", "body": "echo never\n"}])
    listener(config)
    gerrit.upload(81, project="openstack/../../etc")  # an event Gerrit would never send
    [build] = wait_for_builds(config, 1)
    assert build.result == "ERROR" and build.instance_id is None
    assert build.detail == "project 'openstack/../../etc' is not a plain name (letters, digits, ._+- and '/')"
    assert gerrit.fetches == []
