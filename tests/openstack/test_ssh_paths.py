"""SSH through a bastion and through a ProxyCommand, on OpenStack as on every cloud: the driver fills
the instance from the shared settings, and a real SSH session goes through a local-cloud machine
(itself the jump host) to the address the fake cloud's server was given (ssh_host)."""
from pathlib import Path

import pytest

from cislaves import remote
from cislaves.clouds.base import public_key_of
from tests.contract import make_spec
from tests.openstack.conftest import NOTHING, leftovers

pytestmark = pytest.mark.root


@pytest.fixture
def through(make_cloud, fake, local_machine, debian12, tmp_path):
    """launch(**ssh settings) -> an instance of the fake cloud reached at the local machine."""
    fake.add_keypair("bake-key", public_key_of(Path(local_machine.key_file)))
    launched = []

    def launch(**ssh):
        ssh = {"ssh_host": local_machine.address, "ssh_port": local_machine.port, **ssh}
        cloud = make_cloud(ssh_user="root", ssh_key_pair="bake-key", ssh_private_key_file=str(local_machine.key_file),
                           **ssh)
        instance = cloud.launch(make_spec(cloud, debian12, tmp_path / "keys"))
        launched.append((cloud, instance))
        return instance

    yield launch
    for cloud, instance in launched:
        cloud.destroy(instance)
    assert leftovers(fake) == {**NOTHING} and "bake-key" in fake.keypairs


def test_ssh_through_a_bastion(through, local_machine, tmp_path):
    bastion = f"root@{local_machine.address}:{local_machine.port}"
    instance = through(ssh_bastion=bastion, ssh_host="127.0.0.1")  # the machine's own loopback: only from there
    assert instance.jump_host == bastion and instance.proxy_command is None
    conn = remote.wait_for_ssh(instance, tmp_path / "data", timeout=30)
    try:
        assert conn.run("echo through-the-bastion", hide=True, in_stream=False).stdout.strip() == "through-the-bastion"
    finally:
        conn.close()


def test_ssh_through_a_proxy_command_with_host_and_port_expanded(through, local_machine, tmp_path):
    jump = (f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"-i {local_machine.key_file} -p {local_machine.port} -W %h:%p root@{local_machine.address}")
    instance = through(ssh_proxy_command=jump)
    assert instance.proxy_command.endswith(f"-W {local_machine.address}:{local_machine.port} "
                                           f"root@{local_machine.address}")
    conn = remote.wait_for_ssh(instance, tmp_path / "data", timeout=30)
    try:
        assert conn.run("echo through-the-proxy", hide=True, in_stream=False).stdout.strip() == "through-the-proxy"
    finally:
        conn.close()
