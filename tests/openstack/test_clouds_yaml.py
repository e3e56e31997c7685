"""clouds.yaml through openstacksdk's openstack.config, as the `openstack` command reads it: a profile
(openstacksdk's own vendor profiles and clouds-public.yaml), token auth types, region lists, secure.yaml
merged in, against the fake Keystone; OS_* variables still win over the file."""
import pytest
import yaml

from cislaves.errors import ConfigError


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def clouds_env(path, cloud="mycloud", **extra):
    return {"OS_CLOUD": cloud, "OS_CLIENT_CONFIG_FILE": str(path), **extra}


def test_a_profile_from_clouds_public_yaml_with_secure_yaml(make_cloud, fake, debian12, tmp_path):
    write(tmp_path, "clouds-public.yaml", {"public-clouds": {"fakevendor": {
        "auth": {"auth_url": fake.auth_url, "user_domain_name": "Default", "project_domain_name": "Default"},
        "identity_api_version": 3, "regions": [fake.region]}}})
    path = write(tmp_path, "clouds.yaml", {"clouds": {"mycloud": {
        "profile": "fakevendor", "auth": {"username": fake.username, "project_name": fake.project}}}})
    write(tmp_path, "secure.yaml", {"clouds": {"mycloud": {"auth": {"password": fake.password}}}})
    cloud = make_cloud(env=clouds_env(path))
    assert cloud.cfg.auth_url == fake.auth_url and cloud.cfg.region_name == fake.region  # from the profile
    assert cloud.cfg.password.get_secret_value() == fake.password  # from secure.yaml
    assert cloud.base_image(debian12).name == "Debian 12 (Bookworm)"


def test_openstacksdks_own_rackspace_profile(make_cloud, tmp_path):
    path = write(tmp_path, "clouds.yaml", {"clouds": {"rax": {
        "profile": "rackspace", "auth": {"username": "ci", "api_key": "k-123"}}}})
    cloud = make_cloud("rackspace", env=clouds_env(path, "rax"))
    assert cloud.cfg.auth_url == "https://identity.api.rackspacecloud.com/v2.0/"
    assert cloud.cfg.region_name == "DFW"  # the profile's region list: the first, as `openstack` picks
    assert make_cloud("rackspace", env=clouds_env(path, "rax", OS_REGION_NAME="ORD")).cfg.region_name == "ORD"


def test_token_auth_from_clouds_yaml_and_from_the_environment(make_cloud, fake, debian12, tmp_path):
    fake.tokens.add("given-token")  # a token issued elsewhere (e.g. `openstack token issue`)
    path = write(tmp_path, "clouds.yaml", {"clouds": {"mycloud": {
        "auth_type": "v3token", "region_name": fake.region,
        "auth": {"auth_url": fake.auth_url, "token": "given-token", "project_name": fake.project,
                 "project_domain_name": "Default"}}}})
    cloud = make_cloud(env=clouds_env(path))
    assert cloud.cfg.auth_type == "v3token" and "given-token" not in repr(cloud.cfg)
    assert cloud.base_image(debian12).name == "Debian 12 (Bookworm)"
    env = {"OS_AUTH_TYPE": "v3token", "OS_TOKEN": "given-token", "OS_AUTH_URL": fake.auth_url,
           "OS_PROJECT_NAME": fake.project, "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": fake.region}
    assert make_cloud(env=env).base_image(debian12).name == "Debian 12 (Bookworm)"
    bad = make_cloud(env=clouds_env(path, OS_TOKEN="not-issued"))  # the environment wins over the file
    with pytest.raises(Exception, match="401|[Uu]nauthori"):
        bad.base_image(debian12)


def test_a_missing_option_of_an_auth_type_is_one_line(make_cloud, fake, debian12):
    cloud = make_cloud(env={"OS_AUTH_TYPE": "v3token", "OS_AUTH_URL": fake.auth_url, "OS_REGION_NAME": fake.region})
    with pytest.raises(ConfigError, match=r"auth_type v3token: missing token"):
        cloud.base_image(debian12)
    cloud = make_cloud(env={"OS_AUTH_TYPE": "v9magic", "OS_AUTH_URL": fake.auth_url})
    with pytest.raises(ConfigError, match=r"auth_type: .*v9magic"):
        cloud.base_image(debian12)


def test_a_region_list_takes_the_first_and_refuses_a_name_not_in_it(make_cloud, fake, debian12, tmp_path):
    path = write(tmp_path, "clouds.yaml", {"clouds": {"mycloud": {
        "regions": [fake.region, "RegionTwo"],
        "auth": {"auth_url": fake.auth_url, "username": fake.username, "password": fake.password,
                 "project_name": fake.project, "user_domain_name": "Default", "project_domain_name": "Default"}}}})
    cloud = make_cloud(env=clouds_env(path))
    assert cloud.cfg.region_name == fake.region and cloud.base_image(debian12)
    before = list(fake.requests)
    with pytest.raises(ConfigError, match=r"Region RegionOen is not a valid region name for cloud mycloud. "
                                          r"Valid choices are RegionOne,RegionTwo"):
        make_cloud(env=clouds_env(path, OS_REGION_NAME="RegionOen"))
    assert fake.requests == before  # refused before asking the cloud anything
