"""Host mechanics of local machines: the nspawn process and its cgroups, overlay mounts, locks, and
the sweep of orphaned host resources of the tool.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

from cislaves.clouds.base import Pending, wait_for
from cislaves.clouds.local import net
from cislaves.clouds.local.net import run
from cislaves.errors import CloudError, WaitTimeout
from cislaves.util import start_time

log = logging.getLogger(__name__)

CGROUP_PARENT = "cislaves"  # machines run in <cgroup root>/cislaves/<token>
MOUNT_SOURCE = "cislaves-"  # overlay mounts are named cislaves-<token>; /proc/mounts shows it
CHILDREN: dict[int, subprocess.Popen] = {}  # machines this process started (to collect their status)


# -- the nspawn process --------------------------------------------------------------------------
def spawn(argv: list[str], log_file: Path, cgroups: list[Path]) -> dict[str, Any]:
    """Start argv detached (own session, output to log_file) so it outlives this process, inside its
    own cgroups: nspawn --keep-unit puts the machine under the cgroup it runs in, and two machines
    sharing one (e.g. the root cgroup of a host not run by systemd) break each other's boot."""
    enter = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; shift; exec "$@"'
    wrapped = ["/bin/sh", "-c", enter, "sh", *[str(c) for c in cgroups], "--", *argv]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=clean_environment())
    CHILDREN[proc.pid] = proc
    return {"pid": proc.pid, "start": start_time(proc.pid)}


def clean_environment() -> dict[str, str]:
    """The environment a machine's nspawn runs with for its whole life: a fixed PATH and locale, not
    fab's (which holds OS_PASSWORD, AWS_SECRET_ACCESS_KEY and whatever else the operator exported)."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def exit_status(pid: int) -> int | None:
    """The exit status of a process this process started and that has ended (else None)."""
    child = CHILDREN.get(pid)
    return None if child is None else child.poll()


def cgroup_roots() -> list[Path]:
    """The cgroup hierarchies systemd uses: cgroup2 mounts and the v1 name=systemd one."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if fields[0] == "cgroup2" or (fields[0] == "cgroup" and "name=systemd" in fields[2].split(",")):
            roots.append(Path(unescape(left.split()[4])))
    return roots


def make_cgroups(name: str) -> list[Path]:
    paths = [root / CGROUP_PARENT / name for root in cgroup_roots()]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return paths


def remove_cgroups(name: str, timeout: float = 60) -> bool:
    """Kill what still runs in the machine's cgroups (its own processes only), then remove them.
    A SIGKILLed process leaves only once its kernel work ends (I/O in uninterruptible sleep on a loaded
    host took over 10 s): the wait is the cloud's destroy_timeout, and its state names each process."""
    paths = [root / CGROUP_PARENT / name for root in cgroup_roots() if (root / CGROUP_PARENT / name).is_dir()]

    def empty() -> bool | Pending:
        left = []
        for path in paths:
            for folder, _, _ in os.walk(path, topdown=False):
                pids = [int(p) for p in Path(folder, "cgroup.procs").read_text().split()] \
                    if Path(folder, "cgroup.procs").exists() else []
                for pid in pids:
                    reap(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                left += pids
        left = sorted(set(left))  # a process is listed in each hierarchy (cgroup2 and name=systemd)
        return Pending(f"{len(left)} process(es) left: {', '.join(map(describe, left[:5]))}") if left else True

    if not paths:
        return False
    wait_for(empty, f"processes of cgroup {name} to exit", timeout, max_delay=0.1)
    for path in paths:
        for folder, _, _ in os.walk(path, topdown=False):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(folder)
    return True


def tool_cgroups() -> list[str]:
    """Names of the tool's cgroups (cislaves/<token>) in any hierarchy."""
    names = set()
    for root in cgroup_roots():
        if (root / CGROUP_PARENT).is_dir():
            names.update(p.name for p in (root / CGROUP_PARENT).iterdir() if p.is_dir())
    return sorted(names)


def describe(pid: int) -> str:
    """'1234 (sshd, state D)' from /proc (the state tells a zombie or a process stuck in the kernel)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return f"{pid} (gone)"
    comm, _, rest = stat[stat.find("(") + 1:].rpartition(")")
    return f"{pid} ({comm}, state {rest.split()[0] if rest.split() else '?'})"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def alive(proc: dict[str, Any] | None, marker: str) -> bool:
    """True if the recorded process still runs and IS that process: same start time and its command
    line contains `marker` (a reused pid is never mistaken for ours)."""
    if not proc or not proc.get("pid"):
        return False
    pid = int(proc["pid"])
    reap(pid)
    started = start_time(pid)
    if started is None or started != proc.get("start"):
        return False
    argv = cmdline(pid)
    # An empty command line is a process in the middle of execve (our sh wrapper becoming nspawn):
    # the start time, which exec keeps, already identifies it.
    return argv in ([], [""]) or marker in argv


def reap(pid: int) -> None:
    """Collect the exit status if the process is our child (so it does not linger as a zombie)."""
    if pid in CHILDREN:
        CHILDREN[pid].poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(proc: dict[str, Any] | None, marker: str, timeout: float, what: str) -> bool:
    """SIGTERM (orderly poweroff under nspawn --boot), wait, then SIGKILL; True if it was running."""
    if not alive(proc, marker):
        return False
    os.kill(int(proc["pid"]), signal.SIGTERM)
    try:
        wait_for(lambda: gone(proc, marker) or Pending("still running"), f"{what} to power off", timeout,
                 max_delay=0.25)
    except WaitTimeout:
        log.warning("%s did not power off within %gs; killing it", what, timeout)
        kill(proc, marker, what)
    return True


def kill(proc: dict[str, Any] | None, marker: str, what: str, timeout: float = 30) -> bool:
    """SIGKILL the recorded process (after checking its identity) and wait until it is gone."""
    if not alive(proc, marker):
        return False
    os.kill(int(proc["pid"]), signal.SIGKILL)
    wait_for(lambda: gone(proc, marker) or Pending("still running"), f"{what} to exit after SIGKILL", timeout,
             max_delay=0.1)
    return True


def gone(proc: dict[str, Any], marker: str) -> bool | Pending:
    """A wait_for probe: True once the recorded process has exited."""
    return Pending(f"pid {proc['pid']} still running") if alive(proc, marker) else True


def nspawn_processes() -> list[tuple[int, list[str]]]:
    """Every systemd-nspawn process started by the tool (its command line names a cis- namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if argv and argv[0].endswith("systemd-nspawn") and any(
                a.startswith("--network-namespace-path=/run/netns/cis-") for a in argv):
            if start_time(int(entry.name)) is not None:
                found.append((int(entry.name), argv))
    return found


def console_text(path: Path) -> str:
    """A machine's console log without terminal colour codes."""
    try:
        return re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))
    except OSError:
        return ""


def ssh_banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True once something at address:port speaks SSH (sends an SSH- banner)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# -- mounts ----------------------------------------------------------------------------------
def mount_overlay(token: str, lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
    for path in [*lowers, upper, work, target]:
        if re.search(r"[,:\s\\]", str(path)):
            raise CloudError(f"local: path {path} contains ',', ':', a backslash or a space, which "
                             "overlayfs options cannot hold; use a data_dir/cache_dir without them")
    options = (f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work},"
               "index=off,metacopy=off")
    run(["mount", "-t", "overlay", MOUNT_SOURCE + token, "-o", options, str(target)])


def mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, fstype) of every mount in this mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = unescape(left.split()[4])
        fstype, source = right.split()[:2]
        found.append((unescape(source), point, fstype))
    return found


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    return [point for _, point, _ in mounts() if point == str(path) or point.startswith(prefix)]


def unmount(target: Path) -> bool:
    """Unmount target (lazily if busy); True if it was mounted."""
    if str(target) not in [p for _, p, _ in mounts()]:
        return False
    if run(["umount", str(target)], check=False).returncode != 0:
        run(["umount", "-l", str(target)])
    return True


def unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def remove_tree(path: Path) -> None:
    """rm -rf, refusing when something is still mounted below (never delete through a mount)."""
    if not path.exists() and not path.is_symlink():
        return
    left = mounts_under(path)
    if left:
        raise CloudError(f"local: refusing to delete {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sweep_orphans() -> list[str]:
    """Remove host resources of the tool whose instance directory no longer exists (any data dir)."""
    removed: list[str] = []
    with net.lock():
        records = net.list_records()
        live = {r["token"] for r in records if Path(r["instance_dir"], "meta.json").exists()}
        for pid, argv in nspawn_processes():
            token = next(a for a in argv if a.startswith("--network-namespace-path="))[-8:]
            if token not in live:
                proc = {"pid": pid, "start": start_time(pid)}
                if kill(proc, "--network-namespace-path=/run/netns/cis-" + token, f"orphan nspawn {pid}"):
                    removed.append(f"orphan nspawn process {pid} ({token})")
        for name in tool_cgroups():  # what is left of the machine inside (nspawn does not kill it)
            if name not in live and remove_cgroups(name):
                removed.append(f"orphan cgroup {CGROUP_PARENT}/{name}")
        for source, point, fstype in mounts():
            if fstype == "overlay" and source.startswith(MOUNT_SOURCE) \
                    and source[len(MOUNT_SOURCE):] not in live:
                if unmount(Path(point)):
                    removed.append(f"orphan mount {point}")
        removed += [f"orphan {rule}" for rule in net.delete_rules(keep=live)]
        for name in net.tool_links():
            if name[len(net.PREFIX):] not in live:
                net.run(["ip", "link", "del", name], check=False)
                removed.append(f"orphan veth {name}")
        for name in net.tool_netns():
            if name[len(net.PREFIX):] not in live:
                net.run(["ip", "netns", "del", name], check=False)
                removed.append(f"orphan netns {name}")
        for record in records:
            if record["token"] not in live:
                (net.RUN_DIR / f"{record['token']}.json").unlink(missing_ok=True)
                removed.append(f"orphan allocation {record['subnet']} of {record['instance_id']} "
                               f"({record['instance_dir']})")
    return removed


