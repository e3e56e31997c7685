"""Retention through the real `fab prune` and `fab delete_image` on moto's EC2: the newest `keep`
validated images stay, so do the published one, the one an instance boots from, a newer unvalidated
one and another owner's; the rest go with their snapshots. The images are made through the driver
(an instance of a base AMI, no SSH needed) and recorded in the manifest as bakes record them."""
from __future__ import annotations

import re

import pytest

from cislaves import clouds, config as config_mod, distros, images as manifest
from cislaves.records import LaunchSpec, new_run_id, standard_tags
from cislaves.state import State
from tests.cli import fab
from tests.lifecycle.conftest import fab_env, segredos_repo, write_config

PATH = "env.default.jenkins.clouds.images.{cloud_key}.{region}.{distribution}"


@pytest.fixture
def setup(tmp_path, moto_url, ec2):
    folder = tmp_path / "segredos"
    published_file = segredos_repo(folder)
    path = write_config(folder, moto_url=moto_url, rebake={
        "targets": [{"cloud": "ec2", "distribution": "debian12", "region": "us-west-2"}], "keep": 2,
        "publish": {"file": "ci-platform/all/all.yaml", "path": PATH}})
    config = config_mod.load(path, environ={})
    owner = State(config.data_dir).owner_id()
    cloud = clouds.get("ec2", config)
    debian12 = distros.get("debian12")
    base = cloud.base_image(debian12)
    made, instances = {}, []

    def launch(image):
        run_id = new_run_id()
        spec = LaunchSpec(distribution=debian12, image=image, run_id=run_id, name=f"t-{run_id}",
                          tags=standard_tags(run_id, "debian12", "instance", owner=owner),
                          key_dir=tmp_path / "keys")
        instance = cloud.launch(spec)
        instances.append(instance)
        return instance

    source = launch(base)
    for label in ["u0", "v1", "v2", "v3", "v4", "v5", "u6", "other"]:
        run_id = new_run_id()
        tags = standard_tags(run_id, "debian12", "image", ttl_hours=1000,
                             owner="o-another-host" if label == "other" else owner)
        image = cloud.create_image(source, f"cislaves-debian12-{label}-{run_id}", tags)
        made[label] = image
        if label != "other":
            manifest.record(config.manifest, [image], distribution="debian12", run_id=run_id, name=image.name,
                            source_image=base.id)
            if label.startswith("v"):
                manifest.mark(config.manifest, [image.id], validated=True)
    launch(made["v2"])  # v2 is in use
    text = published_file.read_text().replace("ami-0aaaaaaaaaaaaaaa3", made["v1"].id)  # v1 is published
    published_file.write_text(text)
    yield fab_env(path), made, config
    for instance in instances:
        cloud.destroy(instance)
    cloud.close()


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
    path = write_config(tmp_path / "segredos", cache_dir=local_cache_dir, rebake={
        "targets": [{"cloud": "local", "distribution": "debian12"}], "keep": 1})
    config = config_mod.load(path, environ={})
    owner = State(config.data_dir).owner_id()
    cloud = clouds.get("local", config)
    debian12 = distros.get("debian12")

    def launch(image):
        run_id = new_run_id()
        return cloud.launch(LaunchSpec(distribution=debian12, image=image, run_id=run_id, name=f"t-{run_id}",
                                       tags=standard_tags(run_id, "debian12", "instance", owner=owner),
                                       key_dir=tmp_path / "keys"))

    made = []
    for _ in range(3):
        machine = launch(cloud.base_image(debian12))
        try:
            image_run = new_run_id()
            image = cloud.create_image(machine, f"cislaves-debian12-{image_run}",
                                       standard_tags(image_run, "debian12", "image", owner=owner))
        finally:
            cloud.destroy(machine)
        manifest.record(config.manifest, [image], distribution="debian12", run_id=image_run,
                        name=image.name, source_image=None)
        manifest.mark(config.manifest, [image.id], validated=True)
        made.append(image)
    user = launch(made[1])
    try:
        first = fab("prune", env=fab_env(path), timeout=120)
        assert first.returncode == 0, first.stderr[-2000:]
        assert re.search(rf"^keep local - debian12 {made[2].id} \(validated, newest 1 of 1\)$", first.stdout, re.M)
        assert re.search(rf"^keep local - debian12 {made[1].id} \(in use by an instance\)$", first.stdout, re.M)
        assert re.search(rf"^deleted local - debian12 {made[0].id} ", first.stdout, re.M), first.stdout
    finally:
        cloud.destroy(user)
    second = fab("prune", env=fab_env(path), timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert re.search(rf"^deleted local - debian12 {made[1].id} ", second.stdout, re.M), second.stdout
    assert [i.id for i in cloud.list_images({"cislaves:role": "image"})] == [made[2].id]
    assert sorted(p.name for p in (config.data_dir / "local" / "images").iterdir()) == [made[2].id]
