"""Session fixtures the CI tests share (a pytest plugin loaded by tests/conftest.py), so that the runner,
report and publishing tests together bake ONE image per session, whichever of them run.

runner_data_dir   (session) the data dir of the baked image, its manifest and the project mirrors
baked_image       (session) a debian12 image baked once with `it` (local cloud, minimal package set)
gerrit_key        (session) the key pair the fake Gerrit's CI account logs in with
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from cislaves import bake, clouds
from cislaves import config as cfg
from cislaves.keys import generate_keypair

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def runner_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runner-data")


@pytest.fixture(scope="session")
def baked_image(runner_data_dir, local_cache_dir, tmp_path_factory):
    """The image every runner test boots: baked once with `it` (local cloud, minimal package set)."""
    path = tmp_path_factory.mktemp("runner-bake") / "cislaves.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(runner_data_dir), "provision": {"package_set": "minimal"},
                                    "clouds": {"local": {"cache_dir": str(local_cache_dir)}}}))
    config = cfg.load(path, environ={})
    session = bake.Session(config, "local", "debian12", out=log.info)
    try:
        made = bake.it(session)
    finally:
        session.close()
    yield made[0]
    cloud = clouds.get("local", config)
    try:
        for instance in cloud.list_instances():
            cloud.destroy(instance)
        cloud.delete_image(made[0])
    finally:
        cloud.close()


@pytest.fixture(scope="session")
def gerrit_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner-key") / "id_ed25519"
    return path, generate_keypair(path)
