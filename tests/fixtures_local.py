"""Fixtures for local-cloud machines (a pytest plugin loaded by tests/conftest.py).

local_cache_dir   (session) base-image cache shared by runs: $CISLAVES_TEST_CACHE or /var/tmp/cislaves-test-cache
local_data_dir    (session) a fresh data dir
local_config_file (session) a YAML config for subprocess `fab` (CISLAVES_CONFIG=...)
local_cloud       (session) a LocalCloud on those
debian12          the Distribution
local_machine     (function) a booted, SSH-ready debian12 Instance (owner tag TEST_OWNER), destroyed afterwards

tool_leftovers(data_dir=None) lists what of the tool remains on the host (empty after destroy).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cislaves import distros
from cislaves.records import LaunchSpec, new_run_id, standard_tags

DEFAULT_CACHE = "/var/tmp/cislaves-test-cache"
TEST_OWNER = "otestlocal001"  # the owner tag of machines the tests launch directly (not through a Session)


@pytest.fixture(scope="session")
def local_cache_dir() -> Path:
    path = Path(os.environ.get("CISLAVES_TEST_CACHE") or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def local_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cislaves-data")


@pytest.fixture(scope="session")
def local_config_file(tmp_path_factory, local_data_dir, local_cache_dir) -> Path:
    path = tmp_path_factory.mktemp("cislaves-config") / "cislaves.yaml"
    config = {
        "data_dir": str(local_data_dir),
        "clouds": {"local": {"cache_dir": str(local_cache_dir)}},
        "provision": {"package_set": "minimal"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def local_cloud(local_config_file):
    from cislaves import clouds, config

    cloud = clouds.get("local", config.load(local_config_file, environ={}))
    yield cloud
    from cislaves.clouds.base import CleanupPolicy

    cloud.cleanup(CleanupPolicy(owner=None, all_owners=True))


@pytest.fixture
def debian12():
    return distros.get("debian12")


@pytest.fixture
def local_machine(local_cloud, debian12, tmp_path):
    """A booted, SSH-ready debian12 machine from the base image; destroyed afterwards."""
    run_id = new_run_id()
    name = f"cislaves-test-{run_id}"
    spec = LaunchSpec(distribution=debian12, image=local_cloud.base_image(debian12), run_id=run_id, name=name,
                      tags=standard_tags(run_id, debian12.name, "instance", name=name, owner=TEST_OWNER),
                      key_dir=tmp_path / "keys")
    instance = local_cloud.launch(spec)
    try:
        yield instance
    finally:
        local_cloud.destroy(instance)


def tool_leftovers(data_dir: str | Path | None = None) -> list[str]:
    """What of the tool remains on the host: nspawn processes, overlay mounts (under data_dir, or any
    of the tool), network namespaces, veths, iptables rules with the tool's comment, allocations.
    With data_dir, host-global things are limited to those recorded for it (or mounted under it) and
    those no allocation record claims (a resource always has a record while its instance lives)."""
    from cislaves.clouds.local import host
    from cislaves.clouds.local import net

    records = net.list_records()
    recorded = {r["token"] for r in records}
    tokens, inside = None, None
    if data_dir is not None:
        data_dir = Path(data_dir).resolve()
        records = [r for r in records if Path(r["data_dir"]) == data_dir]
        tokens = {r["token"] for r in records}
        inside = str(data_dir) + "/"

    def mine(token: str | None) -> bool:
        """Ours: recorded for data_dir, or recorded for nobody (a leak, whoever made it)."""
        return tokens is None or token in tokens or token not in recorded

    found = [f"allocation {r['token']} {r['subnet']} {r['instance_dir']}" for r in records]
    for pid, argv in host.nspawn_processes():
        token = next(a for a in argv if a.startswith("--network-namespace-path="))[-8:]
        if mine(token):
            found.append(f"nspawn process {pid}: {' '.join(argv)}")
    for source, point, fstype in host.mounts():
        ours = fstype == "overlay" and source.startswith(host.MOUNT_SOURCE)
        if (inside and (point + "/").startswith(inside)) or (ours and mine(source[len(host.MOUNT_SOURCE):])):
            found.append(f"mount {source} on {point}")
    found += [f"cgroup {host.CGROUP_PARENT}/{n}" for n in host.tool_cgroups() if mine(n)]
    found += [f"netns {n}" for n in net.tool_netns() if mine(n[len(net.PREFIX):])]
    found += [f"veth {n}" for n in net.tool_links() if mine(n[len(net.PREFIX):])]
    found += [f"iptables -t {t} {line}" for t, line in net.tool_rules() if mine(net.rule_token(line))]
    return found
