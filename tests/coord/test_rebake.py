"""`fab rebake` with ci.backend: zookeeper: a two-target matrix (local cloud, minimal set) baked by
two `fab worker` processes, one target each, under the ZooKeeper rebake lock."""
from __future__ import annotations

import yaml

from tests.cli import fab
from tests.coord.helpers import Processes, children
from tests.fixtures_local import tool_leftovers


def test_a_rebake_matrix_is_spread_over_two_workers(zookeeper, zk, tmp_path, local_cache_dir):
    root = "/rebake-test"
    data = tmp_path / "data"
    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(data), "provision": {"package_set": "minimal"},
        "clouds": {"local": {"cache_dir": str(local_cache_dir)}},
        "zookeeper": {"hosts": zookeeper.hosts, "root": root, "session_timeout": 3},
        "ci": {"backend": "zookeeper"},
        "rebake": {"targets": [{"cloud": "local", "distribution": "debian12", "region": "lab-a"},
                               {"cloud": "local", "distribution": "debian12", "region": "lab-b"}],
                   "parallel": 2, "validate": False, "keep": 3}}))
    env = {"CISLAVES_CONFIG": str(path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    procs = Processes(tmp_path)
    try:
        for i in range(2):
            procs.start(f"worker{i}", path, "worker:concurrency=1,clouds=local")
        result = fab("rebake", env=env, timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "2 of 2 targets succeeded" in result.stdout, result.stdout
        assert result.stdout.count("submitted to the workers") == 2
        logs = [procs.log(f"worker{i}") for i in range(2)]
        baked = [[t for t in ("lab-a", "lab-b") if f"rebake target local/debian12/{t}" in log] for log in logs]
        assert sorted(b for one in baked for b in one) == ["lab-a", "lab-b"] and all(len(b) == 1 for b in baked), baked
        assert len(children(zk, f"{root}/rebake/results")) == 2
        assert children(zk, f"{root}/rebake/queue") == []
        assert children(zk, f"{root}/locks-named/rebake") == []  # the ZooKeeper lock, released
    finally:
        procs.stop_all()
        fab("cleanup:cloud=local", env=env, timeout=300)
    assert tool_leftovers(data) == []
