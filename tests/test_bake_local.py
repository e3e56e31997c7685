"""End to end on the local cloud, through the real `fab`: a real bake, booting the baked image, and
the failure paths (a failing step, SIGINT/SIGTERM, a killed fab, --keep-on-error). After each, the
host is checked for anything of the tool left behind (processes, mounts, namespaces, veths, rules)."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time

import pytest
import yaml

from cislaves import images as manifest_mod
from cislaves.clouds.base import generate_keypair
from tests.cli import REPO, closed_pipe, fab
from tests.fixtures_local import tool_leftovers

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def bake_env(tmp_path, local_cache_dir):
    """A config of its own (own data dir, shared base-image cache, minimal package set)."""
    data_dir = tmp_path / "data"
    master_key = generate_keypair(tmp_path / "jenkins-master", comment="jenkins@master")

    def make(**extra):
        config = {"data_dir": str(data_dir), "clouds": {"local": {"cache_dir": str(local_cache_dir)}},
                  "provision": {"package_set": "minimal"}, "ci_user": {"authorized_key": master_key}}
        for key, value in extra.items():
            config.setdefault(key, {}).update(value) if isinstance(value, dict) else config.update({key: value})
        path = tmp_path / "cislaves.yaml"
        path.write_text(yaml.safe_dump(config))
        return {"CISLAVES_CONFIG": str(path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}

    make.data_dir = data_dir
    yield make
    # whatever a test did, leave nothing behind for the next one
    subprocess.run(["fab", "cleanup:cloud=local"], cwd=REPO, env={**make(), **_os_env()},
                   capture_output=True, timeout=300)
    assert tool_leftovers(data_dir) == []


def _os_env():
    import os
    return dict(os.environ)


def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)
    return str(path)


def state_instances(data_dir):
    path = data_dir / "state.json"
    return json.loads(path.read_text())["instances"] if path.exists() else {}


class Fab:
    """A `fab` running in the background, its output read line by line as it comes."""

    def __init__(self, args, env):
        import os
        self.proc = subprocess.Popen(["fab", *args], cwd=REPO, env={**os.environ, **env}, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, pattern, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"fab never printed /{pattern}/; output:\n" + "\n".join(self.seen[-40:]))

    def finish(self, timeout=300):
        code = self.proc.wait(timeout=timeout)
        while True:
            line = self.lines.get(timeout=10)
            if line is None:
                break
            self.seen.append(line)
        return code, "\n".join(self.seen)


def test_it_bakes_an_image_that_boots_and_leaves_nothing(bake_env):
    env = bake_env()
    result = fab("it:cloud=local,distribution=debian12", env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    images = re.findall(r"^Image: (\S+)$", result.stdout, re.M)
    assert len(images) == 1, result.stdout
    image = images[0]
    for step in ["up", "bootstrap", "tests", "create_image", "destroy"]:
        assert re.search(rf"\[local/debian12\] {step}: started", result.stderr), step
        assert re.search(rf"\[local/debian12\] {step}: done in \d+\.\d\ds", result.stderr), step
    # the run left no instance and nothing on the host
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []
    # the manifest records it, Packer-style
    manifest = json.loads((bake_env.data_dir / "manifest.json").read_text())
    assert manifest["builds"][-1]["artifact_id"] == image  # no region: the bare id, as Packer writes it
    assert manifest["builds"][-1]["builder_type"] == "cislaves-local"
    build = manifest_mod.records(manifest)[-1]
    assert build["artifact_id"] == image and build["cloud"] == "local"
    assert build["distribution"] == "debian12" and build["source_image"] == "local-debian12-base-bookworm"
    assert manifest["last_run_uuid"] == build["run_id"]
    # the images task lists it
    listed = fab("images:cloud=local", env=env)
    assert listed.returncode == 0 and image in listed.stdout and "debian12" in listed.stdout

    # up from that image boots, SSH works, and the provisioning is in it
    booted = fab(f"up:cloud=local,image={image}", env=env, timeout=300)
    assert booted.returncode == 0, booted.stderr
    who = fab("ssh:cloud=local", "--", "id", "-un", "jenkins", env=env)
    assert who.returncode == 0 and who.stdout.strip() == "jenkins", who.stderr
    quoted = fab("ssh", "--", "printf", "%s|", "a b", "$HOME;", "'q'", env=env)
    assert quoted.stdout == "a b|$HOME;|'q'|", quoted.stdout
    status = fab("status", env=env)
    assert "running" in status.stdout and "debian12" in status.stdout
    assert "PRIVATE" not in status.stdout and "BEGIN" not in status.stdout

    # down keeps the disk, up starts it again
    marker = fab("ssh", "--", "touch", "/root/kept-across-down", env=env)
    assert marker.returncode == 0
    assert fab("down", env=env).returncode == 0
    assert "stopped" in fab("status", env=env).stdout
    assert fab("up", env=env).returncode == 0
    assert fab("ssh", "--", "test", "-e", "/root/kept-across-down", env=env).returncode == 0

    destroyed = fab("destroy", env=env)
    assert destroyed.returncode == 0, destroyed.stderr
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []


def test_a_bake_whose_reader_went_away_finishes_records_its_image_and_leaves_nothing(bake_env):
    """`fab it ... | head -1`: the rest of the output has nowhere to go. The bake still runs to its end
    (its output dropped), records its image and exits 0; before, the first print after the reader left
    (invoke's thread copying the script's output) ended the bake with a traceback."""
    write = closed_pipe()
    try:
        result = subprocess.run(["fab", "it:cloud=local,distribution=debian12"], cwd=REPO,
                                env={**_os_env(), **bake_env()}, stdout=write, stderr=subprocess.PIPE, text=True,
                                timeout=900, stdin=subprocess.DEVNULL)
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert re.search(r"\[local/debian12\] it: done in", result.stderr)
    manifest = json.loads((bake_env.data_dir / "manifest.json").read_text())
    assert manifest_mod.records(manifest)[-1]["distribution"] == "debian12"
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []


def test_a_bake_from_a_worker_thread_succeeds(bake_env):
    """The signal policy lives at the command boundary (the fabfile): the pipeline installs no signal
    handler, so it runs in a worker thread as the CI runner will call it. (When bake.up installed
    handlers, this raised `ValueError: signal only works in main thread`.)"""
    from cislaves import bake, config

    cfg = config.load(bake_env()["CISLAVES_CONFIG"], environ={})
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    result, lines = {}, []

    def work():
        result["thread"] = threading.current_thread()
        session = bake.Session(cfg, "local", "debian12", out=lines.append)
        try:
            result["images"] = bake.it(session)
        except BaseException as exc:  # reported by the assertions below, in the test's thread
            result["error"] = exc
        finally:
            session.close()

    worker = threading.Thread(target=work, name="bake-worker")
    worker.start()
    worker.join(900)
    assert not worker.is_alive()
    assert result["thread"] is not threading.main_thread()
    assert "error" not in result, f"{type(result.get('error')).__name__}: {result.get('error')}"
    (image,) = result["images"]
    assert image.cloud == "local" and image.state == "available" and f"Image: {image.id}" in lines
    assert json.loads((bake_env.data_dir / "manifest.json").read_text())["builds"][-1]["artifact_id"] == image.id
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers  # nothing installed
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []


def test_failing_provisioning_removes_the_instance_and_says_what_failed(bake_env, tmp_path):
    failing = script(tmp_path, "fail.sh", 'echo "==> step: breaking on purpose"\nexit 3\n')
    env = bake_env(provision={"extra_scripts": {"debian12": [failing]}})
    result = fab("it:cloud=local,distribution=debian12", env=env, timeout=900)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bootstrap failed" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_bootstrap_removes_the_instance(bake_env, signum):
    env = bake_env()
    run = Fab(["it:cloud=local,distribution=debian12"], env)
    run.wait_for_line(r"^==> step: ")  # the provisioning script is running on the machine
    run.proc.send_signal(signum)
    code, output = run.finish()
    assert code == 130, output[-2000:]
    assert "interrupted during bootstrap" in output
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []


def test_a_killed_fab_is_cleaned_up_by_the_next_run(bake_env):
    env = bake_env()
    run = Fab(["it:cloud=local,distribution=debian12"], env)
    run.wait_for_line(r"^==> step: ")
    run.proc.kill()  # SIGKILL: no cleanup can run in fab itself
    run.finish()
    assert tool_leftovers(bake_env.data_dir) != []  # the machine is still there...
    cleaned = fab("cleanup:cloud=local", env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "Removed leftover instance" in cleaned.stdout
    assert state_instances(bake_env.data_dir) == {}
    assert tool_leftovers(bake_env.data_dir) == []  # ...and now it is gone


def test_keep_on_error_keeps_the_instance_and_says_how_to_reach_it(bake_env, tmp_path):
    failing = script(tmp_path, "fail.sh", "exit 4\n")
    env = bake_env(provision={"extra_scripts": {"debian12": [failing]}})
    result = fab("it:cloud=local,distribution=debian12,keep_on_error=true", env=env, timeout=900)
    assert result.returncode != 0
    kept = re.search(r"Kept instance (\S+) .*`fab ssh:cloud=local,instance=\1`.*`fab destroy:cloud=local,"
                     r"instance=\1`", result.stdout)
    assert kept, result.stdout[-2000:]
    instance = kept.group(1)
    assert fab(f"ssh:instance={instance}", "--", "true", env=env).returncode == 0
    assert fab(f"destroy:cloud=local,instance={instance}", env=env).returncode == 0
    assert tool_leftovers(bake_env.data_dir) == []


def test_up_forgets_an_instance_that_is_gone_and_boots_a_new_one(bake_env):
    env = bake_env()
    bake_env.data_dir.mkdir(parents=True, exist_ok=True)
    gone = {"id": "vm-gone-000000", "cloud": "local", "name": "gone", "distribution": "debian12",
            "run_id": "20200101000000-000000", "state": "running", "address": "10.213.255.254"}
    (bake_env.data_dir / "state.json").write_text(json.dumps(
        {"version": 1, "runs": {}, "instances": {"local:vm-gone-000000": {
            "instance": gone, "role": "instance", "owner": {"pid": 1, "start": "0"}}}}))
    result = fab("up:cloud=local", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    new = re.search(r"^Instance: (vm-\S+) at root@", result.stdout, re.M).group(1)
    assert list(state_instances(bake_env.data_dir)) == [f"local:{new}"]
    assert fab("destroy", env=env).returncode == 0
