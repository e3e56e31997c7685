"""Launching: key pairs, security groups, tags, volumes, SSH addresses, settings."""
import stat
from pathlib import Path

import pytest

from cislaves import clouds, config, distros
from cislaves.clouds.base import (TAG_DISTRIBUTION, TAG_EXPIRES, TAG_OWNER, TAG_ROLE, TAG_RUN, TAG_TOOL,
                                  generate_keypair)
from cislaves.errors import CloudError, ConfigError
from tests.contract import OWNER, make_spec


def describe(moto_ec2, instance_id):
    return moto_ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def tags_of(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_launch_tags_everything_and_destroy_removes_every_temporary(make_cloud, centos7, moto_ec2, left, tmp_path):
    cloud = make_cloud(tags={"team": "ci", TAG_RUN: "not-the-run"}, ssh_cidrs=["203.0.113.0/24"])
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    try:
        found = describe(moto_ec2, instance.id)
        assert (instance.user, instance.port, instance.state) == ("centos", 22, "running")
        assert instance.address == found["PublicIpAddress"]
        assert found["InstanceType"] == "t2.medium" and found["ImageId"] == spec.image.id
        tags = tags_of(found)
        assert tags[TAG_RUN] == spec.run_id and tags[TAG_TOOL] == "cislaves" and tags["team"] == "ci"
        assert tags[TAG_DISTRIBUTION] == "centos7" and tags[TAG_ROLE] == "bake" and tags["Name"] == spec.name
        assert tags[TAG_EXPIRES].endswith("Z")
        volumes = moto_ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance.id]}])
        volume = volumes["Volumes"][0]
        assert volume["Size"] == 48
        (mapping,) = found["BlockDeviceMappings"]
        assert mapping["DeviceName"] == "/dev/sda1" and mapping["Ebs"]["DeleteOnTermination"] is True
        assert (tags_of(volume)[TAG_RUN], tags_of(volume)[TAG_OWNER]) == (spec.run_id, OWNER)
        pair = moto_ec2.describe_key_pairs(KeyNames=[found["KeyName"]])["KeyPairs"][0]
        assert (tags_of(pair)[TAG_RUN], tags_of(pair)[TAG_OWNER]) == (spec.run_id, OWNER)
        key_file = Path(instance.key_file)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.parent == tmp_path / "keys"
        (group,) = found["SecurityGroups"]
        group = moto_ec2.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"][0]
        assert (tags_of(group)[TAG_RUN], tags_of(group)[TAG_OWNER]) == (spec.run_id, OWNER)
        (rule,) = group["IpPermissions"]
        assert (rule["FromPort"], rule["ToPort"], rule["IpRanges"][0]["CidrIp"]) == (22, 22, "203.0.113.0/24")
    finally:
        cloud.destroy(instance)
    assert left(spec.run_id) == []
    assert not key_file.exists()
    assert describe(moto_ec2, instance.id)["State"]["Name"] == "terminated"


def test_an_existing_key_pair_and_security_groups_are_used_and_kept(make_cloud, centos7, moto_ec2, left, tmp_path):
    public = generate_keypair(tmp_path / "mine")
    moto_ec2.import_key_pair(KeyName=f"mine-{tmp_path.name}", PublicKeyMaterial=public.encode())
    group = moto_ec2.create_security_group(GroupName=f"mine-{tmp_path.name}", Description="mine")["GroupId"]
    cloud = make_cloud(ssh_key_pair=f"mine-{tmp_path.name}", ssh_private_key_file=str(tmp_path / "mine"),
                       security_group_ids=[group], instance_type="t3.small", spot=True, root_volume_size=20)
    spec = make_spec(cloud, distros.get("ubuntu14.04"), tmp_path / "keys")
    instance = cloud.launch(spec)
    found = describe(moto_ec2, instance.id)
    cloud.destroy(instance)
    assert instance.user == "ubuntu" and instance.key_file == str(tmp_path / "mine")
    assert found["KeyName"] == f"mine-{tmp_path.name}" and [g["GroupId"] for g in found["SecurityGroups"]] == [group]
    assert found["InstanceType"] == "t3.small" and found["InstanceLifecycle"] == "spot"
    assert left(spec.run_id) == []
    assert moto_ec2.describe_key_pairs(KeyNames=[f"mine-{tmp_path.name}"])["KeyPairs"]
    assert moto_ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    assert (tmp_path / "mine").exists()
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_ssh_interface_address_override_proxy_command_and_bastion(make_cloud, centos7, moto_ec2, tmp_path):
    private = make_cloud(ssh_interface="private_ip", ssh_bastion="jump@bastion.example:2222")
    instance = private.launch(make_spec(private, centos7, tmp_path / "a"))
    private.destroy(instance)
    found = describe(moto_ec2, instance.id)
    assert instance.address == found["PrivateIpAddress"] and instance.jump_host == "jump@bastion.example:2222"

    override = make_cloud(ssh_host="127.0.0.1", ssh_port=2200, ssh_user="root",
                          ssh_proxy_command="nc -X connect -x proxy:3128 %h %p")
    instance = override.launch(make_spec(override, centos7, tmp_path / "b"))
    override.destroy(instance)
    assert (instance.address, instance.port, instance.user) == ("127.0.0.1", 2200, "root")
    assert instance.proxy_command == "nc -X connect -x proxy:3128 127.0.0.1 2200"


def write_config(tmp_path, text):
    path = tmp_path / "cislaves.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("yaml_text, environ, expected", [
    ("clouds:\n  ec2:\n    regoin: eu-west-1\n", {}, r"cislaves.yaml: clouds.ec2.regoin: unknown key$"),
    ("clouds:\n  ec2:\n    root_volume_size: 0\n", {}, r"clouds.ec2.root_volume_size: Input should be greater"),
    ("clouds:\n  ec2:\n    ssh_cidrs: [everywhere]\n", {}, r"clouds.ec2.ssh_cidrs: .*'everywhere' is not a CIDR"),
    ("{}\n", {"AWS_REGION": "Oregon"}, r"^environment AWS_REGION: String should match pattern"),
    ("{}\n", {"AWS_KEY_PAIR": "mine"},
     r"clouds.ec2: .*ssh_key_pair \(AWS_KEY_PAIR\) needs ssh_private_key_file \(AWS_KEY_FILENAME\)"),
    ("clouds:\n  ec2:\n    ssh_interface: ipv6\n", {}, r"clouds.ec2.ssh_interface: Input should be 'public_ip'"),
    ("clouds:\n  ec2:\n    base_images:\n      centos7: {ami: centos}\n", {},
     r"clouds.ec2.base_images.centos7.ami: String should match pattern"),
    ("clouds:\n  ec2:\n    profile: nope\n", {},
     r"^clouds.ec2.profile: The config profile \(nope\) could not be found"),
])
def test_bad_settings_are_one_line_naming_the_key(tmp_path, yaml_text, environ, expected):
    cfg = config.load(write_config(tmp_path, yaml_text), environ=environ)
    with pytest.raises(ConfigError, match=expected) as err:
        clouds.get("ec2", cfg)
    assert "\n" not in str(err.value)


def test_environment_variables_configure_the_driver(tmp_path):
    key = tmp_path / "key"
    generate_keypair(key)
    environ = {"AWS_REGION": "eu-central-1", "AWS_INSTANCE_TYPE": "m5.large", "AWS_KEY_PAIR": "ci",
               "AWS_KEY_FILENAME": str(key)}
    cloud = clouds.get("ec2", config.load(write_config(tmp_path, "clouds:\n  ec2:\n    region: us-east-1\n"),
                                          environ=environ))
    s = cloud.settings
    assert (s.region, s.instance_type, s.ssh_key_pair, s.ssh_private_key_file) == ("eu-central-1", "m5.large",
                                                                                "ci", key)
    assert (s.root_volume_size, s.ssh_interface, s.spot) == (48, "public_ip", False)
    cloud.close()


def test_missing_key_file_is_a_config_error_and_creates_nothing(proxy, make_cloud, centos7, tmp_path):
    cloud = make_cloud(proxy.url, ssh_key_pair="ci", ssh_private_key_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"^clouds.ec2.ssh_private_key_file: .*absent does not exist"):
        cloud.launch(make_spec(cloud, centos7, tmp_path / "keys"))
    assert set(proxy.actions) == {"DescribeRegions", "DescribeImages"}  # the region check, then the lookup


def test_no_credentials_is_one_clear_line(make_cloud, centos7, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CloudError, match="^ec2: no AWS credentials found: set AWS_ACCESS_KEY_ID"):
        make_cloud().base_image(centos7)


def test_destroying_an_instance_known_only_from_a_listing_removes_its_temporaries(make_cloud, centos7, left,
                                                                                  tmp_path):
    cloud = make_cloud()
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    launched = cloud.launch(spec)  # then "forgotten", as by a killed process
    (listed,) = cloud.list_instances({TAG_RUN: spec.run_id})
    assert listed.id == launched.id and listed.extra == {k: launched.extra[k] for k in listed.extra}
    cloud.destroy(listed)
    assert left(spec.run_id) == []


def test_a_subnet_puts_the_instance_and_its_group_in_that_vpc(make_cloud, centos7, moto_ec2, left, tmp_path):
    vpc = moto_ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = moto_ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    cloud = make_cloud(subnet_id=subnet, associate_public_ip=True, ssh_interface="private_ip")
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    found = describe(moto_ec2, instance.id)
    group = moto_ec2.describe_security_groups(GroupIds=[instance.extra["temporary_security_group"]])
    cloud.destroy(instance)
    assert found["SubnetId"] == subnet and instance.address.startswith("10.77.1.")
    assert group["SecurityGroups"][0]["VpcId"] == vpc
    assert left(spec.run_id) == []
    moto_ec2.delete_subnet(SubnetId=subnet)
    moto_ec2.delete_vpc(VpcId=vpc)


def test_no_address_on_the_chosen_interface_is_one_line_and_leaves_nothing(make_cloud, centos7, moto_ec2, left,
                                                                         tmp_path):
    vpc = moto_ec2.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
    subnet = moto_ec2.create_subnet(VpcId=vpc, CidrBlock="10.78.1.0/24")["Subnet"]["SubnetId"]
    cloud = make_cloud(subnet_id=subnet, associate_public_ip=False)  # ssh_interface: public_ip (the default)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    with pytest.raises(CloudError, match=r"^ec2: instance i-\w+ has no public_ip address to connect to; it has: "
                                         r"private, .*private_ip \(set ssh_interface\)$") as err:
        cloud.launch(spec)
    assert err.value.code == "NoAddress"
    assert left(spec.run_id) == []
    moto_ec2.delete_subnet(SubnetId=subnet)
    moto_ec2.delete_vpc(VpcId=vpc)
