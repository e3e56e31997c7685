"""Static hosts for the tests: two real local-cloud machines (sshd, systemd), booted once per session,
configured as `clouds.static.hosts` with their keys copied next to the config file (relative paths)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cislaves import clouds, config
from cislaves.records import LaunchSpec, new_run_id, standard_tags
from tests.fixtures_local import TEST_OWNER

HOSTS = ("host1", "host2")


@pytest.fixture(scope="session")
def static_machines(local_cloud):
    """Two booted debian12 machines that play existing hosts (destroyed at the end of the session)."""
    from cislaves import distros

    debian12 = distros.get("debian12")
    machines = []
    key_dir = Path(local_cloud.data_dir) / "static-test-keys"
    try:
        for _ in HOSTS:
            run_id = new_run_id()
            spec = LaunchSpec(distribution=debian12, image=local_cloud.base_image(debian12), run_id=run_id,
                              name=f"static-host-{run_id}", key_dir=key_dir,
                              tags=standard_tags(run_id, "debian12", "instance", owner=TEST_OWNER))
            machines.append(local_cloud.launch(spec))
        yield machines
    finally:
        for machine in machines:
            local_cloud.destroy(machine)


def write_config(folder: Path, machines, *, data_dir: Path | None = None, **extra) -> Path:
    """A config whose static hosts are `machines` (host1, host2 ...), keys at keys/<name> (relative)."""
    (folder / "keys").mkdir(parents=True, exist_ok=True)
    hosts = []
    for name, machine in zip(HOSTS, machines):
        shutil.copy(machine.key_file, folder / "keys" / name)
        hosts.append({"name": name, "ssh_host": machine.address, "ssh_port": 22, "ssh_user": "root",
                      "ssh_private_key_file": f"keys/{name}", "labels": ["debian", f"only-{name}"]})
    data = {"data_dir": str(data_dir or folder / "data"), "provision": {"package_set": "minimal"},
            "clouds": {"static": {"hosts": hosts, "ssh_timeout": 30}}}
    for key, value in extra.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.update({key: value})
    path = folder / "cislaves.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def static_cloud(path: Path):
    return clouds.get("static", config.load(path, environ={}))


@pytest.fixture(scope="module")
def static_config(static_machines, tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("static"), static_machines)
