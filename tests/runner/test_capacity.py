"""Capacity: a ready instance is used by the next build and replaced in the background, replaced when
a newer image is baked, and destroyed when the listener stops; max_instances holds with more builds
than slots."""
from __future__ import annotations

import threading

import pytest

from cislaves import clouds, distros, images as manifest
from cislaves.ci.runner import log_dir_for
from cislaves.records import LaunchSpec, new_run_id, standard_tags
from cislaves.waiting import wait_for
from tests.runner.conftest import running_instances, store_for, wait_for_builds

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_leftovers")]


def ready_slots(config, job="unit"):
    store = store_for(config)
    try:
        return [s for s in store.slots() if s.purpose == "ready" and s.job == job and s.state == "ready"]
    finally:
        store.close()


def bake_newer(config, image):
    """A newer image of debian12, made as `it` makes one (an instance snapshotted, recorded in the
    manifest), quickly: from the session's image with nothing provisioned."""
    cloud = clouds.get("local", config)
    run_id = new_run_id()
    spec = LaunchSpec(distribution=distros.get("debian12"), image=image, run_id=run_id, name=f"bake-{run_id}",
                      tags=standard_tags(run_id, "debian12", "bake"), key_dir=config.data_dir / "keys" / run_id,
                      role="bake")
    instance = cloud.launch(spec)
    try:
        made = cloud.create_image(instance, f"cislaves-debian12-{run_id}",
                                  standard_tags(run_id, "debian12", "image", ttl_hours=24))
    finally:
        cloud.destroy(instance)
        cloud.close()
    manifest.record(config.manifest, [made], distribution="debian12", run_id=run_id, name=made.name,
                    source_image=image.id)
    return made


def test_a_ready_instance_is_used_and_replaced(make_config, listener, gerrit, baked_image):
    config = make_config([{"name": "unit", "body": "hostname\n"}], ci={"ready": {"unit": 1}})
    service = listener(config)
    [slot] = wait_for(lambda: ready_slots(config) or None, "a ready instance", 120)
    gerrit.upload_commit(95, {"a.py": "x = 1\n"})
    [build] = wait_for_builds(config, 1)
    assert build.result == "SUCCESS" and build.instance_id == slot.instance["id"]
    assert f"using ready instance {slot.instance['id']}" in \
        (log_dir_for(config.relative("logs"), build) / "job-output.txt").read_text()
    [replacement] = wait_for(lambda: ready_slots(config) or None, "a replacement ready instance", 120)
    assert replacement.instance["id"] != slot.instance["id"]
    assert [i.id for i in running_instances(config)] == [replacement.instance["id"]]
    newer = bake_newer(config, baked_image)
    try:
        service.runner.pool.wake()
        [fresh] = wait_for(lambda: [s for s in ready_slots(config) if s.image_id == newer.id] or None,
                           "a ready instance of the newer image", 120)
        assert [i.id for i in running_instances(config)] == [fresh.instance["id"]]
        service.stop(grace=10)
        service.runner.stop()
    finally:
        local = clouds.get("local", config)
        local.delete_image(newer)  # later tests boot the session's image again (the listing rules)
        local.close()
    assert running_instances(config) == [] and ready_slots(config) == []


def test_max_instances_holds_with_more_builds_than_slots(make_config, listener, gerrit):
    config = make_config([{"name": "unit", "body": "echo running\nsleep 1\n"}],
                         ci={"max_instances": {"local": 2}, "workers": 5})
    listener(config)
    seen, stop = [], threading.Event()

    def sample():  # what the cloud itself runs, as often as it can be listed
        while not stop.is_set():
            seen.append(len(running_instances(config)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for change in range(100, 105):
            gerrit.upload_commit(change, {"a.py": f"x = {change}\n"})
        done = wait_for_builds(config, 5, timeout=120)
    finally:
        stop.set()
        sampler.join(30)
    assert [b.result for b in done] == ["SUCCESS"] * 5
    assert max(seen) == 2
    # the builds' own records agree: never more than 2 instances between boot and destroy
    spans = []
    for build in done:
        lines = (log_dir_for(config.relative("logs"), build) / "job-output.txt").read_text().splitlines()
        start = next(l for l in lines if "[cislaves] booting" in l)[:26]
        end = next(l for l in lines if "destroyed" in l)[:26]
        spans.append((start, end))
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 2


def test_a_waiting_build_frees_the_slot_of_an_idle_ready_instance(make_config, listener, gerrit):
    config = make_config([{"name": "unit", "body": "echo unit\n", "triggers": ["check"]},
                          {"name": "other", "body": "echo other\n", "triggers": ["gate"]}],
                         ci={"max_instances": {"local": 1}, "ready": {"other": 1},
                             "triggers": [{"name": "check"}, {"name": "gate", "events": ["change-merged"]}]})
    listener(config)
    [idle] = wait_for(lambda: ready_slots(config, "other") or None, "a ready instance of the other job", 120)
    gerrit.upload_commit(110, {"a.py": "x = 1\n"})
    [build] = wait_for_builds(config, 1)
    assert build.result == "SUCCESS" and build.instance_id != idle.instance["id"]
    text = (log_dir_for(config.relative("logs"), build) / "job-output.txt").read_text()
    assert "destroyed a ready instance of other to free an instance slot" in text
    assert idle.instance["id"] not in [i.id for i in running_instances(config)]
