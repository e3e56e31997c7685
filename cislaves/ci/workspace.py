"""The workspace of a build: the runner (not the instance) fetches the patch set into a local mirror
of the project, checks it out, and streams the tree as tar into ~/workspace/<project> of the CI user
over the build's SSH connection.

One bare mirror per project under <data_dir>/ci/git/<project>.git, fetched incrementally (only the
patch set's ref, objects kept between builds), one lock file per mirror so builds of one project take
turns fetching while builds of other projects do not wait. git runs from argv lists; the ref was
validated when the job was queued (refs/changes/NN/CHANGE/PATCHSET) and is checked again here; the
project name must be plain path components. Nothing from Gerrit reaches a shell.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

from cislaves.ci import events as ev
from cislaves.errors import CislavesError, ConfigError

log = logging.getLogger(__name__)
PROJECT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$")
GIT_TIMEOUT = 600


class WorkspaceError(CislavesError):
    """Fetching or copying the workspace failed (infrastructure: the build is retried)."""


def check_project(project: str | None) -> str:
    """The project name if it is plain path components (no '..', no leading '/'), else ConfigError."""
    if not project or not PROJECT.match(project) or any(p in ("..", ".") or p.endswith(".git")
                                                        for p in project.split("/")):
        raise ConfigError(f"project {project!r} is not a plain name (letters, digits, ._+- and '/')")
    return project


def git_url(template: str, gerrit, project: str) -> str:
    """gerrit.git_url with {user}, {host}, {port} and {project} filled in."""
    try:
        return template.format(user=gerrit.user or "", host=gerrit.host or "", port=gerrit.port, project=project)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"gerrit.git_url: {template!r}: cannot fill in ({exc}); the placeholders are "
                          f"{{user}}, {{host}}, {{port}} and {{project}}") from None


def git_env(gerrit) -> dict[str, str]:
    """The environment for git fetches: over ssh:// with the listener's key and pinned known_hosts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={gerrit.known_hosts}", "-o", "IdentitiesOnly=yes",
           "-o", f"ConnectTimeout={int(gerrit.connect_timeout)}"]
    if gerrit.key_file:
        ssh += ["-i", str(gerrit.key_file)]
    env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def fetch(mirrors: Path, url: str, project: str, ref: str, change: int, patchset: int, env: dict[str, str]) -> str:
    """Fetch `ref` of `project` into its mirror (made on first use); return the commit it names."""
    ref = ev.check_ref(ref, change, patchset)
    mirror = mirrors / f"{check_project(project)}.git"
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with _locked(mirror.with_name(mirror.name + ".lock")):
        if not (mirror / "HEAD").exists():
            _git(["init", "--quiet", "--bare", str(mirror)], env)
        _git(["--git-dir", str(mirror), "fetch", "--quiet", "--no-tags", "--force", "--", url, f"+{ref}:{ref}"], env)
        return _git(["--git-dir", str(mirror), "rev-parse", "--verify", f"{ref}^{{commit}}"], env).strip()


@contextlib.contextmanager
def checkout(mirrors: Path, project: str, revision: str, url: str, env: dict[str, str]) -> Iterator[Path]:
    """A temporary checkout of `revision` (detached HEAD, origin = the Gerrit URL); removed afterwards."""
    mirror = mirrors / f"{check_project(project)}.git"
    with tempfile.TemporaryDirectory(prefix="cislaves-ws-", dir=mirrors) as tmp:
        tree = Path(tmp) / "tree"
        _git(["clone", "--quiet", "--no-checkout", "--local", str(mirror), str(tree)], env)
        _git(["-C", str(tree), "checkout", "--quiet", "--detach", revision], env)
        _git(["-C", str(tree), "remote", "set-url", "origin", url], env)
        yield tree


def upload(transport, tree: Path, script: Path, workspace: str, run_as: list[str], timeout: float) -> int:
    """Stream `tree` (as workspace/<project>) and the job's script (as .cislaves/run) as tar into the CI
    user's home over one SSH channel of `transport`; return the bytes sent. WorkspaceError on failure."""
    # the CI user's shell makes the folders and unpacks; every word is quoted, the paths are ours
    inner = "mkdir -p -- \"$1\" logs .cislaves && exec tar -x -f - --no-same-owner"
    line = shlex.join([*run_as, "sh", "-c", f"cd && {inner}", "sh", workspace])
    sent = 0
    try:
        channel = transport.open_session(timeout=30)
        channel.settimeout(timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(line)
        writer = _ChannelWriter(channel)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(str(tree), arcname=workspace, filter=_plain)
            data = script.read_bytes()
            info = tarfile.TarInfo(".cislaves/run")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        sent = writer.sent
        channel.shutdown_write()
        output = b""
        while True:
            chunk = channel.recv(65536)
            if not chunk:
                break
            output += chunk[-4096:]
        status = channel.recv_exit_status()
        channel.close()
    except (OSError, EOFError, Exception) as exc:  # paramiko raises SSHException, socket errors, EOF
        if isinstance(exc, WorkspaceError):
            raise
        raise WorkspaceError(f"copying the workspace failed: {type(exc).__name__}: {exc}") from None
    if status != 0:
        text = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise WorkspaceError(f"unpacking the workspace on the instance exited {status}: {text[0]}")
    return sent


class _ChannelWriter(io.RawIOBase):
    """A write-only file over a paramiko channel (tarfile streams into it)."""

    def __init__(self, channel):
        self.channel, self.sent = channel, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.channel.sendall(bytes(data))
        self.sent += len(data)
        return len(data)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _git(argv: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run(["git", *argv], env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"git {argv[0]} took longer than {GIT_TIMEOUT}s") from None
    except FileNotFoundError:
        raise ConfigError("git is not installed on this host (apt-get install git)") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        verb = next((a for a in argv if a in ("init", "fetch", "rev-parse", "clone", "checkout", "remote")), "")
        said = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
        raise WorkspaceError(f"git {verb} exited {done.returncode}: {said or 'no output'}")
    return done.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
