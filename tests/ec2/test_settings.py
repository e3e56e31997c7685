"""The shared SSH settings on EC2: the old names (with a one-line deprecation warning) and the seed's
AWS_KEY_PAIR / AWS_KEY_FILENAME still work; a private key alone becomes the run's temporary key pair;
public/private interfaces; the common timeouts."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cislaves import clouds, config
from cislaves.clouds.base import TAG_RUN, generate_keypair
from tests.cli import fab
from tests.contract import make_spec


@pytest.fixture
def key_pair(moto_ec2, tmp_path):
    """An existing key pair in moto and its private key file: (name, path)."""
    name = f"existing-{tmp_path.name}"[:60]
    public = generate_keypair(tmp_path / "existing")
    moto_ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public.encode())
    yield name, tmp_path / "existing"
    moto_ec2.delete_key_pair(KeyName=name)


@pytest.mark.parametrize("where", ["old setting names", "seed environment"])
def test_old_names_and_seed_variables_launch_with_the_existing_key_pair(where, key_pair, moto_ec2, moto_url,
                                                                         left, tmp_path):
    name, private = key_pair
    ec2: dict = {"poll_max_delay": 0.2}
    env = {"AWS_ENDPOINT_URL_EC2": moto_url, "AWS_REGION": "us-west-2", "CISLAVES_DATA_DIR": str(tmp_path / "data"),
           "CISLAVES_MANIFEST": "", "CISLAVES_CONFIG": str(tmp_path / "cislaves.yaml")}
    if where == "old setting names":
        ec2.update(key_pair=name, key_filename=str(private))
    else:
        env.update(AWS_KEY_PAIR=name, AWS_KEY_FILENAME=str(private))
    (tmp_path / "cislaves.yaml").write_text(yaml.safe_dump({"clouds": {"ec2": ec2}}))
    up = fab("up:cloud=ec2,distribution=centos7", env=env, timeout=120)
    assert up.returncode == 0, up.stderr[-2000:]
    warnings = [line for line in up.stderr.splitlines() if "deprecated" in line]
    if where == "old setting names":
        assert [w.split(" WARNING ", 1)[1] for w in warnings] == [
            f"{tmp_path}/cislaves.yaml: clouds.ec2.key_pair is deprecated: use clouds.ec2.ssh_key_pair",
            f"{tmp_path}/cislaves.yaml: clouds.ec2.key_filename is deprecated: use clouds.ec2.ssh_private_key_file"]
    else:
        assert warnings == []
    instance_id = re.search(r"^Instance: (i-\w+) at centos@", up.stdout, re.M).group(1)
    found = moto_ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    run_id = {t["Key"]: t["Value"] for t in found["Tags"]}[TAG_RUN]
    assert found["KeyName"] == name
    assert not any(" key pair " in r for r in left(run_id))  # no temporary key pair beside it
    state = (tmp_path / "data" / "state.json").read_text()
    assert str(private) in state
    gone = fab("destroy:cloud=ec2", env=env, timeout=120)
    assert gone.returncode == 0 and left(run_id) == []
    assert moto_ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"] and private.exists()  # used as is, kept


def test_a_private_key_alone_is_imported_as_the_runs_key_pair_and_removed_with_it(make_cloud, centos7, moto_ec2,
                                                                                  left, tmp_path):
    generate_keypair(tmp_path / "mine")
    cloud = make_cloud(ssh_private_key_file=str(tmp_path / "mine"))
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    found = moto_ec2.describe_instances(InstanceIds=[instance.id])["Reservations"][0]["Instances"][0]
    pair = moto_ec2.describe_key_pairs(KeyNames=[spec.name])["KeyPairs"][0]
    cloud.destroy(instance)
    assert found["KeyName"] == spec.name == instance.extra["temporary_key_pair"]
    assert {t["Key"]: t["Value"] for t in pair["Tags"]}[TAG_RUN] == spec.run_id
    assert instance.key_file == str(tmp_path / "mine")
    assert left(spec.run_id) == []
    assert (tmp_path / "mine").exists()  # the user's key file is never deleted


def test_a_temporary_key_pair_is_named_after_the_run_and_its_key_file_goes_with_it(make_cloud, centos7, moto_ec2,
                                                                                   tmp_path):
    cloud = make_cloud()
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    found = moto_ec2.describe_instances(InstanceIds=[instance.id])["Reservations"][0]["Instances"][0]
    assert found["KeyName"] == spec.name
    assert Path(instance.key_file).parent == tmp_path / "keys"
    cloud.destroy(instance)
    assert not Path(instance.key_file).exists() and not Path(f"{instance.key_file}.pub").exists()
    assert moto_ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [spec.name]}])["KeyPairs"] == []


@pytest.mark.parametrize("interface, field", [("public", "PublicIpAddress"), ("private", "PrivateIpAddress"),
                                              ("private_dns", "PrivateDnsName")])
def test_common_interface_names_pick_the_address(make_cloud, centos7, moto_ec2, tmp_path, interface, field):
    cloud = make_cloud(ssh_interface=interface)
    instance = cloud.launch(make_spec(cloud, centos7, tmp_path / "keys"))
    found = moto_ec2.describe_instances(InstanceIds=[instance.id])["Reservations"][0]["Instances"][0]
    cloud.destroy(instance)
    assert instance.address == found[field] and instance.address


def test_top_level_timeouts_fill_the_common_names_and_the_cloud_wins(tmp_path):
    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump({"timeouts": {"launch": 5, "image": 7, "destroy": 9, "ssh": 11},
                                    "clouds": {"ec2": {"image_timeout": 70}}}))
    cloud = clouds.get("ec2", config.load(path, environ={}))
    s = cloud.settings
    assert (s.launch_timeout, s.image_timeout, s.destroy_timeout, s.ssh_timeout) == (5, 70, 9, 11)
    cloud.close()
