"""On the build's instance, over its SSH transport (paramiko): run the job's script with its output
timestamped as it arrives, stop the CI user's processes, and collect files back as a tar stream.

Every command line is built with shlex from argv lists; the values in it (variables from Gerrit,
artifact patterns) are quoted data. The script's own text never travels on a command line: it was
copied in with the workspace (~/.cislaves/run).
"""
from __future__ import annotations

import contextlib
import shlex
import socket
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Callable

from cislaves.errors import CislavesError
from cislaves.records import utcnow

CHECK_EVERY = 0.25  # seconds between should_stop() calls while the script runs
KILL_TIMEOUT = 3.0
# names at the top of the build directory that artifacts never replace (the published index included);
# an artifact of such a name is kept under RENAMED/ instead
RESERVED = ("job-output.txt", "build.json", "index.html")
RENAMED = "artifacts"
# The script starts in its workspace with WORKSPACE and LOG_DIR set ($1: the workspace below $HOME).
START = 'cd && export WORKSPACE="$HOME/$1" LOG_DIR="$HOME/logs" && cd "$WORKSPACE" && exec "$HOME/.cislaves/run"'
# Run on the instance (python3 -c): tar to stdout of ~USER/logs (as logs/...) and the patterns' files
# (relative: to the workspace; absolute: as their path without the leading '/').
COLLECT = r"""
import glob, os, sys, tarfile
home = os.path.expanduser("~" + sys.argv[1])
ws = os.path.join(home, sys.argv[2])
seen = set()
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
    wanted = [("**", os.path.join(home, "logs"), "logs")] + [
        (p, "/" if p.startswith("/") else ws, "") for p in sys.argv[3:]]
    for pattern, base, prefix in wanted:
        full = pattern if pattern.startswith("/") else os.path.join(base, pattern)
        for path in sorted(glob.glob(full, recursive=True)):
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            name = os.path.join(prefix, os.path.relpath(path, base))
            if name in seen or name in ("job-output.txt", "build.json"):
                continue
            seen.add(name)
            try:
                tar.add(path, arcname=name, recursive=False)
            except OSError as exc:
                sys.stderr.write("cannot collect %s: %s\n" % (path, exc))
"""


class NodeFailure(CislavesError):
    """The instance could not be booted, reached or given its workspace (not the patch's fault)."""


class Output:
    """job-output.txt: each line prefixed with the UTC time it arrived; the runner's lines say [cislaves]."""

    def __init__(self, fh):
        self.fh, self.partial = fh, b""

    def write(self, data: bytes) -> None:
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if lines:
            stamp = _stamp()
            self.fh.write(b"".join(stamp + line + b"\n" for line in lines))

    def flush(self) -> None:
        if self.partial:
            self.fh.write(_stamp() + self.partial + b"\n")
            self.partial = b""

    def note(self, text: str) -> None:
        self.flush()
        self.fh.write(_stamp() + b"[cislaves] " + text.encode(errors="replace") + b"\n")


def run_script(transport, run_as: list[str], workspace: str, env: dict[str, str], timeout: float,
               output: Output, should_stop: Callable[[], object], kill: Callable[[], None]) -> tuple[str, object]:
    """Run ~/.cislaves/run as the CI user; return (result, detail): SUCCESS, FAILURE, TIMED_OUT (killed)
    or ABORTED (detail: what should_stop returned; the caller kills). NodeFailure if the connection goes."""
    line = shlex.join([*run_as, "env", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", START, "sh", workspace])
    try:
        channel = transport.open_session(timeout=30)
        channel.set_combine_stderr(True)
        channel.settimeout(CHECK_EVERY)
        channel.exec_command(line)
    except Exception as exc:
        raise NodeFailure(f"starting the script failed: {type(exc).__name__}: {exc}") from None
    output.note("script started")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                chunk = channel.recv(65536)
            except socket.timeout:
                chunk = None
            if chunk:
                output.write(chunk)
            elif chunk == b"":
                break
            stop = should_stop()
            if stop:
                output.flush()
                return "ABORTED", stop
            if time.monotonic() > deadline:
                output.flush()
                kill()
                return "TIMED_OUT", f"the script ran longer than {timeout:g}s"
        output.flush()
        while not channel.exit_status_ready():
            stop = should_stop()
            if stop:
                return "ABORTED", stop
            channel.status_event.wait(CHECK_EVERY)
        status = channel.recv_exit_status()
    except (OSError, EOFError) as exc:
        raise NodeFailure(f"the connection to the instance was lost during the script: {exc}") from None
    finally:
        channel.close()
    if status == 0:
        return "SUCCESS", None
    if status == -1:
        raise NodeFailure("the script's connection ended without an exit status")
    return "FAILURE", f"the script exited {status}"


def kill_user(transport, as_root: list[str], user: str) -> None:
    """Stop everything the CI user runs (the instance is the build's alone); best effort, bounded."""
    with contextlib.suppress(Exception):
        channel = transport.open_session(timeout=KILL_TIMEOUT)
        channel.settimeout(KILL_TIMEOUT)
        channel.exec_command(shlex.join([*as_root, "pkill", "-KILL", "-u", user]))
        channel.recv_exit_status()
        channel.close()


def collect(transport, as_root: list[str], user: str, workspace: str, patterns: list[str], dest: Path,
            output: Output) -> int:
    """Copy LOG_DIR and the artifact patterns' files into `dest`; return how many. A failure is noted in
    the output and never changes the build's result."""
    count = 0
    try:
        channel = transport.open_session(timeout=30)
        channel.settimeout(600)
        channel.exec_command(shlex.join([*as_root, "python3", "-c", COLLECT, user, workspace, *patterns]))
        with tarfile.open(fileobj=channel.makefile("rb"), mode="r|") as tar:
            for member in tar:
                target = safe_target(dest, member)
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "wb") as fh:
                    while block := source.read(1 << 20):
                        fh.write(block)
                count += 1
        errors = channel.makefile_stderr("rb").read().decode(errors="replace").strip()
        channel.recv_exit_status()
        channel.close()
        for line in errors.splitlines()[-5:]:
            output.note(line)
    except Exception as exc:  # missing artifacts never change the result
        output.note(f"collecting artifacts failed: {type(exc).__name__}: {exc}")
    output.note(f"collected {count} file(s)")
    return count


def safe_target(root: Path, member: tarfile.TarInfo) -> Path | None:
    """Where a collected file goes in the build directory; None for anything but a plain relative file."""
    if not member.isfile():
        return None
    parts = PurePosixPath(member.name).parts
    if not parts or member.name.startswith("/") or any(p in ("..", "") for p in parts):
        return None
    if len(parts) == 1 and parts[0] in RESERVED:
        return root / RENAMED / parts[0]
    return root.joinpath(*parts)


def _stamp() -> bytes:
    return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f").encode() + b" | "
