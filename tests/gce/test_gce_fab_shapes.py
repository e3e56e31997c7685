"""GCE as the real API answers (issue 18), each point through the real `fab` against the fake compute
server: read quota (403 rateLimitExceeded) and api_retries, lost insert answers and requestId, a name
another client won, operation warnings, deprecated and obsolete images, an instance without an
external IP, a SUSPENDED instance; and the shared SSH settings' old names (issue 10)."""
from __future__ import annotations

import re

from cislaves.waiting import wait_for
from tests.cli import fab
from tests.gce.conftest import PROJECT, ZONE, the_error_line
from tests.gce.fake_gce import read_quota_exceeded

FAST_RETRIES = {"api_retries": 4, "api_retry_delay": 0.01}


def instances(fake) -> list[dict]:
    return fake.snapshot()["instances"]


def up(env, *args):
    return fab(":".join(["up", ",".join(["cloud=gce", *args])]), env=env, timeout=120)


def destroy(env):
    result = fab("destroy:cloud=gce", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_read_quota_on_polls_pages_and_aggregated_lists_is_retried_as_configured(gce_server, gce_fab_env):
    fake = gce_server.fake
    fake.page_size = 1  # every list answer is a page of one: the page requests meet the quota too
    fake.add_image(PROJECT, "an-old-bake", "cislaves-debian12", labels={"cislaves-tool": "cislaves"})
    fake.add_image(PROJECT, "another-bake", "cislaves-debian12", labels={"cislaves-tool": "cislaves"})
    reads = ("zoneOperations.get", "instances.get", "images.getFromFamily", "instances.aggregatedList",
             "disks.aggregatedList", "images.list")
    for method in reads:
        fake.inject(method, http=read_quota_exceeded(), times=3)
    env = gce_fab_env(settings=FAST_RETRIES)
    result = up(env)
    assert result.returncode == 0, result.stdout + result.stderr
    result2 = fab("cleanup:cloud=gce", env=env, timeout=120)  # aggregated instances and disks, image pages
    assert result2.returncode == 0, result2.stdout + result2.stderr
    logs = result.stderr + result2.stderr
    assert "retry 3 of 4" in logs and "retry 4 of 4" not in logs and "rateLimitExceeded" in logs
    assert {f.method: f.times for f in fake.faults} == {m: 0 for m in reads}  # each read met its quota errors
    assert fake.calls.count("images.list") >= 3 + 2  # three refusals, then both pages
    assert len(instances(fake)) == 1  # the kept `up` instance survived cleanup
    destroy(env)
    assert instances(fake) == []


def test_read_quota_beyond_api_retries_is_one_line_with_googles_reason(gce_server, gce_fab_env):
    gce_server.fake.inject("images.getFromFamily", http=read_quota_exceeded(), times=10)
    result = up(gce_fab_env(settings={"api_retries": 2, "api_retry_delay": 0.01}))
    line = the_error_line(result)
    assert re.match(r"^error: \[gce/debian12\] up failed: gce: finding the newest image of family debian-12 in "
                    r"project debian-cloud failed: HTTP 403: Quota exceeded for quota metric 'Read requests' .*"
                    r"retried 2 time\(s\)\)$", line), line
    assert "instances.insert" not in gce_server.fake.calls


def test_a_lost_insert_answer_is_retried_with_the_same_request_id(gce_server, gce_fab_env):
    fake = gce_server.fake
    fake.lose_answer("instances.insert")  # created, but the answer is a 503 backendError
    env = gce_fab_env(settings=FAST_RETRIES)
    result = up(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 503 backendError; retry 1 of 4" in result.stderr
    sent = [rid for method, rid in fake.request_ids if method == "instances.insert"]
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0]  # one requestId, sent twice
    assert len(fake.inserted) == 1 and len(instances(fake)) == 1
    destroy(env)
    assert all(rid for _, rid in fake.request_ids)  # every mutation carried a requestId


def test_a_name_another_client_won_is_a_conflict_and_their_instance_stays(gce_server, gce_fab_env):
    fake = gce_server.fake
    fake.inject("instances.insert", conflict=True)
    result = up(gce_fab_env())
    line = the_error_line(result)
    assert re.match(rf"^error: \[gce/debian12\] up failed: gce: creating instance (cislaves-debian12-\S+) in {ZONE} "
                    rf"failed: projects/{PROJECT}/zones/{ZONE}/instances/\1 already exists "
                    rf"\(RESOURCE_ALREADY_EXISTS\); it was not created by this run and is left alone", line), line
    (theirs,) = instances(fake)
    assert theirs["labels"] == {"team": "someone-else"} and theirs["status"] == "RUNNING"
    assert "instances.delete" not in fake.calls and "disks.delete" not in fake.calls


def test_a_deprecated_image_warns_and_the_operation_warnings_are_logged(gce_server, gce_fab_env):
    fake = gce_server.fake
    fake.add_image("debian-cloud", "debian-12-bookworm-v20250101", "debian-12", deprecated="DEPRECATED",
                   replacement="debian-12-bookworm-v20261110")
    env = gce_fab_env(settings={"image": "projects/debian-cloud/global/images/debian-12-bookworm-v20250101"})
    result = up(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("gce: image projects/debian-cloud/global/images/debian-12-bookworm-v20250101 is DEPRECATED; its "
            "suggested replacement is projects/debian-cloud/global/images/debian-12-bookworm-v20261110"
            ) in result.stderr
    assert re.search(r"gce: creating instance \S+ in \S+: warning DEPRECATED_RESOURCE_USED: The resource "
                     r"'projects/debian-cloud/global/images/debian-12-bookworm-v20250101' is deprecated\.",
                     result.stderr), result.stderr
    destroy(env)


def test_an_obsolete_image_is_refused_before_anything_is_created(gce_server, gce_fab_env):
    gce_server.fake.add_image("debian-cloud", "debian-12-bookworm-v20240101", "debian-12", deprecated="OBSOLETE")
    result = up(gce_fab_env(), "image=projects/debian-cloud/global/images/debian-12-bookworm-v20240101")
    line = the_error_line(result)
    assert line.startswith("error: [gce/debian12] up failed: gce: image projects/debian-cloud/global/images/"
                           "debian-12-bookworm-v20240101 is OBSOLETE: refusing to boot from it"), line
    assert "instances.insert" not in gce_server.fake.calls


def test_no_external_ip_when_one_was_asked_for_says_so_and_leaves_nothing(gce_server, gce_fab_env):
    fake = gce_server.fake
    fake.inject("instances.insert", no_external_ip=True)
    line = the_error_line(up(gce_fab_env()))
    assert re.match(r"^error: \[gce/debian12\] up failed: gce: instance \S+ has no public address to connect to; "
                    r"it has: private \(set ssh_interface\) \(the instance has no accessConfigs", line), line
    assert instances(fake) == [] and fake.snapshot()["disks"] == []


def test_a_suspended_instance_is_resumed_not_started(gce_server, gce_fab_env):
    fake = gce_server.fake
    env = gce_fab_env()
    assert up(env).returncode == 0
    (raw,) = instances(fake)
    with fake.lock:  # as `gcloud compute instances suspend` does
        fake.instance_action(PROJECT, ZONE, raw["name"], "suspend")
    wait_for(lambda: instances(fake)[0]["status"] == "SUSPENDED", "the instance to be SUSPENDED", 60)
    result = up(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Started {raw['name']}" in result.stdout
    assert "instances.resume" in fake.calls and "instances.start" not in fake.calls
    assert instances(fake)[0]["status"] == "RUNNING"
    destroy(env)


def test_old_setting_names_and_the_seed_variables_still_work(gce_server, gce_fab_env, tmp_path):
    from cislaves.keys import generate_keypair

    key = tmp_path / "old-key"
    public = generate_keypair(key, comment="old")
    env = gce_fab_env(settings={"username": "builder", "private_key_file": str(key),
                                "public_key_file": f"{key}.pub", "operation_timeout": 300})
    result = up(env)
    assert result.returncode == 0, result.stdout + result.stderr
    for old, new in (("username", "ssh_user"), ("private_key_file", "ssh_private_key_file"),
                     ("public_key_file", "ssh_public_key_file"), ("operation_timeout", "launch_timeout")):
        assert f"clouds.gce.{old} is deprecated: use clouds.gce.{new}" in result.stderr
    (raw,) = instances(gce_server.fake)
    keys = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
    assert keys["ssh-keys"] == f"builder:{' '.join(public.split()[:2])} builder"
    destroy(env)
    seeded = {**gce_fab_env(), "OS_USERNAME": "seeded", "GCE_PRIVATE_KEY_FILENAME": str(key),
              "GCE_PUBLIC_KEY_FILENAME": f"{key}.pub"}
    result = up(seeded)
    assert result.returncode == 0 and "is deprecated" not in result.stderr, result.stderr
    assert re.search(r"^Instance: \S+ at seeded@203\.0\.113\.\d+:22$", result.stdout, re.M), result.stdout
    destroy(seeded)
