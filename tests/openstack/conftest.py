"""Fixtures for the OpenStack/Rackspace driver: a fake cloud per test and drivers built the way the
tool builds them (cislaves.config + the registry), from a config section and OS_* variables."""
from __future__ import annotations

import pytest

from cislaves import clouds, config
from tests.openstack.fake_openstack import FakeOpenStack

# (name, created_at): the newest active Debian 12 must win; the killed one is newer but not active.
SEED_IMAGES = [
    ("Debian 12 (Bookworm) old", "2025-01-01T00:00:00Z", "active"),
    ("Debian 12 (Bookworm)", "2025-06-01T00:00:00Z", "active"),
    ("Debian 12 (Bookworm) broken", "2025-09-01T00:00:00Z", "killed"),
    ("Ubuntu 14.04 LTS (Trusty Tahr) (PVHVM)", "2024-01-01T00:00:00Z", "active"),
    ("Ubuntu 14.04 LTS (Trusty Tahr) (PV)", "2024-02-01T00:00:00Z", "active"),
    ("CentOS 7 (PVHVM)", "2024-01-01T00:00:00Z", "active"),
    ("Windows Server 2012", "2024-03-01T00:00:00Z", "active"),
]


RACKSPACE_REGIONS = ["DFW", "ORD", "IAD"]  # the catalog lists them in a different order per service


def seeded(cloud: FakeOpenStack):
    with cloud:
        for name, created, status in SEED_IMAGES:
            cloud.add_image(name, status=status, created_at=created)
        yield cloud


@pytest.fixture
def fake():
    """A devstack-like cloud: Keystone v3, unversioned Glance/Neutron URLs, one region."""
    yield from seeded(FakeOpenStack())


@pytest.fixture
def rax():
    """A cloud answering as Rackspace does: v2.0 API-key tokens with RAX-AUTH:defaultRegion (DFW, listed
    second for compute), versioned catalog URLs, legacy v2 compute, no floating IPs."""
    yield from seeded(FakeOpenStack(rackspace=True, regions=RACKSPACE_REGIONS, default_region="DFW"))


def openstack_env(fake) -> dict[str, str]:
    return {"OS_AUTH_URL": fake.auth_url, "OS_USERNAME": fake.username, "OS_PASSWORD": fake.password,
            "OS_PROJECT_NAME": fake.project, "OS_REGION_NAME": fake.region}


def rackspace_env(fake) -> dict[str, str]:
    """As the seed ran: identity v2.0, username and API key, no region (the account's default)."""
    return {"OS_AUTH_URL": fake.url + "/identity/v2.0/", "OS_USERNAME": fake.username,
            "RACKSPACE_API_KEY": fake.api_key}


FAST = {"launch_timeout": 20, "image_timeout": 20, "destroy_timeout": 20, "api_deadline": 5}


def drivers(fake, tmp_path):
    """make(name="openstack", env=None, **section) -> a driver built through config and registry."""
    made = []

    def make(name="openstack", env=None, **section):
        environ = (rackspace_env(fake) if fake.rackspace else openstack_env(fake)) if env is None else env
        data = {"data_dir": str(tmp_path / "data"), "clouds": {name: {**FAST, **section}}}
        driver = clouds.get(name, config.Config(data, None, environ))
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.fixture
def make_cloud(fake, tmp_path):
    yield from drivers(fake, tmp_path)


@pytest.fixture
def make_rax(rax, tmp_path):
    yield from drivers(rax, tmp_path)


@pytest.fixture
def cloud(make_cloud):
    return make_cloud()


def leftovers(fake) -> dict[str, list]:
    """What the fake still holds of any run: servers, key pairs, floating IPs, non-seed images."""
    seed = {name for name, _, _ in SEED_IMAGES}
    with fake.lock:
        return {"servers": [s["name"] for s in fake.servers.values()],
                "keypairs": [k for k in fake.keypairs if k.startswith("cislaves-")],
                "floatingips": [f["floating_ip_address"] for f in fake.floatingips.values()],
                "images": [i["name"] for i in fake.images.values() if i["name"] not in seed]}


NOTHING = {"servers": [], "keypairs": [], "floatingips": [], "images": []}
