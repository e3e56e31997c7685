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

    # the test's own observer: it holds no ephemeral node, so a long session and retried reads keep
    # a ZooKeeper restart on a loaded machine from failing the test instead of the code under test
    client = KazooClient(hosts=zookeeper.hosts, timeout=30,
                         connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5},
                         command_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5, "deadline": 60})
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()
