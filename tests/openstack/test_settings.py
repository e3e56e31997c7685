"""Settings: environment, config section, clouds.yaml (OS_CLOUD) with secure.yaml, application
credentials, Rackspace defaults, and one-line errors naming what is wrong."""
import pytest
import yaml

from cislaves import clouds, config
from cislaves.clouds.openstack.auth import RACKSPACE_DEFAULTS
from cislaves.errors import ConfigError


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


def test_rackspace_defaults(make_cloud):
    cloud = make_cloud("rackspace", env={})
    assert (cloud.cfg.auth_url, cloud.cfg.region_name) == (RACKSPACE_DEFAULTS["auth_url"], "DFW")
    assert make_cloud("rackspace", env={"OS_REGION_NAME": "ORD"}).cfg.region_name == "ORD"
    assert make_cloud("openstack", env={}).cfg.auth_url is None


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
