"""`fab listen` publishing to an rsync log host (a private sshd on 127.0.0.1): a build's logs and the status
page go over one shared SSH connection (ControlMaster), and once the listener stops, that connection
ends with it: no ssh master process of ours and no control socket remain (else they would linger
ControlPersist seconds after the listener)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cislaves.ci.publish import CONTROL_PERSIST, Publisher
from cislaves.ci.report import ReportStore
from cislaves.waiting import Pending, wait_for
from tests.ci.helpers import stop_process
from tests.cli import REPO
from tests.publish.conftest import sshd, tree  # noqa: F401 (sshd: the log host fixture)
from tests.runner.conftest import store_for, wait_for_builds

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_leftovers")]


def control_prefix(config) -> str:
    """The path the listener's shared SSH connection uses, up to the %C part (what this config's
    Publisher passes to ssh as ControlPath; a master's process title starts with it)."""
    [option] = [o for o in Publisher.from_config(config).target.ssh if o.startswith("ControlPath=")]
    return option[len("ControlPath="):].removesuffix("%C")


def ours(prefix: str) -> list[str]:
    """The ssh processes and control sockets of that shared connection now (pid: command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not a process
            continue
        if proc.name.isdigit() and prefix in argv:
            found.append(f"{proc.name}: {argv.strip()}")
    where = Path(prefix)
    return found + [str(p) for p in where.parent.glob(where.name + "*")]


def test_the_shared_ssh_connection_ends_with_fab_listen(make_config, gerrit, sshd, tmp_path):
    remote = tmp_path / "log host"
    config = make_config([{"name": "unit", "body": "echo fine\n"}], ci={
        "report_backoff_first": 0.2, "report_backoff_max": 0.5,
        "logs": {"dir": str(tmp_path / "logs"), "url": "https://logs.example.org", "publish": "rsync",
                 "rsync": {"target": f"root@127.0.0.1:{remote}", "key_file": str(sshd.key), "port": sshd.port,
                           "known_hosts": str(sshd.known_hosts)}}})
    prefix = control_prefix(config)
    assert ours(prefix) == []
    env = {**os.environ, "CISLAVES_CONFIG": str(config.path), "CISLAVES_DATA_DIR": "", "CISLAVES_MANIFEST": ""}
    before = gerrit.stream_connections
    errors = tmp_path / "listen.err"  # a file, not a pipe: the listener's log never blocks on it
    with open(errors, "wb") as err:
        proc = subprocess.Popen(["fab", "listen"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: gerrit.stream_connections > before or proc.poll() is not None,
                 "fab listen to stream events", 30)
        assert proc.poll() is None
        gerrit.upload_commit(1080, {"a.py": "x = 1\n"})
        [build] = wait_for_builds(config, 1)

        def reported():
            store = store_for(config)
            try:
                report = ReportStore(store).get(build.job_id)
            finally:
                store.close()
            return (report is not None and report.state == "reported") or Pending(str(report))
        wait_for(reported, f"the report of job {build.job_id}", 120, first_delay=0.05, max_delay=0.25)
        rel = Path(build.log_dir).relative_to(tmp_path / "logs")
        assert tree(remote / rel) == tree(Path(build.log_dir))  # the logs went to the log host ...
        assert f"https://logs.example.org/{rel}/" in gerrit.reviews[0][5]
        running = ours(prefix)
        assert any(line.endswith("[mux]") or "ControlPath=" in line for line in running), running  # ... shared
    finally:
        status, _ = stop_process(proc)
    assert status == 0, errors.read_text()[-2000:]
    left = wait_for(lambda: ours(prefix) == [] or Pending("; ".join(ours(prefix))),
                    "the listener's shared SSH connection to end", CONTROL_PERSIST / 4)
    assert left is True
