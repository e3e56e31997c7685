"""Fixtures for the GCE driver: a fake compute v1 server, a service account key, a configured driver.

The driver is built the way the tool builds it (a YAML config loaded by cislaves.config, then the
registry), so its settings and environment variables are exercised too.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

import pytest
import yaml

from cislaves import clouds, config, distros
from cislaves.keys import generate_keypair
from tests.gce.fake_gce_http import FakeGCEServer

PROJECT = "cislaves-test"
ZONE = "europe-west1-b"
NEWEST_DEBIAN = "debian-12-bookworm-v20261110"


def seed_public_images(fake) -> None:
    """Base images as Google's public projects hold them: several versions per family, one deprecated."""
    day = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    fake.add_image("debian-cloud", "debian-12-bookworm-v20260901", "debian-12", created=day - dt.timedelta(days=60))
    fake.add_image("debian-cloud", NEWEST_DEBIAN, "debian-12", created=day + dt.timedelta(days=9))
    fake.add_image("debian-cloud", "debian-12-bookworm-v20261120", "debian-12", created=day + dt.timedelta(days=19),
                   deprecated=True)
    fake.add_image("debian-cloud", "debian-11-bullseye-v20261110", "debian-11", created=day)
    fake.add_image("ubuntu-os-cloud", "ubuntu-2204-jammy-v20261101", "ubuntu-2204-lts", created=day)
    fake.add_image("centos-cloud", "centos-7-v20240611", "centos-7", created=day - dt.timedelta(days=900))


@pytest.fixture
def gce_server():
    with FakeGCEServer(step=0.03) as server:
        seed_public_images(server.fake)
        yield server


@pytest.fixture
def gce_credentials(gce_server, tmp_path) -> Path:
    path = tmp_path / "service-account.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(gce_server.service_account_info(PROJECT), fh)
    return path


@pytest.fixture
def gce_config(gce_server, gce_credentials, tmp_path):
    """make(extra settings, environ) -> a loaded Config whose clouds.gce talks to the fake."""
    def make(settings: dict | None = None, environ: dict | None = None, top: dict | None = None):
        section = {"zone": ZONE, "api_endpoint": gce_server.endpoint, "poll_max_delay": 0.2,
                   **(settings or {})}
        data = {"data_dir": str(tmp_path / "data"), "clouds": {"gce": section}, **(top or {})}
        path = tmp_path / "cislaves.yaml"
        path.write_text(yaml.safe_dump(data))
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(gce_credentials), "GCE_PROJECT": PROJECT, **(environ or {})}
        return config.load(path, environ=env)

    return make


@pytest.fixture
def make_gce(gce_config):
    """make(settings, environ) -> a GCECloud on the fake (closed at the end)."""
    with contextlib.ExitStack() as closing:
        def make(settings: dict | None = None, environ: dict | None = None):
            cloud = clouds.get("gce", gce_config(settings, environ))
            closing.callback(cloud.close)
            return cloud

        yield make


@pytest.fixture
def gce_cloud(make_gce):
    return make_gce()


@pytest.fixture
def debian12_gce():
    return distros.get("debian12")


@pytest.fixture
def gce_fab_env(gce_server, gce_credentials, tmp_path):
    """make(machine=None, settings=None) -> the environment for `fab` using the fake (and SSH to `machine`,
    if given, through the address override and the seed's key variables)."""
    def make(machine=None, settings: dict | None = None):
        section = {"zone": ZONE, "api_endpoint": gce_server.endpoint, "poll_max_delay": 0.2, **(settings or {})}
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(gce_credentials), "GCE_PROJECT": PROJECT,
               "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
        if machine is not None:
            section.update(ssh_host=machine.address, ssh_port=machine.port)
            env.update(GCE_PRIVATE_KEY_FILENAME=machine.key_file, GCE_PUBLIC_KEY_FILENAME=machine.key_file + ".pub",
                       OS_USERNAME="root")
        ci_key = generate_keypair(tmp_path / "ci-master", comment="ci-master")
        path = tmp_path / "fab-config.yaml"
        path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "fab-data"), "clouds": {"gce": section},
                                        "provision": {"package_set": "minimal"},
                                        "ci_user": {"authorized_key": ci_key}}))
        env["CISLAVES_CONFIG"] = str(path)
        return env

    return make


def the_error_line(result) -> str:
    """The one `error:` line a failed fab printed (and no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]
