"""Waits say what they wait for, through the real `fab` on moto: `fab create_image` with the proxy
holding the new AMI `pending` for over 30 s, stderr on a pseudo-terminal (the live line) and then on
a pipe (log lines only, no terminal codes)."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

import boto3
import pytest
import yaml

from tests.cli import REPO, fab

LIVE = re.compile(r"\r\x1b\[Kwaiting for image (ami-\w+) in us-west-2 to become available: pending, \d+s of 2m")
LOGGED = re.compile(r"INFO waiting for image (ami-\w+) in us-west-2 to become available: pending, 3\ds of 2m")


@pytest.fixture
def ec2_instance(moto_url, proxy, tmp_path):
    """`fab up` of an instance on moto (through the proxy); the environment for the next fab."""
    config = {"data_dir": str(tmp_path / "data"),
              "clouds": {"ec2": {"poll_max_delay": 0.5, "image_timeout": 120, "launch_timeout": 60}}}
    (tmp_path / "cislaves.yaml").write_text(yaml.safe_dump(config))
    env = {"AWS_ENDPOINT_URL_EC2": proxy.url, "AWS_REGION": "us-west-2", "CISLAVES_CONFIG": str(tmp_path / "cislaves.yaml"),
           "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    up = fab("up:cloud=ec2,distribution=centos7", env=env, timeout=120)
    assert up.returncode == 0, up.stderr[-3000:]
    yield env
    fab("destroy:cloud=ec2", env=env, timeout=120)
    for image in boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url).describe_images(
            Owners=["self"])["Images"]:
        if image["Name"].startswith("cislaves-centos7"):
            boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url).deregister_image(ImageId=image["ImageId"])


def test_an_image_wait_shows_a_live_line_on_a_terminal_and_logs_every_30_s(ec2_instance, proxy):
    proxy.hold_pending()
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([os.path.join(REPO, ".venv/bin/fab"), "create_image:cloud=ec2"], cwd=REPO,
                            env={**os.environ, **ec2_instance}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=terminal)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 90  # a bound for the test, not a measured time
    try:
        while not LOGGED.search(seen.decode(errors="replace")) and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(controller, 65536)
                except OSError:
                    break
    finally:
        proxy.release()
    out, _ = proc.communicate(timeout=60)
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    live = LIVE.findall(text)
    logged = LOGGED.findall(text)
    assert len(set(live)) == 1 and len(live) >= 10, text[-3000:]  # redrawn about every second
    assert logged == live[:1], text[-3000:]  # one log line at 30 s, the same image
    assert f"Image: {live[0]}" in out.decode()
    # the log line starts on a clean row: the live line was erased first
    assert re.search(r"\r\x1b\[K(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d INFO waiting for image", text), text[-2000:]


def test_no_terminal_codes_when_stderr_is_not_a_terminal(ec2_instance, proxy):
    proxy.hold_pending(polls=3)
    result = fab("create_image:cloud=ec2", env=ec2_instance, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\x1b[" not in result.stderr and "\r" not in result.stderr
