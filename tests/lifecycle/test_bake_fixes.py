"""The bake fixes found when issue 13 was tried from outside, through the real fab on moto's EC2:
- SIGINT/SIGTERM right after the cloud made the image, while the manifest write waits (the test holds
  the manifest's lock): the image reaches the manifest and `Image:` is printed, then exit 130;
- a corrupt, wrong-shaped or unreadable manifest is one line before anything is created;
- a full disk while recording deletes the new image and says so in one line;
- `fab images:cloud=ec2` shows each image's SOURCE."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess

import pytest

from cislaves import images
from cislaves.records import TAG_RUN, TAG_TOOL
from tests.cli import REPO, fab
from tests.lifecycle.conftest import fab_env, write_config
from cislaves.waiting import Pending, wait_for


@pytest.fixture
def env(tmp_path, moto_url):
    path = write_config(tmp_path / "segredos", moto_url=moto_url)
    return fab_env(path) | {"CISLAVES_MANIFEST": str(tmp_path / "manifest" / "manifest.json")}


def instances(ec2):
    return sorted(i["InstanceId"] for r in ec2().describe_instances()["Reservations"] for i in r["Instances"])


def one_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def up(env):
    result = fab("up:cloud=ec2,distribution=debian12", env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return re.search(r"^Instance: (i-\w+) ", result.stdout, re.M).group(1)


def images_of(ec2, instance_id):
    run = {t["Key"]: t["Value"] for r in ec2().describe_instances(InstanceIds=[instance_id])["Reservations"]
           for i in r["Instances"] for t in i["Tags"]}[TAG_RUN]
    return [i["ImageId"] for i in ec2().describe_images(Owners=["self"], Filters=[
        {"Name": f"tag:{TAG_RUN}", "Values": [run]}])["Images"]]


def blocked_on_lock(pid):
    """Pending until process `pid` waits for a lock (a `->` line of /proc/locks)."""
    for line in open("/proc/locks"):
        fields = line.split()
        if "->" in fields and str(pid) in fields:
            return True
    return Pending("not waiting for a lock yet")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_manifest_write_waits_records_and_prints_the_image(env, ec2, tmp_path, signum):
    instance = up(env)
    manifest = tmp_path / "manifest" / "manifest.json"
    manifest.parent.mkdir()
    with open(str(manifest) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the create_image -> manifest window stays open while we hold it
        proc = subprocess.Popen(["fab", "create_image:cloud=ec2"], cwd=REPO, env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: blocked_on_lock(proc.pid), "fab to wait for the manifest lock", 60, first_delay=0.05)
            assert len(images_of(ec2, instance)) == 1  # the cloud made the image: we are in the window
            proc.send_signal(signum)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted during create_image" in one_error_line(stderr)
    (image,) = images_of(ec2, instance)
    assert re.search(rf"^Image: {image}$", stdout, re.M), stdout
    builds = images.records(manifest)
    assert [b["artifact_id"] for b in builds] == [image]
    # the image is the manifest's: neither the next run's reaping nor cleanup removes it
    assert fab("cleanup:cloud=ec2", env=env, timeout=120).returncode == 0
    assert images_of(ec2, instance) == [image]
    listed = fab("images:cloud=ec2", env=env, timeout=120)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(image))
    source = ec2().describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["ImageId"]
    assert f" {source} " in row, listed.stdout  # SOURCE: the base image it came from
    assert fab(f"destroy:cloud=ec2,instance={instance}", env=env, timeout=120).returncode == 0


@pytest.mark.parametrize("content, expected", [
    ("{not json", r"manifest is not valid JSON"),
    ('{"builds": {"a": 1}}', r"expected an object with a 'builds' list of objects"),
    (None, r"cannot read the manifest \(Not a directory\)"),
])
def test_a_bad_manifest_is_one_line_before_anything_is_created(env, ec2, tmp_path, content, expected):
    if content is None:
        (tmp_path / "a-file").write_text("")
        env["CISLAVES_MANIFEST"] = str(tmp_path / "a-file" / "manifest.json")
    else:
        manifest = tmp_path / "manifest" / "manifest.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(content)
    before = instances(ec2)
    result = fab("it:cloud=ec2,distribution=debian12", env=env, timeout=120)
    assert result.returncode == 2  # a configuration error: the manifest named cannot be used
    assert re.search(expected, one_error_line(result.stderr))
    assert instances(ec2) == before


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled to the last byte."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.root  # mounts a tmpfs
def test_a_full_disk_while_recording_deletes_the_new_image_in_one_line(env, ec2, full_disk):
    env["CISLAVES_MANIFEST"] = str(full_disk / "manifest.json")
    instance = up(env)
    result = fab("create_image:cloud=ec2", env=env, timeout=120)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert re.search(r"cannot write the manifest \(the disk is full\); deleted the new image ami-\w+$", line), line
    assert "Image:" not in result.stdout
    assert images_of(ec2, instance) == []
    assert fab(f"destroy:cloud=ec2,instance={instance}", env=env, timeout=120).returncode == 0
    remaining = ec2().describe_instances(Filters=[{"Name": f"tag:{TAG_TOOL}", "Values": ["cislaves"]},
                                                  {"Name": "instance-state-name", "Values": ["running"]}])
    assert instance not in json.dumps(remaining["Reservations"])
