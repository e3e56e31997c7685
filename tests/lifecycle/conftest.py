"""Fixtures for the lifecycle tests: moto's EC2 server in its own process (so it never collides with
the EC2 tests' in-process server), local-cloud machines the EC2 targets' SSH steps reach through
ssh_host, a real-shaped segredos tree in a git repository, and a config writer."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from cislaves.keys import generate_keypair
from cislaves.records import LaunchSpec, new_run_id, standard_tags
from tests.cli import REPO
from tests.ec2.moto_env import FOREIGN, TEST_CREDENTIALS

DATA = Path(__file__).resolve().parent / "data"
SERVE = """
import sys
from pathlib import Path
from tests.ec2.moto_env import moto_server
with moto_server(Path(sys.argv[1])) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    """moto's EC2 server in a child process; boto3 in this process and in `fab` finds its test
    credentials (and no developer profile) in the environment, restored afterwards."""
    work = tmp_path_factory.mktemp("lifecycle-moto")
    saved = {k: os.environ.get(k) for k in (*FOREIGN, *TEST_CREDENTIALS, "AWS_CONFIG_FILE",
                                            "AWS_SHARED_CREDENTIALS_FILE")}
    for key in FOREIGN:
        os.environ.pop(key, None)
    os.environ.update(TEST_CREDENTIALS, AWS_CONFIG_FILE=str(work / "no-aws-config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(work)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"moto did not start: {url!r}"
        yield url
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ec2(moto_url):
    """ec2(region) -> a boto3 client on moto for looking at what the tool did."""
    made = {}

    def client(region="us-west-2"):
        if region not in made:
            made[region] = boto3.client("ec2", region_name=region, endpoint_url=moto_url)
        return made[region]

    yield client
    for c in made.values():
        c.close()


@pytest.fixture(scope="session")
def ci_key(tmp_path_factory):
    return generate_keypair(tmp_path_factory.mktemp("ci-key") / "jenkins-master", comment="jenkins@master")


@pytest.fixture(scope="module")
def machines(local_cloud, tmp_path_factory):
    """machines(n) -> n booted debian12 machines from the base image (shared by a module's tests),
    the hosts the EC2 targets' SSH steps reach; destroyed at the end of the module."""
    from cislaves import distros

    debian12 = distros.get("debian12")
    booted = []
    key_dir = tmp_path_factory.mktemp("machine-keys")

    def boot(count):
        while len(booted) < count:
            run_id = new_run_id()
            name = f"cislaves-test-{run_id}"
            spec = LaunchSpec(distribution=debian12, image=local_cloud.base_image(debian12), run_id=run_id,
                              name=name, tags=standard_tags(run_id, "debian12", "instance", name=name),
                              key_dir=key_dir)
            booted.append(local_cloud.launch(spec))
        return booted[:count]

    yield boot
    for machine in booted:
        local_cloud.destroy(machine)


def ec2_target(region, machine, **extra):
    """A rebake target on moto's EC2 whose SSH steps go to `machine` (its key imported per run)."""
    settings = {"ssh_host": machine.address, "ssh_port": machine.port, "ssh_user": "root",
                "ssh_private_key_file": str(machine.key_file)}
    return {"cloud": "ec2", "distribution": "debian12", "region": region,
            "config": {"clouds": {"ec2": settings}}, **extra}


def write_config(folder: Path, *, moto_url=None, ci_key=None, rebake=None, cache_dir=None, **top):
    """segredos-like folder: cislaves.yaml (returned) with the given sections."""
    config = {"data_dir": str(folder / "data"), "provision": {"package_set": "minimal"}, **top}
    clouds = config.setdefault("clouds", {})
    if moto_url:
        clouds["ec2"] = {"endpoint_url": moto_url, "poll_max_delay": 0.2, "launch_timeout": 60,
                         "image_timeout": 60, "destroy_timeout": 60, "max_attempts": 3,
                         **clouds.get("ec2", {})}
    if cache_dir:
        clouds["local"] = {"cache_dir": str(cache_dir), **clouds.get("local", {})}
    if ci_key:
        config["ci_user"] = {"authorized_key": ci_key}
    if rebake is not None:
        config["rebake"] = rebake
    path = folder / "cislaves.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fab_env(config_path: Path) -> dict[str, str]:
    return {"CISLAVES_CONFIG": str(config_path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}


def segredos_repo(folder: Path) -> Path:
    """A git repository holding ci-platform/all/all.yaml (the real-shaped copy in data/); returns the file."""
    target = folder / "ci-platform" / "all" / "all.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((DATA / "all.yaml").read_bytes())
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(folder)], check=True)
    subprocess.run([*git, "-C", str(folder), "add", "."], check=True)
    subprocess.run([*git, "-C", str(folder), "commit", "-q", "-m", "segredos"], check=True)
    return target


@pytest.fixture(scope="module")
def smtp_server():
    """aiosmtpd on 127.0.0.1: .port, .messages (email.message.Message objects as received)."""
    import email
    import socket

    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(email.message_from_bytes(envelope.original_content or envelope.content))
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port
    yield handler
    controller.stop()


@pytest.fixture(scope="module")
def webhook_server():
    """A local HTTP server recording POSTed JSON bodies: .url, .posts."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append({"path": self.path, "type": self.headers.get("Content-Type"), "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ci?token=s3cret"
    server.posts = posts
    yield server
    server.shutdown()
    server.server_close()
