"""Every distribution has a script that passes `bash -n` and shellcheck, and the catalog says what
the issue asks for (base image per cloud, login users, package family)."""
import shutil
import subprocess

import pytest

from cislaves import distros
from cislaves.distros import SCRIPTS_DIR
from cislaves.distros.provision import script_files

SHELL_FILES = sorted(SCRIPTS_DIR.glob("*.sh"))


def test_every_distribution_has_its_script_and_helpers():
    assert distros.names() == ["centos7", "debian12", "rocky9", "ubuntu14.04", "ubuntu22.04", "ubuntu24.04"]
    for name in distros.names():
        files = script_files(distros.get(name))
        assert all(f.is_file() for f in files), files


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_bash_syntax(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck(path):
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed (.ci/run installs it)")
    result = subprocess.run(["shellcheck", "-x", "-s", "bash", path.name], cwd=SCRIPTS_DIR,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_scripts_use_strict_mode_and_no_pipe_to_shell():
    lib = (SCRIPTS_DIR / "lib.sh").read_text()
    assert "set -euo pipefail" in lib
    for path in SHELL_FILES:
        text = path.read_text()
        assert "| sh" not in text and "| bash" not in text, path.name
        if path.name not in ("lib.sh", "apt.sh", "el.sh"):
            assert '. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"' in text, path.name


@pytest.mark.parametrize("name,family,ec2_user", [
    ("centos7", "yum", "centos"), ("ubuntu14.04", "apt", "ubuntu"), ("ubuntu22.04", "apt", "ubuntu"),
    ("ubuntu24.04", "apt", "ubuntu"), ("debian12", "apt", "admin"), ("rocky9", "dnf", "rocky")])
def test_catalog_entry(name, family, ec2_user):
    dist = distros.get(name)
    assert dist.family == family
    assert dist.user_for("ec2") == ec2_user
    assert dist.user_for("rackspace") == "root"
    assert dist.user_for("gce", default="ci-baker") == "ci-baker"
    assert set(dist.selector("ec2")) == {"owner", "name"}
    assert set(dist.selector("gce")) == {"project", "family"}
    assert "name" in dist.selector("openstack") and "name" in dist.selector("rackspace")
    if dist.local_unavailable is None:
        assert set(dist.selector("local")) >= {"suite", "mirror"}
