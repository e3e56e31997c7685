"""Retention through the real `fab prune` and `fab delete_image` on moto's EC2: the newest `keep`
validated images stay, so do the published one, the one an instance boots from, a newer unvalidated
one and another owner's; the rest go with their snapshots. The images are made through the driver
(an instance of a base AMI, no SSH needed) and recorded in the manifest as bakes record them."""
from __future__ import annotations

import re

import pytest

from cislaves import images as manifest
from tests.cli import fab
from tests.lifecycle.conftest import fab_env
from tests.lifecycle.driver_images import MOTO_REBAKE, DriverImages


@pytest.fixture
def setup(tmp_path, moto_url, ec2):
    images = DriverImages(tmp_path, moto_url=moto_url, rebake=MOTO_REBAKE)
    config = images.config
    try:
        made = {}
        source = images.launch()
        for label in ["u0", "v1", "v2", "v3", "v4", "v5", "u6", "other"]:
            image = images.image(source, label, ttl_hours=1000,
                                 **({"owner": "o-another-host"} if label == "other" else {}))
            made[label] = image
            if label != "other":
                manifest.record(config.manifest, [image], distribution="debian12", run_id=image.run_id,
                                name=image.name, source_image=images.base.id)
                if label.startswith("v"):
                    manifest.mark(config.manifest, [image.id], validated=True)
        images.launch(made["v2"])  # v2 is in use
        text = images.published_file.read_text().replace("ami-0aaaaaaaaaaaaaaa3", made["v1"].id)  # v1 is published
        images.published_file.write_text(text)
        yield fab_env(images.path), made, config
    finally:
        images.close()


def exists(ec2, image):
    return bool(ec2().describe_images(Owners=["self"], ImageIds=[image.id])["Images"])


def snapshots(ec2, image):
    found = ec2().describe_images(Owners=["self"], ImageIds=[image.id])["Images"]
    return [m["Ebs"]["SnapshotId"] for i in found for m in i["BlockDeviceMappings"] if "Ebs" in m]


def test_prune_keeps_published_in_use_newest_and_others_images(setup, ec2):
    env, made, config = setup
    dry = fab("prune:dry_run=true", env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr[-3000:]
    would = sorted(re.findall(r"^would delete ec2 us-west-2 debian12 (ami-\w+)", dry.stdout, re.M))
    assert would == sorted([made["v3"].id, made["u0"].id]), dry.stdout
    assert all(exists(ec2, image) for image in made.values())  # a dry run deletes nothing
    snapshot_of_v3 = snapshots(ec2, made["v3"])
    result = fab("prune", env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    reasons = dict(re.findall(r"^(?:keep|deleted) ec2 us-west-2 debian12 (ami-\w+) \((.*)\)$", result.stdout, re.M))
    assert reasons == {made["u6"].id: "not validated, newer than any validated image",
                       made["v5"].id: "validated, newest 1 of 2", made["v4"].id: "validated, newest 2 of 2",
                       made["v3"].id: "validated, older than the newest 2", made["v2"].id: "in use by an instance",
                       made["v1"].id: "published", made["u0"].id: "not validated, superseded by a validated image"}
    assert [label for label, image in made.items() if not exists(ec2, image)] == ["u0", "v3"]
    assert exists(ec2, made["other"])  # another owner's: never ours to prune
    assert snapshot_of_v3 and ec2().describe_snapshots(Filters=[
        {"Name": "snapshot-id", "Values": snapshot_of_v3}])["Snapshots"] == []
    remaining = {b["artifact_id"] for b in manifest.records(config.manifest)}
    assert made["v3"].id not in remaining and made["u0"].id not in remaining


def test_delete_image_refuses_a_published_or_in_use_image_and_deletes_an_old_one(setup, ec2):
    env, made, config = setup
    for label, why in (("v1", "is named in the published YAML"), ("v2", "is in use by an instance")):
        result = fab(f"delete_image:{made[label].id},cloud=ec2", env=env, timeout=120)
        assert result.returncode == 2  # refused without force=true: a usage error
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert why in line and "Traceback" not in result.stderr
        assert exists(ec2, made[label])
    result = fab("delete_image", "--image", made["v3"].id, "--cloud", "ec2", env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"Deleted image {made['v3'].id} on ec2"
    assert not exists(ec2, made["v3"])
    assert made["v3"].id not in {b["artifact_id"] for b in manifest.records(config.manifest)}


@pytest.mark.root
def test_prune_on_the_local_cloud_frees_the_layers_of_old_images(tmp_path, local_cache_dir):
    """The local cloud too: three images, each of a fresh machine (as bakes make them), keep 1, and a
    machine booted from the middle one. The newest and the one in use stay; once the machine is gone,
    only the newest does, and the others' layers leave the data dir."""
    images = DriverImages(tmp_path, "local", cache_dir=local_cache_dir, rebake={
        "targets": [{"cloud": "local", "distribution": "debian12"}], "keep": 1})
    path, config = images.path, images.config
    try:
        made = []
        for _ in range(3):
            machine = images.launch()
            try:
                image = images.image(machine)
            finally:
                images.destroy(machine)
            manifest.record(config.manifest, [image], distribution="debian12", run_id=image.run_id,
                            name=image.name, source_image=None)
            manifest.mark(config.manifest, [image.id], validated=True)
            made.append(image)
        user = images.launch(made[1])
        try:
            first = fab("prune", env=fab_env(path), timeout=120)
            assert first.returncode == 0, first.stderr[-2000:]
            assert re.search(rf"^keep local - debian12 {made[2].id} \(validated, newest 1 of 1\)$", first.stdout,
                             re.M)
            assert re.search(rf"^keep local - debian12 {made[1].id} \(in use by an instance\)$", first.stdout, re.M)
            assert re.search(rf"^deleted local - debian12 {made[0].id} ", first.stdout, re.M), first.stdout
        finally:
            images.destroy(user)
        second = fab("prune", env=fab_env(path), timeout=120)
        assert second.returncode == 0, second.stderr[-2000:]
        assert re.search(rf"^deleted local - debian12 {made[1].id} ", second.stdout, re.M), second.stdout
        assert [i.id for i in images.cloud.list_images({"cislaves:role": "image"})] == [made[2].id]
        assert sorted(p.name for p in (config.data_dir / "local" / "images").iterdir()) == [made[2].id]
    finally:
        images.close()
