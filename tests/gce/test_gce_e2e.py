"""`fab it:cloud=gce` end to end: the real `fab` in a subprocess, GCE answered by the fake compute server,
and the SSH steps reaching a local-cloud machine through the address override (clouds.gce.ssh_host/ssh_port).
Afterwards the fake holds the image and nothing else of the run."""
from __future__ import annotations

import json
import re

import pytest

from cislaves import remote
from tests.cli import fab
from tests.gce.conftest import PROJECT, the_error_line

QUOTA = "Quota 'CPUS' exceeded.  Limit: 8.0 in region europe-west1."


def assert_only_images_left(fake, images: list[str]) -> None:
    state = fake.snapshot()
    assert state["instances"] == [] and state["disks"] == [], state
    mine = [i["name"] for i in state["images"] if f"/projects/{PROJECT}/" in i["selfLink"]]
    assert mine == images


def test_quota_error_is_one_line_and_leaves_nothing(gce_server, gce_fab_env):
    gce_server.fake.inject("instances.insert", error=("QUOTA_EXCEEDED", QUOTA))
    result = fab("it:cloud=gce,distribution=debian12", env=gce_fab_env(), timeout=120)
    line = the_error_line(result)
    assert re.match(r"^error: \[gce/debian12\] up failed: gce: creating instance cislaves-debian12-\S+ in "
                    r"europe-west1-b failed: QUOTA_EXCEEDED: Quota 'CPUS' exceeded\. Limit: 8\.0", line), line
    assert_only_images_left(gce_server.fake, [])


@pytest.mark.root
@pytest.mark.slow
def test_fab_it_bakes_on_gce_through_a_local_machine(gce_server, gce_fab_env, local_machine, tmp_path):
    result = fab("it:cloud=gce,distribution=debian12", env=gce_fab_env(local_machine), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    image = re.search(r"^Image: (\S+)$", result.stdout, re.M)[1]
    assert f"GCE image: projects/{PROJECT}/global/images/{image} (family cislaves-debian12)" in result.stdout
    fake = gce_server.fake
    assert_only_images_left(fake, [image])
    raw = next(i for i in fake.snapshot()["images"] if i["name"] == image)
    assert raw["status"] == "READY" and raw["family"] == "cislaves-debian12"
    assert raw["labels"]["cislaves-distribution"] == "debian12"
    (created,) = fake.inserted
    assert raw["sourceDisk"] == created["disks"][0]["source"]  # imaged from the boot disk, before deletion
    keys = {i["key"]: i["value"] for i in created["metadata"]["items"]}
    public = open(local_machine.key_file + ".pub").read().split()[:2]
    assert keys["ssh-keys"] == f"root:{' '.join(public)} root"
    assert fake.calls.index("images.insert") < fake.calls.index("instances.delete")
    listed = fab("images:cloud=gce", env=gce_fab_env(local_machine), timeout=120)
    assert re.search(rf"^{re.escape(image)}\s+gce\s+debian12\s+\S+\s+projects/debian-cloud/global/images/",
                     listed.stdout, re.M), listed.stdout + listed.stderr
    # the provisioning really ran on the machine SSH reached: the CI user exists there
    conn = remote.wait_for_ssh(local_machine, tmp_path / "probe", timeout=30)
    try:
        assert remote.run(conn, ["id", "-u", "jenkins"], hide=True, warn=True).exited == 0
    finally:
        conn.close()


@pytest.mark.root
@pytest.mark.slow
def test_image_operation_error_is_one_line_and_leaves_nothing(gce_server, gce_fab_env, local_machine):
    gce_server.fake.inject("images.insert", error=("INTERNAL_ERROR", "Internal error. Please try again."),
                           keep=True)
    result = fab("it:cloud=gce,distribution=debian12", env=gce_fab_env(local_machine), timeout=900)
    line = the_error_line(result)
    assert re.match(r"^error: \[gce/debian12\] create_image failed: gce: creating image \S+ from disk \S+ "
                    r"failed: INTERNAL_ERROR: Internal error\. Please try again\.$", line), line
    assert_only_images_left(gce_server.fake, [])


def test_fab_cleanup_removes_what_a_crashed_run_left(gce_server, gce_fab_env, make_gce, debian12_gce, tmp_path):
    from cislaves.state import State
    from tests.contract import make_spec

    env = gce_fab_env()
    cloud = make_gce()
    owner = State(tmp_path / "fab-data").owner_id()  # this host's runs: the owner fab's data dir has
    left = cloud.launch(make_spec(cloud, debian12_gce, tmp_path / "keys", owner=owner))  # no state knows this run
    theirs = cloud.launch(make_spec(cloud, debian12_gce, tmp_path / "keys2", owner="oanotherhost1"))
    result = fab("cleanup:cloud=gce", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert left.id in result.stdout + result.stderr
    assert theirs.id not in result.stdout  # another host's live run on the same project: left alone
    assert [i["name"] for i in gce_server.fake.snapshot()["instances"]] == [theirs.id]
    result = fab("cleanup:cloud=gce,all_owners=true", env=env, timeout=120)  # the explicit wider sweep
    assert result.returncode == 0 and theirs.id in result.stdout, result.stdout + result.stderr
    assert_only_images_left(gce_server.fake, [])


def test_application_default_credentials_of_gcloud(gce_server, gce_fab_env, tmp_path):
    """No key file named: google.auth.default finds gcloud's well-known file (CLOUDSDK_CONFIG)."""
    sdk = tmp_path / "gcloud"
    sdk.mkdir()
    (sdk / "application_default_credentials.json").write_text(json.dumps(gce_server.service_account_info(PROJECT)))
    env = {**gce_fab_env(), "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(sdk), "GCE_PROJECT": ""}
    result = fab("images:cloud=gce", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "No images made by cislaves on cloud 'gce'" in result.stdout
    assert gce_server.token_requests == 1 and "images.list" in gce_server.fake.calls


def test_no_credentials_at_all_is_one_line(gce_server, gce_fab_env, tmp_path):
    env = {**gce_fab_env(), "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(tmp_path),
           "NO_GCE_CHECK": "true"}  # not on GCE: no metadata server to ask
    line = the_error_line(fab("images:cloud=gce", env=env, timeout=120))
    assert line.startswith("error: [gce/debian12] images failed: clouds.gce.credentials_file (or "
                           "GOOGLE_APPLICATION_CREDENTIALS): not set and no application default credentials "
                           "were found"), line
    assert gce_server.fake.calls == []


def test_short_commands_exit_cleanly(gce_server, gce_fab_env, tmp_path):
    """The interpreter's exit after a task is no place for a crash: with gc.freeze() at the end of a
    task, about half of these exits died of SIGSEGV/SIGABRT/SIGBUS once the GCE SDK was loaded."""
    sdk = tmp_path / "gcloud"
    sdk.mkdir()
    (sdk / "application_default_credentials.json").write_text(json.dumps(gce_server.service_account_info(PROJECT)))
    env = {**gce_fab_env(), "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(sdk), "GCE_PROJECT": ""}
    codes = [fab("images:cloud=gce", env=env, timeout=120).returncode for _ in range(10)]
    assert codes == [0] * 10
