"""The `rebake:` section: the issue's own example validates, `only=` selects, a target's region reaches
the driver's region setting (over the environment's), bad input is one line before anything runs."""
from __future__ import annotations

import pytest
import yaml

from cislaves import clouds, config as config_mod
from cislaves.errors import ConfigError
from cislaves.lifecycle import settings
from tests.cli import REPO, fab
from tests.lifecycle.conftest import fab_env, write_config

ISSUE_EXAMPLE = """
rebake:
  targets:
    - {cloud: ec2, distribution: centos7, region: us-west-2}
    - {cloud: ec2, distribution: ubuntu14.04, region: us-west-2}
    - {cloud: rackspace, distribution: centos7, region: DFW}
    - {cloud: rackspace, distribution: centos7, region: IAD}
  parallel: 4
  per_cloud: {ec2: 4, rackspace: 2}
  validate: true
  keep: 3
  publish:
    file: ci-platform/all/all.yaml
    path: "jenkins.clouds.images.{cloud_key}.{region}.{distribution}"
    git: {branch: "images-{date}", commit: true, push: false}
  notify: {email: ops@example.org, webhook: https://chat.example.org/hooks/ci, when: failure}
"""


def load(text, environ=None):
    return config_mod.Config(yaml.safe_load(text), None, environ or {})


def test_the_issue_example_and_the_template_validate_and_only_selects():
    config = load(ISSUE_EXAMPLE)
    rebake = settings.load(config)
    assert [t.key for t in rebake.targets] == ["ec2/centos7/us-west-2", "ec2/ubuntu14.04/us-west-2",
                                               "rackspace/centos7/DFW", "rackspace/centos7/IAD"]
    assert rebake.per_cloud == {"ec2": 4, "rackspace": 2} and rebake.validate_ and rebake.keep == 3
    assert [t.key for t in settings.select(rebake, "ec2/centos7")] == ["ec2/centos7/us-west-2"]
    assert [t.key for t in settings.select(rebake, "rackspace+ec2/ubuntu14.04")] == [
        "ec2/ubuntu14.04/us-west-2", "rackspace/centos7/DFW", "rackspace/centos7/IAD"]
    with pytest.raises(ConfigError, match=r"argument 'only': gce/centos7 matches no rebake target; targets: ec2/"):
        settings.select(rebake, "gce/centos7")
    template = yaml.safe_load((REPO / "segredos" / "cislaves.yaml.example").read_text())
    assert settings.Rebake.model_validate(template["rebake"]).targets == []


def test_a_targets_region_reaches_the_driver_over_the_environment():
    config = load(ISSUE_EXAMPLE + "clouds: {ec2: {region: us-east-1}}\n", {"AWS_REGION": "ap-south-1",
                                                                          "OS_REGION_NAME": "ORD"})
    rebake = settings.load(config)
    ec2 = clouds.get("ec2", rebake.targets[0].session_config(config))
    assert ec2.describe()["region"] == "us-west-2"
    assert settings.region_field("rackspace") == "region_name" and settings.region_field("local") is None
    cfg = rebake.targets[3].session_config(config)
    assert cfg.raw["clouds"]["rackspace"]["region_name"] == "IAD" and "OS_REGION_NAME" not in cfg.environ
    assert "rebake" not in cfg.raw


@pytest.mark.parametrize("targets, expected", [
    ([{"cloud": "ec3", "distribution": "centos7"}], r"rebake\.targets\.0: Value error, unknown cloud 'ec3'"),
    ([{"cloud": "ec2", "distribution": "centos7"}] * 2, r"target 'ec2/centos7' is listed twice"),
    ([{"cloud": "ec2", "distribution": "centos7", "colour": "red"}], r"rebake\.targets\.0\.colour: unknown key"),
    ([], r"rebake\.targets: expected at least one"),
])
def test_bad_targets_are_one_line_through_fab(tmp_path, targets, expected):
    import re

    path = write_config(tmp_path, rebake={"targets": targets})
    result = fab("rebake", env=fab_env(path), timeout=60)
    assert result.returncode == 2  # a configuration error
    (line,) = result.stderr.strip().splitlines()
    assert re.search(expected, line), line
    assert not (tmp_path / "data" / "rebakes").exists()


def test_a_second_rebake_while_one_runs_exits_75_with_one_line(tmp_path, moto_url, ec2):
    import fcntl

    path = write_config(tmp_path, moto_url=moto_url, rebake={
        "targets": [{"cloud": "ec2", "distribution": "debian12", "region": "us-west-2"}]})
    config = config_mod.load(path, environ={})
    config.data_dir.mkdir(parents=True)
    before = ec2().describe_instances()["Reservations"]
    with open(config.data_dir / "rebake.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 4242 since 2026-12-02T00:00:00Z\n")
        lock.flush()
        second = fab("rebake:only=ec2/debian12,dry_run=true", env=fab_env(path), timeout=120)
    assert second.returncode == 75
    assert second.stderr.strip().splitlines() == [
        f"error: another rebake is running (pid 4242 since 2026-12-02T00:00:00Z; lock "
        f"{config.data_dir / 'rebake.lock'}); this one exits"]
    assert second.stdout == ""
    assert ec2().describe_instances()["Reservations"] == before
