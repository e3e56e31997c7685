"""Injected faults: each gives one clear line (a CloudError) and leaves nothing of the run behind;
rate limits and transient 5xx answers are retried within the deadline."""
import logging
import time

import pytest

from cislaves.clouds.base import standard_tags
from cislaves.errors import CloudError
from tests.contract import make_spec
from tests.openstack.conftest import NOTHING, leftovers, openstack_env


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_server_error_carries_the_fault_message_and_nothing_is_left(cloud, fake, debian12, tmp_path):
    fake.server_error("No valid host was found. There are not enough hosts available.")
    spec = make_spec(cloud, debian12, tmp_path)
    with pytest.raises(CloudError) as exc:
        cloud.launch(spec)
    assert "went to ERROR: No valid host was found" in one_line(exc)
    assert leftovers(fake) == NOTHING
    assert list((tmp_path).iterdir()) == []  # the generated private key is gone too


@pytest.mark.parametrize("end, message", [
    ("killed", "ended 'killed' while being saved from server"),
    ("deleted", "ended 'deleted' while being saved from server"),
    ("gone", "was deleted while it was being saved from server"),  # Glance answers 404
])
def test_image_that_does_not_become_active_is_an_error(cloud, fake, debian12, tmp_path, end, message):
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)
    fake.image_killed(end)
    with pytest.raises(CloudError) as exc:
        cloud.create_image(instance, "snap", standard_tags(spec.run_id, "debian12", "image"))
    assert message in one_line(exc) and instance.id in one_line(exc)
    cloud.destroy(instance)  # what the pipeline's cleanup does
    assert leftovers(fake) == NOTHING


def test_a_500_once_is_retried_without_a_second_server(cloud, fake, debian12, tmp_path):
    fake.fail_next("POST", r"/servers$", 500)
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert fake.statuses("POST", r"/servers$") == [500, 202]
    assert len(fake.servers) == 1
    cloud.destroy(instance)
    assert leftovers(fake) == NOTHING


def test_a_429_waits_for_retry_after(cloud, fake, debian12, tmp_path):
    fake.fail_next("GET", r"^/image/v2/images", 429, retry_after="1")
    start = time.monotonic()
    image = cloud.base_image(debian12)
    assert time.monotonic() - start >= 1.0
    assert image.name == "Debian 12 (Bookworm)"
    assert fake.statuses("GET", r"^/image/v2/images\?")[:2] == [429, 200]


def test_413_over_limit_on_an_action_is_retried(cloud, fake, debian12, tmp_path):
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)
    fake.fail_next("POST", r"/action$", 413, retry_after="0")
    image = cloud.create_image(instance, "snap", standard_tags(spec.run_id, "debian12", "image"))
    assert fake.statuses("POST", r"/action$") == [413, 202]
    cloud.delete_image(image)
    cloud.destroy(instance)
    assert leftovers(fake) == NOTHING


def test_persistent_5xx_gives_up_at_the_deadline_and_cleans_up(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(api_deadline=1.2)  # attempts at 0 s and 0.5 s; the next 1 s backoff would pass it
    spec = make_spec(cloud, debian12, tmp_path)
    fake.fail_next("GET", r"/servers/[0-9a-f-]+$", 503, times=3)
    with pytest.raises(CloudError) as exc:
        cloud.launch(spec)
    text = one_line(exc)
    assert "reading server" in text and "HTTP 503" in text and "gave up after" in text
    assert leftovers(fake) == NOTHING  # the teardown's read retried past the last 503


def test_a_client_error_is_not_retried(cloud, fake, debian12, tmp_path):
    fake.fail_next("POST", r"/os-keypairs$", 400)
    with pytest.raises(CloudError) as exc:
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert "uploading key pair" in one_line(exc) and "HTTP 400" in one_line(exc)
    assert (exc.value.status, exc.value.code) == (400, "badRequest")  # Nova's fault, kept as data
    assert fake.statuses("POST", r"/os-keypairs$") == [400]
    assert leftovers(fake) == NOTHING


@pytest.mark.parametrize("method, path", [
    ("GET", r"/servers/[0-9a-f-]+$"),  # while booting
    ("POST", r"/servers$"),  # while the create is in flight: the server is found by its tags
])
def test_ctrl_c_during_launch_removes_the_server_and_key_pair(cloud, fake, debian12, tmp_path, method, path):
    fake.interrupt_on(method, path)
    with pytest.raises(KeyboardInterrupt):
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert leftovers(fake) == NOTHING


def test_ctrl_c_while_the_floating_ip_is_allocated_releases_it(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(floating_network="public")
    fake.interrupt_on("POST", r"/floatingips$")  # Neutron allocates it; its id never reaches the client
    with pytest.raises(KeyboardInterrupt):
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert fake.statuses("POST", r"/floatingips$") == [201]
    assert leftovers(fake) == NOTHING


def test_ctrl_c_while_saving_the_image_deletes_it(cloud, fake, debian12, tmp_path):
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)
    fake.interrupt_on("GET", r"^/image/v2/images/[0-9a-f-]+$")
    with pytest.raises(KeyboardInterrupt):
        cloud.create_image(instance, "snap", standard_tags(spec.run_id, "debian12", "image"))
    cloud.destroy(instance)
    assert leftovers(fake) == NOTHING


def test_wrong_password_is_one_line_without_the_secret(make_cloud, fake, debian12, caplog):
    env = {**openstack_env(fake), "OS_PASSWORD": "wrong-password-123"}
    with caplog.at_level(logging.DEBUG), pytest.raises(CloudError) as exc:
        make_cloud(env=env).base_image(debian12)
    assert "authentication refused" in one_line(exc)
    assert "wrong-password-123" not in one_line(exc) and "wrong-password-123" not in caplog.text


def test_secrets_never_reach_the_logs(cloud, fake, debian12, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG):
        instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
        cloud.destroy(instance)
    assert fake.password not in caplog.text
    assert not any(token in caplog.text for token in fake.tokens)


def test_unknown_region_names_the_setting(make_cloud, fake, debian12):
    with pytest.raises(CloudError) as exc:
        make_cloud(env={**openstack_env(fake), "OS_REGION_NAME": "ORD"}).base_image(debian12)
    assert "no endpoint" in one_line(exc) and "'ORD'" in one_line(exc) and "OS_REGION_NAME" in one_line(exc)


def test_fab_it_with_a_server_error_is_one_line_and_leaves_nothing(fake, tmp_path):
    from tests.cli import fab

    fake.server_error("Exceeded maximum number of retries. Exhausted all hosts available.")
    config_file = tmp_path / "cislaves.yaml"
    config_file.write_text(f"data_dir: {tmp_path / 'data'}\nclouds:\n  openstack:\n    launch_timeout: 20\n")
    env = {**openstack_env(fake), "CISLAVES_CONFIG": str(config_file), "OS_CLOUD": ""}
    done = fab("it:cloud=openstack,distribution=debian12", env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output
    errors = [line for line in output.splitlines() if "went to ERROR" in line]
    assert len(errors) == 1 and "Exhausted all hosts available." in errors[0], output
    assert leftovers(fake) == NOTHING

