"""The shared driver contract, for the GCE driver against the fake compute v1 server."""
import pytest

from tests.contract import CloudContract


class TestGCEContract(CloudContract):
    @pytest.fixture
    def cloud(self, gce_cloud):
        return gce_cloud

    @pytest.fixture
    def distribution(self, debian12_gce):
        return debian12_gce
