"""The pipeline (issue 18): a run ends in the state only when its cleanup is known complete.

Through the real `fab` with the fake compute server: a `fab up` is killed (SIGKILL) while its instance is
being created, so only the cloud knows the instance (by its run label). While listing instances fails
(the project's per-minute read quota: 403 rateLimitExceeded), neither `fab cleanup` nor the next run may
forget that run; once listing works, `fab cleanup` reaps the instance and only then ends the run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

from cislaves.waiting import wait_for
from tests.cli import REPO, fab
from tests.gce.conftest import the_error_line
from tests.gce.fake_gce import read_quota_exceeded


def runs(tmp_path) -> dict:
    path = tmp_path / "fab-data" / "state.json"
    return json.loads(path.read_text()).get("runs", {}) if path.exists() else {}


def names(fake) -> list[str]:
    return sorted(i["name"] for i in fake.snapshot()["instances"])


def test_a_dead_run_whose_instances_cannot_be_listed_stays_until_it_is_reaped(gce_server, gce_fab_env, tmp_path):
    fake = gce_server.fake
    env = gce_fab_env(settings={"api_retries": 1, "api_retry_delay": 0.01, "launch_timeout": 300})
    fake.inject("instances.insert", hang=True)  # the insert operation never finishes: fab waits in launch
    proc = subprocess.Popen(["fab", "up:cloud=gce"], cwd=REPO, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bool(fake.snapshot()["instances"] and runs(tmp_path)), "fab up to create its instance", 60)
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup can run: only the cloud's labels know the instance now
        proc.communicate(timeout=30)
    (dead_run,) = runs(tmp_path)
    (left,) = names(fake)

    quota = fake.inject("instances.aggregatedList", http=read_quota_exceeded(), times=1000)
    result = fab("cleanup:cloud=gce", env=env, timeout=120)
    assert "could not list instances of run " + dead_run in result.stderr, result.stderr
    assert "HTTP 403: Quota exceeded for quota metric 'Read requests'" in the_error_line(result)
    assert dead_run in runs(tmp_path) and names(fake) == [left]  # not forgotten, not removed

    result = fab("up:cloud=gce", env=env, timeout=120)  # the next run: reaping fails, the bake goes on
    assert result.returncode == 0, result.stdout + result.stderr
    assert "could not list instances of run " + dead_run in result.stderr, result.stderr
    assert dead_run in runs(tmp_path) and left in names(fake) and len(names(fake)) == 2
    kept = next(n for n in names(fake) if n != left)

    quota.times = 0  # the next minute: the quota is back
    result = fab("cleanup:cloud=gce", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Removed leftover instance {left}" in result.stdout
    assert dead_run not in runs(tmp_path) and names(fake) == [kept]  # the kept `up` instance stays
    result = fab("destroy:cloud=gce", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert names(fake) == [] and fake.snapshot()["disks"] == []
