"""The CI user's key lookup, the settings file's quoting and the extras' validation."""
import subprocess

import pytest
import yaml

from cislaves import config, distros
from cislaves.distros.provision import (authorized_key, extra_packages, extra_scripts, lookup_key_path,
                                        settings_env)
from cislaves.errors import ConfigError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBs3Y2hYvGx9fQ3Cq7w3ZrGm0bCkA1YqGkF8y3kq5n4H jenkins@master"
SEED = {"env": {"default": {"jenkins": {"clouds": {"jclouds_plugin": [
    {"name": "ec2", "publicKey": [KEY], "privateKey": "-----BEGIN OPENSSH PRIVATE KEY-----"}]}}}}}


def load(tmp_path, data, name="cislaves.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return config.load(path, environ={})


def test_key_inline(tmp_path):
    assert authorized_key(load(tmp_path, {"ci_user": {"authorized_key": f"  {KEY}\n"}})) == KEY


def test_key_from_file_relative_to_config(tmp_path):
    (tmp_path / "master.pub").write_text(KEY + "\n")
    assert authorized_key(load(tmp_path, {"ci_user": {"authorized_key_file": "master.pub"}})) == KEY


def test_key_from_the_seeds_yaml_by_default(tmp_path):
    (tmp_path / "ci-platform" / "all").mkdir(parents=True)
    (tmp_path / "ci-platform" / "all" / "all.yaml").write_text(yaml.safe_dump(SEED))
    assert authorized_key(load(tmp_path, {})) == KEY


def test_key_from_yaml_at_a_configured_path(tmp_path):
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"ci": {"keys": ["x", {"pub": KEY}]}}))
    cfg = load(tmp_path, {"ci_user": {"authorized_key_yaml": "keys.yaml",
                                      "authorized_key_yaml_path": "ci.keys[1].pub"}})
    assert authorized_key(cfg) == KEY


@pytest.mark.parametrize("key_path,message", [
    ("env.default.jenkins.clouds.jclouds_plugin[1].publicKey[0]",
     "env.default.jenkins.clouds.jclouds_plugin has no item [1]"),
    ("env.default.jenkins.cloud.jclouds_plugin[0].publicKey[0]", "no key 'cloud' under env.default.jenkins"),
    ("env.default.jenkins.clouds.jclouds_plugin[0].privateKey", "expected one OpenSSH public key line"),
    ("env..default", "is not of the form a.b[0].c"),
])
def test_key_path_errors_name_the_file_and_what_is_missing(tmp_path, key_path, message):
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(SEED))
    cfg = load(tmp_path, {"ci_user": {"authorized_key_yaml": "all.yaml", "authorized_key_yaml_path": key_path}})
    with pytest.raises(ConfigError) as err:
        authorized_key(cfg)
    assert message in str(err.value) and "all.yaml" in str(err.value)
    assert "PRIVATE KEY" not in str(err.value)


def test_no_key_configured_warns_which_settings_and_bakes_without_one(tmp_path, caplog):
    cfg = load(tmp_path, {})  # a fresh folder: no seed file next to the config either
    with caplog.at_level("WARNING"):
        assert authorized_key(cfg) == ""
    assert "ci_user.authorized_key, authorized_key_file or authorized_key_yaml" in caplog.text


def test_key_with_a_second_line_is_refused(tmp_path):
    cfg = load(tmp_path, {"ci_user": {"authorized_key": KEY + "\nssh-rsa AAAA evil"}})
    with pytest.raises(ConfigError, match="ci_user.authorized_key: expected one OpenSSH public key line"):
        authorized_key(cfg)


def test_lookup_key_path_walks_lists_and_maps():
    assert lookup_key_path({"a": [{"b": [1, 2]}]}, "a[0].b[1]", "f") == 2


NASTY = ["$(touch {canary})", "`touch {canary}`", "a'b\"c d", "x; touch {canary}", "new\nline", "*"]


@pytest.mark.parametrize("value", NASTY)
def test_settings_file_round_trips_any_value_without_running_it(tmp_path, value):
    """Values reach the scripts exactly and are never executed when the file is sourced."""
    canary = tmp_path / "canary"
    value = value.format(canary=canary)
    cfg = load(tmp_path, {"provision": {"extra_packages": {"debian12": ["jq", "git=1:2.39.5-0+deb12u2"]}}})
    text = settings_env(distros.get("debian12"), cfg, value, "run-1", KEY)
    (tmp_path / "settings.env").write_text(text)
    script = ('. "$1"; printf "%s\\0" "$CISLAVES_CLOUD" "$CISLAVES_CI_KEY" "$CISLAVES_CI_USER" '
              '"$CISLAVES_PACKAGE_SET" "${CISLAVES_EXTRA_PACKAGES[@]}"')
    out = subprocess.run(["bash", "-c", script, "bash", str(tmp_path / "settings.env")], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert out.split("\0")[:-1] == [value, KEY, "jenkins", "full", "jq", "git=1:2.39.5-0+deb12u2"]
    assert not canary.exists()


@pytest.mark.parametrize("name", ["--allow-unauthenticated", "jq; rm -rf /", "a b", ""])
def test_extra_package_names_are_checked(tmp_path, name):
    cfg = load(tmp_path, {"provision": {"extra_packages": {"debian12": ["jq", name]}}})
    with pytest.raises(ConfigError, match=r"provision.extra_packages.debian12\[1\]: .* is not a package name"):
        extra_packages(distros.get("debian12"), cfg)


def test_extra_scripts_resolve_relative_to_the_config_and_must_exist(tmp_path):
    (tmp_path / "more.sh").write_text("#!/bin/sh\n")
    cfg = load(tmp_path, {"provision": {"extra_scripts": {"debian12": ["more.sh"], "rocky9": ["gone.sh"]}}})
    assert extra_scripts(distros.get("debian12"), cfg) == [tmp_path / "more.sh"]
    assert extra_scripts(distros.get("centos7"), cfg) == []
    with pytest.raises(ConfigError, match=r"provision.extra_scripts.rocky9\[0\]: no such file: .*gone.sh"):
        extra_scripts(distros.get("rocky9"), cfg)
