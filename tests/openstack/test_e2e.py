"""The whole `fab it` against the fake cloud (devstack-like `openstack`, and `rackspace` answering as
Rackspace does: versioned catalog, default region, no Location on createImage), its SSH steps
reaching a real local-cloud machine through the address override (ssh_host/ssh_port/ssh_user) and
the seed's RACKSPACE_KEY_PAIR / RACKSPACE_KEY_FILENAME key."""
import re
from pathlib import Path

import pytest
import yaml

from cislaves.clouds.base import generate_keypair, public_key_of
from tests.cli import fab
from tests.openstack.conftest import (NOTHING, RACKSPACE_REGIONS, FakeOpenStack, leftovers, openstack_env,
                                      rackspace_env, seeded)

pytestmark = [pytest.mark.root, pytest.mark.slow]
UNSET = {name: "" for name in ("OS_CLOUD", "OS_PROJECT_ID", "OS_TENANT_NAME", "OS_TENANT_ID", "RACKSPACE_API_KEY",
                               "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_NAME", "OS_REGION_NAME")}


@pytest.fixture(params=["openstack", "rackspace"])
def target(request):
    if request.param == "rackspace":
        for cloud in seeded(FakeOpenStack(rackspace=True, regions=RACKSPACE_REGIONS, default_region="DFW")):
            yield request.param, cloud, rackspace_env(cloud)
    else:
        for cloud in seeded(FakeOpenStack()):
            yield request.param, cloud, openstack_env(cloud)


def test_fab_it_bakes_through_the_fake_cloud(target, local_machine, tmp_path):
    cloud_name, fake, cloud_env = target
    fake.add_keypair("bake-key", public_key_of(Path(local_machine.key_file)))
    section = {"ssh_host": local_machine.address, "ssh_port": local_machine.port, "ssh_user": "root",
               "launch_timeout": 60, "image_timeout": 60, "destroy_timeout": 60, "api_deadline": 10}
    ci_key = generate_keypair(tmp_path / "ci_master")
    config = {"data_dir": str(tmp_path / "data"), "provision": {"package_set": "minimal"},
              "ci_user": {"authorized_key": ci_key},
              "clouds": {cloud_name: section}}
    config_file = tmp_path / "cislaves.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**UNSET, **cloud_env, "CISLAVES_CONFIG": str(config_file),
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
    assert fake.password not in done.stdout + done.stderr and fake.api_key not in done.stdout + done.stderr
    if cloud_name == "rackspace":
        assert set(fake.regions_seen) == {"DFW"} and fake.image_location is False
