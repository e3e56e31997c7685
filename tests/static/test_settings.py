"""The static cloud's configuration, pools and refusals; nothing here needs a reachable host."""
from __future__ import annotations

import socket
import textwrap

import pytest
import yaml

from cislaves import clouds, config, distros
from cislaves.clouds.base import LaunchSpec, new_run_id, standard_tags
from cislaves.errors import CloudError, ConfigError, NotSupported, WaitTimeout
from cislaves.keys import generate_keypair
from cislaves.records import Instance

ISSUE_CONFIG = """
clouds:
  static:
    hosts:
      - {name: array1, ssh_host: 192.0.2.10, ssh_port: 22, ssh_user: jenkins,
         ssh_private_key_file: keys/array1, labels: [fc-array]}
"""


def load(tmp_path, text=ISSUE_CONFIG, data=None):
    path = tmp_path / "segredos" / "cislaves.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text) if data is None else yaml.safe_dump(data))
    cfg = config.load(path, environ={})
    return clouds.get("static", config.Config(dict(cfg.raw, data_dir=str(tmp_path / "data")), cfg.path, {}))


def spec_for(cloud, image_id="any"):
    run_id = new_run_id()
    debian12 = distros.get("debian12")
    image = cloud.base_image(debian12) if image_id == "any" else cloud.get_image(image_id)
    return LaunchSpec(distribution=debian12, image=image, run_id=run_id, name=f"t-{run_id}",
                      tags=standard_tags(run_id, "debian12", "bake"), key_dir=cloud.data_dir / "keys", role="bake")


def test_the_configuration_of_the_issue_is_read_as_written(tmp_path):
    cloud = load(tmp_path)
    (host,) = cloud.settings.hosts
    assert (host.name, host.ssh_host, host.ssh_port, host.ssh_user, host.labels) == \
        ("array1", "192.0.2.10", 22, "jenkins", ["fc-array"])
    assert host.ssh_private_key_file == tmp_path / "segredos" / "keys" / "array1"  # the config file's folder
    assert not cloud.capabilities.images and not cloud.capabilities.stop_start
    assert cloud.get_image("fc-array").id == "fc-array" and cloud.get_image("array1").id == "array1"
    with pytest.raises(CloudError) as error:
        cloud.get_image("gpu")
    assert "'gpu'" in str(error.value) and "fc-array" in str(error.value) and "array1" in str(error.value)
    assert cloud.list_images() == [] and cloud.list_instances() == []


def test_create_image_says_plainly_that_a_static_host_cannot_be_imaged(tmp_path):
    cloud = load(tmp_path)
    host = Instance(id="array1", cloud="static", name="n", distribution="debian12", run_id="r")
    with pytest.raises(NotSupported) as error:
        cloud.create_image(host, "name", {})
    assert "a static host cannot be imaged" in str(error.value) and "array1" in str(error.value)
    assert error.value.operation == "create_image" and error.value.cloud == "static"


def test_cloud_level_ssh_settings_are_the_hosts_defaults(tmp_path):
    cloud = load(tmp_path, data={"clouds": {"static": {
        "ssh_user": "ci", "ssh_port": 2222, "ssh_private_key_file": "keys/shared",
        "hosts": [{"name": "a", "ssh_host": "192.0.2.1"},
                  {"name": "b", "ssh_host": "192.0.2.2", "ssh_port": 22, "ssh_user": "root",
                   "ssh_private_key_file": "/keys/b", "ssh_bastion": "me@jump:2200"}]}}})
    a, b = (cloud.settings.ssh_for(cloud.hosts[n]) for n in "ab")
    assert (a.ssh_host, a.ssh_user, a.ssh_port, a.ssh_private_key_file) == \
        ("192.0.2.1", "ci", 2222, tmp_path / "segredos" / "keys" / "shared")
    assert (b.ssh_user, b.ssh_port, str(b.ssh_private_key_file), b.ssh_bastion) == \
        ("root", 22, "/keys/b", "me@jump:2200")


@pytest.mark.parametrize("section, expected", [
    ({"ssh_host": "192.0.2.9"}, "clouds.static.ssh_host: Value error, not used by the static cloud: set it per host"),
    ({"ssh_key_pair": "kp"}, "clouds.static.ssh_key_pair: Value error, not used by the static cloud"),
    ({"hosts": [{"name": "a", "ssh_host": "h"}]}, "hosts[0] (a): no ssh_private_key_file"),
    ({"hosts": [{"name": "a", "ssh_host": "h", "ssh_private_key_file": "k"}] * 2}, "'a' is used by another host"),
    ({"hosts": [{"name": "a b", "ssh_host": "h", "ssh_private_key_file": "k"}]}, "clouds.static.hosts.0.name"),
    ({"hosts": [{"name": "a", "ssh_host": "h", "ssh_private_key_file": "k", "label": ["x"]}]}, "unknown key"),
])
def test_bad_settings_are_one_line_naming_the_key(tmp_path, section, expected):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, data={"clouds": {"static": section}})
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_missing_key_file_is_refused_before_any_lease(tmp_path):
    cloud = load(tmp_path)
    with pytest.raises(ConfigError, match=r"clouds.static.hosts\[array1\].ssh_private_key_file: .*keys/array1 "
                                          r"does not exist"):
        cloud.launch(spec_for(cloud, "fc-array"))
    assert cloud.list_instances() == [] and not list(cloud.leases.folder.glob("*.json"))


def test_no_hosts_configured_is_a_clear_error(tmp_path):
    cloud = load(tmp_path, data={"clouds": {"static": {}}})
    with pytest.raises(CloudError, match=r"no hosts configured \(clouds.static.hosts\)"):
        cloud.launch(spec_for(cloud))


def test_a_host_that_does_not_answer_is_released_and_named(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends
    generate_keypair(tmp_path / "segredos" / "keys" / "k")
    cloud = load(tmp_path, data={"clouds": {"static": {"ssh_timeout": 0.5, "hosts": [
        {"name": "dead", "ssh_host": "127.0.0.1", "ssh_port": port, "ssh_private_key_file": "keys/k"}]}}})
    with pytest.raises(WaitTimeout) as error:
        cloud.launch(spec_for(cloud))
    message = str(error.value)
    assert "static host dead" in message and f"127.0.0.1:{port}" in message and "last seen" in message
    assert cloud.list_instances() == []  # the lease was released
