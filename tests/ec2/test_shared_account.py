"""Two hosts (two data dirs, two config files) sharing one moto account, through the real `fab`.

Host A keeps an instance made by `fab up`, has a bake truly in progress (`fab it`, held inside its
wait for the new instance by the proxy in front of moto), an AMI of its kept instance being made (held
pending by the proxy), and left expired resources of a run that crashed long ago. Host B's
`fab cleanup:cloud=ec2` must remove only those expired leftovers; `fab cleanup:cloud=ec2,all_owners=true`
is the explicit wider sweep, which still spares B's own kept instance (and finished AMIs).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import yaml

from cislaves.clouds.base import TAG_RUN, generate_keypair, standard_tags
from tests.cli import REPO, fab
from tests.contract import make_spec
from tests.ec2.moto_env import unfinished_image


class Host:
    """One host's data dir, config file and environment for `fab`, talking to EC2 at `endpoint`."""

    def __init__(self, root: Path, endpoint: str):
        self.data = root / "data"
        root.mkdir(parents=True)
        config = {"ci_user": {"authorized_key": generate_keypair(root / "ci-key")},
                  "clouds": {"ec2": {"poll_max_delay": 0.2, "launch_timeout": 60, "destroy_timeout": 60}}}
        (root / "cislaves.yaml").write_text(yaml.safe_dump(config))
        self.env = {"CISLAVES_CONFIG": str(root / "cislaves.yaml"), "CISLAVES_DATA_DIR": str(self.data),
                    "CISLAVES_MANIFEST": "", "AWS_ENDPOINT_URL_EC2": endpoint, "AWS_REGION": "us-west-2"}

    def fab(self, *args: str) -> subprocess.CompletedProcess:
        result = fab(*args, env=self.env, timeout=180)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result

    def up(self) -> str:
        return re.search(r"^Instance: (i-\w+) ", self.fab("up:cloud=ec2,distribution=centos7").stdout, re.M).group(1)

    @property
    def owner(self) -> str:
        return (self.data / "owner").read_text().strip()


class ImageInProgress:
    """An AMI of host A's kept instance being made (create_image in a thread here), held `pending` by the
    proxy from start() until finish(), which returns the finished image."""

    def __init__(self, proxy, cloud, run_id: str, owner: str):
        self.proxy, self.cloud, self.run_id, self.owner = proxy, cloud, run_id, owner
        self.waiting = threading.Event()
        self.result: dict = {}
        self.thread = threading.Thread(target=self._make, name="a-image", daemon=True)

    def start(self) -> None:
        self.proxy.hold_pending()
        self.proxy.on("DescribeImages:pending", lambda params: self.waiting.set())
        self.thread.start()
        assert self.waiting.wait(timeout=60), "the image never became pending"

    def stop(self) -> None:
        self.proxy.release()
        if self.thread.ident is not None:
            self.thread.join(timeout=120)

    def finish(self):
        self.stop()
        if "error" in self.result:
            raise self.result["error"]
        return self.result.get("image")

    def _make(self) -> None:
        try:
            (source,) = self.cloud.list_instances({TAG_RUN: self.run_id})
            self.result["image"] = self.cloud.create_image(source, "cislaves-a-in-progress", standard_tags(
                self.run_id, "centos7", "image", owner=self.owner))
        except BaseException as exc:  # the test thread reports it
            self.result["error"] = exc


def removed_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("  ")]


def instance_of(moto_ec2, instance_id: str) -> dict:
    return moto_ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def run_of(moto_ec2, instance_id: str) -> str:
    return {t["Key"]: t["Value"] for t in instance_of(moto_ec2, instance_id)["Tags"]}[TAG_RUN]


def test_cleanup_on_a_shared_account_spares_the_other_hosts_bake_and_instance(proxy, moto_url, moto_ec2,
                                                                             make_cloud, centos7, left, tmp_path):
    a, b = Host(tmp_path / "a", proxy.url), Host(tmp_path / "b", moto_url)
    kept = a.up()
    kept_run = run_of(moto_ec2, kept)

    # A's leftovers of a run that crashed long ago: instance, key pair, group, volume, unfinished AMI
    old_cloud = make_cloud(proxy.url, image_timeout=1, max_attempts=1)
    old_spec = make_spec(old_cloud, centos7, tmp_path / "old-keys", owner=a.owner, ttl_hours=-1)
    old = old_cloud.launch(old_spec)
    unfinished_image(proxy, old_cloud, old, old_spec, "cislaves-a-unfinished")
    expired = left(old_spec.run_id)
    assert len([r for r in expired if " image " in r]) == 1 and len(expired) >= 4, expired

    # A's bake in progress, held while it waits for its new instance
    bake, held, release = {}, threading.Event(), threading.Event()

    def remember_run(params):
        keys = [k for k in params if k.startswith("TagSpecification.1.Tag.") and k.endswith(".Key")]
        bake["run"] = {params[k]: params[k.replace(".Key", ".Value")] for k in keys}[TAG_RUN]

    def hold(params):
        if params.get("InstanceId.1") not in (None, kept, old.id) and not held.is_set():
            bake["instance"] = params["InstanceId.1"]
            held.set()
            release.wait(timeout=50)  # under botocore's 60 s read timeout

    proxy.on("RunInstances", remember_run)
    proxy.on("DescribeInstances", hold)
    out, err = open(tmp_path / "bake.out", "w+"), open(tmp_path / "bake.err", "w+")
    proc = subprocess.Popen(["fab", "it:cloud=ec2,distribution=centos7"], cwd=REPO, env={**os.environ, **a.env},
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    imaging = ImageInProgress(proxy, make_cloud(proxy.url, image_timeout=300), kept_run, a.owner)
    try:
        assert held.wait(timeout=120), "A's bake never waited for its instance"
        in_progress = left(bake["run"])
        assert len(in_progress) == 4, in_progress  # instance, volume, temporary key pair and group
        imaging.start()

        lines = removed_lines(b.fab("cleanup:cloud=ec2").stdout)
        assert f"instance {old.id} (run {old_spec.run_id}: expired)" in lines
        assert f"key pair {old.extra['temporary_key_pair']} (run {old_spec.run_id}: expired)" in lines
        assert f"security group {old.extra['temporary_security_group']} (run {old_spec.run_id}: expired)" in lines
        assert any(re.fullmatch(rf"image ami-\w+ \(run {old_spec.run_id}: expired\)", line) for line in lines), lines
        assert not [line for line in lines if kept_run in line or bake["run"] in line], lines
        assert left(old_spec.run_id) == []
        assert proc.poll() is None, "A's bake ended while B cleaned up"
        assert left(bake["run"]) == in_progress
        assert instance_of(moto_ec2, kept)["State"]["Name"] == "running"
        assert sorted(r.split(" ")[1] for r in left(kept_run)) == ["image", "instance", "key", "security", "volume"]
        image = imaging.finish()  # A's AMI in progress was left alone too, and is done now
        assert image.state == "available" and "cislaves:unfinished" not in image.tags

        proc.send_signal(signal.SIGINT)  # A's bake ends as interrupted bakes do: removing its run
        assert proc.wait(timeout=120) == 130
    finally:
        release.set()
        imaging.stop()
        if proc.poll() is None:
            proc.kill()
    err.seek(0)
    assert "interrupted during up" in err.read()
    assert left(bake["run"]) == []

    # the explicit wider sweep: A's kept instance goes too, B's own stays
    mine = b.up()
    lines = removed_lines(b.fab("cleanup:cloud=ec2,all_owners=true").stdout)
    assert f"instance {kept} (run {kept_run}: all owners)" in lines
    assert any(line.startswith("security group sg-") and kept_run in line for line in lines), lines
    assert not any(mine in line or run_of(moto_ec2, mine) in line for line in lines), lines
    # a finished AMI is a result, not a leftover: it stays, with its snapshot
    assert [r.rsplit(" ", 1)[0] for r in left(kept_run)] == ["us-west-2 image", "us-west-2 snapshot"]
    imaging.cloud.delete_image(image)
    assert left(kept_run) == []
    assert instance_of(moto_ec2, mine)["State"]["Name"] == "running"
    assert a.fab("destroy:cloud=ec2").stdout.strip() == f"Destroyed {kept}"  # gone already: A just forgets it
    assert b.fab("destroy:cloud=ec2").stdout.strip() == f"Destroyed {mine}"
    assert left(run_of(moto_ec2, mine)) == []
