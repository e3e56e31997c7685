"""rsync over SSH to a private sshd on 127.0.0.1 (the log host): a build copied whole with its index,
the status page, a publish retried until the log host answers (local files intact), a final failure as
one line, retention on the log host, hostile file names inert."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from cislaves.ci.publish import Publisher, PublishError
from cislaves.waiting import Pending, wait_for
from tests.publish.conftest import old_and_recent, HOSTILE, Sshd, all_builds, make_build, tree


def rsync_logs(sshd, remote: Path, **extra) -> dict:
    return {"publish": "rsync", "url": "https://logs.example.org",
            "rsync": {"target": f"root@127.0.0.1:{remote}", "key_file": str(sshd.key), "port": sshd.port,
                      "known_hosts": str(sshd.known_hosts)}, **extra}


def test_build_and_status_page_copied_to_the_log_host(sshd, make_config, tmp_path):
    remote = tmp_path / "srv logs"  # a space in the remote path too
    config = make_config(logs=rsync_logs(sshd, remote))
    hostile = "logs/$(touch cislaves-pwned) `touch cislaves-pwned`.txt"
    build = make_build(config, artifacts={"logs/tempest.log": "ok\n", hostile: "x\n"})
    publisher = Publisher.from_config(config)
    url = publisher.publish_build(Path(build.log_dir))
    rel = f"34/1234/2/check/acme-unit/{build.id}"
    assert url == f"https://logs.example.org/{rel}/"
    assert tree(remote / rel) == tree(Path(build.log_dir))  # index.html included, byte for byte
    assert "logs/tempest.log" in (remote / rel / "index.html").read_text()
    assert not any(Path(d, "cislaves-pwned").exists() for d in (Path.home(), Path.cwd(), remote))
    assert oct((remote / rel / "job-output.txt").stat().st_mode & 0o777) == "0o644"

    running = make_build(config, change=1301, patchset=1, state="running")
    publisher.publish_status(all_builds(config))
    page = (remote / "index.html").read_text()
    assert page == (tmp_path / "logs" / "index.html").read_text()
    assert ">running<" in page and running.id not in page  # its output is not on the log host yet

    control = [o for o in publisher.target.ssh if o.startswith("ControlPath=")]
    assert control and list(Path.home().joinpath(".ssh", "cislaves").glob(
        Path(control[0]).name.split("-")[0] + "-*"))  # one shared connection served the passes
    publisher.close()
    assert not list(Path.home().joinpath(".ssh", "cislaves").glob(Path(control[0]).name.split("-")[0] + "-*"))
    assert f'href="{rel}/"' in page and "&lt;script&gt;" in page and HOSTILE not in page


def test_publish_retried_until_the_log_host_answers(make_config, tmp_path, caplog):
    host = Sshd(tmp_path / "late-host")  # not started yet: connections are refused
    remote = tmp_path / "remote"
    config = make_config(logs=rsync_logs(host, remote, publish_timeout=120))
    build = make_build(config)
    before = tree(Path(build.log_dir))
    publisher = Publisher.from_config(config)
    outcome = {}

    def publish():
        try:
            outcome["url"] = publisher.publish_build(Path(build.log_dir))
        except Exception as exc:
            outcome["error"] = exc

    caplog.set_level(logging.WARNING, logger="cislaves.ci.publish")
    worker = threading.Thread(target=publish)
    worker.start()
    try:
        wait_for(lambda: any("failed (retrying)" in r.getMessage() for r in caplog.records) or Pending("no failure"),
                 "a failed first publish", 60)
        assert not remote.exists()
        host.start()
        worker.join(120)
    finally:
        host.stop()
    assert "error" not in outcome, outcome
    rel = f"34/1234/2/check/acme-unit/{build.id}"
    assert outcome["url"].endswith(f"/{rel}/")
    assert tree(remote / rel) == tree(Path(build.log_dir))
    assert {k: v for k, v in tree(Path(build.log_dir)).items() if k != "index.html"} == before


def test_publish_failing_until_the_deadline_keeps_the_local_files(make_config, tmp_path):
    host = Sshd(tmp_path / "dead-host")  # never started
    config = make_config(logs=rsync_logs(host, tmp_path / "remote", publish_timeout=1))
    build = make_build(config)
    before = tree(Path(build.log_dir))
    with pytest.raises(PublishError) as err:
        Publisher.from_config(config).publish_build(Path(build.log_dir))
    message = str(err.value)
    assert "\n" not in message and "rsync target root@127.0.0.1:" in message and "local files are kept" in message
    assert {k: v for k, v in tree(Path(build.log_dir)).items() if k != "index.html"} == before


def test_retention_on_the_log_host(sshd, make_config, tmp_path):
    remote = tmp_path / "remote"
    config = make_config(logs=rsync_logs(sshd, remote))
    publisher, old, kept = old_and_recent(config, 40, 2)
    assert publisher.expire(30) == [f"00/1200/2/check/acme-unit/{old.id}"]
    assert not (remote / "00" / "1200").exists() and (remote / "00" / "1300" / "2").is_dir()
    assert (remote / "index.html").is_file()
    assert not Path(old.log_dir).exists() and Path(kept.log_dir).is_dir()  # the local copy expires too


def test_unknown_host_key_is_refused(sshd, make_config, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    logs = rsync_logs(sshd, tmp_path / "remote", publish_timeout=1)
    logs["rsync"]["known_hosts"] = str(empty)
    config = make_config(logs=logs)
    build = make_build(config)
    with pytest.raises(PublishError):
        Publisher.from_config(config).publish_build(Path(build.log_dir))
    assert not (tmp_path / "remote").exists()
