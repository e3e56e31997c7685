"""S3 through moto's server on 127.0.0.1: every file of a build as an object with a Content-Type a
browser shows as text, index.html and the status page, the index's links naming objects that exist,
a publish retried until the endpoint answers, retention by the build's end."""
from __future__ import annotations

import html
import re
import socket
import threading
from pathlib import Path
from urllib.parse import unquote

import boto3
import pytest
from moto.server import ThreadedMotoServer

from cislaves.ci.publish import Publisher
from tests.publish.conftest import old_and_recent, all_builds, make_build, tree

BUCKET = "acme-ci-logs"


@pytest.fixture(scope="module")
def moto_s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_s3, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_s3)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def s3_logs(endpoint: str, **extra) -> dict:
    return {"publish": "s3", "url": "https://logs.example.org",
            "s3": {"bucket": BUCKET, "prefix": "ci/", "region": "us-east-1", "endpoint_url": endpoint}, **extra}


def objects(client) -> dict[str, dict]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.head_object(Bucket=BUCKET, Key=obj["Key"])
    return out


def test_build_files_with_browser_content_types(s3, moto_s3, make_config):
    config = make_config(logs=s3_logs(moto_s3))
    build = make_build(config, artifacts={"logs/tempest.log": "ok\n", "logs/syslog": "Dec  2 kernel: ok\n",
                                          "logs/core.bin": "\0\1\2"})
    publisher = Publisher.from_config(config)
    url = publisher.publish_build(Path(build.log_dir))
    rel = f"34/1234/2/check/acme-unit/{build.id}"
    assert url == f"https://logs.example.org/{rel}/"
    local = tree(Path(build.log_dir))
    found = objects(s3)
    assert set(found) == {f"ci/{rel}/{name}" for name in local}
    for name, body in local.items():
        assert s3.get_object(Bucket=BUCKET, Key=f"ci/{rel}/{name}")["Body"].read() == body
    types = {name: found[f"ci/{rel}/{name}"]["ContentType"] for name in local}
    assert types == {"job-output.txt": "text/plain; charset=utf-8", "logs/tempest.log": "text/plain; charset=utf-8",
                     "logs/syslog": "text/plain; charset=utf-8", "build.json": "application/json",
                     "index.html": "text/html; charset=utf-8", "logs/core.bin": "application/octet-stream"}
    # every link of the index names an object of the bucket (relative to the build's prefix)
    page = local["index.html"].decode()
    for href in re.findall(r'href="([^"]*)"', page):
        if href.startswith("../"):
            continue  # the status page, published below
        assert f"ci/{rel}/{unquote(html.unescape(href))}" in found, href

    publisher.publish_status(all_builds(config))
    status = s3.get_object(Bucket=BUCKET, Key="ci/index.html")
    assert status["ContentType"] == "text/html; charset=utf-8"
    assert f'href="{rel}/"'.encode() in status["Body"].read()


def test_publish_retried_until_the_endpoint_answers(s3, moto_s3, make_config):
    """The endpoint is a TCP proxy that refuses connections until opened, then forwards to moto."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens yet: connection refused
    config = make_config(logs=s3_logs(f"http://127.0.0.1:{port}", publish_timeout=120))
    build = make_build(config)
    publisher = Publisher.from_config(config)
    failures = threading.Event()
    outcome = {}

    import logging

    class Seen(logging.Handler):
        def emit(self, record):
            if "failed (retrying)" in record.getMessage():
                failures.set()
    seen = Seen()
    logging.getLogger("cislaves.ci.publish").addHandler(seen)

    def publish():
        outcome["url"] = publisher.publish_build(Path(build.log_dir))
    worker = threading.Thread(target=publish)
    worker.start()
    proxy = None
    try:
        assert failures.wait(60), "no failed attempt was logged"
        assert not objects(s3)
        proxy = _Proxy(port, int(moto_s3.rsplit(":", 1)[1]))
        worker.join(120)
    finally:
        logging.getLogger("cislaves.ci.publish").removeHandler(seen)
        if proxy:
            proxy.close()
    assert outcome["url"].endswith(f"/{build.id}/")
    assert len(objects(s3)) == len(tree(Path(build.log_dir)))


def test_retention_by_the_builds_end(s3, moto_s3, make_config):
    config = make_config(logs=s3_logs(moto_s3))
    publisher, old, kept = old_and_recent(config, 31, 1)
    assert publisher.expire(30) == [f"00/1200/2/check/acme-unit/{old.id}"]
    keys = set(objects(s3))
    assert not any(k.startswith("ci/00/1200/") for k in keys)
    assert any(k.startswith(f"ci/00/1300/2/check/acme-unit/{kept.id}/") for k in keys) and "ci/index.html" in keys


class _Proxy:
    """A TCP forwarder on a fixed port (opened late, to end a refusal)."""

    def __init__(self, port: int, target: int):
        self.server = socket.create_server(("127.0.0.1", port))
        self.target = target
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()
