"""The real `fab` command: both argument forms, one-line errors, the state's choice of instance.
No cloud is contacted here: these are the paths that must fail (or list) before any cloud call."""
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess

import pytest
import yaml

from tests.cli import REPO, cislaves, fab


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


# -- the `cislaves` command (cislaves.cli): the same tasks, its own options, named exit codes

FABRIC_FLAGS = ["--hosts", "--identity", "--ssh-config", "--prompt-for-login-password", "--connect-timeout",
                "--collection", "--search-root", "--pty", "--echo", "--warn-only", "--hide", "--dry"]


def test_cislaves_help_shows_only_its_own_options_and_every_task():
    result = cislaves("--help")
    assert result.returncode == 0, result.stderr
    for flag in ["-c STRING, --cloud=STRING", "-v, --verbose", "-q, --quiet", "-l, --list", "-V, --version"]:
        assert flag in result.stdout, flag
    for flag in FABRIC_FLAGS:
        assert flag not in result.stdout, flag
    for name in ["it", "up", "status", "validate", "rebake", "prune", "image_diff", "delete_image", "cancel",
                 "logs", "enqueue", "listen", "jobs", "cleanup"]:
        assert re.search(rf"^  {name} ", result.stdout, re.M), name
    assert "Exit codes: 0 success, 1 failure, 2 usage or configuration error, 75 locked" in result.stdout
    assert "130 interrupted" in result.stdout
    assert fab("-h").stdout.count("--hosts") == 1  # fab keeps Fabric's own core options


def test_cislaves_task_help_and_the_three_argument_forms(env):
    result = cislaves("--help", "it")
    assert result.returncode == 0
    assert "--cloud" in result.stdout and "--distribution" in result.stdout and "--keep-on-error" in result.stdout
    for args in (["it", "--cloud", "nope", "--distribution", "centos7"], ["it:cloud=nope,distribution=centos7"],
                 ["-c", "nope", "it", "--distribution", "centos7"]):
        result = cislaves(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert one_error_line(result).startswith("error: argument 'cloud': unknown cloud 'nope'"), args


def test_dash_c_is_the_cloud_in_cislaves_and_a_task_argument_wins(env):
    result = cislaves("-c", "ec2", "status", env=env)
    assert result.returncode == 0, result.stderr
    assert "No instances on cloud 'ec2'" in result.stdout
    result = cislaves("-c", "ec2", "status", "--cloud", "gce", "status", "help", env=env)
    assert result.returncode == 0, result.stderr
    first, second = [x for x in result.stdout.splitlines() if x.startswith("No instances")]
    assert "cloud 'gce'" in first and "cloud 'ec2'" in second  # the first's own --cloud, the second's -c


def test_list_summary_of_status_says_what_it_lists():
    for result in (fab("-l"), cislaves("--list")):
        assert result.returncode == 0
        line = next(x for x in result.stdout.splitlines() if x.startswith("  status "))
        assert "Lists the instances the state knows on a cloud" in line, line
        assert "current status of the instance" not in result.stdout
    assert "status        lists the instances the state knows on a cloud" in fab("help").stdout


@pytest.mark.parametrize("run", [fab, cislaves], ids=["fab", "cislaves"])
def test_usage_errors_exit_2(run, env):
    for args, expected in ((["nosuchtask"], "No idea what 'nosuchtask' is!"),
                           (["it:clod=ec2"], "task 'it' has no argument 'clod'"),
                           (["it", "--clod", "ec2"], "No idea what '--clod' is!"),
                           (["-h", "nosuchtask"], "nosuchtask")):
        result = run(*args, env=env)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr and expected in result.stderr, (args, result.stderr)


@pytest.mark.parametrize("run", [fab, cislaves], ids=["fab", "cislaves"])
def test_exit_codes_configuration_2_failure_1(run, env, tmp_path):
    path = tmp_path / "cislaves.yaml"
    path.write_text("defaults:\n  clod: local\n")
    result = run("status", env={**env, "CISLAVES_CONFIG": str(path)})
    assert result.returncode == 2 and "defaults.clod: unknown key" in one_error_line(result)
    result = run("tests:cloud=local", env=env)  # no current instance: a failure, not a usage error
    assert result.returncode == 1 and "no current instance on cloud 'local'" in one_error_line(result)


@pytest.mark.parametrize("run", [fab, cislaves], ids=["fab", "cislaves"])
def test_a_held_rebake_lock_exits_75(run, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "cislaves.yaml"
    path.write_text(f"data_dir: {data}\nrebake:\n  targets:\n    - {{cloud: local, distribution: debian12}}\n")
    with open(data / "rebake.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 (the test)\n")
        held.flush()
        result = run("rebake", env={"CISLAVES_CONFIG": str(path), "CISLAVES_DATA_DIR": ""})
    assert result.returncode == 75, result.stderr[-2000:]
    assert "another rebake is running" in one_error_line(result)


@pytest.mark.parametrize("run", ["fab", "cislaves"])
def test_sigint_exits_130(run, env, tmp_path):
    """An EC2 endpoint that accepts the connection and never answers: Ctrl-C while the command waits
    for it ends the command with 130 and one line."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        proc = subprocess.Popen([run, "it:cloud=ec2,distribution=debian12"], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **env, "AWS_ENDPOINT_URL_EC2": endpoint, "AWS_REGION": "us-west-2",
                                     "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"})
        try:
            readable, _, _ = select.select([server], [], [], 60)  # the command's first request has arrived
            assert readable, "no request reached the endpoint"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in [x for x in err.splitlines() if x.startswith("error:")][0]


# -- log format and verbosity

LOG_LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) "


@pytest.fixture
def deprecated_config(env, tmp_path):
    """A configuration whose ec2 section uses a deprecated key name: validate warns about it."""
    path = tmp_path / "deprecated.yaml"
    path.write_text("clouds:\n  ec2:\n    key_pair: old\n")
    return {**env, "CISLAVES_CONFIG": str(path)}


def levels(stderr: str) -> set[str]:
    return {m.group(1) for m in re.finditer(LOG_LINE, stderr, re.M)}


@pytest.mark.parametrize("run", [fab, cislaves], ids=["fab", "cislaves"])
def test_log_lines_carry_date_and_level_and_follow_verbose_and_quiet(run, deprecated_config):
    default = run("validate", env=deprecated_config)
    assert re.search(LOG_LINE.replace("(DEBUG|INFO|WARNING|ERROR)", "INFO") + "validating ", default.stderr, re.M)
    assert levels(default.stderr) == {"INFO", "WARNING"}, default.stderr
    quiet = run("--quiet", "validate", env=deprecated_config)
    assert levels(quiet.stderr) == {"WARNING"}, quiet.stderr
    for verbose in (run("--verbose", "validate", env=deprecated_config), run("-v", "validate", env=deprecated_config),
                    run("validate", env={**deprecated_config, "CISLAVES_DEBUG": "1"})):
        assert "DEBUG checking clouds.ec2" in verbose.stderr, verbose.stderr
    assert [r.returncode for r in (default, quiet)] == [2, 2]  # key_pair without its private key file


def test_verbose_and_quiet_together_is_a_usage_error(env):
    result = cislaves("-v", "-q", "status", env=env)
    assert result.returncode == 2 and "--verbose and --quiet exclude each other" in result.stderr


# -- the data directory

def _user_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(as_user("true"), capture_output=True, timeout=30).returncode == 0


def as_user(*argv: str) -> list[str]:
    """argv run as uid 1000 in a user namespace: geteuid() is not 0, files are reached as their owner."""
    return ["unshare", "--user", "--map-user=1000", "--map-group=1000", *argv]


def user_env(tmp_path, **extra) -> dict[str, str]:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("CISLAVES_DATA_DIR", "CISLAVES_MANIFEST", "XDG_DATA_HOME")}
    return {**env, "HOME": str(tmp_path / "home"), "CISLAVES_CONFIG": str(empty), **extra}


@pytest.mark.skipif("not _user_namespaces()", reason="needs unshare --user (util-linux, user namespaces)")
def test_a_user_gets_a_data_dir_under_xdg_data_home_and_root_var_lib(tmp_path):
    cmd = shutil.which("cislaves")
    result = subprocess.run(as_user(cmd, "status"), env=user_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    default = tmp_path / "home" / ".local" / "share" / "cislaves"
    assert f"in {default}/state.json" in result.stdout and default.is_dir()
    xdg = tmp_path / "xdg"
    result = subprocess.run(as_user(cmd, "status"), env=user_env(tmp_path, XDG_DATA_HOME=str(xdg)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and f"in {xdg}/cislaves/state.json" in result.stdout, result.stderr
    if os.geteuid() == 0:
        result = subprocess.run([cmd, "validate"], env=user_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert "ok: data directory (/var/lib/cislaves)" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif("not _user_namespaces()", reason="needs unshare --user (util-linux, user namespaces)")
def test_an_unwritable_data_dir_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    env = user_env(tmp_path, XDG_DATA_HOME=str(locked))
    for task in ("status", "it:cloud=ec2", "rebake", "validate"):
        result = subprocess.run(as_user(shutil.which("cislaves"), task), env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, (task, result.stderr)
        line = one_error_line(result)
        assert f"the default data directory: {locked}/cislaves" in line and "CISLAVES_DATA_DIR" in line, (task, line)
    result = fab("status", env={"CISLAVES_DATA_DIR": str(tmp_path / "empty.yaml"), "CISLAVES_CONFIG": str(tmp_path / "empty.yaml")})
    assert result.returncode == 2
    assert f"CISLAVES_DATA_DIR: {tmp_path / 'empty.yaml'}" in one_error_line(result)


# -- validate: the whole configuration, credentials present, nothing created

def service_account_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "p1", "private_key_id": "k1",
                                "private_key": pem, "client_email": "baker@p1.iam.gserviceaccount.com",
                                "token_uri": "http://127.0.0.1:9/token"}))


def no_cloud_credentials(tmp_path) -> dict[str, str]:
    """The environment without any cloud's credentials (nor a home holding them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OS_", "GOOGLE_", "GCE_", "CISLAVES_"))}
    return {**env, "HOME": str(tmp_path / "home"), "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.parametrize("run", ["fab", "cislaves"])
def test_validate_checks_every_section_and_creates_nothing(run, tmp_path):
    service_account_key(tmp_path / "gce.json")
    (tmp_path / "id_gerrit").write_text("not read by validate\n")
    config = {
        "data_dir": str(tmp_path / "data"),
        "defaults": {"cloud": "ec2", "distribution": "centos7"},
        "clouds": {"ec2": {"region": "us-west-2"}, "local": {},
                   "openstack": {"auth_url": "http://127.0.0.1:9/v3", "username": "u", "project_name": "p"},
                   "gce": {"project": "bake-project-1", "zone": "us-central1-a", "credentials_file": "gce.json"}},
        "gerrit": {"host": "127.0.0.1", "user": "ci", "key_file": "id_gerrit"},
        "ci": {"triggers": [{"name": "check"}]},
        "rebake": {"targets": [{"cloud": "local", "distribution": "debian12"},
                               {"cloud": "ec2", "distribution": "centos7", "region": "eu-west-1"}]},
        "zookeeper": {"hosts": "zk1:2181,zk2:2181"},
    }
    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**no_cloud_credentials(tmp_path), "CISLAVES_CONFIG": str(path), "AWS_ACCESS_KEY_ID": "AKIATESTING",
           "AWS_SECRET_ACCESS_KEY": "secret-not-shown", "OS_PASSWORD": "also-not-shown"}
    result = subprocess.run([run, "validate"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for part in ["data directory", "defaults (cloud ec2, distribution centos7)", "clouds.ec2 (credentials: env)",
                 "clouds.gce (credentials: ", "clouds.local", "clouds.openstack (credentials: Password)",
                 "gerrit (ci@127.0.0.1)", "ci (1 trigger(s), 0 job(s))", "rebake (2 target(s))",
                 "zookeeper (zk1:2181,zk2:2181, root /cislaves)"]:
        assert f"ok: {part}" in result.stdout, (part, result.stdout)
    assert "secret-not-shown" not in result.stdout + result.stderr and "also-not" not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # nothing created, not even the data directory


@pytest.mark.parametrize("run", ["fab", "cislaves"])
def test_validate_lists_every_problem_in_one_line_each_and_exits_2(run, tmp_path):
    config = {
        "data_dir": str(tmp_path / "data"),
        "clouds": {"ec2": {"region": "us-west-2"}, "local": {"bogus": 1},
                   "openstack": {"username": "u"}, "gce": {"credentials_file": "missing.json"}},
        "gerrit": {"user": "ci"},
        "ci": {"triggers": [{"name": "check"}], "jobs": [{"name": "unit", "run": "missing.sh"}]},
        "rebake": {"targets": [{"cloud": "ec3", "distribution": "centos7"}]},
        "zookeeper": {"hosts": "zk1:2181", "session_timeout": 0},
    }
    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([run, "validate"], cwd=REPO, env={**no_cloud_credentials(tmp_path),
                            "CISLAVES_CONFIG": str(path)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    expected = ["clouds.ec2: no AWS credentials found", "clouds.local.bogus: unknown key",
                "clouds.openstack.auth_url: not set", "missing.json: cannot read",
                "gerrit.host: required to talk to Gerrit",
                "ci.jobs[0] (unit): run: script", "rebake.targets.0: Value error, unknown cloud 'ec3'",
                "zookeeper.session_timeout: Input should be greater than 0"]
    for text in expected:
        assert sum(text in line for line in errors) == 1, (text, errors)
    assert len(errors) == len(expected), errors
    assert not (tmp_path / "data").exists()
