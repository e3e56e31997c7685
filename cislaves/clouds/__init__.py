"""Lazy registry of cloud drivers: a driver's SDK is imported only when that cloud is used."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cislaves.errors import ConfigError

# name -> (module, class). rackspace is a subclass of the OpenStack driver.
DRIVERS: dict[str, tuple[str, str]] = {
    "local": ("cislaves.clouds.local", "LocalCloud"),
    "ec2": ("cislaves.clouds.ec2", "EC2Cloud"),
    "openstack": ("cislaves.clouds.openstack", "OpenStackCloud"),
    "rackspace": ("cislaves.clouds.openstack", "RackspaceCloud"),
    "gce": ("cislaves.clouds.gce", "GCECloud"),
    "static": ("cislaves.clouds.static", "StaticCloud"),
}

# name -> the pip extra that installs its SDK (pyproject.toml); local and static need none.
EXTRAS: dict[str, str] = {"ec2": "ec2", "openstack": "openstack", "rackspace": "openstack", "gce": "gce"}


def names() -> list[str]:
    return sorted(DRIVERS)


def check_name(name: str, where: str = "argument 'cloud'") -> str:
    if name not in DRIVERS:
        raise ConfigError(f"{where}: unknown cloud {name!r}; expected one of: {', '.join(names())}")
    return name


def driver_class(name: str):
    module, cls = DRIVERS[check_name(name)]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] == "cislaves" or name not in EXTRAS:
            raise  # our own module missing is a bug, not an extra to install
        raise ConfigError(f"cloud {name!r} needs the Python package {exc.name.split('.')[0]!r}: "
                          f"pip install 'cislaves[{EXTRAS[name]}]'") from None


def get(name: str, config) -> Any:
    """An instance of the driver for `name`, configured from `config` (cislaves.config.Config)."""
    cls = driver_class(name)
    settings = config.cloud_settings(name, getattr(cls, "Settings", None), getattr(cls, "ENV", {}))
    return cls(settings, Path(config.data_dir), name=name)
