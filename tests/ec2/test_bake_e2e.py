"""`fab it:cloud=ec2,...` end to end: the real fab, boto3 against moto (through the test proxy), and the
SSH steps on a real local-cloud machine reached through the address override (ssh_host/ssh_port),
with the key pair given by AWS_KEY_PAIR/AWS_KEY_FILENAME imported into moto. Two full bakes (the
success, SIGINT during the image wait) take about 50 s each, mostly the debian12 provisioning."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import boto3
import pytest
import yaml

from cislaves import remote
from cislaves.clouds.base import TAG_DISTRIBUTION, TAG_RUN, TAG_TOOL, generate_keypair
from tests.cli import REPO, fab

COPY_REGION = "eu-west-1"
CREATING = {"RunInstances", "ImportKeyPair", "CreateKeyPair", "CreateSecurityGroup", "CreateImage", "CopyImage"}


@pytest.fixture
def ec2_env(moto_url, proxy, tmp_path):
    """make(machine=None, **ec2_settings) -> environment for `fab` on moto through the proxy; with a
    local machine, SSH goes to it and its key is imported into moto as AWS_KEY_PAIR."""
    moto = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
    ci_key = generate_keypair(tmp_path / "ci-user-key")

    def make(machine=None, provision=None, **ec2):
        settings = {"poll_max_delay": 0.2, "copy_regions": [COPY_REGION], **ec2}
        env = {"AWS_ENDPOINT_URL_EC2": proxy.url, "AWS_REGION": "us-west-2"}
        if machine is not None:
            pair = f"e2e-{tmp_path.name}"[:60]
            public = open(f"{machine.key_file}.pub").read().strip()
            moto.delete_key_pair(KeyName=pair)
            moto.import_key_pair(KeyName=pair, PublicKeyMaterial=public.encode())
            env.update(AWS_KEY_PAIR=pair, AWS_KEY_FILENAME=str(machine.key_file))
            settings.update(ssh_host=machine.address, ssh_port=machine.port, ssh_user="root")
        config = {"data_dir": str(tmp_path / "data"), "ci_user": {"authorized_key": ci_key},
                  "provision": {"package_set": "minimal", **(provision or {})}, "clouds": {"ec2": settings}}
        (tmp_path / "cislaves.yaml").write_text(yaml.safe_dump(config))
        return {**env, "CISLAVES_CONFIG": str(tmp_path / "cislaves.yaml"), "CISLAVES_DATA_DIR": "",
                "CISLAVES_MANIFEST": ""}

    yield make
    moto.close()


def run_id_of(output: str, moto_url: str) -> str:
    """The run id, from the instance fab printed (moto still knows terminated instances)."""
    instance = re.search(r"^Instance: (i-\w+) ", output, re.M)
    assert instance, output[-3000:]
    moto = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
    found = moto.describe_instances(InstanceIds=[instance.group(1)])["Reservations"][0]["Instances"][0]
    assert found["State"]["Name"] == "terminated"
    return {t["Key"]: t["Value"] for t in found["Tags"]}[TAG_RUN]


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.mark.root
@pytest.mark.slow
def test_fab_it_bakes_an_ami_with_region_copies_and_leaves_nothing_else(ec2_env, local_machine, proxy, moto_url,
                                                                       left, tmp_path):
    env = ec2_env(local_machine)
    proxy.fail("RunInstances", 2)  # a throttling endpoint: the bake still succeeds
    proxy.fail("CreateImage", 1)
    result = fab("it:cloud=ec2,distribution=debian12", env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert proxy.answered == {"RunInstances": 2, "CreateImage": 1}
    (image_id,) = re.findall(r"^Image: (ami-\w+)$", result.stdout, re.M)
    lines = re.findall(r"^Image:(ami-\w+) (\S+)$", result.stdout, re.M)
    assert lines[0] == (image_id, "us-west-2") and [r for _, r in lines] == ["us-west-2", COPY_REGION]
    run_id = run_id_of(result.stdout, moto_url)
    for ami, region in lines:
        image = boto3.client("ec2", region_name=region, endpoint_url=moto_url).describe_images(
            ImageIds=[ami])["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert image["State"] == "available" and image["Name"].startswith("cislaves-debian12-")
        assert (tags[TAG_RUN], tags[TAG_DISTRIBUTION], tags[TAG_TOOL]) == (run_id, "debian12", "cislaves")
    remaining = left(run_id, ("us-west-2", COPY_REGION))
    assert sorted(r for r in remaining if " snapshot " not in r) == sorted(
        f"{region} image {ami}" for ami, region in lines)  # no instance, key pair, group or volume
    listed = fab("images:cloud=ec2", env=env)  # the images task finds the AMI and its copy
    assert listed.returncode == 0 and all(ami in listed.stdout for ami, _ in lines), listed.stdout
    # the provisioning really ran on the machine the address override pointed at
    conn = remote.wait_for_ssh(local_machine, tmp_path, timeout=60)
    try:
        assert remote.run(conn, ["id", "-un", "jenkins"], hide=True).stdout.strip() == "jenkins"
    finally:
        conn.close()


@pytest.mark.root
@pytest.mark.slow
def test_a_failure_during_bootstrap_leaves_nothing_of_the_run(ec2_env, local_machine, moto_url, left, tmp_path):
    env = ec2_env(local_machine)
    generate_keypair(tmp_path / "not-the-machines-key")
    env["AWS_KEY_FILENAME"] = str(tmp_path / "not-the-machines-key")  # SSH authentication will fail
    config = yaml.safe_load(open(env["CISLAVES_CONFIG"]))
    config["timeouts"] = {"ssh": 3}
    open(env["CISLAVES_CONFIG"], "w").write(yaml.safe_dump(config))
    result = fab("it:cloud=ec2,distribution=debian12", env=env, timeout=300)
    assert result.returncode == 1
    assert re.search(r"bootstrap failed: .*timed out after 3s waiting for SSH on root@", one_error_line(result.stderr))
    assert left(run_id_of(result.stdout, moto_url), ("us-west-2", COPY_REGION)) == []


@pytest.mark.root
@pytest.mark.slow
def test_sigint_during_the_image_wait_leaves_nothing_of_the_run(ec2_env, local_machine, proxy, moto_url, left,
                                                                tmp_path):
    env = ec2_env(local_machine)
    waiting = threading.Event()
    proxy.on("CreateImage", lambda params: proxy.hold_pending())  # the new image stays pending
    proxy.on("DescribeImages:pending", lambda params: waiting.set())
    out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
    proc = subprocess.Popen(["fab", "it:cloud=ec2,distribution=debian12"], cwd=REPO, env={**os.environ, **env},
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        assert waiting.wait(timeout=300), "fab never waited for a pending image"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    assert "interrupted during create_image" in one_error_line(stderr)
    assert "DeregisterImage" in proxy.actions
    assert left(run_id_of(stdout, moto_url), ("us-west-2", COPY_REGION)) == []


def test_a_stale_configured_ami_is_one_line_and_creates_nothing(ec2_env, proxy):
    env = ec2_env(base_images={"debian12": {"ami": "ami-00000000deadbeef"}})
    result = fab("it:cloud=ec2,distribution=debian12", env=env, timeout=120)
    assert result.returncode == 2  # a configuration error (cislaves.exitcodes.USAGE)
    line = one_error_line(result.stderr)
    assert "clouds.ec2.base_images.debian12.ami: ami-00000000deadbeef no longer exists in us-west-2" in line
    assert "the filter would pick ami-0deb00000000120" in line
    assert not CREATING & set(proxy.actions), proxy.actions


def test_up_down_up_destroy_through_fab(ec2_env, moto_url, left):
    env = ec2_env()  # no AWS_KEY_PAIR: a temporary key pair per run
    up = fab("up:cloud=ec2,distribution=centos7", env=env, timeout=120)
    assert up.returncode == 0, up.stderr[-2000:]
    instance = re.search(r"^Instance: (i-\w+) at centos@[\d.]+:22$", up.stdout, re.M).group(1)
    moto = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)

    def state():
        return moto.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert fab("down:cloud=ec2", env=env).stdout.strip() == f"Stopped {instance}" and state() == "stopped"
    started = fab("up:cloud=ec2", env=env)
    assert started.stdout.startswith(f"Started {instance} at centos@") and state() == "running"
    assert fab("destroy:cloud=ec2", env=env).stdout.strip() == f"Destroyed {instance}"
    assert left(run_id_of(up.stdout, moto_url)) == []


def test_cleanup_removes_what_a_killed_fab_left(ec2_env, proxy, left, tmp_path):
    env = ec2_env()
    run = {}

    def remember_run(params):
        tags = {params[k]: params[k.replace(".Key", ".Value")] for k in params
                if k.startswith("TagSpecification.1.Tag.") and k.endswith(".Key")}
        run["id"] = tags[TAG_RUN]

    proxy.on("RunInstances", remember_run)
    proc = subprocess.Popen(["fab", "it:cloud=ec2,distribution=centos7"], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    proxy.on("DescribeInstances", lambda params: proc.kill())  # SIGKILL while it waits for the instance
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert len(left(run["id"])) == 4  # instance, volume, temporary key pair and security group
    cleaned = fab("cleanup:cloud=ec2", env=env, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr[-2000:]
    assert "Removed leftover instance i-" in cleaned.stdout
    assert left(run["id"]) == []


@pytest.mark.root
@pytest.mark.slow
def test_a_failed_region_copy_removes_the_new_ami_too(ec2_env, local_machine, proxy, moto_url, left):
    """An image without the region copies asked for is not a result: the pipeline removes it."""
    env = ec2_env(local_machine)
    proxy.fail("CopyImage", 50, code="InvalidParameterValue", status=400)
    result = fab("it:cloud=ec2,distribution=debian12", env=env, timeout=600)
    assert result.returncode == 1
    assert "create_image failed" in one_error_line(result.stderr)
    assert "DeregisterImage" in proxy.actions
    assert left(run_id_of(result.stdout, moto_url), ("us-west-2", COPY_REGION)) == []
