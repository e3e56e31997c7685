"""End to end on the local cloud: a patch set whose voting job succeeds and whose non-voting job fails
gets exactly one comment in OpenStack's format, over SSH and (separately) REST, with the vote the
`vote` setting asks for; each link resolves to the build's published files on a local HTTP server; an
email arrives over STARTTLS with login; the metrics endpoint counts the builds; silent mode comments
nothing; a Gerrit that refuses reviews for a while, also across a restart, gets one comment. No
secret appears in any output, log, page or file."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cislaves.ci import cli, report
from cislaves.ci.report import ReportStore
from cislaves.waiting import wait_for
from tests.report.conftest import HTTP_PASSWORD, SMTP_PASSWORD
from tests.runner.conftest import store_for, wait_for_builds

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_leftovers")]
WIKI = "https://wiki.example.org/ThirdPartySystems/Acme_CI"
JOBS = [{"name": "unit", "body": "echo fine\n"},
        {"name": "lint", "body": "echo 'style: broken'\nexit 1\n", "voting": False}]
REPO = Path(__file__).resolve().parents[2]
DURATION = r"(\d+h \d\dm \d\ds|\d+m \d\ds|\d+s)"


def ci_for(tmp_path, log_server, **extra) -> dict:
    return {"logs": {"dir": str(tmp_path / "logs"), "url": log_server.url}, "wiki_url": WIKI,
            "report_backoff_first": 0.2, "report_backoff_max": 0.5, "metrics": {"listen": "127.0.0.1:0"},
            **extra}


def report_of(config, job_id):
    store = store_for(config)
    try:
        return ReportStore(store).get(job_id)
    finally:
        store.close()


def wait_reported(config, count=2, state="reported", timeout=120):
    builds = wait_for_builds(config, count, timeout)
    job_id = builds[0].job_id
    wait_for(lambda: (report_of(config, job_id) or None) and report_of(config, job_id).state == state or None,
             f"the report of job {job_id} to be {state}", timeout, first_delay=0.05, max_delay=0.25,
             describe=lambda: str(report_of(config, job_id)))
    return {b.name: b for b in builds}, job_id


def expected_lines(log_server, builds) -> list[str]:
    """The regex of each build line, in job-name order (urls exact, durations in Zuul's form)."""
    lines = []
    for name in sorted(builds):
        b = builds[name]
        url = f"{log_server.url}/{b.change % 100:02d}/{b.change}/{b.patchset}/check/{name}/{b.id}/"
        lines.append(re.escape(f"* {name} {url} : {b.result} in ") + DURATION
                     + ("" if b.voting else re.escape(" (non-voting)")))
    return lines


def assert_format(text, head, lines):
    pattern = (re.escape(head) + r"\n\n" + r"\n".join(lines) + r"\n\n"
               + re.escape(f"acme-ci, contact and documentation: {WIKI}"))
    assert re.fullmatch(pattern, text), text


def assert_links_resolve(text, builds):
    urls = re.findall(r"^\* \S+ (\S+) :", text, re.M)
    assert len(urls) == len(builds)
    for url, build in zip(urls, [builds[n] for n in sorted(builds)]):
        with urllib.request.urlopen(url, timeout=10) as answer:
            index = answer.read().decode()
        assert "job-output.txt" in index and "build.json" in index
        local = Path(build.log_dir)
        with urllib.request.urlopen(url + "job-output.txt", timeout=10) as answer:
            assert answer.read() == (local / "job-output.txt").read_bytes()
        with urllib.request.urlopen(url + "build.json", timeout=10) as answer:
            assert json.loads(answer.read())["result"] == build.result


def scrape(listener, path="/metrics"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listener.metrics.port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def assert_no_secret(tmp_path, caplog, *outputs):
    for secret in (HTTP_PASSWORD, SMTP_PASSWORD):
        assert secret not in caplog.text
        for text in outputs:
            assert secret not in text
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.name != "cislaves.yaml":
                assert secret.encode() not in path.read_bytes(), path


def fab_jobs(config) -> str:
    """`fab jobs` as a user runs it (its whole output)."""
    done = subprocess.run(["fab", "jobs"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CISLAVES_CONFIG": str(config.path)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_one_comment_over_ssh_with_links_email_and_metrics(make_config, listener, gerrit, log_server, smtp,
                                                             tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    email = {"host": "127.0.0.1", "port": smtp.port, "starttls": True, "user": "ci", "password": SMTP_PASSWORD,
             "from": "ci@example.org", "to": ["ops@example.org"], "when": "always", "ca_file": str(smtp.ca_file)}
    config = make_config(JOBS, ci=ci_for(tmp_path, log_server, report="ssh", vote="both", email=email,
                                         metrics={"listen": "127.0.0.1:0", "stream_down_after": 1}))
    running = listener(config)
    gerrit.upload_commit(1077, {"a.py": "x = 1\n"})
    builds, job_id = wait_reported(config)
    assert builds["unit"].result == "SUCCESS" and builds["lint"].result == "FAILURE"
    [review] = gerrit.reviews
    assert review[:5] == ["gerrit", "review", "--project", "openstack/nova", "--message"]
    assert review[6:] == ["--label", "Verified=+1", "--tag", "autogenerated:cislaves:check", "1077,1"]
    text = review[5]
    assert_format(text, "Build succeeded (check).", expected_lines(log_server, builds))
    assert_links_resolve(text, builds)
    # the email: same lines and links, over STARTTLS with login
    wait_for(lambda: smtp.messages or None, "the email", 60)
    [mail] = smtp.messages
    assert smtp.logins == ["ci"]
    assert mail["Subject"] == "acme-ci: succeeded: change 1077 patch set 1 (check, openstack/nova)"
    assert mail["To"] == "ops@example.org"
    assert mail.get_payload(decode=True).decode().replace("\r\n", "\n").rstrip("\n") == text
    # metrics after the builds
    status, body = scrape(running)
    assert status == 200
    got = samples(body)
    assert got[("cislaves_builds_total", (("job", "unit"), ("result", "SUCCESS")))] == 1
    assert got[("cislaves_builds_total", (("job", "lint"), ("result", "FAILURE")))] == 1
    assert got[("cislaves_build_duration_seconds_count", (("job", "unit"),))] == 1
    assert got[("cislaves_event_to_start_seconds_count", ())] == 2
    assert got[("cislaves_builds_running", ())] == 0
    assert got[("cislaves_reports_owed", ())] == 0
    assert got[("cislaves_events_total", (("type", "patchset-created"),))] >= 1
    assert got[("cislaves_last_event_timestamp_seconds", ())] > 0
    assert got[("cislaves_stream_up", ())] == 1
    wait_for(lambda: samples(scrape(running)[1]).get(("cislaves_queue_jobs", (("state", "failed"),))) == 1 or None,
             "the queued job to be finished (failed: a job failed)", 30)
    assert scrape(running, "/healthz")[0] == 200
    # the stream down longer than stream_down_after: /healthz fails, then recovers
    gerrit.hold(True)
    gerrit.drop()
    wait_for(lambda: scrape(running, "/healthz")[0] == 503 or None, "/healthz to fail", 60)
    assert samples(scrape(running)[1])[("cislaves_stream_up", ())] == 0
    gerrit.hold(False)
    wait_for(lambda: scrape(running, "/healthz")[0] == 200 or None, "/healthz to recover", 60)
    assert samples(scrape(running)[1])[("cislaves_stream_reconnects_total", ())] >= 1
    # never a second comment: another round of the reporter, a restart
    passes = running.runner.reporter.passes
    wait_for(lambda: running.runner.reporter.passes > passes + 1 or None, "two more rounds of the reporter", 60)
    running.stop()
    again = listener(config)
    wait_for(lambda: again.runner.reporter.passes > 1 or None, "the restarted reporter's rounds", 60)
    assert len(gerrit.reviews) == 1 and len(smtp.messages) == 1
    with urllib.request.urlopen(f"{log_server.url}/", timeout=10) as answer:  # the status page
        page = answer.read().decode()
    assert "1077" in page and builds["unit"].id in page
    assert_no_secret(tmp_path, caplog, text, page, fab_jobs(config))


def test_one_comment_over_rest(make_config, listener, gerrit, rest_gerrit, log_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    config = make_config(JOBS, ci=ci_for(tmp_path, log_server, report="rest", vote="plus"),
                         gerrit_extra={"http_url": rest_gerrit.url, "http_user": "acme-ci",
                                       "http_password": HTTP_PASSWORD})
    listener(config)
    event = gerrit.upload_commit(2042, {"b.py": "y = 2\n"})
    builds, job_id = wait_reported(config)
    [(change, revision, body)] = rest_gerrit.reviews
    assert change == f"openstack/nova~master~{event['change']['id']}"
    assert revision == event["patchSet"]["revision"]
    assert body["labels"] == {"Verified": 1} and body["tag"] == "autogenerated:cislaves:check"
    assert_format(body["message"], "Build succeeded (check).", expected_lines(log_server, builds))
    assert_links_resolve(body["message"], builds)
    assert gerrit.reviews == [] and rest_gerrit.unauthorized == 0
    assert_no_secret(tmp_path, caplog, fab_jobs(config))


def test_silent_mode_publishes_and_comments_nothing(make_config, listener, gerrit, rest_gerrit, log_server,
                                                     tmp_path):
    config = make_config(JOBS[:1], ci=ci_for(tmp_path, log_server, report=False, vote="both"),
                         gerrit_extra={"http_url": rest_gerrit.url, "http_user": "acme-ci",
                                       "http_password": HTTP_PASSWORD})
    running = listener(config)
    gerrit.upload_commit(3001, {"c.py": "z = 3\n"})
    builds, job_id = wait_reported(config, count=1, state="silent")
    passes = running.runner.reporter.passes
    wait_for(lambda: running.runner.reporter.passes > passes + 1 or None, "two more rounds of the reporter", 60)
    assert gerrit.reviews == [] and rest_gerrit.reviews == []
    assert not any(c.startswith("gerrit review") for c in gerrit.commands)
    url = f"{log_server.url}/01/3001/1/check/unit/{builds['unit'].id}/job-output.txt"
    with urllib.request.urlopen(url, timeout=10) as answer:  # published all the same
        assert b"fine" in answer.read()


def test_refused_reviews_are_retried_across_a_restart_and_sent_once(make_config, listener, gerrit, log_server,
                                                                     tmp_path):
    config = make_config(JOBS[:1], ci=ci_for(tmp_path, log_server, report="ssh", vote="none"))
    gerrit.refuse = 10 ** 6  # Gerrit refuses every review for now
    first = listener(config)
    gerrit.upload_commit(4004, {"d.py": "w = 4\n"})
    builds = wait_for_builds(config, 1)
    job_id = builds[0].job_id
    wait_for(lambda: (report_of(config, job_id) and report_of(config, job_id).attempts >= 2) or None,
             "two failed report attempts", 60, describe=lambda: str(report_of(config, job_id)))
    owed = report.unreported(config)
    assert len(owed) == 1 and owed[0].startswith(f"job {job_id}: not reported yet (")
    assert "internal server error" in owed[0]
    assert f"job {job_id}: not reported yet" in "\n".join(cli.jobs(config))
    first.stop()
    assert report_of(config, job_id).state == "pending" and gerrit.reviews == []
    gerrit.refuse = 2  # after the restart: two more refusals, then Gerrit accepts
    again = listener(config)
    wait_for(lambda: gerrit.reviews or None, "the review after the restart", 60,
             describe=lambda: str(report_of(config, job_id)))
    passes = again.runner.reporter.passes
    wait_for(lambda: again.runner.reporter.passes > passes + 1 or None, "two more rounds of the reporter", 60)
    [review] = gerrit.reviews
    assert "--label" not in review and review[-1] == "4004,1"
    assert review[5].startswith("Build succeeded (check).\n\n* unit ")
    assert gerrit.refused >= 4 and gerrit.refuse == 0
    assert report_of(config, job_id).state == "reported" and report.unreported(config) == []
    store = store_for(config)
    try:
        assert store.get(builds[0].id).reported
    finally:
        store.close()
