"""GCE failures: operation errors, quota, hangs, Ctrl-C, bad credentials and settings.
Each ends in one clear line, and nothing the run created is left in the fake."""
from __future__ import annotations

import json
import signal
import socket
import threading

import pytest

from cislaves.clouds.gce import api as gce_api
from cislaves.clouds.base import standard_tags, wait_for
from cislaves.errors import CloudError, ConfigError, WaitTimeout
from tests.contract import make_spec
from tests.gce.conftest import PROJECT
from tests.gce.fake_gce import ApiError

QUOTA = "Quota 'CPUS' exceeded.  Limit: 8.0 in region europe-west1."


def assert_nothing_left(fake, key_dir=None):
    state = fake.snapshot()
    assert state["instances"] == [] and state["disks"] == [], state
    assert [i["name"] for i in state["images"] if f"/projects/{PROJECT}/" in i["selfLink"]] == []
    if key_dir is not None and key_dir.exists():
        assert list(key_dir.iterdir()) == []


def one_line(error) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def test_quota_error_in_the_insert_operation(gce_cloud, gce_server, debian12_gce, tmp_path):
    gce_server.fake.inject("instances.insert", error=("QUOTA_EXCEEDED", QUOTA))
    spec = make_spec(gce_cloud, debian12_gce, tmp_path / "keys")
    with pytest.raises(CloudError) as info:
        gce_cloud.launch(spec)
    text = one_line(info.value)
    assert text.startswith(f"gce: creating instance {spec.name} in europe-west1-b failed: QUOTA_EXCEEDED: "
                           f"Quota 'CPUS' exceeded. Limit: 8.0 in region europe-west1.")
    assert gce_api.QUOTA_HINT in text
    assert_nothing_left(gce_server.fake, tmp_path / "keys")


def test_quota_refused_by_the_call_itself(gce_cloud, gce_server, debian12_gce, tmp_path):
    gce_server.fake.inject("instances.insert", http=(403, "quotaExceeded", QUOTA))
    with pytest.raises(CloudError) as info:
        gce_cloud.launch(make_spec(gce_cloud, debian12_gce, tmp_path / "keys"))
    text = one_line(info.value)
    assert "HTTP 403: Quota 'CPUS' exceeded. Limit: 8.0" in text and gce_api.QUOTA_HINT in text
    assert_nothing_left(gce_server.fake, tmp_path / "keys")


@pytest.mark.parametrize("keep", [False, True], ids=["image-gone", "image-left-failed"])
def test_image_operation_error(gce_cloud, gce_server, debian12_gce, tmp_path, keep):
    message = "The disk 'projects/x/zones/y/disks/z' could not be read: internal error."
    gce_server.fake.inject("images.insert", error=("INTERNAL_ERROR", message), keep=keep)
    spec = make_spec(gce_cloud, debian12_gce, tmp_path / "keys")
    instance = gce_cloud.launch(spec)
    try:
        with pytest.raises(CloudError) as info:
            gce_cloud.create_image(instance, "cislaves-debian12-broken", standard_tags(spec.run_id, "debian12",
                                                                                       "image"))
        assert one_line(info.value).startswith(
            f"gce: creating image cislaves-debian12-broken from disk {instance.name} failed: INTERNAL_ERROR: ")
    finally:
        gce_cloud.destroy(instance)
    assert_nothing_left(gce_server.fake, tmp_path / "keys")


def test_an_operation_that_never_ends_times_out_and_the_instance_is_removed(make_gce, gce_server, debian12_gce,
                                                                             tmp_path):
    gce_server.fake.inject("instances.insert", hang=True)
    cloud = make_gce({"launch_timeout": 0.5})
    spec = make_spec(cloud, debian12_gce, tmp_path / "keys")
    with pytest.raises(WaitTimeout) as info:
        cloud.launch(spec)
    text = one_line(info.value)
    assert f"(creating instance {spec.name} in europe-west1-b)" in text and "last seen: status RUNNING" in text
    assert_nothing_left(gce_server.fake, tmp_path / "keys")


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_during_launch_leaves_nothing(make_gce, gce_server, debian12_gce, tmp_path):
    fake = gce_server.fake
    fake.inject("instances.insert", hang=True)
    cloud = make_gce({"operation_timeout": 60})
    spec = make_spec(cloud, debian12_gce, tmp_path / "keys")
    main = threading.get_ident()

    def interrupt():
        wait_for(lambda: fake.snapshot()["instances"] or None, "the instance to exist", 60)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cloud.launch(spec)
    finally:
        thread.join()
    assert_nothing_left(fake, tmp_path / "keys")


def test_an_unreachable_api_is_one_line(make_gce, debian12_gce):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cloud = make_gce({"api_endpoint": f"http://127.0.0.1:{port}/compute/v1/", "api_retries": 0})
    with pytest.raises(CloudError) as info:
        cloud.base_image(debian12_gce)
    assert "cannot reach the Compute API" in one_line(info.value)


def test_the_token_comes_from_the_service_account_and_is_reused(gce_cloud, gce_server, debian12_gce):
    for _ in range(3):
        gce_cloud.base_image(debian12_gce)
    assert gce_server.token_requests == 1


def test_the_fake_refuses_requests_without_a_token(gce_server):
    import httplib2
    from googleapiclient import discovery

    client = discovery.build("compute", "v1", http=httplib2.Http(timeout=10), static_discovery=True,
                             client_options={"api_endpoint": gce_server.endpoint})
    with pytest.raises(CloudError) as info:
        gce_api.execute(client.images().get(project="debian-cloud", image="x"), "reading image x")
    assert "HTTP 401" in one_line(info.value)


def test_a_key_google_does_not_know_gets_no_token(make_gce, gce_server, debian12_gce, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path = tmp_path / "stolen.json"
    path.write_text(json.dumps({**gce_server.service_account_info(PROJECT), "private_key": other}))
    cloud = make_gce(environ={"GOOGLE_APPLICATION_CREDENTIALS": str(path)})
    with pytest.raises(CloudError) as info:
        cloud.base_image(debian12_gce)
    text = one_line(info.value)
    assert "could not get an access token: invalid_grant" in text and "BEGIN PRIVATE KEY" not in text


@pytest.mark.parametrize("content,expected", [
    (None, "cannot read: No such file or directory"),
    ("{not json", "not a JSON file"),
    ('{"type": "external_account"}', "expected a service account key"),
    ('{"type": "service_account", "client_email": "x"}', "not usable credentials"),
])
def test_bad_credentials_file_is_a_config_error(make_gce, debian12_gce, tmp_path, content, expected):
    path = tmp_path / "creds.json"
    if content is not None:
        path.write_text(content)
    cloud = make_gce(environ={"GOOGLE_APPLICATION_CREDENTIALS": str(path)})
    with pytest.raises(ConfigError) as info:
        cloud.base_image(debian12_gce)
    text = one_line(info.value)
    assert text.startswith(f"clouds.gce.credentials_file (or GOOGLE_APPLICATION_CREDENTIALS): {path}: ")
    assert expected in text


def test_project_comes_from_the_key_file_or_must_be_set(make_gce, gce_server, debian12_gce, tmp_path):
    cloud = make_gce(environ={"GCE_PROJECT": ""})
    assert cloud.project == PROJECT  # the service account's project_id
    path = tmp_path / "no-project.json"
    info = gce_server.service_account_info(PROJECT)
    del info["project_id"]
    path.write_text(json.dumps(info))
    cloud = make_gce(environ={"GCE_PROJECT": "", "GOOGLE_APPLICATION_CREDENTIALS": str(path)})
    with pytest.raises(ConfigError, match=r"^clouds\.gce\.project \(or GCE_PROJECT\): not set"):
        cloud.base_image(debian12_gce)


@pytest.mark.parametrize("settings,environ,expected", [
    ({"zone": "Europe West"}, {}, r"cislaves\.yaml: clouds\.gce\.zone: String should match pattern"),
    ({}, {"GCE_ZONE": "nowhere"}, r"^environment GCE_ZONE: String should match pattern"),
    ({"machine_typ": "e2-small"}, {}, r"clouds\.gce\.machine_typ: unknown key"),
    ({"image_family": "cislaves-{distro}"}, {}, r"clouds\.gce\.image_family: .*only placeholder is \{distribution\}"),
    ({}, {"OS_USERNAME": "Root Admin"}, r"^environment OS_USERNAME: String should match pattern"),
])
def test_bad_settings_name_the_key(make_gce, settings, environ, expected):
    with pytest.raises(ConfigError, match=expected):
        make_gce(settings, environ)


def test_key_settings_are_checked_before_anything_is_created(make_gce, gce_server, debian12_gce, tmp_path):
    with pytest.raises(ConfigError, match=r"clouds\.gce: .*ssh_public_key_file \(GCE_PUBLIC_KEY_FILENAME\) is set "
                                          r"but ssh_private_key_file \(GCE_PRIVATE_KEY_FILENAME\) is not"):
        make_gce(environ={"GCE_PUBLIC_KEY_FILENAME": str(tmp_path / "k.pub")})
    with pytest.raises(ConfigError, match=r"clouds\.gce: .*GCE has no named key pairs"):
        make_gce({"ssh_key_pair": "mine", "ssh_private_key_file": str(tmp_path / "k")})
    cloud = make_gce(environ={"GCE_PRIVATE_KEY_FILENAME": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"^clouds\.gce\.ssh_private_key_file: .*missing does not exist"):
        cloud.launch(make_spec(cloud, debian12_gce, tmp_path / "keys"))
    assert "instances.insert" not in gce_server.fake.calls
    assert_nothing_left(gce_server.fake)


def test_image_ids_that_are_not_gce_images(gce_cloud):
    with pytest.raises(CloudError, match="is not an image: expected NAME or projects/PROJECT"):
        gce_cloud.get_image("ami-12345678/x")


def test_the_fake_keeps_gce_rules(gce_server):
    """The rules the driver is held to are real: a running instance's disk cannot be imaged."""
    fake = gce_server.fake

    op = fake.insert_instance(PROJECT, "europe-west1-b", {
        "name": "vm", "machineType": "zones/europe-west1-b/machineTypes/e2-small",
        "networkInterfaces": [{"network": "global/networks/default"}],
        "disks": [{"boot": True, "autoDelete": True,
                   "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}]})
    assert op["status"] == "PENDING"
    wait_for(lambda: fake.get_operation(op["name"], "europe-west1-b")["status"] == "DONE" or fake.advance(),
             "the insert", 60)
    with pytest.raises(ApiError, match="already being used by"):
        fake.insert_image(PROJECT, {"name": "img", "sourceDisk": "zones/europe-west1-b/disks/vm"})
    with pytest.raises(ApiError, match="Invalid value for field 'resource.labels'"):
        fake.insert_image(PROJECT, {"name": "img2", "sourceDisk": "zones/europe-west1-b/disks/vm",
                                    "labels": {"cislaves:run-id": "x"}}, force=True)


def test_a_family_with_no_image_names_the_family_and_the_setting(gce_cloud):
    from cislaves import distros

    with pytest.raises(CloudError) as info:
        gce_cloud.base_image(distros.get("rocky9"))
    assert one_line(info.value) == ("gce: no image of family 'rocky-linux-9' in project 'rocky-linux-cloud' "
                                    "(distribution rocky9); set clouds.gce.image")


def test_errors_keep_googles_reason_and_the_http_status(make_gce, gce_server, debian12_gce, tmp_path):
    from tests.gce.fake_gce import read_quota_exceeded

    cloud = make_gce({"api_retries": 1, "api_retry_delay": 0.01})
    with pytest.raises(CloudError) as info:
        cloud.get_image("no-such-image")
    assert (info.value.code, info.value.status) == ("notFound", 404)
    gce_server.fake.inject("images.getFromFamily", http=read_quota_exceeded(), times=2)
    with pytest.raises(CloudError) as info:
        cloud.base_image(debian12_gce)
    assert (info.value.code, info.value.status) == ("rateLimitExceeded", 403)
    assert gce_server.fake.calls.count("images.getFromFamily") == 2  # api_retries: 1 -> two attempts
    gce_server.fake.inject("instances.insert", error=("QUOTA_EXCEEDED", QUOTA))
    with pytest.raises(CloudError) as info:
        cloud.launch(make_spec(cloud, debian12_gce, tmp_path / "keys"))
    assert (info.value.code, info.value.status) == ("QUOTA_EXCEEDED", 403)


def test_ssh_settings_that_cannot_work_on_gce_name_the_key(make_gce):
    with pytest.raises(ConfigError, match=r"clouds\.gce: .*ssh_interface: public needs external_ip: true"):
        make_gce({"ssh_interface": "public", "external_ip": False})
    with pytest.raises(ConfigError, match=r"clouds\.gce\.ssh_interface: .*expected public .* or private"):
        make_gce({"ssh_interface": "ipv6"})
