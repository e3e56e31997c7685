"""ZooKeeper for the coord tests (one server per module), and the runner tests' fake Gerrit serving
git, config factory and session image (local cloud) for the builds the workers run."""
from __future__ import annotations

import pytest

from tests.coord.zkserver import ZooKeeperServer, available
from tests.runner.conftest import gerrit, make_config  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory):
    why = available()
    if why:
        pytest.fail(f"the coord tests need a real ZooKeeper: {why} (setup.sh installs both)")
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper")).start()
    yield server
    server.stop()


@pytest.fixture
def zk(zookeeper):
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zookeeper.hosts, timeout=4,
                         connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5})
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()
