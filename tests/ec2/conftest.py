"""Fixtures for the EC2 driver's tests: one moto server per session, a misbehaving proxy per test."""
from __future__ import annotations

import boto3
import pytest

from cislaves import distros
from cislaves.clouds.ec2 import EC2Cloud
from tests.ec2.moto_env import leftovers, moto_server
from tests.ec2.proxy import EC2Proxy

FAST = {"poll_max_delay": 0.2, "launch_timeout": 30, "image_timeout": 30, "destroy_timeout": 30,
        "max_attempts": 6}


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def moto_ec2(moto_url):
    """A plain boto3 client on moto (us-west-2) for looking at what the driver did."""
    client = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
    yield client
    client.close()


@pytest.fixture
def proxy(moto_url):
    p = EC2Proxy(moto_url).start()
    yield p
    p.stop()


@pytest.fixture
def make_cloud(moto_url, tmp_path):
    """make_cloud(endpoint=None, **settings) -> an EC2Cloud on moto (or on `endpoint`), closed afterwards."""
    made: list[EC2Cloud] = []

    def make(endpoint: str | None = None, **settings) -> EC2Cloud:
        cloud = EC2Cloud({**FAST, "endpoint_url": endpoint or moto_url, **settings}, tmp_path / "data")
        made.append(cloud)
        return cloud

    yield make
    for cloud in made:
        cloud.close()


@pytest.fixture
def centos7():
    return distros.get("centos7")


@pytest.fixture
def left(moto_url):
    """left(run_id, regions=("us-west-2",)) -> what of the run remains in moto."""
    return lambda run_id, regions=("us-west-2",): leftovers(moto_url, run_id, regions)
