"""The shared cloud contract, run against real systemd-nspawn machines on this host."""
import pytest

from tests.contract import CloudContract

pytestmark = pytest.mark.root


class TestLocalContract(CloudContract):
    @pytest.fixture
    def cloud(self, local_cloud):
        return local_cloud

    @pytest.fixture
    def distribution(self, debian12):
        return debian12
