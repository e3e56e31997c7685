"""Servers the tests run as processes of their own on 127.0.0.1 (the private sshd of the log-publishing
tests, ZooKeeper): a free port, and the wait until the process answers on it, which fails with the
end of the server's log the moment the process exits instead of waiting out the deadline."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any, Callable

from cislaves.waiting import wait_for


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (bound, then released: until something listens
    on it, connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_port(port: int = 0) -> socket.socket | None:
    """A socket bound to 127.0.0.1:`port` (0: a free one) that never listens, or None if the port cannot
    be bound now. While it is open, connections to the port are refused and no other connect() or bind()
    on the machine takes the port (free_port's gap, and a restart's), yet a server that sets SO_REUSEADDR
    on its listening socket (sshd, ZooKeeper) binds and listens on it: close it once the server answers."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def wait_answering(proc: subprocess.Popen, log: Path, answers: Callable[[], Any], what: str, timeout: float,
                   **options) -> Any:
    """wait_for(answers, what, timeout, **options), raising RuntimeError with the log's last 2000
    characters if `proc` exits first."""
    def probe():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what}: the server exited with {proc.returncode}: {tail}")
        return answers()
    return wait_for(probe, what, timeout, **options)
