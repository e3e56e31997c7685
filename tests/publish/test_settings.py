"""ci.logs settings: each mistake is one line naming the file and key, raised by Publisher.from_config
before anything is published; content types a browser shows as text."""
from __future__ import annotations

from pathlib import Path

import pytest

from cislaves.ci.publish import Publisher, content_type
from cislaves.errors import ConfigError


@pytest.mark.parametrize("logs, expected", [
    ({"publish": "rsync"}, "ci.logs: Value error, publish: rsync needs ci.logs.rsync"),
    ({"publish": "s3"}, "ci.logs: Value error, publish: s3 needs ci.logs.s3"),
    ({"publish": "ftp"}, "ci.logs.publish: Input should be 'local', 'rsync' or 's3'"),
    ({"url": "javascript:alert(1)"},
     "ci.logs.url: Value error, 'javascript:alert(1)': expected an http:// or https:// URL"),
    ({"keep_days": -1}, "ci.logs.keep_days: Input should be greater than or equal to 0"),
    ({"publish": "rsync", "rsync": {"target": "loghost:/srv/logs"}},
     "ci.logs.rsync.target: Value error, 'loghost:/srv/logs': expected user@host:/absolute/path"),
    ({"publish": "rsync", "rsync": {"target": "logs@loghost:/srv", "key_file": "keys/missing"}},
     "ci.logs.rsync.key_file: {dir}/keys/missing is not a readable file"),
    ({"publish": "rsync", "rsync": {"target": "logs@loghost:/srv", "colour": "red"}}, "ci.logs.rsync.colour"),
    ({"publish": "rsync", "rsync": {"target": "logs@loghost:/srv", "known_hosts": "none", "port": 2222}},
     "ci.logs.rsync.known_hosts: {dir}/none does not exist; add the log host's key (ssh-keyscan -p 2222 "
     "loghost >> {dir}/none) or set accept_first_host_key: true"),
    ({"publish": "s3", "s3": {"bucket": "Acme_Logs"}},
     "ci.logs.s3.bucket: Value error, 'Acme_Logs': expected an S3 bucket"),
    ({"publish": "s3", "s3": {"bucket": "acme-ci-logs", "endpoint_url": "file:///etc"}},
     "ci.logs.s3.endpoint_url: Value error, 'file:///etc': expected an http:// or https:// URL"),
])
def test_one_line_errors(make_config, tmp_path, logs, expected):
    with pytest.raises(ConfigError) as err:
        Publisher.from_config(make_config(logs=logs))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'cislaves.yaml'}: ")
    assert expected.format(dir=tmp_path) in message
    assert not (tmp_path / "logs").exists()  # nothing was written


def test_the_issue_example_is_accepted(make_config, tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "logs").write_text("key")
    (tmp_path / "keys" / "known_hosts").write_text("")
    publisher = Publisher.from_config(make_config(logs={
        "url": "https://logs.example.org", "publish": "rsync", "keep_days": 30,
        "rsync": {"target": "logs@loghost:/srv/logs", "key_file": "keys/logs", "known_hosts": "keys/known_hosts"},
        "s3": {"bucket": "acme-ci-logs", "prefix": "", "region": "us-east-1"}}))
    assert publisher.url_for("34/1234/2/check/job/7a3f9c") == "https://logs.example.org/34/1234/2/check/job/7a3f9c/"
    assert str(tmp_path / "keys" / "logs") in publisher.target.ssh  # relative to the config file


def test_content_types(tmp_path):
    files = {"job-output.txt": b"x", "tempest.log": b"x", "build.json": b"{}", "index.html": b"<p>",
             "syslog": b"Dec  2 kernel: \xc3\xa9\n", "core": b"\x7fELF\0\0", "report.xml": b"<a/>",
             "big.tar.gz": b"\x1f\x8b"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert {n: content_type(tmp_path / n) for n in files} == {
        "job-output.txt": "text/plain; charset=utf-8", "tempest.log": "text/plain; charset=utf-8",
        "build.json": "application/json", "index.html": "text/html; charset=utf-8",
        "syslog": "text/plain; charset=utf-8", "core": "application/octet-stream",
        "report.xml": "text/xml; charset=utf-8", "big.tar.gz": "application/gzip"}
    assert content_type(Path(tmp_path / "missing")) == "application/octet-stream"
