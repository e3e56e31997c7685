"""Fixtures for the runner tests: one debian12 image baked once per session on the local cloud
(minimal package set), a fake Gerrit serving real git repositories over its SSH, a config factory
and a listener (Service + Runner, as `fab listen` wires them) per test.

Every runner test shares the session's data dir (the image, the manifest, the project mirrors); each
has its own queue, builds database and log directory under its tmp_path."""
from __future__ import annotations

import logging
import shutil

import pytest
import yaml

from cislaves import clouds
from cislaves import config as cfg
from cislaves.ci import builds as store_mod
from cislaves.ci.builds import BuildStore
from cislaves.ci.dispatcher import Service
from cislaves.ci.pool import Runner
from cislaves.ci.settings import ci_settings, gerrit_settings, queue_path
from cislaves.waiting import wait_for
from tests.fixtures_local import tool_leftovers
from tests.runner.gitgerrit import GitGerrit

log = logging.getLogger(__name__)


@pytest.fixture
def gerrit(gerrit_key, tmp_path):
    fake = GitGerrit(gerrit_key[1], tmp_path / "repos").start()
    yield fake
    fake.stop()


@pytest.fixture
def make_config(tmp_path, gerrit_key, gerrit, runner_data_dir, local_cache_dir, baked_image):
    """Write a config for the fake Gerrit and the shared data dir; `jobs` are ci.jobs entries (a `body`
    key becomes the job's script)."""
    def make(jobs, ci=None, local=None, gerrit_extra=None):
        known = gerrit.write_known_hosts(tmp_path / "known_hosts")
        entries = []
        for job in jobs:
            job = dict(job)
            if "body" in job:
                script = tmp_path / f"{job['name']}.sh"
                script.write_text("#!/bin/bash\nset -eu\n" + job.pop("body"))
                job["run"] = script.name
            entries.append({"cloud": "local", "distribution": "debian12", **job})
        data = {
            "data_dir": str(runner_data_dir),
            "provision": {"package_set": "minimal"},
            "clouds": {"local": {"cache_dir": str(local_cache_dir), **(local or {})}},
            "gerrit": {"host": "127.0.0.1", "port": gerrit.port, "user": "acme-ci", "key_file": str(gerrit_key[0]),
                       "known_hosts": str(known), "backoff_first": 0.02, "backoff_max": 0.2, **(gerrit_extra or {})},
            "ci": {"name": "acme-ci", "workers": 2, "queue": str(tmp_path / "ci" / "queue.sqlite"),
                   "logs": {"dir": str(tmp_path / "logs")}, "triggers": [{"name": "check"}], "infra_retries": 1,
                   "jobs": entries, **(ci or {})},
        }
        path = tmp_path / "cislaves.yaml"
        path.write_text(yaml.safe_dump(data))
        return cfg.load(path, environ={})
    return make


@pytest.fixture
def listener(gerrit):
    """Start the listener with the runner for a config (as `fab listen` does); stopped at the end."""
    started = []

    def start(config):
        from cislaves.ci import jobsettings

        ci = ci_settings(config)
        jobsettings.check(config, ci)
        runner = Runner(config)
        service = Service(gerrit_settings(config), ci, queue_path(config, ci), runner)
        before = gerrit.stream_connections
        runner.start()
        service.start()
        started.append((service, runner))
        wait_for(lambda: gerrit.stream_connections > before, "the listener to stream events", 60)
        service.runner = runner
        return service

    yield start
    for service, runner in started:
        service.stop(grace=10)
        runner.stop()


@pytest.fixture
def no_leftovers(runner_data_dir, baked_image):
    """After the test, nothing of the tool remains on the host for the shared data dir."""
    yield
    assert tool_leftovers(runner_data_dir) == []


def store_for(config) -> BuildStore:
    return BuildStore(store_mod.path_for(queue_path(config, ci_settings(config))))


def builds_of(config):
    path = store_mod.path_for(queue_path(config, ci_settings(config)))
    if not path.exists():
        return []
    store = BuildStore(path)
    try:
        return store.recent()
    finally:
        store.close()


def wait_for_builds(config, count: int, timeout: float = 90, results=None):
    """Wait until `count` builds have finished; return them (newest first)."""
    def probe():
        done = [b for b in builds_of(config) if b.state == "finished" and (results is None or b.result in results)]
        return done if len(done) >= count else None
    return wait_for(probe, f"{count} finished build(s)", timeout, first_delay=0.05, max_delay=0.25,
                    describe=lambda: str([(b.name, b.state, b.result) for b in builds_of(config)]))


def running_instances(config):
    cloud = clouds.get("local", config)
    try:
        return [i for i in cloud.list_instances() if i.tags.get("cislaves:role") in ("job", "ready")]
    finally:
        cloud.close()


def have_git():
    return shutil.which("git") is not None
