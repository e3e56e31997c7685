"""The package as a user installs it: `pip install .` into a fresh venv (the locked versions, from the
package index or pip's cache, never this venv), then `pip install '.[ec2]'`.

Without boto3 (the core alone) every SDK cloud names its extra in one line; with the [ec2] extra,
that venv's own `cislaves` bakes an AMI on moto's EC2 server, its SSH steps on a local-cloud machine
reached through ssh_host/ssh_port (as tests/ec2 does), run from a folder outside the checkout so the
provisioning scripts come from the installed package data. About 30 s of pip and 50 s of bake."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import boto3
import pytest
import yaml

from cislaves.clouds.base import generate_keypair
from tests.cli import REPO

pytestmark = pytest.mark.slow
MOTO = """import sys
from pathlib import Path
from tests.ec2.moto_env import moto_server
with moto_server(Path(sys.argv[1])) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no virtualenv of the tests, no cloud credentials or cislaves settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("AWS_", "OS_", "GOOGLE_", "CISLAVES_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != os.path.dirname(sys.executable))
    return {**env, **extra}


def run(argv, cwd, timeout=300, **env):
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(root, bin): a fresh venv with `pip install SRC` (the core and the local cloud) from a copy of the
    checkout's package files, constrained to the lock."""
    root = tmp_path_factory.mktemp("package")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "cislaves", src / "cislaves", ignore=shutil.ignore_patterns("__pycache__"))
    made = run([sys.executable, "-m", "venv", root / "venv"], root)
    assert made.returncode == 0, made.stderr
    pip = [root / "venv" / "bin" / "python", "-m", "pip", "install", "-q", "-c", REPO / "requirements.txt"]
    core = run([*pip, src], root, timeout=600)
    assert core.returncode == 0, core.stdout[-3000:] + core.stderr[-3000:]
    return root, root / "venv" / "bin", pip, src


def test_core_install_has_no_sdk_and_each_cloud_names_its_extra(venv):
    root, bin_dir, _, _ = venv
    for module in ("boto3", "novaclient", "googleapiclient", "moto", "pytest"):
        probe = run([bin_dir / "python", "-c", f"import {module}"], root)
        assert probe.returncode != 0, f"{module} is installed by the core package"
    for cloud, package, extra in (("ec2", "boto3", "ec2"), ("openstack", "keystoneauth1", "openstack"),
                                  ("rackspace", "keystoneauth1", "openstack"), ("gce", "googleapiclient", "gce")):
        result = run([bin_dir / "cislaves", f"it:cloud={cloud}", ], root, CISLAVES_DATA_DIR=str(root / "data"))
        assert result.returncode == 2, (cloud, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == [f"error: cloud {cloud!r} needs the Python package {package!r}: "
                         f"pip install 'cislaves[{extra}]'"], (cloud, result.stderr)
    frozen = run([bin_dir / "python", "-m", "pip", "freeze", "--exclude", "cislaves"], root).stdout.split()
    locked = {line for line in (REPO / "requirements.txt").read_text().splitlines() if not line.startswith("#")}
    assert frozen and all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line) for line in locked)
    assert set(frozen) <= locked, set(frozen) - locked  # every package the core brings is pinned in the lock
    local = run([bin_dir / "cislaves", "status:cloud=local"], root, CISLAVES_DATA_DIR=str(root / "data"))
    assert local.returncode == 0 and "No instances on cloud 'local'" in local.stdout, local.stderr


@pytest.mark.root
def test_the_ec2_extra_installs_and_its_cislaves_bakes_on_moto(venv, local_machine, tmp_path):
    root, bin_dir, pip, src = venv
    ec2 = run([*pip, f"{src}[ec2]"], root, timeout=600)
    assert ec2.returncode == 0, ec2.stdout[-3000:] + ec2.stderr[-3000:]
    where = run([bin_dir / "python", "-c", "import cislaves, boto3; print(cislaves.__file__)"], root)
    assert where.stdout.startswith(str(root / "venv")), where.stdout + where.stderr
    helped = run([bin_dir / "cislaves", "--help"], root)
    assert helped.returncode == 0 and "--cloud" in helped.stdout and "--hosts" not in helped.stdout

    moto = subprocess.Popen([sys.executable, "-c", MOTO, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = moto.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        client = boto3.client("ec2", region_name="us-west-2", endpoint_url=url, aws_access_key_id="testing",
                              aws_secret_access_key="testing-secret")
        client.import_key_pair(KeyName="package-test", PublicKeyMaterial=open(f"{local_machine.key_file}.pub").read()
                               .strip().encode())
        config = {"data_dir": str(tmp_path / "data"),
                  "ci_user": {"authorized_key": generate_keypair(tmp_path / "ci-key")},
                  "provision": {"package_set": "minimal"},
                  "clouds": {"ec2": {"poll_max_delay": 0.2, "ssh_host": local_machine.address,
                                     "ssh_port": local_machine.port, "ssh_user": "root"}}}
        (tmp_path / "cislaves.yaml").write_text(yaml.safe_dump(config))
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        result = run([bin_dir / "cislaves", "it", "--cloud", "ec2", "--distribution", "debian12"], outside,
                     timeout=600, CISLAVES_CONFIG=str(tmp_path / "cislaves.yaml"), AWS_ENDPOINT_URL_EC2=url,
                     AWS_REGION="us-west-2", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret",
                     AWS_KEY_PAIR="package-test", AWS_KEY_FILENAME=str(local_machine.key_file))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (image,) = re.findall(r"^Image: (ami-\w+)$", result.stdout, re.M)
        found = client.describe_images(ImageIds=[image])["Images"]
        assert found and found[0]["State"] == "available"
        client.close()
    finally:
        moto.stdin.close()
        moto.wait(timeout=60)
