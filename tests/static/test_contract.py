"""The shared cloud contract against the static cloud, its hosts being real local-cloud machines."""
import pytest

from tests.contract import CloudContract
from tests.static.conftest import static_cloud

pytestmark = pytest.mark.root


class TestStaticContract(CloudContract):
    @pytest.fixture
    def cloud(self, static_config):
        cloud = static_cloud(static_config)
        yield cloud
        assert [i.id for i in cloud.list_instances()] == []  # every test released what it leased

    @pytest.fixture
    def distribution(self, debian12):
        return debian12
