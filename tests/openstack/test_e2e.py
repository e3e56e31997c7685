"""The whole `fab it` against the fake cloud, its SSH steps reaching a real local-cloud machine
through the address override (ssh_host/ssh_port/ssh_username) and the RACKSPACE_KEY_PAIR key."""
import re
from pathlib import Path

import pytest
import yaml

from cislaves.clouds.base import generate_keypair, public_key_of
from tests.cli import fab
from tests.openstack.conftest import NOTHING, leftovers, openstack_env

pytestmark = [pytest.mark.root, pytest.mark.slow]
UNSET = {name: "" for name in ("OS_CLOUD", "OS_PROJECT_ID", "OS_TENANT_NAME", "OS_TENANT_ID", "RACKSPACE_API_KEY",
                               "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_NAME")}


@pytest.mark.parametrize("cloud_name", ["openstack"])  # "rackspace" passes too (about 60 s more)
def test_fab_it_bakes_through_the_fake_cloud(fake, local_machine, tmp_path, cloud_name):
    fake.add_keypair("bake-key", public_key_of(Path(local_machine.key_file)))
    section = {"ssh_host": local_machine.address, "ssh_port": local_machine.port, "ssh_username": "root",
               "launch_timeout": 60, "image_timeout": 60, "delete_timeout": 60, "api_deadline": 10}
    if cloud_name == "rackspace":
        section["flavor"] = "general1-2"
    ci_key = generate_keypair(tmp_path / "ci_master")
    config = {"data_dir": str(tmp_path / "data"), "provision": {"package_set": "minimal"},
              "ci_user": {"authorized_key": ci_key},
              "clouds": {cloud_name: section}}
    config_file = tmp_path / "cislaves.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**UNSET, **openstack_env(fake), "CISLAVES_CONFIG": str(config_file),
           "RACKSPACE_KEY_PAIR": "bake-key", "RACKSPACE_KEY_FILENAME": str(local_machine.key_file)}
    done = fab(f"it:cloud={cloud_name},distribution=debian12", env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finished = re.findall(r"^finished image: ([0-9a-f-]{36})$", done.stdout, re.M)
    assert len(finished) == 1, done.stdout
    image = fake.images[finished[0]]
    assert image["status"] == "active" and image["cislaves:distribution"] == "debian12"
    assert f"Image: {finished[0]}" in done.stdout
    assert leftovers(fake) == {**NOTHING, "images": [image["name"]]}  # the image, no server/key pair/IP
    assert "bake-key" in fake.keypairs  # the user's key pair stays
    assert fake.password not in done.stdout + done.stderr
