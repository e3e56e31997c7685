"""The shared driver contract, against moto's EC2 server."""
import pytest

from tests.contract import CloudContract


class TestEC2Contract(CloudContract):
    @pytest.fixture
    def cloud(self, make_cloud):
        return make_cloud()

    @pytest.fixture
    def distribution(self, centos7):
        return centos7
