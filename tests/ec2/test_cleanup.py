"""The driver's cleanup against moto: what the policy allows goes (instances, key pairs, groups,
unfinished AMIs, orphaned snapshots), each listed; finished AMIs and kept runs stay."""
from __future__ import annotations

import boto3

from cislaves.clouds.base import TAG_EXPIRES, TAG_OWNER, parse_time, standard_tags
from tests.contract import OWNER, make_spec, policy
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
