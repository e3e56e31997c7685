"""Fixtures for the report tests: the runner tests' baked image, git-serving fake Gerrit and config
factory (imported from tests/runner/conftest.py), with a Gerrit whose reviews can be refused, a REST
Gerrit, a log server, an SMTP server, and a listener wired as `fab listen` wires it (Service, Runner
with its Reporter, the metrics endpoint)."""
from __future__ import annotations

import pytest

from cislaves.ci import jobsettings, metrics
from cislaves.ci.dispatcher import Service
from cislaves.ci.pool import Runner
from cislaves.ci.settings import ci_settings, gerrit_settings, queue_path
from cislaves.waiting import wait_for
from tests.report.fakes import LogServer, RestGerrit, ReviewGerrit, SmtpServer
from tests.runner.conftest import make_config, no_leftovers  # noqa: F401 (fixtures)

HTTP_PASSWORD = "rest-S3cret-7f2a9c"
SMTP_PASSWORD = "smtp-S3cret-41be07"


@pytest.fixture
def gerrit(gerrit_key, tmp_path):  # noqa: F811 (the runner tests' fixture, with refusable reviews)
    fake = ReviewGerrit(gerrit_key[1], tmp_path / "repos").start()
    yield fake
    fake.stop()


@pytest.fixture
def rest_gerrit():
    fake = RestGerrit("acme-ci", HTTP_PASSWORD)
    yield fake
    fake.stop()


@pytest.fixture
def log_server(tmp_path):
    server = LogServer(tmp_path / "logs")
    yield server
    server.stop()


@pytest.fixture
def smtp(tmp_path):
    server = SmtpServer(tmp_path, "ci", SMTP_PASSWORD)
    yield server
    server.stop()


class Listener:
    def __init__(self, config, gerrit):
        ci = ci_settings(config)
        jobsettings.check(config, ci)
        self.runner = Runner(config)
        self.service = Service(gerrit_settings(config), ci, queue_path(config, ci), self.runner)
        before = gerrit.stream_connections
        self.runner.start()
        self.metrics = metrics.serve(config, self.service)
        self.service.start()
        self.stopped = False
        wait_for(lambda: gerrit.stream_connections > before, "the listener to stream events", 60)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.service.stop(grace=10)
        self.runner.stop()
        if self.metrics is not None:
            self.metrics.stop()


@pytest.fixture
def listener(gerrit):
    started: list[Listener] = []

    def start(config) -> Listener:
        started.append(Listener(config, gerrit))
        return started[-1]

    yield start
    for one in started:
        one.stop()
