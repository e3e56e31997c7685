"""Fixtures for the log-publishing tests: build directories written as the runner writes them (the real
BuildStore rows, log_dir_for paths, execute.Output's timestamped job-output.txt and the runner's own
build.json writer), a config factory, a local HTTP server over a directory, headless Chromium, and a
private sshd on 127.0.0.1 (the log host of rsync)."""
from __future__ import annotations

import datetime as dt
import http.server
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from cislaves import config as cfg
from cislaves.ci import builds as store_mod
from cislaves.ci import execute, runner
from cislaves.ci.builds import BuildStore
from cislaves.ci.publish import content_type
from cislaves.ci.queue import Job
from cislaves.ci.settings import ci_settings, queue_path
from cislaves.keys import generate_keypair
from cislaves.waiting import Pending
from tests.servers import held_port, wait_answering

HOSTILE = "<script>alert('x')</script> & \"quoted\" $(touch /tmp/pwned) `id`"


@pytest.fixture
def make_config(tmp_path):
    """make_config(logs={...}, gerrit={...}) -> Config with its own data dir and logs dir."""
    def make(logs: dict | None = None, gerrit: dict | None = None):
        path = tmp_path / "cislaves.yaml"
        data = {"data_dir": str(tmp_path / "data"),
                "ci": {"name": "acme", "logs": {"dir": str(tmp_path / "logs"), **(logs or {})}}}
        if gerrit:
            data["gerrit"] = gerrit
        path.write_text(yaml.safe_dump(data))
        return cfg.load(path, environ={})
    return make


def make_build(config, *, change=1234, patchset=2, job="acme-unit", trigger="check", result="SUCCESS",
               subject=HOSTILE, state="finished", ended_days_ago=0.0, voting=True, url=None, artifacts=None):
    """A build as the runner leaves it: a builds.sqlite row and (unless queued) its directory at
    log_dir_for with job-output.txt, artifacts and build.json (finished builds only)."""
    ci = ci_settings(config)
    store = BuildStore(store_mod.path_for(queue_path(config, ci)))
    try:
        now = time.time()
        event = {"type": "patchset-created",
                 "change": {"number": change, "project": "acme/cinder", "branch": "master", "subject": subject,
                            "url": url or f"https://review.example.org/c/acme/cinder/+/{change}", "id": "I" + "a" * 40},
                 "patchSet": {"number": patchset, "ref": f"refs/changes/{change % 100:02d}/{change}/{patchset}"}}
        queued = Job(id=change * 100 + patchset, key=f"k{change}-{patchset}", state="running", change=change,
                     patchset=patchset, project="acme/cinder", branch="master",
                     ref=event["patchSet"]["ref"], revision="0" * 40, trigger=trigger,
                     event_type="patchset-created", event=event, created=now, updated=now)
        build = store.create(queued, job, voting)
        if state == "queued":
            return build
        run = runner._Run(build, config, ci, store, lambda: None, None)
        run.dir.mkdir(parents=True, exist_ok=True)
        store.start(build, run.dir)
        with open(run.dir / "job-output.txt", "ab", buffering=0) as out:
            output = execute.Output(out)
            output.note("booting debian12 image img-1 on local")
            output.write(f"running {job}\nsubject: {subject}\n".encode())
            output.note(f"result: {result}")
        for rel, text in (artifacts or {"logs/tempest.log": "all 12 tests passed\n",
                                        "logs/syslog": "Dec  2 kernel: ok\n"}).items():
            (run.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (run.dir / rel).write_text(text)
        if state == "running":
            return build
        ended = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=ended_days_ago)
        run._write_json(result, None, ended - dt.timedelta(seconds=303), ended)
        store.finish(build, result)
        return store.get(build.id)
    finally:
        store.close()


def all_builds(config):
    store = BuildStore(store_mod.path_for(queue_path(config, ci_settings(config))))
    try:
        return store.recent()
    finally:
        store.close()


def old_and_recent(config, old_days: float, recent_days: float):
    """Two finished builds of changes 1200 and 1300 (both under 00/), published with the status page;
    returns (publisher, old, recent)."""
    from cislaves.ci.publish import Publisher

    old = make_build(config, change=1200, ended_days_ago=old_days)
    recent = make_build(config, change=1300, ended_days_ago=recent_days)
    publisher = Publisher.from_config(config)
    for build in (old, recent):
        publisher.publish_build(Path(build.log_dir))
    publisher.publish_status(all_builds(config))
    return publisher, old, recent


def tree(root: Path) -> dict[str, bytes]:
    """Every file below root, by relative path (to compare copies)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Served:
    """A directory over HTTP on 127.0.0.1, with the content types a log server sets (nginx snippet)."""

    def __init__(self, root: Path):
        directory = str(root)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=directory, **kw)

            def guess_type(self, path):
                return content_type(Path(path))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(root: Path) -> Served:
        servers.append(Served(root))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium(url: str, workdir: Path, name: str) -> str:
    """Load `url` in headless Chromium (a fresh profile): keep a screenshot as <workdir>/<name>.png and
    return the rendered DOM."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed (setup.sh installs Debian's chromium package)")
    workdir.mkdir(parents=True, exist_ok=True)
    common = [binary, *CHROMIUM_FLAGS]
    dom = subprocess.run([*common, f"--user-data-dir={workdir / (name + '-profile-dom')}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    subprocess.run([*common, f"--user-data-dir={workdir / (name + '-profile-shot')}", "--window-size=1400,900",
                    f"--screenshot={workdir / (name + '.png')}", url], capture_output=True, timeout=120, check=True)
    assert (workdir / f"{name}.png").stat().st_size > 1000
    print(f"screenshot of {url}: {workdir / (name + '.png')}")
    return dom


class Sshd:
    """A private sshd on 127.0.0.1 that lets one key log in as root (the log host)."""

    def __init__(self, base: Path):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.host_key = base / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        self.key_dir = base / "client key"  # a space in the key's path: the -e option must quote it
        self.key_dir.mkdir()
        self.key = self.key_dir / "id_ed25519"
        public = generate_keypair(self.key)
        (base / "authorized_keys").write_text(public + "\n")
        self._held = held_port()  # the port stays ours until sshd listens on it
        self.port = self._held.getsockname()[1]
        self.known_hosts = base / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {(base / 'host_ed25519.pub').read_text()}")
        (base / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.host_key}\nUsePAM no\nStrictModes no\n"
            f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile {base / 'sshd.pid'}\n"
            f"Subsystem sftp internal-sftp\n")
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.base / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.base / "sshd.log", "ab"))

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0 or Pending("port closed")
        try:
            wait_answering(self.proc, self.base / "sshd.log", listening, f"sshd on 127.0.0.1:{self.port}", 60)
        finally:
            self._held.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("loghost"))
    server.start()
    yield server
    server.stop()


def links(dom: str) -> list[str]:
    """The hrefs of a rendered DOM (Chromium serialises attributes with double quotes, & as &amp;)."""
    import re
    import html
    return [html.unescape(h) for h in re.findall(r'<a [^>]*href="([^"]*)"', dom)]


def unquote_path(href: str) -> str:
    return unquote(href)
