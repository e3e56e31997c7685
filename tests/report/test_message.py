"""The comment's text and vote for every kind of buildset, the 16 KB cut, hostile text over Gerrit's
SSH (the command line as Gerrit's own splitter reads it), REST details ()]}' prefix, encoding, 5xx),
an email that cannot be sent, and the settings' one-line errors. Real servers on 127.0.0.1, no
machines."""
from __future__ import annotations

import logging
import time

import pytest
import yaml
from pydantic import SecretStr

from cislaves import config as cfg
from cislaves.ci import email, report
from cislaves.ci.builds import Build
from cislaves.ci.settings import GerritSettings, ci_settings
from cislaves.errors import ConfigError, GerritError
from cislaves.keys import generate_keypair
from tests.report.conftest import HTTP_PASSWORD, SMTP_PASSWORD
from tests.report.fakes import RestGerrit, ReviewGerrit

WIKI = "https://wiki.example.org/ThirdPartySystems/Acme_CI"
HOSTILE = ("it's \"quoted\" $(touch /tmp/pwned) `id` ; rm -rf / \\ \\' \n--label Verified=-2\n"
           "tab\there 'single' ''\" \u202e bidi \U0001f600 -- --tag x")


def build(name, result, seconds=303, voting=True, **kw):
    now = time.time()
    values = dict(id=f"{name[:4]}0001", job_id=1, attempt=1, name=name, change=1234, patchset=2,
                  project="openstack/cinder", branch="master", ref="refs/changes/34/1234/2", revision="ab" * 20,
                  trigger="check", event_type="patchset-created", event={"change": {"id": "I" + "0" * 40}},
                  voting=voting, state="finished", result=result, started=now - seconds, finished=now)
    values.update(kw)
    return Build(**values)


def settings(**ci):
    data = {"data_dir": "/tmp/unused", "ci": {"name": "Acme-CI", "wiki_url": WIKI, **ci}}
    return ci_settings(cfg.Config(data, None, {}))


URLS = {"cind0001": "https://logs.example.org/34/1234/2/check/cinder-acme-tempest/7a3f9c/",
        "cind0002": "https://logs.example.org/34/1234/2/check/cinder-acme-unit/b81e04/"}


def test_the_issue_example_word_for_word():
    builds = [build("cinder-acme-tempest", "SUCCESS", 303, id="cind0001"),
              build("cinder-acme-unit", "FAILURE", 72, voting=False, id="cind0002")]
    assert report.message(settings(), builds, URLS) == (
        "Build succeeded (check).\n\n"
        "* cinder-acme-tempest https://logs.example.org/34/1234/2/check/cinder-acme-tempest/7a3f9c/ : "
        "SUCCESS in 5m 03s\n"
        "* cinder-acme-unit https://logs.example.org/34/1234/2/check/cinder-acme-unit/b81e04/ : FAILURE in 1m 12s "
        "(non-voting)\n\n"
        f"Acme-CI, contact and documentation: {WIKI}")


@pytest.mark.parametrize("results, head, votes", [
    # voting result(s), non-voting result -> head, vote for none / plus / both
    (["SUCCESS"], "succeeded", (None, 1, 1)),
    (["FAILURE"], "failed", (None, None, -1)),
    (["TIMED_OUT"], "failed", (None, None, -1)),
    (["NODE_FAILURE"], "failed", (None, None, None)),  # infrastructure: never a negative vote
    (["ERROR"], "failed", (None, None, None)),  # configuration: never the change's fault
    (["SUCCESS", "NODE_FAILURE"], "failed", (None, None, None)),
    (["FAILURE", "NODE_FAILURE"], "failed", (None, None, -1)),
    (["SUCCESS", "ABORTED"], "succeeded", (None, 1, 1)),  # an aborted build is not reported
])
def test_heads_and_votes(results, head, votes):
    builds = [build(f"job{i}", r, id=f"job{i}") for i, r in enumerate(results)]
    builds.append(build("nv", "FAILURE", voting=False, id="nv"))
    text = report.message(settings(), builds, {})
    assert text.startswith(f"Build {head} (check).\n\n")
    assert ("ABORTED" in text) is False
    for vote, expected in zip(("none", "plus", "both"), votes):
        assert report.vote(settings(vote=vote), builds) == expected
    if "NODE_FAILURE" in results:
        assert " : NODE_FAILURE in 5m 03s (infrastructure failure, not the change's)" in text


def test_nothing_to_report_and_only_non_voting_jobs():
    assert report.message(settings(), [build("a", "ABORTED")], {}) is None
    only = [build("nv", "SUCCESS", voting=False)]
    assert report.vote(settings(vote="both"), only) is None  # no voting job: no vote
    assert report.message(settings(wiki_url=None), only, {}).splitlines()[-1].endswith("(non-voting)")


def test_durations_in_zuul_form():
    assert [report.duration(s) for s in (0, 42, 60, 303, 3600, 3723)] == [
        "0s", "42s", "1m 00s", "5m 03s", "1h 00m 00s", "1h 02m 03s"]


def test_a_long_message_is_cut_at_16_kb_with_a_note():
    builds = [build(f"job-{i:04d}-{'x' * 60}", "SUCCESS", id=f"b{i}") for i in range(400)]
    text = report.message(settings(), builds, {b.id: f"https://logs.example.org/{b.id}/" for b in builds})
    assert len(text.encode()) <= report.MAX_MESSAGE
    assert text.startswith("Build succeeded (check).\n\n* job-0000-")
    assert text.endswith(f"\n\n{report.CUT_NOTE}\n\nAcme-CI, contact and documentation: {WIKI}")
    assert 100 < text.count("\n* ") < 400


def gerrit_split(line: str) -> list[str]:
    """Gerrit's own command-line splitter (CommandFactoryProvider.split in Gerrit's sshd), ported:
    the only parser the remote command string meets (no shell on Gerrit's side)."""
    words, word, single, double, i = [], [], False, False, 0
    while i < len(line):
        c = line[i]
        i += 1
        if c in " \t" and not (single or double):
            if word:
                words.append("".join(word))
                word = []
        elif c == '"' and not single:
            double = not double
        elif c == "'" and not double:
            single = not single
        elif c == "\\" and not single and i < len(line):
            word.append(line[i])
            i += 1
        else:
            word.append(c)
    if word:
        words.append("".join(word))
    return words


@pytest.fixture(scope="module")
def ssh_gerrit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-ssh")
    public = generate_keypair(folder / "id_ed25519")
    fake = ReviewGerrit(public, folder / "repos").start()
    known = fake.write_known_hosts(folder / "known_hosts")
    yield fake, GerritSettings(host="127.0.0.1", port=fake.port, user="acme-ci", key_file=folder / "id_ed25519",
                               known_hosts=known, backoff_first=0.01, backoff_max=0.1)
    fake.stop()


def test_hostile_text_reaches_gerrit_as_one_inert_message(ssh_gerrit):
    fake, gerrit = ssh_gerrit
    text = "Build failed (check).\n\n* unit x : FAILURE in 1s\n\n" + HOSTILE
    report.send_ssh(gerrit, build("unit", "FAILURE", project="openstack/nova"), text, {"Verified": -1})
    expected = ["gerrit", "review", "--project", "openstack/nova", "--message", text, "--label", "Verified=-1",
                "--tag", "autogenerated:cislaves:check", "1234,2"]
    assert fake.reviews[-1] == expected
    assert gerrit_split(fake.commands[-1]) == expected  # read by Gerrit's rules: the same words


def test_a_refused_ssh_review_is_a_gerrit_error(ssh_gerrit):
    fake, gerrit = ssh_gerrit
    fake.refuse = 1
    with pytest.raises(GerritError, match="gerrit review failed: fatal: internal server error"):
        report.send_ssh(gerrit, build("unit", "SUCCESS"), "Build succeeded (check).", {})
    refused = GerritSettings(host="127.0.0.1", port=1, user="acme-ci", known_hosts=gerrit.known_hosts,
                             connect_timeout=5)
    with pytest.raises(GerritError, match="cannot connect"):
        report.send_ssh(refused, build("unit", "SUCCESS"), "Build succeeded (check).", {})


def test_rest_review_encodes_the_change_and_reads_gerrits_prefix(caplog):
    caplog.set_level(logging.DEBUG)
    fake = RestGerrit("acme-ci", HTTP_PASSWORD)
    try:
        gerrit = GerritSettings(http_url=fake.url + "/", http_user="acme-ci", http_password=HTTP_PASSWORD)
        hostile = build("unit", "SUCCESS", project="team/a b~c?d#e", branch="stable/2024.1~x",
                        event={"change": {"id": "I" + "1" * 40}})
        answer = report.send_rest(gerrit, hostile, HOSTILE, {"Verified": 1})
        assert answer == {"labels": {"Verified": 1}}
        [(change, revision, body)] = fake.reviews
        assert change == "team/a b~c?d#e~stable/2024.1~x~I" + "1" * 40  # each part encoded on the wire
        assert revision == "ab" * 20
        assert body == {"message": HOSTILE, "tag": "autogenerated:cislaves:check", "labels": {"Verified": 1}}
        fake.refuse = 1
        with pytest.raises(GerritError, match="answered HTTP 503"):
            report.send_rest(gerrit, hostile, "x", {})
        wrong = GerritSettings(http_url=fake.url, http_user="acme-ci", http_password="wrong")
        with pytest.raises(GerritError, match="answered HTTP 401") as failed:
            report.send_rest(wrong, hostile, "x", {})
        assert fake.unauthorized == 1
        assert HTTP_PASSWORD not in repr(gerrit) and HTTP_PASSWORD not in str(failed.value)
        assert HTTP_PASSWORD not in caplog.text
    finally:
        fake.stop()


def test_an_email_that_cannot_be_sent_is_logged_and_never_raised(caplog, tmp_path):
    from tests.report.fakes import SmtpServer

    server = SmtpServer(tmp_path, "ci", SMTP_PASSWORD)
    try:
        settings_ = settings(email={"host": "127.0.0.1", "port": server.port, "user": "ci", "password": "nope",
                                    "from": "ci@example.org", "to": ["ops@example.org"], "when": "always",
                                    "ca_file": str(server.ca_file), "timeout": 3}).email
        builds = [build("unit", "SUCCESS")]
        assert email.send(settings_, settings(), builds, "Build succeeded (check).", True) == \
            "email to ops@example.org: failed"  # wrong password
        untrusted = settings_.model_copy(update={"ca_file": None, "password": SecretStr(SMTP_PASSWORD)})
        assert email.send(untrusted, settings(), builds, "x", True).endswith("failed")  # unknown certificate
        down = settings_.model_copy(update={"port": 1})
        assert email.send(down, settings(), builds, "x", True).endswith("failed")
        assert email.send(settings_.model_copy(update={"when": "failure"}), settings(), builds, "x", True) is None
        assert server.messages == []
        assert "email to ops@example.org via 127.0.0.1" in caplog.text
        assert SMTP_PASSWORD not in caplog.text and "nope" not in caplog.text
    finally:
        server.stop()


def test_settings_errors_are_one_line(tmp_path):
    def error(ci=None, gerrit=None):
        path = tmp_path / "cislaves.yaml"
        path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "ci": ci or {}, "gerrit": gerrit or {}}))
        config = cfg.load(path, environ={})
        with pytest.raises(ConfigError) as caught:
            ci_settings(config)
            report.check(config)
        return str(caught.value)

    assert error({"report": "rest"}).endswith("gerrit.http_url: required by ci.report: rest")
    assert "ci.report" in error({"report": "smtp"})
    assert "ci.vote" in error({"vote": "minus"})
    assert "ci.email.to" in error({"email": {"host": "smtp", "from": "ci@example.org", "to": ["not an address"]}})
    assert "ci.metrics.listen" in error({"metrics": {"listen": "localhost"}})
    secret = error({"report": "rest"}, {"http_url": "https://review.example.org", "http_password": HTTP_PASSWORD})
    assert secret.endswith("gerrit.http_user: required by ci.report: rest") and HTTP_PASSWORD not in secret
