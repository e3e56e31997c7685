"""Capacity: a ready instance is used by the next build and replaced in the background, and destroyed
when the listener stops; max_instances holds with more builds than slots."""
from __future__ import annotations

import threading

import pytest

from cislaves.ci.runner import log_dir_for
from cislaves.waiting import wait_for
from tests.runner.conftest import running_instances, store_for, wait_for_builds

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_leftovers")]


def ready_slots(config, job="unit"):
    store = store_for(config)
    try:
        return [s for s in store.slots() if s.purpose == "ready" and s.job == job and s.state == "ready"]
    finally:
        store.close()


def test_a_ready_instance_is_used_and_replaced(make_config, listener, gerrit):
    config = make_config([{"name": "unit", "body": "hostname\n"}], ci={"ready": {"unit": 1}})
    service = listener(config)
    [slot] = wait_for(lambda: ready_slots(config) or None, "a ready instance", 30)
    gerrit.upload_commit(95, {"a.py": "x = 1\n"})
    [build] = wait_for_builds(config, 1)
    assert build.result == "SUCCESS" and build.instance_id == slot.instance["id"]
    assert f"using ready instance {slot.instance['id']}" in \
        (log_dir_for(config.relative("logs"), build) / "job-output.txt").read_text()
    [replacement] = wait_for(lambda: ready_slots(config) or None, "a replacement ready instance", 30)
    assert replacement.instance["id"] != slot.instance["id"]
    assert [i.id for i in running_instances(config)] == [replacement.instance["id"]]
    service.stop(grace=10)
    service.runner.stop()
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
