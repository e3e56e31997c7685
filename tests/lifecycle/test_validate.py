"""Validation and dry runs through the real `fab rebake`:
- a local image that passes the bake's checks but breaks on its next boot (an extra script enables a
  first-boot unit that removes /etc/cislaves/provisioned before sshd starts) fails validation: the
  image is deleted, nothing is published, the summary names the validate step;
- a dry run (Fabric 3's own `--only ... --dry-run` form) bakes and validates an EC2 target, prints
  the YAML diff, and changes neither the file nor its repository."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from cislaves import TOOL, clouds, config as config_mod, images
from cislaves.records import TAG_TOOL
from tests.cli import fab
from tests.fixtures_local import tool_leftovers
from tests.lifecycle.conftest import ec2_target, fab_env, segredos_repo, write_config

pytestmark = [pytest.mark.root, pytest.mark.slow]
PATH = "env.default.jenkins.clouds.images.{cloud_key}.{region}.{distribution}"
BREAK_ON_BOOT = """#!/bin/sh
set -e
cat > /etc/systemd/system/cislaves-test-break.service <<'EOF'
[Unit]
Description=break the image on its next boot (a validation test)
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/bin/rm -f /etc/cislaves/provisioned
[Install]
WantedBy=multi-user.target
EOF
systemctl enable cislaves-test-break.service
"""


def test_an_image_failing_validation_is_deleted_and_not_published(tmp_path, ci_key, local_cache_dir):
    folder = tmp_path / "segredos"
    published = segredos_repo(folder)
    script = tmp_path / "break-on-boot.sh"
    script.write_text(BREAK_ON_BOOT)
    script.chmod(0o755)
    path = write_config(folder, ci_key=ci_key, cache_dir=local_cache_dir, rebake={
        "targets": [{"cloud": "local", "distribution": "debian12", "region": "lab-a",
                     "config": {"provision": {"extra_scripts": {"debian12": [str(script)]}}}}],
        "publish": {"file": "ci-platform/all/all.yaml", "path": PATH, "git": {"branch": "images-{date}"}}})
    before = published.read_text()
    result = fab("rebake", env=fab_env(path), timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    image = re.search(r"^\[local/debian12/lab-a\] Image: (\S+)$", result.stdout, re.M).group(1)
    assert re.search(r"^local/debian12/lab-a +failed +- +\S+ +validate/tests ", result.stdout, re.M), result.stdout
    assert re.search(r"^\[local/debian12/lab-a\] FAIL provisioned: ", result.stdout, re.M)
    assert f"[local/debian12/lab-a] Deleted image {image} (it failed validation)" in result.stdout
    config = config_mod.load(path, environ={})
    assert image not in {i.id for i in clouds.get("local", config).list_images({TAG_TOOL: TOOL})}
    assert image not in (config.data_dir / "manifest.json").read_text()
    assert published.read_text() == before
    assert subprocess.run(["git", "-C", str(folder), "branch", "--list"], capture_output=True, text=True,
                          check=True).stdout.split() == ["*", "main"]
    assert tool_leftovers(config.data_dir) == []


def test_a_dry_run_bakes_and_validates_but_changes_no_file(tmp_path, moto_url, machines, ci_key):
    folder = tmp_path / "segredos"
    published = segredos_repo(folder)
    (machine,) = machines(1)
    path = write_config(folder, moto_url=moto_url, ci_key=ci_key, rebake={
        "targets": [ec2_target("us-west-2", machine),
                    {"cloud": "local", "distribution": "debian12", "region": "lab-a"}],
        "publish": {"file": "ci-platform/all/all.yaml", "path": PATH,
                    "git": {"branch": "images-{date}", "commit": True}}})
    before = published.read_text()
    result = fab("rebake", "--only", "ec2/debian12", "--dry-run", env=fab_env(path), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    image = re.search(r"^\[ec2/debian12/us-west-2\] Image: (ami-\w+)$", result.stdout, re.M).group(1)
    assert "local/debian12" not in result.stdout  # only= chose the EC2 target
    diff = [line[len("publish (dry run): "):] for line in result.stdout.splitlines()
            if line.startswith("publish (dry run): ")]
    assert '-              debian12: "ami-0aaaaaaaaaaaaaaa3"' in diff
    assert f'+              debian12: "{image}"' in diff
    assert published.read_text() == before
    git = subprocess.run(["git", "-C", str(folder), "log", "--all", "--oneline"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(git) == 1
    build = next(b for b in images.records(folder / "data" / "manifest.json")
                 if b["artifact_id"] == image)
    assert build["validated"] is True and "published" not in build
    assert re.search(rf"^prune: keep ec2 us-west-2 debian12 {image} \(validated, newest 1 of 3\)$",
                     result.stdout, re.M)


def test_sigint_stops_a_rebake_and_leaves_nothing(tmp_path, ci_key, local_cache_dir):
    import os
    import signal

    from tests.test_bake_local import Fab

    path = write_config(tmp_path / "segredos", ci_key=ci_key, cache_dir=local_cache_dir, rebake={
        "targets": [{"cloud": "local", "distribution": "debian12", "region": "lab-a"},
                    {"cloud": "local", "distribution": "debian12", "region": "lab-b"}]})
    run = Fab(["rebake"], fab_env(path))
    run.wait_for_line(r"^\[local/debian12/lab-b\] Instance: ", timeout=120)
    os.kill(run.proc.pid, signal.SIGINT)
    code, output = run.finish(timeout=300)
    assert code == 130, output[-3000:]
    assert re.search(r"^error: rebake \S+ interrupted; finished targets are in \S+\.json$", output, re.M), output
    assert re.search(r"^local/debian12/lab-a +interrupted ", output, re.M)
    assert "publish and prune: skipped (interrupted)" in output
    config = config_mod.load(path, environ={})
    assert tool_leftovers(config.data_dir) == []
    assert json.loads((config.data_dir / "state.json").read_text())["instances"] == {}
    assert {i.id for i in clouds.get("local", config).list_images({TAG_TOOL: TOOL}) if i.run_id} == set()
