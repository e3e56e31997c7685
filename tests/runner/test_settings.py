"""Job settings are checked before anything starts, each mistake in one line naming the key."""
from __future__ import annotations

import os
import subprocess

import pytest

from cislaves.ci import jobsettings
from cislaves.ci.settings import ci_settings
from cislaves.errors import ConfigError
from tests.cli import REPO

pytestmark = [pytest.mark.root]


def error_of(make_config, jobs, **kwargs):
    with pytest.raises(ConfigError) as caught:
        config = make_config(jobs, **kwargs)
        jobsettings.check(config, ci_settings(config))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_each_mistake_is_one_line(make_config):
    ok = {"name": "unit", "body": "true\n"}
    assert error_of(make_config, [{"name": "unit", "run": "missing.sh"}]).endswith(
        "ci.jobs[0] (unit): run: script %s does not exist (paths are relative to the config file)"
        % make_config([ok]).relative("missing.sh"))
    assert error_of(make_config, [{**ok, "triggers": ["gate"]}]).endswith(
        "ci.jobs[0] (unit): triggers: unknown trigger 'gate'; ci.triggers has: check")
    assert error_of(make_config, [{**ok, "distribution": "ubuntu22.04"}]).endswith(
        "ci.jobs[0] (unit): distribution 'ubuntu22.04' was never baked on cloud local; bake it with "
        "`fab it:cloud=local,distribution=ubuntu22.04` (or give the job an image id)")
    assert error_of(make_config, [{**ok, "image": "img-nope"}]).startswith(
        f"{make_config([ok]).path}: ci.jobs[0] (unit): image: 'img-nope' not found on cloud local")
    assert error_of(make_config, [{**ok, "colud": "local"}]).endswith("ci.jobs.0.colud: unknown key")
    assert error_of(make_config, [{**ok, "timeout": 0}]).endswith(
        "ci.jobs.0.timeout: Input should be greater than 0")
    assert error_of(make_config, [{**ok, "env": {"GERRIT_PROJECT": "x"}}]).endswith(
        "'GERRIT_PROJECT' is set by the runner (GERRIT_*, BUILD_ID, JOB_NAME, WORKSPACE, LOG_DIR)")
    assert error_of(make_config, [ok, ok]).endswith("ci.jobs[1] (unit): name: another job is already called 'unit'")
    assert error_of(make_config, [ok], ci={"ready": {"lint": 1}}).endswith(
        "ci.ready: unknown job 'lint'; ci.jobs has: unit")
    assert "ci.max_instances: unknown cloud 'locall'; expected one of: ec2, gce, local," in \
        error_of(make_config, [ok], ci={"max_instances": {"locall": 2}})
    assert error_of(make_config, [ok], ci={"max_instances": {"local": 0}}).endswith(
        "ci.max_instances.local: Input should be greater than or equal to 1")
    assert "{hots}" in error_of(make_config, [ok], gerrit_extra={"git_url": "ssh://{hots}/{project}"})


def test_fab_listen_refuses_a_bad_job_before_starting(make_config, tmp_path):
    config = make_config([{"name": "unit", "run": "missing.sh"}])
    done = subprocess.run(["fab", "listen"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CISLAVES_CONFIG": str(config.path)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 2  # a configuration error
    assert done.stderr.strip().splitlines() == [
        f"error: {config.path}: ci.jobs[0] (unit): run: script {tmp_path / 'missing.sh'} does not exist "
        "(paths are relative to the config file)"]
    assert not (tmp_path / "ci").exists()  # nothing started: no queue, no lock
