"""The driver's cleanup against moto: what the policy allows goes (instances, key pairs, groups, detached
volumes, unfinished AMIs, orphaned snapshots), each listed; finished AMIs, kept runs and what a live
instance still uses stay."""
from __future__ import annotations

import boto3

from cislaves.clouds.base import TAG_EXPIRES, TAG_OWNER, generate_keypair, parse_time, standard_tags
from cislaves.clouds.ec2.api import aws_tags
from tests.contract import OTHER, OWNER, make_spec, policy
from tests.ec2.moto_env import unfinished_image


def tags_of(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_cleanup_removes_what_a_crashed_run_left_and_keeps_other_runs(make_cloud, centos7, left, tmp_path):
    cloud = make_cloud()
    crashed = make_spec(cloud, centos7, tmp_path / "crashed")
    kept = make_spec(cloud, centos7, tmp_path / "kept")
    lost = cloud.launch(crashed)  # its process "died": nobody calls destroy
    alive = cloud.launch(kept)
    try:
        removed = cloud.cleanup(policy(keep={kept.run_id}))
        why = f"(run {crashed.run_id}: run ended)"
        assert f"instance {lost.id} {why}" in removed
        assert f"key pair {lost.extra['temporary_key_pair']} {why}" in removed
        assert f"security group {lost.extra['temporary_security_group']} {why}" in removed
        assert not any(kept.run_id in line for line in removed), removed
        assert left(crashed.run_id) == []
        assert cloud.refresh(alive).state == "running"
        assert len(left(kept.run_id)) == 4  # instance, key pair, group, volume
    finally:
        cloud.destroy(alive)
    assert left(kept.run_id) == []


def test_unfinished_amis_and_orphaned_snapshots_go_finished_amis_stay(proxy, make_cloud, centos7, moto_url, left,
                                                                      tmp_path):
    cloud = make_cloud(proxy.url, image_timeout=1, max_attempts=1)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    moto = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
    try:
        finished = cloud.create_image(instance, "cislaves-finished", standard_tags(spec.run_id, "centos7", "image"))
        orphaned = cloud.create_image(instance, "cislaves-orphaned", standard_tags(spec.run_id, "centos7", "image"))
        unfinished_image(proxy, cloud, instance, spec, "cislaves-unfinished")
    finally:
        cloud.destroy(instance)
    (half,) = moto.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["cislaves-unfinished*"]}])[
        "Images"]
    tags = tags_of(half)
    assert tags["cislaves:unfinished"] == "true" and tags[TAG_OWNER] == OWNER  # inherited from the instance
    assert parse_time(tags[TAG_EXPIRES]) < parse_time(tags_of(finished_ami := moto.describe_images(
        ImageIds=[finished.id])["Images"][0])[TAG_EXPIRES])  # an unfinished AMI expires with its wait
    assert "cislaves:unfinished" not in tags_of(finished_ami)
    snapshot = moto.describe_images(ImageIds=[orphaned.id])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    moto.deregister_image(ImageId=orphaned.id)  # a deletion cut short: the tagged snapshot stays
    removed = cloud.cleanup(policy())
    assert f"image {half['ImageId']} (run {spec.run_id}: expired)" in removed
    assert f"snapshot {snapshot} (run {spec.run_id}: run ended)" in removed
    assert not any(finished.id in line for line in removed), removed
    remaining = left(spec.run_id)
    assert [r for r in remaining if " image " in r] == [f"us-west-2 image {finished.id}"]
    assert len([r for r in remaining if " snapshot " in r]) == 1  # the finished AMI's own
    cloud.delete_image(finished)
    assert left(spec.run_id) == []
    moto.close()


def test_a_detached_volume_goes_and_a_key_pair_in_use_stays(make_cloud, centos7, moto_ec2, left, tmp_path):
    cloud = make_cloud()
    spec = make_spec(cloud, centos7, tmp_path / "keys", owner=OTHER)  # another host's live instance ...
    expired = standard_tags(spec.run_id, "centos7", "bake", owner=OTHER, ttl_hours=-1)
    public = generate_keypair(tmp_path / "shared-key")
    pair = f"expired-{tmp_path.name}"[:60]  # ... logs in with a key pair whose own tags have expired
    moto_ec2.import_key_pair(KeyName=pair, PublicKeyMaterial=public.encode(),
                             TagSpecifications=[{"ResourceType": "key-pair", "Tags": aws_tags(expired)}])
    user = make_cloud(ssh_key_pair=pair, ssh_private_key_file=str(tmp_path / "shared-key"))
    instance = user.launch(spec)
    volume = moto_ec2.create_volume(AvailabilityZone="us-west-2a", Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": aws_tags(standard_tags(spec.run_id, "centos7", "bake", owner=OWNER))}])
    try:
        removed = cloud.cleanup(policy())
        assert f"volume {volume['VolumeId']} (run {spec.run_id}: run ended)" in removed  # this owner's, detached
        assert not any(pair in line or instance.id in line for line in removed), removed
        assert moto_ec2.describe_key_pairs(KeyNames=[pair])["KeyPairs"]
    finally:
        user.destroy(instance)
    assert f"key pair {pair} (run {spec.run_id}: expired)" in cloud.cleanup(policy())  # no longer in use
    assert left(spec.run_id) == []
