"""Fixtures for the CI tests: a key pair, the fake Gerrit, a fault-injecting proxy in front of it, a
config file pointing at either."""
from __future__ import annotations

import logging

import pytest
import yaml

from cislaves import config as cfg
from cislaves.ci.dispatcher import Service
from cislaves.ci.settings import ci_settings, gerrit_settings, queue_path
from cislaves.clouds.base import generate_keypair
from tests.ci.fake_gerrit import FakeGerrit
from tests.ci.proxy import FaultProxy


@pytest.fixture(scope="session")
def ci_key(tmp_path_factory):
    """A private key file and its public line, for the client and the fake server."""
    path = tmp_path_factory.mktemp("ci-key") / "id_ed25519"
    return path, generate_keypair(path)


@pytest.fixture
def gerrit(ci_key):
    fake = FakeGerrit(ci_key[1]).start()
    yield fake
    fake.stop()


@pytest.fixture
def proxy(gerrit):
    """A FaultProxy in front of the fake Gerrit."""
    fault = FaultProxy(gerrit.port).start()
    yield fault
    fault.stop()


@pytest.fixture
def make_config(tmp_path, ci_key, gerrit):
    """Write segredos-style YAML for the fake Gerrit (with extra `ci:`/`gerrit:` keys) and load it;
    `via=proxy` connects through that proxy instead."""
    def make(ci=None, gerrit_extra=None, pin=False, via=None):
        known = tmp_path / "known_hosts"
        port = via.port if via is not None else gerrit.port
        if not pin:
            known.write_text(gerrit.known_hosts_line().replace(f"]:{gerrit.port} ", f"]:{port} ", 1))
        data = {
            "data_dir": str(tmp_path / "data"),
            "gerrit": {"host": "127.0.0.1", "port": port, "user": "acme-ci", "key_file": str(ci_key[0]),
                       "known_hosts": str(known), "backoff_first": 0.02, "backoff_max": 0.2,
                       "accept_first_host_key": pin, **(gerrit_extra or {})},
            "ci": {"name": "acme-ci", "workers": 2, **(ci or {})},
        }
        path = tmp_path / "cislaves.yaml"
        path.write_text(yaml.safe_dump(data))
        return cfg.load(path, environ={})
    return make


@pytest.fixture
def service_for():
    """Build and start a Service from a config; every one is stopped at the end."""
    started = []

    def make(config, work=None):
        ci = ci_settings(config)
        service = Service(gerrit_settings(config), ci, queue_path(config, ci), work)
        service.start()
        started.append(service)
        return service
    yield make
    for service in started:
        service.stop(grace=5)


@pytest.fixture(autouse=True)
def _ci_logs(caplog):
    caplog.set_level(logging.INFO, logger="cislaves.ci")
