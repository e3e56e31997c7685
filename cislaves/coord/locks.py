"""Cross-host locks: kazoo's Lock recipe under <root>/locks-named/<name> (e.g. the rebake's)."""
from __future__ import annotations

import contextlib
import os
import socket

from cislaves.coord.settings import connect, zookeeper_settings
from cislaves.errors import Locked


@contextlib.contextmanager
def held(config, name: str):
    """Hold the lock `name` for the block; another holder anywhere: Locked (exit 75) at once."""
    settings = zookeeper_settings(config)
    zk = connect(settings)
    try:
        lock = zk.Lock(f"{settings.root}/locks-named/{name}", f"{socket.gethostname()} pid {os.getpid()}")
        if not lock.acquire(blocking=False):
            holders = ", ".join(lock.contenders()) or "another process"
            raise Locked(f"another {name} is running ({holders}; ZooKeeper lock {settings.root}/locks-named/"
                         f"{name}); this one exits")
        try:
            yield
        finally:
            lock.release()
    finally:
        zk.stop()
        zk.close()
