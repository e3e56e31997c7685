"""The shared driver contract, for `openstack` (Keystone v3 password, a devstack-like fake) and
`rackspace` (identity v2.0 with an API key against a fake answering as Rackspace does)."""
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


class TestRackspaceContract(CloudContract):
    @pytest.fixture
    def distribution(self, debian12):
        return debian12

    @pytest.fixture
    def cloud(self, make_rax):
        return make_rax("rackspace")

    @pytest.fixture(autouse=True)
    def nothing_left(self, rax):
        yield
        assert leftovers(rax) == NOTHING
        assert set(rax.regions_seen) == {"DFW"}  # the token's default region, for every service
