"""SSH to Gerrit with paramiko: `gerrit stream-events`, `gerrit query`, `gerrit review`.

The host key is checked against known_hosts; an unknown key is refused with a message saying how to
add it, unless `gerrit.accept_first_host_key` pins the first one seen (written to known_hosts). A
changed key is always refused. `EventStream.run` follows the stream and reconnects after any network
failure with exponential backoff capped at `backoff_max` (jitter in the upper half); lines are read in
large chunks (Fabric's `run` reads in small ones and manages a few thousand events per second).

Gerrit sends nothing on an idle stream, and SSH keepalives need no answer, so a stalled or half-open
connection looks exactly like a quiet one. After `idle_probe` seconds of silence the reader runs
`gerrit version` on the same connection; no answer within `probe_timeout` seconds means the stream is
stalled: it is closed, logged and reconnected (and the reconnect catches up).
Commands are built from argv lists, each word quoted with shlex.quote, so text from config or Gerrit
is never interpreted.
"""
from __future__ import annotations

import json
import logging
import random
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import paramiko

from cislaves.ci import events as ev
from cislaves.ci.settings import GerritSettings
from cislaves.errors import GerritError

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # most bytes taken from the channel at once (its buffer holds at most WINDOW)
WINDOW = 1 << 22  # SSH channel window (4 MiB) and largest packet we accept (256 KiB): a fast stream
PACKET = 1 << 18  # neither stalls on window adjustments nor pays per-packet costs too often


class Fatal(GerritError):
    """A failure retrying cannot fix (host key, authentication): the listener stops with this message."""


class Gerrit:
    """One SSH connection to Gerrit (connect lazily, close to interrupt a running stream)."""

    def __init__(self, settings: GerritSettings):
        self.settings = settings
        self.where = f"gerrit {settings.user}@{settings.host}:{settings.port}"
        self.client: paramiko.SSHClient | None = None

    def connect(self) -> paramiko.SSHClient:
        """Open the connection (Fatal for host key/authentication problems, GerritError otherwise)."""
        s = self.settings
        client = paramiko.SSHClient()
        known = Path(s.known_hosts).expanduser()
        if known.is_file():
            try:
                client.load_host_keys(str(known))
            except (OSError, paramiko.SSHException) as exc:
                raise Fatal(f"{self.where}: cannot read known_hosts {known}: {exc}") from None
        client.set_missing_host_key_policy(_PinFirst(known) if s.accept_first_host_key else _Refuse(known, s))
        try:
            client.connect(s.host, port=s.port, username=s.user,
                           key_filename=str(s.key_file) if s.key_file else None,
                           timeout=s.connect_timeout, banner_timeout=s.connect_timeout,
                           auth_timeout=s.connect_timeout, allow_agent=s.key_file is None,
                           look_for_keys=s.key_file is None)
        except Exception as exc:
            client.close()
            raise self._connect_error(exc, known) from None
        transport = client.get_transport()
        transport.set_keepalive(int(max(1, s.keepalive)))
        try:  # window adjustments must not wait for Nagle's algorithm
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.client = client
        return client

    def _connect_error(self, exc: Exception, known: Path) -> Exception:
        """The error to raise for a failed connect: Fatal when retrying cannot help."""
        if isinstance(exc, Fatal):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            return Fatal(f"{self.where}: host key changed ({exc.key.get_name()} {exc.key.fingerprint}, "
                         f"expected {exc.expected_key.fingerprint} from {known}); refusing to connect")
        if isinstance(exc, paramiko.AuthenticationException):
            return Fatal(f"{self.where}: authentication failed ({exc}); check gerrit.user and gerrit.key_file")
        if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
            return GerritError(f"{self.where}: cannot connect: {exc or type(exc).__name__}")
        return exc

    def close(self) -> None:
        """Close the connection (a blocked stream read returns at once)."""
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def exec(self, argv: list[str]) -> paramiko.Channel:
        """Start a command (argv words quoted for Gerrit's command-line parser); return its channel."""
        client = self.client or self.connect()
        command = " ".join(shlex.quote(str(word)) for word in argv)
        try:
            channel = client.get_transport().open_session(window_size=WINDOW, max_packet_size=PACKET,
                                                          timeout=self.settings.connect_timeout)
            channel.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException, AttributeError) as exc:
            raise GerritError(f"{self.where}: cannot run {argv[:2]}: {exc or type(exc).__name__}") from None
        return channel

    def run(self, argv: list[str]) -> bytes:
        """Run a command to completion; return its output (GerritError on a non-zero exit)."""
        channel = self.exec(argv)
        s = self.settings  # a connection that stalls mid-command is given up within the stall bound
        channel.settimeout(max(s.connect_timeout, s.idle_probe + s.probe_timeout))
        out, err = bytearray(), bytearray()
        try:
            while True:
                chunk = channel.recv(CHUNK)
                if not chunk:
                    break
                out += chunk
            while channel.recv_stderr_ready() or not channel.exit_status_ready():
                chunk = channel.recv_stderr(CHUNK)
                if not chunk:
                    break
                err += chunk
            status = channel.recv_exit_status()
        except (OSError, socket.timeout, paramiko.SSHException) as exc:
            raise GerritError(f"{self.where}: {argv[:2]} failed: {exc or type(exc).__name__}") from None
        finally:
            channel.close()
        if status != 0:
            detail = err.decode(errors="replace").strip().splitlines()[:1] or [f"exit status {status}"]
            raise GerritError(f"{self.where}: {' '.join(argv[:2])} failed: {detail[0]}")
        return bytes(out)

    def query(self, query: str, *options: str) -> list[dict]:
        """`gerrit query --format=JSON OPTIONS QUERY`: the change records of one page (see query_page)."""
        changes, more = self.query_page(query, *options)
        if more:
            log.warning("%s: gerrit query returned more changes than the limit; some were not read", self.where)
        return changes

    def query_page(self, query: str, *options: str) -> tuple[list[dict], bool]:
        """One page of `gerrit query --format=JSON OPTIONS QUERY`: (change records, moreChanges)."""
        out = self.run(["gerrit", "query", "--format=JSON", *options, query])
        changes, more = [], False
        for number, line in enumerate(out.splitlines(), 1):
            try:
                record = ev.decode_line(line, len(line))
            except ev.BadEvent as exc:
                log.warning("%s: gerrit query line %d skipped: %s", self.where, number, exc)
                continue
            if isinstance(record, dict) and record.get("type") != "stats":
                changes.append(record)
            elif isinstance(record, dict):
                more = record.get("moreChanges") in (True, "true")
        return changes, more

    def probe(self, timeout: float) -> None:
        """Run `gerrit version` on this connection; GerritError unless an answer (any exit status)
        arrives within `timeout` seconds. Unlike a keepalive, it needs the server to reply."""
        transport = self.client.get_transport() if self.client is not None else None
        if transport is None or not transport.is_active():
            raise GerritError(f"{self.where}: connection closed")
        deadline = time.monotonic() + timeout
        late = GerritError(f"{self.where}: no answer to `gerrit version` within {timeout:g}s")
        try:
            channel = transport.open_session(timeout=timeout)
        except (OSError, EOFError, paramiko.SSHException):
            raise late from None
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), channel.close)  # unblocks exec_command
        timer.daemon = True
        timer.start()
        try:
            channel.settimeout(max(0.001, deadline - time.monotonic()))
            channel.exec_command("gerrit version")
            while channel.recv(4096):
                pass
            channel.recv_exit_status()
        except (OSError, EOFError, socket.timeout, paramiko.SSHException):
            raise late from None
        finally:
            timer.cancel()
            channel.close()
        if time.monotonic() > deadline:
            raise late

    def review(self, change: int, patchset: int, message: str | None = None,
               labels: dict[str, int] | None = None, tag: str | None = None, project: str | None = None) -> None:
        """`gerrit review`: post a message and votes on CHANGE,PATCHSET (for the job runner)."""
        argv = ["gerrit", "review"]
        if project:
            argv += ["--project", project]
        if message is not None:
            argv += ["--message", message]  # exec() quotes every word once for Gerrit's own parser
        for label, value in (labels or {}).items():
            argv += ["--label", f"{label}={value:+d}" if value else f"{label}=0"]
        if tag:
            argv += ["--tag", tag]
        argv.append(f"{int(change)},{int(patchset)}")
        self.run(argv)


class EventStream:
    """Follow `gerrit stream-events`, reconnecting with backoff until `stop` is set."""

    def __init__(self, settings: GerritSettings, on_lines: Callable[[list[bytes]], None],
                 on_connect: Callable[[Gerrit, bool], None] | None = None,
                 on_bad_line: Callable[[str], None] | None = None, rng: random.Random | None = None):
        self.settings = settings
        self.on_lines = on_lines
        self.on_connect = on_connect
        self.on_bad_line = on_bad_line or (lambda reason: None)
        self.rng = rng or random.Random()
        self.stop = threading.Event()
        self.gerrit: Gerrit | None = None
        self.connections = 0
        self.failures = 0  # failed connection attempts in a row (the backoff grows with them)
        self.stalls = 0  # streams found stalled by the probe
        self.down_since: float | None = time.time()  # when the stream stopped flowing (None: streaming)

    def run(self) -> None:
        """Read events until stopped; raise Fatal for problems that retrying cannot fix."""
        self.failures = 0
        while not self.stop.is_set():
            gerrit = self.gerrit = Gerrit(self.settings)
            got_lines = False
            try:
                gerrit.connect()
                if self.stop.is_set():
                    break
                channel = gerrit.exec(["gerrit", "stream-events"])
                self.connections += 1
                self.down_since = None
                log.info("%s: streaming events (connection %d)", gerrit.where, self.connections)
                if self.on_connect is not None:
                    self.on_connect(gerrit, self.connections > 1)
                got_lines = self._read(channel)
                if not self.stop.is_set():
                    log.warning("%s: event stream ended; reconnecting", gerrit.where)
            except Fatal:
                raise
            except GerritError as exc:
                if not self.stop.is_set():
                    log.warning("%s", exc)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if not self.stop.is_set():
                    log.warning("%s: connection lost: %s", gerrit.where, exc or type(exc).__name__)
            except Exception as exc:  # a surprise from the SSH layer: reconnect, never stop reading
                if not self.stop.is_set():
                    log.warning("%s: connection lost: %s: %s", gerrit.where, type(exc).__name__, exc)
            finally:
                gerrit.close()
                if self.down_since is None:
                    self.down_since = time.time()
            self.failures = 0 if got_lines else self.failures + 1
            self.stop.wait(self.backoff(self.failures))

    def close(self) -> None:
        """Stop following the stream; a blocked read returns at once."""
        self.stop.set()
        if self.gerrit is not None:
            self.gerrit.close()

    def backoff(self, failures: int) -> float:
        """Seconds to wait before reconnecting: between half and all of first * 2**failures, never more
        than backoff_max (so a server that is back is reached within backoff_max plus a connect)."""
        ceiling = min(self.settings.backoff_max, self.settings.backoff_first * (2 ** min(failures, 30)))
        return self.rng.uniform(ceiling / 2, ceiling) if failures else self.rng.uniform(0, ceiling / 2)

    def _read(self, channel: paramiko.Channel) -> bool:
        """Pass the complete lines of each chunk to on_lines; skip (and report) lines over the limit."""
        limit = self.settings.max_line_bytes
        s = self.settings
        channel.settimeout(s.idle_probe)
        pending = b""
        skipping = False
        got = False
        while not self.stop.is_set():
            try:
                chunk = channel.recv(CHUNK)
            except socket.timeout:
                transport = channel.get_transport()
                if transport is None or not transport.is_active() or self.stop.is_set():
                    return got
                try:
                    self.gerrit.probe(s.probe_timeout)
                except GerritError as exc:
                    if self.stop.is_set():
                        return got
                    self.stalls += 1
                    raise GerritError(f"stream silent for {s.idle_probe:g}s and {exc}: stalled; "
                                      f"reconnecting") from None
                continue
            if not chunk:
                return got
            got = True
            lines = chunk.split(b"\n")
            if pending:
                lines[0] = pending + lines[0]
            pending = lines.pop()
            if skipping and lines:
                lines.pop(0)  # the tail of an over-long line
                skipping = False
            good = lines
            if lines and (max(map(len, lines)) > limit or b"" in lines):  # rare: look at each line
                good = []
                for line in lines:
                    if len(line) > limit:
                        self.on_bad_line(f"line of {len(line)} bytes is longer than the limit of {limit}")
                    elif line:
                        good.append(line)
            if good:
                self.on_lines(good)
            if len(pending) > limit and not skipping:
                self.on_bad_line(f"line longer than the limit of {limit} bytes")
                skipping = True
            if skipping:
                pending = b""
        return got


class _Refuse(paramiko.MissingHostKeyPolicy):
    def __init__(self, known: Path, settings: GerritSettings):
        self.known, self.settings = known, settings

    def missing_host_key(self, client, hostname, key):
        raise Fatal(f"gerrit {hostname}: unknown host key {key.get_name()} {key.fingerprint}, not in "
                    f"{self.known}; check it and add it (ssh-keyscan -p {self.settings.port} "
                    f"{self.settings.host} >> {self.known}) or set gerrit.accept_first_host_key: true")


class _PinFirst(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key once and append it to known_hosts, so later runs check it."""

    def __init__(self, known: Path):
        self.known = known

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        try:
            self.known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.known.open("a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        except OSError as exc:
            raise Fatal(f"gerrit {hostname}: cannot pin host key into {self.known}: {exc.strerror}") from None
        log.warning("gerrit %s: pinned first-seen host key %s %s into %s", hostname, key.get_name(),
                    key.fingerprint, self.known)
