"""SSH to instances: a Fabric Connection factory, wait-for-SSH, argv-quoted commands, uploads.

Host keys: trust on first use, pinned per instance in <data_dir>/known_hosts/<cloud>-<id>; a changed
key on a later connection is refused (paramiko BadHostKeyException -> SSHError).
Commands are always built from argv lists with shlex quoting, never by joining user text.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
import shlex
import socket
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import paramiko
from fabric import Connection
from fabric.runners import Remote
from invoke.exceptions import UnexpectedExit

from cislaves.records import Instance
from cislaves.waiting import Pending, wait_for
from cislaves.errors import SSHError

log = logging.getLogger(__name__)

RETRYABLE = (paramiko.ssh_exception.NoValidConnectionsError, paramiko.ssh_exception.SSHException,
             socket.timeout, socket.error, EOFError, ConnectionError)
_kept: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cislaves_kept_ssh", default=None)


def known_hosts_file(data_dir: Path, instance: Instance) -> Path:
    safe = f"{instance.cloud}-{instance.id}".replace("/", "_")
    path = Path(data_dir) / "known_hosts" / safe
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    return path


# Stops a command tree on the instance: its wrapper's pid is in the file $1; every descendant is
# listed first (before any dies and its children are re-parented), then TERM, up to 2 s, then KILL.
KILL_TREE = r"""p=$(cat "$1" 2>/dev/null) || exit 0; rm -f "$1"
tree() { for c in $(pgrep -P "$1"); do tree "$c"; done; echo "$1"; }
pids=$(tree "$p"); kill -TERM $pids 2>/dev/null; i=0
while [ $i -lt 20 ]; do alive=; for x in $pids; do kill -0 "$x" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && exit 0; sleep 0.1; i=$((i+1)); done
kill -KILL $pids 2>/dev/null; exit 0"""


class StoppableRemote(Remote):
    """Fabric's remote runner, whose command stops on the instance when this process is interrupted.

    Without a terminal, Fabric answers Ctrl-C by re-raising it and then joins its reader threads,
    which read until the remote command ends by itself (a 90 s step: 88 s more), and the command
    goes on running there. Here each command writes its shell's pid to a file first; on Ctrl-C or
    SIGTERM (KeyboardInterrupt in the main thread) or a timeout, a second channel on the same
    connection kills that shell's whole process tree (with sudo when the login user is not root:
    the scripts run as root), and the channel closes, so the readers end at once."""

    pid_file = ""

    def send_start_message(self, command):
        self.pid_file = f"/tmp/.cislaves-{secrets.token_hex(8)}.pid"
        pid = shlex.quote(self.pid_file)
        super().send_start_message(f"echo $$ > {pid}; {command}\nrc=$?; rm -f {pid}; exit $rc")

    def send_interrupt(self, interrupt):
        self.stop_remote()
        raise interrupt

    def kill(self):
        self.stop_remote()

    def stop_remote(self) -> None:
        """Kill the command tree on the instance (best effort, bounded), then close the channel."""
        try:
            kill_tree(self.context, self.pid_file)
        except Exception as exc:  # the connection may be gone: then so is the command's session
            log.debug("could not stop the remote command on %s: %s", self.context.host, exc)
        finally:
            self.channel.close()


def kill_tree(conn: Connection, pid_file: str, timeout: float = 5) -> None:
    """Run KILL_TREE on the pid file over a new channel of `conn`'s transport, waiting for it."""
    transport = conn.client.get_transport()
    if not pid_file or transport is None or not transport.is_active():
        return
    kill = shlex.join(["sh", "-c", KILL_TREE, "sh", pid_file])
    line = kill if conn.user == "root" else f"sudo -n {kill} 2>/dev/null || {kill}"
    channel = transport.open_session(timeout=timeout)
    try:
        channel.exec_command(line)
        if not channel.status_event.wait(timeout):
            log.debug("stopping the remote command on %s did not answer within %gs", conn.host, timeout)
    finally:
        channel.close()


class NoDelayConnection(Connection):
    """Fabric's Connection with TCP_NODELAY on its socket, set before the SSH handshake. SSH sends
    small packets; with Nagle's algorithm each one after the first waits for the peer's delayed ACK
    (about 40 ms): measured on a local machine, connecting took 69 ms instead of 22, and a command
    on an open connection 45 ms instead of 2.5. (A gateway's channel is no TCP socket: unchanged.)"""

    keep = False  # while kept (see kept_connections), close() leaves it open for the next user

    def _remote_runner(self):
        return StoppableRemote(context=self, inline_env=self.inline_ssh_env)

    def close(self):
        if not self.keep:
            super().close()

    def open(self):
        if self.is_connected or self.gateway:
            return super().open()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connect_kwargs["sock"] = sock
            return super().open()
        except BaseException:
            sock.close()
            raise
        finally:
            self.connect_kwargs.pop("sock", None)


def connection(instance: Instance, data_dir: Path, *, user: str | None = None,
               connect_timeout: float = 10) -> Connection:
    """A Fabric Connection to `instance` (not yet opened)."""
    if not instance.address:
        raise SSHError(f"{instance.cloud} instance {instance.id} has no address to connect to")
    connect_kwargs = {"look_for_keys": False, "allow_agent": False,
                      "banner_timeout": connect_timeout, "auth_timeout": connect_timeout}
    if instance.key_file:
        connect_kwargs["key_filename"] = [str(instance.key_file)]
    gateway = None
    if instance.proxy_command:
        gateway = instance.proxy_command
    elif instance.jump_host:
        jump_user, _, rest = instance.jump_host.rpartition("@")
        jump_host, _, jump_port = rest.partition(":")
        gateway = NoDelayConnection(jump_host, user=jump_user or None, port=int(jump_port or 22),
                                    connect_kwargs=dict(connect_kwargs))
    conn = NoDelayConnection(instance.address, user=user or instance.user, port=instance.port,
                             connect_kwargs=connect_kwargs, gateway=gateway, connect_timeout=connect_timeout)
    conn.client.load_host_keys(str(known_hosts_file(data_dir, instance)))
    conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    return conn


@contextlib.contextmanager
def kept_connections() -> Iterator[None]:
    """Within the block (one command, in its thread), a connection that wait_for_ssh opened stays open
    when its user closes it, and the next wait_for_ssh of the same instance, login user and key gets
    it back once it answers again, instead of a new one: connecting and a connection's first session
    cost about 75 ms on a local machine, and each step of a bake (bootstrap, tests, packages) paid
    them. The kept connections close when the block ends; reboot() drops the instance's first."""
    kept: dict[tuple, NoDelayConnection] = {}
    token = _kept.set(kept)
    try:
        yield
    finally:
        _kept.reset(token)
        for conn in kept.values():
            conn.keep = False
            conn.close()


def wait_for_ssh(instance: Instance, data_dir: Path, timeout: float) -> Connection:
    """Poll until SSH to `instance` opens and runs `true`; return the open connection (a kept one,
    if it still answers, inside kept_connections)."""
    kept, key = _kept.get(), _kept_key(instance, data_dir)
    if kept is not None and key in kept:
        conn = kept.pop(key)
        if _answers(conn):
            kept[key] = conn
            return conn
        conn.keep = False
        conn.close()
    conn = _open(instance, data_dir, timeout)
    if kept is not None:
        conn.keep = True
        kept[key] = conn
    return conn


def command_line(argv: Sequence[str], *, sudo: bool = False, env: Mapping[str, str] | None = None) -> str:
    """A shell line from an argv list: every element quoted; env as `env K=V`, sudo as `sudo -n`."""
    if not argv:
        raise ValueError("empty command")
    parts: list[str] = []
    if sudo:
        parts += ["sudo", "-n", "-H"]
    if env:
        parts += ["env"] + [f"{k}={v}" for k, v in env.items()]
    parts += list(argv)
    return shlex.join(parts)


def run(conn: Connection, argv: Sequence[str], *, sudo: bool = False, env: Mapping[str, str] | None = None,
        hide: bool | str = False, warn: bool = False, timeout: float | None = None, pty: bool = False):
    """Run argv on the connection; returns Fabric's Result. Non-zero exit raises SSHError unless warn."""
    line = command_line(argv, sudo=sudo and conn.user != "root", env=env)
    try:
        return conn.run(line, hide=hide, warn=warn, timeout=timeout, pty=pty, in_stream=False)
    except UnexpectedExit as exc:
        raise SSHError(f"command {argv[0]!r} on {conn.host} exited {exc.result.exited}") from None
    except RETRYABLE as exc:
        raise SSHError(f"SSH to {conn.host}:{conn.port} failed: {exc}") from None


def upload(conn: Connection, files: Iterable[tuple[Path, str]], mode: int = 0o700) -> None:
    """Copy local files to remote paths over SFTP (the remote folders must exist)."""
    try:
        sftp = conn.sftp()
        for local, remote in files:
            sftp.put(str(local), remote)
            sftp.chmod(remote, mode)
    except (OSError, *RETRYABLE) as exc:
        raise SSHError(f"upload to {conn.host} failed: {exc}") from None


def boot_id(conn: Connection) -> str:
    return conn.run("cat /proc/sys/kernel/random/boot_id", hide=True, in_stream=False).stdout.strip()


def reboot(instance: Instance, data_dir: Path, timeout: float) -> Instance:
    """Reboot over SSH and wait until SSH answers from a new boot (a different boot_id)."""
    conn = wait_for_ssh(instance, data_dir, timeout)
    before = boot_id(conn)
    try:
        run(conn, ["systemctl", "reboot"], sudo=True, warn=True, hide=True, timeout=30)
    except SSHError:
        pass  # the connection may drop while the command returns
    finally:
        conn.close()
        _drop_kept(instance, data_dir)  # the old boot's connection is no way to see the new one
    def probe():
        try:
            new = wait_for_ssh(instance, data_dir, timeout=15)
        except Exception as exc:  # the machine is going down or not back yet
            return Pending(str(exc))
        try:
            current = boot_id(new)
        finally:
            new.close()
        return current if current != before else Pending("old boot still answering")

    wait_for(probe, f"{instance.address} to come back from a reboot", timeout, first_delay=1.0)
    return instance


def _open(instance: Instance, data_dir: Path, timeout: float) -> Connection:
    def probe():
        conn = connection(instance, data_dir)
        try:
            conn.open()
            conn.run("true", hide=True, in_stream=False)
            return conn
        except paramiko.BadHostKeyException as exc:
            conn.close()
            raise SSHError(f"host key of {instance.address} changed since first contact "
                           f"({exc.key.get_name()}); refusing to connect") from None
        except (paramiko.AuthenticationException, *RETRYABLE) as exc:
            conn.close()
            return Pending(f"{type(exc).__name__}: {exc}".strip())

    return wait_for(probe, f"SSH on {instance.user}@{instance.address}:{instance.port}", timeout,
                    first_delay=0.1, max_delay=2.0)


def _kept_key(instance: Instance, data_dir: Path) -> tuple:
    return (instance.cloud, instance.id, instance.address, instance.port, instance.user, instance.key_file,
            instance.jump_host, instance.proxy_command, str(data_dir))


def _answers(conn: Connection, timeout: float = 5) -> bool:
    """Whether an open connection still runs a command (`true`) within `timeout` seconds."""
    transport = conn.client.get_transport()
    if transport is None or not transport.is_active():
        return False
    try:
        channel = transport.open_session(timeout=timeout)
        try:
            channel.exec_command("true")
            return channel.status_event.wait(timeout) and channel.exit_status == 0
        finally:
            channel.close()
    except (paramiko.SSHException, OSError, EOFError):
        return False


def _drop_kept(instance: Instance, data_dir: Path) -> None:
    kept = _kept.get()
    conn = kept.pop(_kept_key(instance, data_dir), None) if kept is not None else None
    if conn is not None:
        conn.keep = False
        conn.close()
