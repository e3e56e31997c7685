"""Settings: environment, config section, clouds.yaml (OS_CLOUD) with secure.yaml, application
credentials, Rackspace defaults, the shared SSH block with its deprecated names, compute_api_version,
and one-line errors naming what is wrong."""
import logging

import novaclient
import pytest
import yaml

from cislaves import clouds, config
from cislaves.clouds.openstack import OpenStackCloud, RackspaceCloud
from cislaves.clouds.ssh import SSHSettings
from cislaves.errors import ConfigError
from tests.cli import fab
from tests.openstack.conftest import openstack_env


def write_clouds_yaml(tmp_path, fake, **auth):
    path = tmp_path / "clouds.yaml"
    entry = {"auth": {"auth_url": fake.auth_url, "username": fake.username, "project_name": fake.project,
                      "user_domain_name": "Default", "project_domain_name": "Default", **auth},
             "region_name": fake.region, "interface": "public", "identity_api_version": 3}
    path.write_text(yaml.safe_dump({"clouds": {"mycloud": entry}}))
    return path


def test_os_cloud_with_secure_yaml(make_cloud, fake, debian12, tmp_path):
    path = write_clouds_yaml(tmp_path, fake)
    secure = {"clouds": {"mycloud": {"auth": {"password": fake.password}}}}
    (tmp_path / "secure.yaml").write_text(yaml.safe_dump(secure))
    cloud = make_cloud(env={"OS_CLOUD": "mycloud", "OS_CLIENT_CONFIG_FILE": str(path)})
    assert cloud.base_image(debian12).name == "Debian 12 (Bookworm)"
    assert cloud.describe()["region"] == fake.region


def test_environment_overrides_clouds_yaml(make_cloud, fake, tmp_path):
    path = write_clouds_yaml(tmp_path, fake, password="from-file")
    cloud = make_cloud(env={"OS_CLOUD": "mycloud", "OS_CLIENT_CONFIG_FILE": str(path), "OS_PASSWORD": "from-env",
                            "OS_REGION_NAME": "IAD"})
    assert cloud.cfg.password.get_secret_value() == "from-env" and cloud.cfg.region_name == "IAD"
    assert cloud.cfg.username == fake.username  # the rest still from clouds.yaml


def test_application_credential(make_cloud, fake, debian12):
    env = {"OS_AUTH_URL": fake.auth_url, "OS_APPLICATION_CREDENTIAL_ID": "appcred-id",
           "OS_APPLICATION_CREDENTIAL_SECRET": fake.password, "OS_REGION_NAME": fake.region}
    assert make_cloud(env=env).base_image(debian12).name == "Debian 12 (Bookworm)"


def test_tenant_name_and_unversioned_auth_url(make_cloud, fake, debian12):
    env = {"OS_AUTH_URL": fake.url + "/identity", "OS_USERNAME": fake.username, "OS_PASSWORD": fake.password,
           "OS_TENANT_NAME": fake.project, "OS_REGION_NAME": fake.region}
    cloud = make_cloud(env=env)  # version discovery on /identity, then v3
    assert cloud.base_image(debian12).name == "Debian 12 (Bookworm)"


def test_rackspace_is_a_subclass_with_its_own_defaults(make_cloud):
    cloud = make_cloud("rackspace", env={})
    assert type(cloud) is RackspaceCloud and isinstance(cloud, OpenStackCloud)
    assert (cloud.cfg.auth_url, cloud.cfg.flavor) == ("https://identity.api.rackspacecloud.com/v2.0/", "general1-2")
    assert cloud.cfg.region_name is None  # the token's RAX-AUTH:defaultRegion decides
    assert make_cloud("rackspace", env={"OS_REGION_NAME": "ORD"}).cfg.region_name == "ORD"
    assert make_cloud("openstack", env={}).cfg.auth_url is None
    assert issubclass(OpenStackCloud.Settings, SSHSettings)


def test_old_setting_names_warn_once_and_still_work(tmp_path, caplog):
    key = tmp_path / "id"
    section = {"ssh_username": "ubuntu", "key_pair": "ci", "key_filename": str(key), "delete_timeout": 7}
    with caplog.at_level(logging.WARNING):
        cloud = clouds.get("openstack", config.Config({"clouds": {"openstack": section}}, None, {}))
    assert (cloud.cfg.ssh_user, cloud.cfg.ssh_key_pair, str(cloud.cfg.ssh_private_key_file),
            cloud.cfg.destroy_timeout) == ("ubuntu", "ci", str(key), 7)
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warned) == 4 and any("clouds.openstack.key_pair is deprecated: use clouds.openstack.ssh_key_pair"
                                    in w for w in warned)


def test_seed_key_variables_fill_the_shared_key_settings(tmp_path):
    env = {"RACKSPACE_KEY_PAIR": "ci", "RACKSPACE_KEY_FILENAME": str(tmp_path / "ci_rsa")}
    cloud = clouds.get("rackspace", config.Config({}, None, env))
    assert (cloud.cfg.ssh_key_pair, str(cloud.cfg.ssh_private_key_file)) == ("ci", str(tmp_path / "ci_rsa"))


def test_top_level_timeouts_reach_the_driver():
    cloud = clouds.get("openstack", config.Config({"timeouts": {"launch": 11, "image": 12, "destroy": 13}}, None, {}))
    assert (cloud.cfg.launch_timeout, cloud.cfg.image_timeout, cloud.cfg.destroy_timeout) == (11, 12, 13)


CLIENT = (f"is outside the range 2.1 to {novaclient.API_MAX_VERSION.get_string()} that the installed "
          f"python-novaclient {novaclient.__version__} supports")


@pytest.mark.parametrize("version", [f"2.{novaclient.API_MAX_VERSION.ver_minor + 1}", "2.3000"])
def test_compute_api_version_beyond_the_installed_novaclient_names_the_setting(make_cloud, fake, debian12,
                                                                               tmp_path, version):
    from tests.contract import make_spec
    fake.nova_max = "2.3000"  # a cloud newer than the client: the client's range decides
    cloud = make_cloud(compute_api_version=version)
    spec = make_spec(cloud, debian12, tmp_path)  # reads the base image from Glance
    before = list(fake.requests)
    with pytest.raises(ConfigError, match=rf"compute_api_version \(OS_COMPUTE_API_VERSION\): {version} {CLIENT}"):
        cloud.launch(spec)
    assert fake.requests == before  # refused before asking Nova anything


def test_compute_api_version_beyond_the_cloud_names_the_setting(make_cloud, fake, debian12, tmp_path):
    from tests.contract import make_spec
    fake.nova_max = "2.79"  # an older cloud than the client (Train)
    cloud = make_cloud(compute_api_version="2.80")
    with pytest.raises(ConfigError, match=r"compute_api_version \(OS_COMPUTE_API_VERSION\): 2.80 is outside the "
                                          r"range 2.1 to 2.79 that openstack RegionOne supports"):
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert fake.statuses("POST", r"/servers$") == []  # refused before anything was made
    cloud = make_cloud(compute_api_version="2.79")
    cloud.destroy(cloud.launch(make_spec(cloud, debian12, tmp_path)))  # the cloud's newest is fine


def test_compute_api_version_on_rackspace_which_has_no_microversions(make_rax, debian12, tmp_path):
    from tests.contract import make_spec
    cloud = make_rax("rackspace", compute_api_version="2.37")
    with pytest.raises(ConfigError, match=r"rackspace.compute_api_version .*has no microversions; use 2.1"):
        cloud.launch(make_spec(cloud, debian12, tmp_path))


def test_fab_up_with_a_compute_api_version_too_high_is_one_line(fake, tmp_path):
    config_file = tmp_path / "cislaves.yaml"
    config_file.write_text(f"data_dir: {tmp_path / 'data'}\n")
    env = {**openstack_env(fake), "CISLAVES_CONFIG": str(config_file), "OS_CLOUD": "",
           "OS_COMPUTE_API_VERSION": "2.99"}
    done = fab("up:cloud=openstack,distribution=debian12", env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output
    assert f"compute_api_version (OS_COMPUTE_API_VERSION): 2.99 {CLIENT}" in output
    assert fake.servers == {}


@pytest.mark.parametrize("env, section, message", [
    ({}, {}, r"clouds.openstack.auth_url: not set; set OS_AUTH_URL"),
    ({"OS_AUTH_URL": "http://127.0.0.1:9/v3"}, {}, r"clouds.openstack.username: not set"),
    ({"OS_AUTH_URL": "http://127.0.0.1:9/v3", "OS_USERNAME": "u"}, {}, r"clouds.openstack.password: not set"),
    ({"OS_AUTH_URL": "http://127.0.0.1:9/v3", "OS_APPLICATION_CREDENTIAL_ID": "x"}, {},
     r"application_credential_secret: not set"),
])
def test_missing_credentials_name_the_setting(make_cloud, debian12, env, section, message):
    with pytest.raises(ConfigError, match=message):
        make_cloud(env=env, **section).base_image(debian12)


def test_unknown_cloud_in_clouds_yaml_and_missing_file(make_cloud, fake, tmp_path):
    path = write_clouds_yaml(tmp_path, fake)
    with pytest.raises(ConfigError, match=r"clouds.yaml: clouds.other: no such cloud"):
        make_cloud(env={"OS_CLOUD": "other", "OS_CLIENT_CONFIG_FILE": str(path)})
    with pytest.raises(ConfigError, match=r"cloud 'mycloud' asked for but no clouds.yaml found"):
        make_cloud(env={"OS_CLOUD": "mycloud", "OS_CLIENT_CONFIG_FILE": str(tmp_path / "none.yaml")})
    path.write_text("clouds: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"expected a top-level 'clouds:' mapping"):
        make_cloud(env={"OS_CLOUD": "mycloud", "OS_CLIENT_CONFIG_FILE": str(path)})


def test_bad_values_are_one_line_config_errors(tmp_path):
    cfg = config.Config({"clouds": {"openstack": {"flavour": "m1.small"}}}, None, {})
    with pytest.raises(ConfigError, match=r"clouds.openstack.flavour: unknown key"):
        clouds.get("openstack", cfg)
    cfg = config.Config({}, None, {"OS_INSECURE": "perhaps"})
    with pytest.raises(ConfigError, match=r"environment OS_INSECURE"):
        clouds.get("openstack", cfg)
    cfg = config.Config({"clouds": {"rackspace": {"compute_api_version": "3"}}}, None, {})
    with pytest.raises(ConfigError, match=r"clouds.rackspace.compute_api_version"):
        clouds.get("rackspace", cfg)


def test_secrets_are_redacted_in_settings(make_cloud, fake):
    cloud = make_cloud(env={"OS_PASSWORD": "hunter2-secret", "RACKSPACE_API_KEY": "rax-9"})
    assert "hunter2-secret" not in repr(cloud.cfg) and "rax-9" not in repr(cloud.cfg)
    assert "hunter2-secret" not in str(cloud.describe())


def test_debug_logging_never_shows_the_servers_admin_password(fake, tmp_path):
    """keystoneauth logs Nova's answers at DEBUG; a server create answer holds adminPass."""
    fake.admin_pass = "Zq8-adminPass-never-printed"
    config_file = tmp_path / "cislaves.yaml"
    config_file.write_text(f"data_dir: {tmp_path / 'data'}\n")
    env = {**openstack_env(fake), "CISLAVES_CONFIG": str(config_file), "OS_CLOUD": "", "CISLAVES_DEBUG": "1"}
    up = fab("up:cloud=openstack,distribution=debian12", env=env, timeout=120)
    down = fab("destroy:cloud=openstack", env=env, timeout=120)
    output = up.stdout + up.stderr + down.stdout + down.stderr
    assert up.returncode == 0 and down.returncode == 0, output
    assert fake.admin_pass not in output
    assert fake.servers == {} or all(s.get("_deleting") for s in fake.servers.values())
