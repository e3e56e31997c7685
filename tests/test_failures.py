"""Fast, clear failures through the real `fab`: one machine of the local cloud (booted once for the
module by `fab up`) for the interrupt and environment tests; bad input refused before anything exists;
an EC2 endpoint that refuses connections, and misspelt regions on moto."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import pytest
import yaml

from tests.cli import REPO, fab
from tests.refused import aws_env, refused_clouds

SECRETS = {"OS_PASSWORD": "os-secret-h14b", "AWS_SECRET_ACCESS_KEY": "aws-secret-h14b"}
SLOW_SCRIPT = "#!/bin/sh\necho 'slow step: started'\nsleep 97\necho 'slow step: finished'\n"


def one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def write_config(folder, **top) -> dict:
    path = folder / "cislaves.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(folder / "data"), **top}))
    return {"CISLAVES_CONFIG": str(path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}


@pytest.fixture(scope="module")
def machine(tmp_path_factory, local_cache_dir):
    """`fab up` of a debian12 machine with secrets in fab's environment; an extra script that runs
    97 s; destroyed at the end."""
    folder = tmp_path_factory.mktemp("failures")
    (folder / "slow.sh").write_text(SLOW_SCRIPT)
    env = write_config(folder, clouds={"local": {"cache_dir": str(local_cache_dir)}},
                       provision={"package_set": "minimal", "extra_scripts": {"debian12": ["slow.sh"]}})
    env.update(SECRETS)
    up = fab("up:cloud=local,distribution=debian12", env=env, timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    state = json.loads((folder / "data" / "state.json").read_text())
    (record,) = state["instances"].values()
    yield env, record["instance"], folder
    gone = fab("destroy:cloud=local", env=env, timeout=300)
    assert gone.returncode == 0, gone.stderr[-3000:]


@pytest.mark.root
def test_the_machines_nspawn_runs_without_fabs_environment(machine):
    env, instance, _ = machine
    pid = instance["extra"]["proc"]["pid"]
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    assert open(f"/proc/{pid}/comm").read().strip() == "systemd-nspawn"
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert not names & set(SECRETS), names
    assert not any(value.encode() in b"\0".join(environ) for value in SECRETS.values())
    assert "PATH" in names


def _remote_sleepers(env) -> subprocess.CompletedProcess:
    """The machine's processes still running the slow script's sleep (through `fab ssh -- ...`)."""
    return fab("ssh:cloud=local", "--", "pgrep", "-a", "-f", "^sleep 97$", env=env, timeout=60)


@pytest.mark.root
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_stops_the_remote_command_and_kills_it_on_the_instance(machine, signum):
    """SIGINT right after the slow step starts; SIGTERM after the step's 30 s heartbeat, which names
    the script's latest output line in the log (stderr is no terminal here: no live line)."""
    env, instance, _ = machine

    def restore_sigint():  # a shell's background job has SIGINT ignored; fab must see it as a user would
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([os.path.join(REPO, ".venv/bin/fab"), "bootstrap:cloud=local"], cwd=REPO,
                            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)
    started, heartbeat = threading.Event(), threading.Event()
    stdout: list[str] = []
    stderr: list[str] = []
    beat = f"INFO running extra script slow.sh on {instance['name']}, 30s of 1h, latest output: slow step: started"

    def read(stream, lines, marker, event):
        for line in stream:
            lines.append(line)
            if marker in line:
                event.set()

    readers = [threading.Thread(target=read, args=(proc.stdout, stdout, "slow step: started", started), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, stderr, beat, heartbeat), daemon=True)]
    for reader in readers:
        reader.start()
    assert started.wait(300), "".join(stdout)[-3000:] + "".join(stderr)[-3000:]
    assert _remote_sleepers(env).returncode == 0  # it does run there
    if signum == signal.SIGTERM:
        assert heartbeat.wait(60), "".join(stderr)[-3000:]
    proc.send_signal(signum)
    try:
        proc.wait(timeout=60)  # below what the 97 s sleep still has left, even after the 30 s heartbeat
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("fab did not stop on one signal")
    for reader in readers:
        reader.join(10)
    text = "".join(stderr)
    assert proc.returncode == 130, text[-3000:]
    assert "slow step: finished" not in "".join(stdout)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in text, text[-3000:]
    assert "\x1b[" not in text
    left = _remote_sleepers(env)
    assert left.returncode == 1, left.stdout  # pgrep: no such process on the instance


# -- bad input: one line, before anything is written --------------------------------------------------
def test_an_unknown_key_of_the_cloud_section_is_found_before_any_state_file_is_written(tmp_path):
    env = write_config(tmp_path, clouds={"local": {"bogus": 1}})
    result = fab("it:cloud=local", env=env, timeout=60)
    assert result.returncode == 2
    assert one_error_line(result) == f"error: {tmp_path / 'cislaves.yaml'}: clouds.local.bogus: unknown key"
    assert result.stderr.strip().count("\n") == 0, result.stderr  # no "up: started" noise
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())  # no owner, no state


def test_an_unknown_task_argument_is_one_error_line(tmp_path):
    result = fab("it:cloud=local,bogus=1", env=write_config(tmp_path), timeout=60)
    assert result.returncode != 0
    assert "bogus" in one_error_line(result)


def test_an_image_argument_that_is_a_path_is_refused_before_the_state_exists(tmp_path):
    result = fab("up:cloud=local,image=../../etc", env=write_config(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "argument 'image'" in one_error_line(result)
    assert not (tmp_path / "data" / "state.json").exists()


@pytest.mark.parametrize("text", ['{"runs": [], "instances": {}}', '{"instances": {"local:x": 1}}',
                                  '{"instances": {"local:x": {"instance": {"id": 3}}}}', "[1, 2]"])
def test_a_state_file_of_valid_json_in_another_shape_is_one_line(tmp_path, text):
    env = write_config(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.json").write_text(text)
    result = fab("status:cloud=local", env=env, timeout=60)
    assert result.returncode != 0
    line = one_error_line(result)
    assert "state.json: state file is corrupt" in line and "move it aside" in line


def test_a_relative_gce_credentials_file_is_the_config_files_neighbour(tmp_path):
    env = write_config(tmp_path, clouds={"gce": {"project": "my-project-1", "credentials_file": "key.json"}})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = subprocess.run([os.path.join(REPO, ".venv/bin/fab"), "-r", str(REPO), "up:cloud=gce"], cwd=elsewhere,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert f"{tmp_path / 'key.json'}: cannot read" in one_error_line(result)


# -- endpoints that refuse connections --------------------------------------------------------------
def test_an_ec2_endpoint_that_refuses_connections_is_one_line_without_retries(tmp_path):
    env = write_config(tmp_path, clouds={"ec2": refused_clouds(tmp_path)["ec2"]})
    env.update(aws_env(tmp_path))
    result = fab("it:cloud=ec2,distribution=centos7", env=env, timeout=30)  # was 128 s of retries
    assert result.returncode == 1
    line = one_error_line(result)
    assert "ec2 describe_regions in us-west-2 failed: EndpointConnectionError:" in line, line
    assert "WARNING" not in result.stderr and "could not list" not in result.stderr, result.stderr
    state = json.loads((tmp_path / "data" / "state.json").read_text())
    assert state["runs"] == {} and state["instances"] == {}  # nothing was created: nothing to clean later


def test_openstack_and_gce_endpoints_that_refuse_connections_are_one_line_without_retries(tmp_path):
    env = write_config(tmp_path, clouds=refused_clouds(tmp_path))
    for cloud in ("openstack", "gce"):
        result = fab(f"up:cloud={cloud}", env=env, timeout=30)  # were 115 s and 50 s of retries
        assert result.returncode == 1
        line = one_error_line(result)
        assert f"{cloud}:" in line and ("refused" in line or "Connection refused" in line), line
        assert "retrying" not in result.stderr, result.stderr
