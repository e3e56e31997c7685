"""The `fab listen`, `fab jobs` and `fab enqueue` tasks of the real fabfile, as a user runs them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cislaves.clouds.base import wait_for
from tests.ci.helpers import job_rows, stop_process

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("fab") is None or not (REPO / "fabfile.py").exists(),
                                reason="needs the fab command and the fabfile")


def fab(config, *args, **kw):
    env = {**os.environ, "CISLAVES_CONFIG": str(config.path), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(["fab", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_fab_enqueue_jobs_and_listen(gerrit, make_config):
    config = make_config()
    gerrit.upload(7001, project="openstack/ironic", publish=False)
    out, err = fab(config, "enqueue:change=7001,patchset=1").communicate(timeout=60)
    assert out.startswith("job 1 queued: change 7001 patch set 1 (openstack/ironic)"), err
    bad = fab(config, "enqueue", "--change", "7001", "--patchset", "x")
    out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and err.strip().splitlines()[-1] == (
        "error: argument patchset: expected a positive whole number, got 'x'")
    out, _ = fab(config, "jobs").communicate(timeout=60)
    assert out.splitlines()[1].split()[:6] == ["1", "queued", "7001", "1", "openstack/ironic", "manual"]

    listener = fab(config, "listen")
    try:
        wait_for(lambda: [j.state for j in job_rows(config)] == ["succeeded"] or listener.poll() is not None,
                 "`fab listen` to run the queued job", 30)
        wait_for(lambda: gerrit.streaming() > 0 or listener.poll() is not None, "`fab listen` to connect", 30)
        gerrit.upload(7002)
        wait_for(lambda: len(job_rows(config)) == 2 or listener.poll() is not None, "the new job", 30)
        assert listener.poll() is None
    finally:
        code, err = stop_process(listener)
    assert code == 0, err
    assert "Traceback" not in err
