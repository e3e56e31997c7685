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
    env, _, _ = machine

    def restore_sigint():  # a shell's background job has SIGINT ignored; fab must see it as a user would
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([os.path.join(REPO, ".venv/bin/fab"), "bootstrap:cloud=local"], cwd=REPO,
                            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)
    started = threading.Event()
    stdout: list[str] = []

    def read():
        for line in proc.stdout:
            stdout.append(line)
            if "slow step: started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(300), "".join(stdout)[-3000:]
    assert _remote_sleepers(env).returncode == 0  # it does run there
    proc.send_signal(signum)
    try:
        stderr = proc.communicate(timeout=30)[1]  # far below the 97 s the script would still take
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("fab did not stop on one signal")
    reader.join(10)
    assert proc.returncode == 130, stderr[-3000:]
    assert "slow step: finished" not in "".join(stdout)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in stderr, stderr[-3000:]
    left = _remote_sleepers(env)
    assert left.returncode == 1, left.stdout  # pgrep: no such process on the instance
