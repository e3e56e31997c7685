"""The `zookeeper:` section and `ci.backend`, and one connected kazoo client per process."""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from cislaves.config import Strict
from cislaves.errors import ConfigError

log = logging.getLogger(__name__)


class TLS(Strict):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class ZooKeeperSettings(Strict):
    hosts: str = Field(pattern=r"^[A-Za-z0-9_.:\[\]-]+(,[A-Za-z0-9_.:\[\]-]+)*(/[A-Za-z0-9_./-]*)?$")
    root: str = Field("/cislaves", pattern=r"^(/[A-Za-z0-9_.-]+)+$")
    session_timeout: float = Field(10, gt=0, le=600)
    tls: TLS | None = None


def zookeeper_settings(config) -> ZooKeeperSettings | None:
    """The validated section, None without one (then nothing uses ZooKeeper)."""
    if not config.raw.get("zookeeper"):
        return None
    settings = config.section("zookeeper", ZooKeeperSettings)
    if settings.tls:
        for key in ("ca", "cert", "key"):
            value = getattr(settings.tls, key)
            if value is not None:
                value = config.relative(value)
                if not value.is_file():
                    raise ConfigError(f"{config.where}: zookeeper.tls.{key}: {value} is not a readable file")
                setattr(settings.tls, key, value)
    return settings


def connect(settings: ZooKeeperSettings, timeout: float = 30.0):
    """A started KazooClient (kazoo is the `[zookeeper]` extra); a ZooKeeper that does not answer
    within `timeout` is one line naming the hosts."""
    try:
        from kazoo.client import KazooClient
        from kazoo.handlers.threading import KazooTimeoutError
    except ImportError:
        raise ConfigError("zookeeper: the kazoo package is missing; install cislaves[zookeeper]") from None
    tls = settings.tls
    extra = {}
    if tls and (tls.ca or tls.cert):
        extra = {"use_ssl": True, "ca": str(tls.ca) if tls.ca else None,
                 "certfile": str(tls.cert) if tls.cert else None, "keyfile": str(tls.key) if tls.key else None}
    client = KazooClient(hosts=settings.hosts, timeout=settings.session_timeout,
                         connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 1.0}, **extra)
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        client.close()
        raise ConfigError(f"zookeeper.hosts: no ZooKeeper answered at {settings.hosts} "
                          f"within {timeout:.0f} s") from None
    client.ensure_path(settings.root)
    return client
