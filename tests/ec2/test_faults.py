"""Faults injected at the wire (through the proxy in front of moto): throttling, refused launches,
images that stay pending, Ctrl-C during waits. Whatever happens, nothing of the run remains."""
import os
import signal
import threading

import pytest

from cislaves.clouds.base import standard_tags
from cislaves.errors import CloudError, WaitTimeout
from tests.contract import make_spec
from tests.ec2.moto_env import image_of_new_instance


def sigint_once(proxy, event):
    """Send this process SIGINT the first time `event` passes the proxy."""
    fired = threading.Event()

    def hook(params):
        if not fired.is_set():
            fired.set()
            os.kill(os.getpid(), signal.SIGINT)

    proxy.on(event, hook)
    return fired


def test_throttled_calls_are_retried_and_the_bake_succeeds(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url)
    cloud.base_image(centos7)
    proxy.fail(None, 1)  # the next call, whatever it is, answers RequestLimitExceeded
    spec, image = image_of_new_instance(cloud, centos7, tmp_path / "keys", "cislaves-throttled",
                                        lambda: proxy.fail("CreateImage", 2))  # twice in a row
    assert sum(proxy.answered.values()) == 3 and proxy.answered["CreateImage"] == 2
    assert cloud.clients.requests - sum(cloud.clients.calls.values()) == 3  # retries, not new calls
    assert image.state == "available"
    cloud.delete_image(image)
    assert left(spec.run_id) == []


def test_throttling_beyond_the_retry_budget_is_one_line_and_leaves_nothing(proxy, make_cloud, centos7, tmp_path,
                                                                          left):
    cloud = make_cloud(proxy.url, max_attempts=2)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    proxy.fail("CreateSecurityGroup", 2)
    with pytest.raises(CloudError, match=r"^ec2 create_security_group in us-west-2 failed: RequestLimitExceeded: ") \
            as err:
        cloud.launch(spec)
    assert (err.value.code, err.value.status, err.value.operation) == ("RequestLimitExceeded", 503,
                                                                       "create_security_group")
    assert proxy.count("CreateSecurityGroup") == 2
    assert left(spec.run_id) == []  # the key pair imported before it was deleted again
    assert list((tmp_path / "keys").iterdir()) == []


def test_refused_launch_removes_key_pair_and_security_group(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    proxy.fail("RunInstances", 1, code="InsufficientInstanceCapacity", status=400)
    with pytest.raises(CloudError, match="run_instances in us-west-2 failed: InsufficientInstanceCapacity") as err:
        cloud.launch(spec)
    assert (err.value.cloud, err.value.code, err.value.status) == ("ec2", "InsufficientInstanceCapacity", 400)
    assert {"ImportKeyPair", "CreateSecurityGroup", "DeleteKeyPair", "DeleteSecurityGroup"} <= set(proxy.actions)
    assert left(spec.run_id) == []


@pytest.mark.usefixtures("ctrl_c")
def test_sigint_while_waiting_for_the_instance_removes_everything(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    fired = sigint_once(proxy, "DescribeInstances")
    with pytest.raises(KeyboardInterrupt):
        cloud.launch(spec)
    assert fired.is_set()
    assert "TerminateInstances" in proxy.actions
    assert left(spec.run_id) == []


@pytest.mark.parametrize("event", ["DescribeImages:pending", "CreateImage"])
@pytest.mark.usefixtures("ctrl_c")
def test_sigint_during_the_image_wait_removes_the_unfinished_image(proxy, make_cloud, centos7, tmp_path, left,
                                                                   event):
    """SIGINT while the image is pending, or before CreateImage's answer arrives (its id unknown)."""
    cloud = make_cloud(proxy.url)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    proxy.hold_pending()
    fired = sigint_once(proxy, event)
    try:
        with pytest.raises(KeyboardInterrupt):
            cloud.create_image(instance, "cislaves-interrupted", standard_tags(spec.run_id, "centos7", "image"))
    finally:
        cloud.destroy(instance)
    assert fired.is_set()
    assert "DeregisterImage" in proxy.actions and "DeleteSnapshot" in proxy.actions
    assert left(spec.run_id) == []


def test_an_image_that_stays_pending_times_out_naming_it_and_is_removed(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url, image_timeout=1)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    proxy.hold_pending()
    try:
        with pytest.raises(WaitTimeout, match=r"timed out after 1s waiting for image ami-\w+ in us-west-2 to become "
                                              r"available \(last seen: pending\)"):
            cloud.create_image(instance, "cislaves-slow", standard_tags(spec.run_id, "centos7", "image"))
    finally:
        cloud.destroy(instance)
    assert left(spec.run_id) == []


def test_a_failed_region_copy_removes_the_copies(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url, copy_regions=["eu-west-1", "eu-north-1"])
    spec, image = image_of_new_instance(cloud, centos7, tmp_path / "keys", "cislaves-copy")
    proxy.fail("CopyImage", 1, code="InvalidRequest", status=400, skip=1)  # the second region refuses
    with pytest.raises(CloudError, match="copy_image in eu-north-1 failed: InvalidRequest"):
        cloud.copy_image(image, cloud.copy_regions())
    assert proxy.count("CopyImage") == 2 and "DeregisterImage" in proxy.actions
    assert left(spec.run_id, ("eu-west-1", "eu-north-1")) == []  # the eu-west-1 copy went again
    cloud.delete_image(image)
    assert left(spec.run_id) == []


def test_eventual_consistency_and_a_busy_security_group_are_waited_out(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url)
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    proxy.fail("DescribeInstances", 2, code="InvalidInstanceID.NotFound", status=400)  # not visible yet
    instance = cloud.launch(spec)
    assert instance.state == "running" and proxy.answered["DescribeInstances"] == 2
    proxy.fail("DeleteSecurityGroup", 2, code="DependencyViolation", status=400)  # still "in use" for a moment
    cloud.destroy(instance)
    assert proxy.count("DeleteSecurityGroup") == 3
    assert left(spec.run_id) == []


def test_an_instance_that_dies_while_launching_is_an_error_and_leaves_nothing(proxy, make_cloud, centos7, tmp_path,
                                                                             left, moto_ec2):
    cloud = make_cloud(proxy.url)
    spec = make_spec(cloud, centos7, tmp_path / "keys")

    def kill_it(params):  # it dies before it runs (a spot reclaim, a capacity failure)
        found = moto_ec2.describe_instances(Filters=[{"Name": "tag:cislaves:run-id", "Values": [spec.run_id]}])
        moto_ec2.terminate_instances(InstanceIds=[found["Reservations"][0]["Instances"][0]["InstanceId"]])
    proxy.on("RunInstances", kill_it)  # runs once moto made it, before the driver hears back
    with pytest.raises(CloudError, match=r"^ec2: instance i-\w+ went away while waiting for running"):
        cloud.launch(spec)
    assert left(spec.run_id) == []


@pytest.mark.usefixtures("ctrl_c")
def test_sigint_before_a_copy_answers_removes_that_copy(proxy, make_cloud, centos7, tmp_path, left):
    cloud = make_cloud(proxy.url, copy_regions=["eu-west-1"])
    spec, image = image_of_new_instance(cloud, centos7, tmp_path / "keys", "cislaves-copy-sigint")
    fired = sigint_once(proxy, "CopyImage")  # moto made the copy; the driver never learns its id
    with pytest.raises(KeyboardInterrupt):
        cloud.copy_image(image, cloud.copy_regions())
    assert fired.is_set()
    assert left(spec.run_id, ("eu-west-1",)) == []
    cloud.delete_image(image)
    assert left(spec.run_id) == []
