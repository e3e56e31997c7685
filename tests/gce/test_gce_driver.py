"""The GCE driver against the fake compute v1 server: what it asks GCE for, and in which order."""
from __future__ import annotations

import pytest

from cislaves.clouds.base import TAG_RUN, generate_keypair, standard_tags
from tests.contract import OTHER, OWNER, make_spec, policy
from tests.gce.conftest import NEWEST_DEBIAN, PROJECT, ZONE
from tests.gce.fake_gce import LABEL_KEY, LABEL_VALUE


def only(items):
    assert len(items) == 1, items
    return items[0]


def test_base_image_is_the_newest_usable_image_of_the_family(gce_cloud, debian12_gce):
    image = gce_cloud.base_image(debian12_gce)
    assert image.id == f"projects/debian-cloud/global/images/{NEWEST_DEBIAN}"  # not the deprecated one
    assert image.state == "available" and image.extra["family"] == "debian-12"
    assert image.created == "2026-11-10T00:00:00Z"  # the API's Pacific time, read as UTC


def test_an_explicit_image_setting_wins(make_gce, debian12_gce):
    cloud = make_gce({"image": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"})
    assert cloud.base_image(debian12_gce).name == "ubuntu-2204-jammy-v20261101"


def test_launch_labels_instance_and_disk_and_writes_the_ssh_key(make_gce, gce_server, debian12_gce, tmp_path):
    key = tmp_path / "id_ed25519"
    public = generate_keypair(key, comment="me@laptop")
    cloud = make_gce(environ={"GCE_PRIVATE_KEY_FILENAME": str(key), "GCE_PUBLIC_KEY_FILENAME": f"{key}.pub",
                              "OS_USERNAME": "builder"})
    spec = make_spec(cloud, debian12_gce, tmp_path / "keys")
    instance = cloud.launch(spec)
    try:
        state = gce_server.fake.snapshot()
        raw, disk = only(state["instances"]), only(state["disks"])
        for labels in (raw["labels"], disk["labels"]):
            assert labels["cislaves-run-id"] == spec.run_id and labels["cislaves-tool"] == "cislaves"
            assert all(LABEL_KEY.match(k) and LABEL_VALUE.match(v) for k, v in labels.items())
        metadata = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
        assert metadata["ssh-keys"] == f"builder:{public.rsplit(' ', 1)[0]} builder"
        assert metadata["enable-oslogin"] == "FALSE"
        assert only(raw["disks"])["autoDelete"] is True
        assert disk["sourceImage"].endswith(f"/projects/debian-cloud/global/images/{NEWEST_DEBIAN}")
        assert raw["machineType"].endswith(f"/zones/{ZONE}/machineTypes/e2-standard-2")
        assert instance.user == "builder" and instance.key_file == str(key)
        assert instance.address == raw["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
        assert not (tmp_path / "keys").exists()  # no temporary key when one is configured
        # the insert operation went PENDING -> RUNNING -> DONE and the driver polled it until DONE
        assert gce_server.fake.calls.count("zoneOperations.get") >= 2
    finally:
        cloud.destroy(instance)


def test_without_a_configured_key_a_temporary_one_is_made_and_removed(gce_cloud, gce_server, debian12_gce,
                                                                      tmp_path):
    spec = make_spec(gce_cloud, debian12_gce, tmp_path / "keys")
    instance = gce_cloud.launch(spec)
    assert instance.user == "cislaves"
    key_line = open(instance.key_file + ".pub").read().split()[:2]
    raw = only(gce_server.fake.snapshot()["instances"])
    assert raw["metadata"]["items"][0]["value"] == f"cislaves:{' '.join(key_line)} cislaves"
    gce_cloud.destroy(instance)
    assert list((tmp_path / "keys").iterdir()) == []


def test_address_override_and_internal_address(make_gce, gce_server, debian12_gce, tmp_path):
    override = make_gce({"ssh_host": "127.0.0.9", "ssh_port": 2222})
    instance = override.launch(make_spec(override, debian12_gce, tmp_path / "a"))
    try:
        assert (instance.address, instance.port) == ("127.0.0.9", 2222)
        assert override.refresh(instance).address == "127.0.0.9"
    finally:
        override.destroy(instance)
    internal = make_gce({"external_ip": False})
    instance = internal.launch(make_spec(internal, debian12_gce, tmp_path / "b"))
    try:
        raw = only(gce_server.fake.snapshot()["instances"])
        assert "accessConfigs" not in raw["networkInterfaces"][0] or not raw["networkInterfaces"][0]["accessConfigs"]
        assert instance.address == raw["networkInterfaces"][0]["networkIP"]
    finally:
        internal.destroy(instance)


def test_start_after_stop_reads_the_new_ephemeral_address(gce_cloud, debian12_gce, tmp_path):
    instance = gce_cloud.launch(make_spec(gce_cloud, debian12_gce, tmp_path / "keys"))
    try:
        stopped = gce_cloud.stop(instance)
        assert stopped.state == "stopped" and stopped.address != instance.address
        started = gce_cloud.start(stopped)
        assert started.state == "running" and started.address not in (None, instance.address)
    finally:
        gce_cloud.destroy(instance)


def test_create_image_stops_then_images_the_boot_disk_before_anything_is_deleted(gce_cloud, gce_server,
                                                                               debian12_gce, tmp_path):
    spec = make_spec(gce_cloud, debian12_gce, tmp_path / "keys")
    instance = gce_cloud.launch(spec)
    try:
        boot_disk = only(gce_server.fake.snapshot()["disks"])["selfLink"]
        image = gce_cloud.create_image(instance, "cislaves-debian12-20261122-023525",
                                       standard_tags(spec.run_id, "debian12", "image"))
    finally:
        gce_cloud.destroy(instance)
    calls = gce_server.fake.calls
    assert calls.index("instances.stop") < calls.index("images.insert") < calls.index("instances.delete")
    state = gce_server.fake.snapshot()
    assert state["instances"] == [] and state["disks"] == []
    raw = only([i for i in state["images"] if f"/projects/{PROJECT}/" in i["selfLink"]])
    assert raw["name"] == image.id == "cislaves-debian12-20261122-023525"
    assert raw["status"] == "READY" and raw["family"] == "cislaves-debian12"
    assert raw["sourceDisk"] == boot_disk
    assert raw["labels"]["cislaves-run-id"] == spec.run_id and raw["labels"]["cislaves-role"] == "image"
    assert image.source_image == f"projects/debian-cloud/global/images/{NEWEST_DEBIAN}"
    assert gce_cloud.list_images({TAG_RUN: spec.run_id})[0].source_image == image.source_image
    assert gce_cloud.image_lines([image]) == [
        f"GCE image: projects/{PROJECT}/global/images/{image.id} (family cislaves-debian12)"]
    assert gce_cloud.get_image(f"projects/{PROJECT}/global/images/family/cislaves-debian12").id == image.id


def test_lists_follow_every_page(make_gce, gce_server, debian12_gce, tmp_path):
    gce_server.fake.page_size = 2
    cloud = make_gce()
    launched = [cloud.launch(make_spec(cloud, debian12_gce, tmp_path / f"k{n}")) for n in range(5)]
    assert sorted(i.id for i in cloud.list_instances()) == sorted(i.id for i in launched)
    removed = cloud.cleanup(policy(keep={launched[0].run_id}))
    assert len(removed) == 4
    state = gce_server.fake.snapshot()
    assert [i["name"] for i in state["instances"]] == [launched[0].id]
    assert [d["name"] for d in state["disks"]] == [launched[0].id]
    cloud.destroy(launched[0])
    assert gce_server.fake.calls.count("instances.aggregatedList") >= 3 + 3


def test_cleanup_removes_leftover_disks_of_runs_not_kept(gce_cloud, gce_server):
    fake = gce_server.fake
    ours = {"cislaves-tool": "cislaves", "cislaves-owner": OWNER}
    fake.add_disk(PROJECT, ZONE, "left-by-crash", {**ours, "cislaves-run-id": "old-run"})
    fake.add_disk(PROJECT, "us-east1-b", "kept-run", {**ours, "cislaves-run-id": "live"})
    fake.add_disk(PROJECT, ZONE, "other-host", {"cislaves-tool": "cislaves", "cislaves-owner": OTHER,
                                                "cislaves-run-id": "theirs"})
    fake.add_disk(PROJECT, ZONE, "other-expired", {"cislaves-tool": "cislaves", "cislaves-owner": OTHER,
                                                   "cislaves-run-id": "gone",
                                                   "cislaves-expires": "2026-01-01t00-00-00z"})
    fake.add_disk(PROJECT, ZONE, "not-ours", {"team": "web"})
    removed = gce_cloud.cleanup(policy(keep={"live"}))
    assert sorted(removed) == [f"disk left-by-crash (zone {ZONE}, run old-run, run ended)",
                               f"disk other-expired (zone {ZONE}, run gone, expired)"]
    assert sorted(d["name"] for d in fake.snapshot()["disks"]) == ["kept-run", "not-ours", "other-host"]


def test_cleanup_removes_unfinished_images_but_not_baked_ones(gce_cloud, gce_server):
    fake = gce_server.fake
    ours = {"cislaves-tool": "cislaves", "cislaves-owner": OWNER, "cislaves-run-id": "dead-run"}
    fake.add_image(PROJECT, "half-made", "cislaves-debian12", status="PENDING", labels=ours)
    fake.add_image(PROJECT, "broken", "cislaves-debian12", status="FAILED", labels=ours)
    fake.add_image(PROJECT, "baked", "cislaves-debian12", labels=ours)  # a product: the manifest decides
    fake.add_image(PROJECT, "theirs", "cislaves-debian12", status="FAILED",
                   labels={**ours, "cislaves-owner": OTHER})
    removed = gce_cloud.cleanup(policy())
    assert sorted(removed) == ["unfinished image broken (status FAILED, run dead-run, run ended)",
                               "unfinished image half-made (status PENDING, run dead-run, run ended)"]
    assert sorted(i["name"] for i in fake.snapshot()["images"] if f"/{PROJECT}/" in i["selfLink"]) == \
        ["baked", "theirs"]


def test_destroy_deletes_the_boot_disk_when_autodelete_was_turned_off(gce_cloud, gce_server, debian12_gce,
                                                                       tmp_path):
    fake = gce_server.fake
    instance = gce_cloud.launch(make_spec(gce_cloud, debian12_gce, tmp_path / "keys"))
    with fake.lock:  # as `gcloud compute instances set-disk-auto-delete --no-auto-delete` would
        fake.instances[(PROJECT, ZONE, instance.id)]["disks"][0]["autoDelete"] = False
    gce_cloud.destroy(instance)
    state = fake.snapshot()
    assert state["instances"] == [] and state["disks"] == []
    assert "disks.delete" in fake.calls  # autoDelete did not remove it: the driver did


def test_the_shared_ssh_settings_pick_the_interface_and_carry_bastion_and_proxy(make_gce, gce_server, debian12_gce,
                                                                                 tmp_path):
    cloud = make_gce({"ssh_interface": "private", "ssh_bastion": "jump@bastion.example:2200", "ssh_user": "ops"})
    instance = cloud.launch(make_spec(cloud, debian12_gce, tmp_path / "a"))
    try:
        raw = only(gce_server.fake.snapshot()["instances"])
        assert instance.address == raw["networkInterfaces"][0]["networkIP"]  # the internal IP
        assert raw["networkInterfaces"][0]["accessConfigs"]  # external_ip still on: outbound NAT
        assert (instance.jump_host, instance.user) == ("jump@bastion.example:2200", "ops")
        assert cloud.refresh(instance).jump_host == "jump@bastion.example:2200"
    finally:
        cloud.destroy(instance)
    proxied = make_gce({"ssh_proxy_command": "ssh -W %h:%p gate"})
    instance = proxied.launch(make_spec(proxied, debian12_gce, tmp_path / "b"))
    try:
        expanded = f"ssh -W {instance.address}:22 gate"  # OpenSSH's %h/%p: paramiko runs the command as given
        assert instance.proxy_command == expanded
        listed = only(proxied.list_instances({TAG_RUN: instance.run_id}))
        assert listed.proxy_command == expanded and listed.address == instance.address
    finally:
        proxied.destroy(instance)


def test_labels_hold_owner_and_run_in_label_form_and_cleanup_compares_them_so(make_gce, gce_server, debian12_gce,
                                                                             tmp_path):
    cloud = make_gce()
    instance = cloud.launch(make_spec(cloud, debian12_gce, tmp_path / "k", owner="Host.A"))  # not label-safe
    raw = only(gce_server.fake.snapshot()["instances"])
    assert raw["labels"]["cislaves-owner"] == "host-a"
    assert cloud.cleanup(policy(owner="Host.B")) == []  # another owner's live run
    assert [line.split()[1] for line in cloud.cleanup(policy(owner="Host.A"))] == [instance.id]
    assert gce_server.fake.snapshot()["instances"] == []


def test_a_lost_image_insert_answer_and_an_image_name_someone_else_holds(gce_server, debian12_gce,
                                                                         tmp_path, make_gce):
    from cislaves.clouds.gce.api import Conflict

    fake = gce_server.fake
    cloud = make_gce({"api_retry_delay": 0.01})
    spec = make_spec(cloud, debian12_gce, tmp_path / "keys")
    instance = cloud.launch(spec)
    try:
        fake.lose_answer("images.insert")
        image = cloud.create_image(instance, "cislaves-debian12-lost", standard_tags(spec.run_id, "debian12", "image"))
        assert image.state == "available" and fake.calls.count("images.insert") == 2
        fake.add_image(PROJECT, "cislaves-debian12-taken", labels={"team": "web"})
        with pytest.raises(Conflict) as info:
            cloud.create_image(instance, "cislaves-debian12-taken", standard_tags(spec.run_id, "debian12", "image"))
        assert (info.value.code, info.value.status) == ("alreadyExists", 409)
        assert "images.delete" not in fake.calls
        cloud.delete_image(image)
    finally:
        cloud.destroy(instance)
    assert [i["name"] for i in fake.snapshot()["images"] if f"/{PROJECT}/" in i["selfLink"]] == \
        ["cislaves-debian12-taken"]


def test_an_instance_name_someone_else_holds_is_a_conflict_and_stays(make_gce, gce_server, debian12_gce, tmp_path):
    from cislaves.clouds.gce.api import Conflict

    fake = gce_server.fake
    cloud = make_gce()
    spec = make_spec(cloud, debian12_gce, tmp_path / "keys")
    theirs = make_spec(cloud, debian12_gce, tmp_path / "theirs", owner=OTHER)
    theirs.name = spec.name
    other = cloud.launch(theirs)
    with pytest.raises(Conflict) as info:
        cloud.launch(spec)
    assert (info.value.code, info.value.status) == ("alreadyExists", 409)
    assert only(fake.snapshot()["instances"])["labels"]["cislaves-run-id"] == theirs.run_id
    assert "instances.delete" not in fake.calls
    assert not (tmp_path / "keys").exists() or list((tmp_path / "keys").iterdir()) == []  # its key is gone
    cloud.destroy(other)


def test_a_suspended_instance_is_resumed_and_stopped_for_imaging(gce_cloud, gce_server, debian12_gce, tmp_path):
    from cislaves.waiting import wait_for

    fake = gce_server.fake

    def suspend():  # as `gcloud compute instances suspend` does
        with fake.lock:
            fake.instance_action(PROJECT, ZONE, instance.id, "suspend")
        wait_for(lambda: fake.snapshot()["instances"][0]["status"] == "SUSPENDED", "SUSPENDED", 60)

    spec = make_spec(gce_cloud, debian12_gce, tmp_path / "keys")
    instance = gce_cloud.launch(spec)
    try:
        suspend()
        assert gce_cloud.refresh(instance).state == "stopped"
        started = gce_cloud.start(instance)
        assert started.state == "running" and started.extra["status"] == "RUNNING" and started.address
        assert fake.calls.count("instances.resume") == 1 and "instances.start" not in fake.calls
        suspend()
        image = gce_cloud.create_image(instance, "cislaves-debian12-suspended",
                                       standard_tags(spec.run_id, "debian12", "image"))
        assert image.state == "available"
        assert fake.calls.count("instances.stop") == 1  # the suspended instance was stopped to image its disk
        gce_cloud.delete_image(image)
    finally:
        gce_cloud.destroy(instance)
