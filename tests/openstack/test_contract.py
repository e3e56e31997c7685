"""The shared driver contract, for `openstack` (Keystone v3 password) and `rackspace` (identity v2.0
with an API key, Rackspace defaults), both against the fake cloud."""
import pytest

from tests.contract import CloudContract
from tests.openstack.conftest import NOTHING, leftovers


class TestOpenStackContract(CloudContract):
    @pytest.fixture
    def distribution(self, debian12):
        return debian12

    @pytest.fixture(autouse=True)
    def nothing_left(self, fake):
        yield
        assert leftovers(fake) == NOTHING


class TestRackspaceContract(TestOpenStackContract):
    @pytest.fixture
    def cloud(self, make_cloud, fake):
        fake.region = "DFW"
        env = {"OS_AUTH_URL": fake.url + "/identity/v2.0/", "OS_USERNAME": fake.username,
               "RACKSPACE_API_KEY": fake.api_key}
        return make_cloud("rackspace", env=env, flavor="general1-2")
