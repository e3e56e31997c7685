"""The real `fab` command: both argument forms, one-line errors, the state's choice of instance.
No cloud is contacted here: these are the paths that must fail (or list) before any cloud call."""
import json

import pytest

from tests.cli import fab


@pytest.fixture
def env(tmp_path):
    empty = tmp_path / "empty.yaml"  # never the developer's own segredos/cislaves.yaml
    empty.write_text("")
    return {"CISLAVES_DATA_DIR": str(tmp_path / "data"), "CISLAVES_CONFIG": str(empty),
            "CISLAVES_MANIFEST": str(tmp_path / "manifest.json")}


def one_error_line(result):
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line[:2].isdigit()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_list_shows_every_task_with_its_summary():
    result = fab("-l")
    assert result.returncode == 0
    for name in ["bootstrap", "create_image", "destroy", "down", "help", "it", "ssh", "status", "tests",
                 "up", "images", "cleanup"]:
        assert f"  {name} " in result.stdout, name
    assert "create-image" not in result.stdout


def test_help_task_lists_commands_like_the_seed():
    result = fab("help")
    assert result.returncode == 0
    assert "it            runs the full stack" in result.stdout
    assert "create_image  create an image from the instance" in result.stdout


def test_task_help_shows_arguments():
    result = fab("-h", "it")
    assert result.returncode == 0
    assert "--cloud" in result.stdout and "--distribution" in result.stdout
    assert "--keep-on-error" in result.stdout


@pytest.mark.parametrize("args", [["it:cloud=nope"], ["it", "--cloud", "nope"]])
def test_unknown_cloud_lists_the_valid_ones(args, env):
    line = one_error_line(fab(*args, env=env))
    assert "unknown cloud 'nope'" in line
    assert "ec2, gce, local, openstack, rackspace" in line


@pytest.mark.parametrize("args", [["it:distribution=suse"], ["it", "--distribution", "suse"]])
def test_unknown_distribution_lists_the_valid_ones(args, env):
    line = one_error_line(fab(*args, env=env))
    assert "unknown distribution 'suse'" in line
    assert "centos7, debian12, rocky9, ubuntu14.04, ubuntu22.04, ubuntu24.04" in line


def test_escaped_separators_reach_the_task(env):
    line = one_error_line(fab("status:cloud=ec2\\,x", env=env))
    assert "unknown cloud 'ec2,x'" in line
    line = one_error_line(fab("it:distribution=a\\=b", env=env))
    assert "unknown distribution 'a=b'" in line


def test_unknown_key_names_task_key_and_valid_keys(env):
    result = fab("it:clod=ec2", env=env)
    assert result.returncode != 0
    assert "task 'it' has no argument 'clod'; expected one of: cloud, distribution, keep_on_error" in result.stderr
    assert "Traceback" not in result.stderr


def test_booleans_in_both_forms(env):
    assert fab("status:all=yes", env=env).returncode == 0
    assert fab("status", "--all", env=env).returncode == 0
    result = fab("status:all=maybe", env=env)
    assert result.returncode != 0 and "expects true or false, got 'maybe'" in result.stderr


def test_several_tasks_run_in_order(env):
    result = fab("status:cloud=local", "help", "status:all=true", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    first = out.index("No instances on cloud 'local'")
    assert first < out.index("runs the full stack") < out.rindex("No instances")


def test_tasks_without_an_instance_say_so(env):
    for task in ["bootstrap", "tests", "create_image", "destroy", "down", "ssh"]:
        line = one_error_line(fab(f"{task}:cloud=local", env=env))
        assert "no current instance on cloud 'local'" in line, (task, line)


def write_state(data_dir, *instances):
    data_dir.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "runs": {}, "instances": {}}
    for inst in instances:
        record = {"id": inst[0], "cloud": inst[1], "name": inst[0], "distribution": "debian12",
                  "run_id": "r-" + inst[0], "state": "running", "address": "192.0.2.1"}
        state["instances"][f"{inst[1]}:{inst[0]}"] = {"instance": record, "role": "instance",
                                                       "owner": {"pid": 1, "start": "0"}}
    (data_dir / "state.json").write_text(json.dumps(state))


def test_several_instances_are_listed_with_how_to_choose(env, tmp_path):
    write_state(tmp_path / "data", ("i-one", "local"), ("i-two", "local"))
    line = one_error_line(fab("bootstrap:cloud=local", env=env))
    assert "several instances on cloud 'local': i-one, i-two; choose one with instance=ID" in line


def test_instances_on_another_cloud_are_pointed_at(env, tmp_path):
    write_state(tmp_path / "data", ("i-one", "ec2"), ("i-two", "gce"))
    line = one_error_line(fab("tests:cloud=local", env=env))
    assert "no current instance on cloud 'local' (the state knows instances on: ec2, gce" in line


def test_unknown_instance_id_is_one_line(env, tmp_path):
    write_state(tmp_path / "data", ("i-one", "local"))
    line = one_error_line(fab("tests:cloud=local,instance=i-nine", env=env))
    assert "no instance 'i-nine'" in line


def test_corrupt_state_file_names_the_file(env, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.json").write_text("{not json")
    line = one_error_line(fab("status:cloud=local", env=env))
    assert "state.json: state file is corrupt" in line


@pytest.mark.parametrize("text, expected", [
    ("defaults: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping at the top level"),
    ("defaults:\n  clod: local\n", "defaults.clod: unknown key"),
    ("timeouts:\n  ssh: soon\n", "timeouts.ssh: Input should be a valid number"),
    ("provision:\n  package_set: tiny\n", "provision.package_set: Input should be 'full' or 'minimal'"),
    ("ci_user:\n  name: 'Bad Name'\n", "ci_user.name: String should match pattern"),
    ("defaults:\n  cloud: nimbus\n", "defaults.cloud: unknown cloud 'nimbus'"),
])
def test_malformed_config_names_the_file_and_key(env, tmp_path, text, expected):
    path = tmp_path / "cislaves.yaml"
    path.write_text(text)
    env["CISLAVES_CONFIG"] = str(path)
    line = one_error_line(fab("status", env=env))
    assert str(path) in line and expected in line, line


def test_yaml_error_names_the_line(env, tmp_path):
    path = tmp_path / "cislaves.yaml"
    path.write_text("defaults:\n  cloud: local\n  distribution: [debian12\n")
    env["CISLAVES_CONFIG"] = str(path)
    line = one_error_line(fab("status", env=env))
    assert f"{path}:" in line and "not valid YAML" in line


def test_missing_config_file_from_the_environment(env, tmp_path):
    env["CISLAVES_CONFIG"] = str(tmp_path / "nope.yaml")
    line = one_error_line(fab("status", env=env))
    assert "nope.yaml: configuration file not found (from CISLAVES_CONFIG)" in line


def test_defaults_come_from_the_config(env, tmp_path):
    path = tmp_path / "cislaves.yaml"
    path.write_text("defaults:\n  cloud: ec2\n  distribution: centos7\n")
    env["CISLAVES_CONFIG"] = str(path)
    result = fab("status", env=env)
    assert result.returncode == 0
    assert "No instances on cloud 'ec2'" in result.stdout
