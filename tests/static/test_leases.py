"""Leases of real hosts (local-cloud machines) across processes, through the real `fab`: concurrent
`up`s never share a host, a run that dies gives its host back, `it` stops at create_image cleanly."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from cislaves.errors import CloudError
from cislaves.keys import generate_keypair
from tests.cli import REPO, fab
from tests.static.conftest import static_cloud, write_config
from tests.static.test_settings import spec_for

pytestmark = pytest.mark.root


@pytest.fixture
def env(static_machines, tmp_path):
    path = write_config(tmp_path, static_machines)
    yield {"CISLAVES_CONFIG": str(path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    assert static_cloud(path).list_instances() == []  # whatever the test did, every host is free again


def test_two_concurrent_ups_take_different_hosts_and_a_third_finds_none_free(env):
    results = [None, None]

    def up(index):
        results[index] = fab("up:cloud=static,new=true", env=env, timeout=120)

    threads = [threading.Thread(target=up, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = []
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        taken += re.findall(r"^Instance: (host\d) at root@", result.stdout, re.M)
    assert sorted(taken) == ["host1", "host2"]

    third = fab("up:cloud=static,new=true", env=env, timeout=120)  # both `up`s have exited: leases stay
    assert third.returncode == 1
    errors = [line for line in third.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no free host in 'any' (2 hosts: host1 by run" in errors[0], third.stderr
    assert "Traceback" not in third.stderr
    status = fab("status:cloud=static", env=env)
    assert status.stdout.count("running") == 2, status.stdout

    assert fab("ssh:cloud=static,instance=host1", "--", "hostname", env=env).returncode == 0
    for name in taken:
        done = fab(f"destroy:cloud=static,instance={name}", env=env)
        assert done.returncode == 0 and f"Destroyed {name}" in done.stdout, done.stderr


CHILD = """
import sys
from cislaves import clouds, config
from tests.static.test_settings import spec_for
cloud = clouds.get("static", config.load(sys.argv[1], environ={}))
instance = cloud.launch(spec_for(cloud, "only-host1"))
print("leased", instance.id, instance.run_id, flush=True)
sys.stdin.read()
"""


def test_a_run_that_died_gives_its_host_back(static_config):
    """A bake's lease (role bake) whose process was SIGKILLed is taken over by the next launch."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(static_config)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        line = child.stdout.readline().split()
        assert line[:2] == ["leased", "host1"], line
        cloud = static_cloud(static_config)
        with pytest.raises(CloudError) as busy:  # while it lives, the host is its own
            cloud.launch(spec_for(cloud, "only-host1"))
        assert busy.value.code == "NoFreeHost" and line[2] in str(busy.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stdin.close()
    instance = cloud.launch(spec_for(cloud, "only-host1"))
    try:
        assert instance.id == "host1" and instance.run_id != line[2]
        assert cloud.refresh(instance).state == "running"
    finally:
        cloud.destroy(instance)


def test_a_refused_key_fails_at_once_and_releases_the_host(static_machines, tmp_path):
    path = write_config(tmp_path, static_machines)
    generate_keypair(tmp_path / "keys" / "host1")  # not the key host1 authorizes
    cloud = static_cloud(path)
    with pytest.raises(CloudError) as error:
        cloud.launch(spec_for(cloud, "only-host1"))
    assert error.value.code == "AuthenticationFailed" and "refused the key" in str(error.value)
    assert cloud.list_instances() == []


@pytest.mark.slow
def test_it_fails_at_create_image_with_one_clear_line_and_releases_the_host(env):
    result = fab("it:cloud=static,distribution=debian12", env=env, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    for step in ("up", "bootstrap", "tests"):
        assert re.search(rf"\[static/debian12\] {step}: done in", result.stderr), step
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "create_image failed" in errors[0] and "a static host cannot be imaged" in errors[0], errors
    assert "Traceback" not in result.stderr
    data_dir = os.path.join(os.path.dirname(env["CISLAVES_CONFIG"]), "data")
    state = json.loads(open(os.path.join(data_dir, "state.json")).read())
    assert state["instances"] == {} and state["runs"] == {}  # the run ended; (the fixture: host released)
    assert not os.path.exists(os.path.join(data_dir, "manifest.json"))  # no image recorded
