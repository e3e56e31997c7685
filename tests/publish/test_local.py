"""Publishing to the local logs directory, served over HTTP: a build's index and the status page in
headless Chromium (builds, links, hostile Gerrit text inert; screenshots kept in the test's tmp dir),
every link answering 200; retention."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import pytest

from cislaves.ci.publish import Publisher
from tests.publish.conftest import HOSTILE, all_builds, chromium, links, make_build, tree


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, answer.headers["Content-Type"], answer.read()


def test_build_index_and_status_page_in_chromium(make_config, serve, tmp_path):
    logs_root = tmp_path / "logs"
    logs_root.mkdir()
    server = serve(logs_root)
    config = make_config(logs={"url": server.url})
    gerrit = tmp_path / "logs" / "gerrit" / "1234"  # the change links point at the same local server
    good = make_build(config, job="acme-tempest", result="SUCCESS", url=f"{server.url}gerrit/1234",
                      artifacts={"logs/tempest.log": "ok\n", "logs/<em>odd&'name.txt": HOSTILE + "\n",
                                 "logs/syslog": "Dec  2 kernel: ok\n"})
    bad = make_build(config, job="acme-unit", result="FAILURE", voting=False, url=f"{server.url}gerrit/1234")
    running = make_build(config, change=1301, patchset=1, job="acme-unit", state="running",
                         url="javascript:alert(1)")
    queued = make_build(config, change=1302, patchset=4, job="acme-tempest", state="queued",
                        url=f"{server.url}gerrit/1302")
    for change in ("1234", "1302"):
        (gerrit.parent / change).mkdir(parents=True)
        (gerrit.parent / change / "index.html").write_text(f"<html><body>change {change}</body></html>")
    publisher = Publisher.from_config(config)

    before = tree(Path(good.log_dir))
    url = publisher.publish_build(Path(good.log_dir))
    assert url == f"{server.url}34/1234/2/check/acme-tempest/{good.id}/"
    after = tree(Path(good.log_dir))
    assert {k: v for k, v in after.items() if k != "index.html"} == before  # nothing moved or changed
    publisher.publish_build(Path(bad.log_dir))
    publisher.publish_status(all_builds(config))

    # the build's index, as a browser renders it
    dom = chromium(url, tmp_path / "browser", "build-index")
    for name in ("job-output.txt", "build.json", "logs/tempest.log", "logs/syslog"):
        assert f">{name}<" in dom
    assert "&lt;em&gt;odd&amp;'name.txt" in dom and "<em>" not in dom
    assert "<script>" not in dom
    assert ">5m 03s<" in dom and ">SUCCESS<" in dom  # build.json's facts: duration in the comment's form
    hrefs = links(dom)
    assert "logs/%3Cem%3Eodd%26%27name.txt" in hrefs
    for href in hrefs:
        status, ctype, body = fetch(urljoin(url, href))
        assert status == 200, href
        if href.endswith((".txt", ".log", "syslog")):
            assert ctype == "text/plain; charset=utf-8", href  # text opens in the browser
    assert fetch(urljoin(url, "build.json"))[1] == "application/json"
    assert json.loads(fetch(urljoin(url, "build.json"))[2])["result"] == "SUCCESS"
    assert "[cislaves] result: SUCCESS" in fetch(urljoin(url, "job-output.txt"))[2].decode()

    # the status page at the logs' root
    dom = chromium(server.url, tmp_path / "browser", "status-page")
    assert dom.count("<script>") == 0 and "alert('x')" in dom  # the hostile subject is text
    assert "&lt;script&gt;alert('x')&lt;/script&gt; &amp; \"quoted\"" in dom
    for section in ("Running (1)", "Queued (1)", "Recent (2)"):
        assert section in dom
    for build in (good, bad, running, queued):
        assert build.name in dom
    assert "(non-voting)" in dom and ">FAILURE<" in dom and ">SUCCESS<" in dom and ">running<" in dom
    hrefs = links(dom)
    assert f"34/1234/2/check/acme-tempest/{good.id}/" in hrefs
    assert f"34/1234/2/check/acme-unit/{bad.id}/" in hrefs
    assert f"01/1301/1/check/acme-unit/{running.id}/" in hrefs  # a running build's output so far
    assert f"{server.url}gerrit/1234" in hrefs
    assert not any(h.startswith("javascript:") for h in hrefs)
    assert f"{server.url}gerrit/1302" in hrefs  # queued: the change, no logs yet
    assert len(hrefs) == 6  # 3 logs, 3 changes (the javascript: one is no link)
    for href in hrefs:
        assert fetch(urljoin(server.url, href))[0] == 200, href
    assert (tmp_path / "browser" / "status-page.png").is_file()


def test_retention_removes_old_builds_and_their_empty_folders(make_config, tmp_path):
    config = make_config()
    old = make_build(config, change=1200, ended_days_ago=31)
    kept = make_build(config, change=1300, ended_days_ago=29)
    running = make_build(config, change=1400, state="running")
    publisher = Publisher.from_config(config)
    for build in (old, kept):
        publisher.publish_build(Path(build.log_dir))
    assert publisher.expire(30) == [f"00/1200/2/check/acme-unit/{old.id}"]
    assert not (tmp_path / "logs" / "00" / "1200").exists()
    assert (tmp_path / "logs" / "00").is_dir()  # other changes of the same NN stay
    assert (Path(kept.log_dir) / "index.html").is_file() and (Path(running.log_dir) / "job-output.txt").is_file()
    assert publisher.expire(0) == []  # keep_days 0: keep everything
    assert publisher.expire() == []  # ci.logs.keep_days (30)


def test_a_directory_outside_the_logs_is_refused(make_config, tmp_path):
    config = make_config()
    outside = tmp_path / "elsewhere" / "34" / "1234" / "2" / "check" / "job" / "abc"
    outside.mkdir(parents=True)
    with pytest.raises(Exception) as err:
        Publisher.from_config(config).publish_build(outside)
    assert "is not under ci.logs.dir" in str(err.value)
    assert not (outside / "index.html").exists()
