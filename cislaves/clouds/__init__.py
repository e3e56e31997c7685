"""Lazy registry of cloud drivers: a driver's SDK is imported only when that cloud is used."""
from __future__ import annotations

import importlib
import importlib.util
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

# name -> the pip extra that installs its SDK (pyproject.toml) and the top-level modules it brings;
# local and static need none. Drivers import their SDK lazily, so the registry checks it up front.
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ec2": ("ec2", ("boto3", "botocore")),
    "openstack": ("openstack", ("keystoneauth1", "novaclient", "openstack", "requests")),
    "rackspace": ("openstack", ("keystoneauth1", "novaclient", "openstack", "requests")),
    "gce": ("gce", ("googleapiclient", "google.auth", "google_auth_httplib2", "httplib2")),
}


def names() -> list[str]:
    return sorted(DRIVERS)


def check_name(name: str, where: str = "argument 'cloud'") -> str:
    if name not in DRIVERS:
        raise ConfigError(f"{where}: unknown cloud {name!r}; expected one of: {', '.join(names())}")
    return name


def driver_class(name: str):
    """The driver's class; a missing SDK is a ConfigError naming the extra that installs it."""
    module, cls = DRIVERS[check_name(name)]
    extra, sdk = EXTRAS.get(name, ("", ()))
    for needed in sdk:
        if _missing(needed):
            raise ConfigError(f"cloud {name!r} needs the Python package {needed!r}: "
                              f"pip install 'cislaves[{extra}]'")
    return getattr(importlib.import_module(module), cls)


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:  # a parent package (google of google.auth) is missing
        return True


def get(name: str, config) -> Any:
    """An instance of the driver for `name`, configured from `config` (cislaves.config.Config)."""
    cls = driver_class(name)
    return cls(settings(name, config), Path(config.data_dir), name=name)


def settings(name: str, config) -> Any:
    """The cloud's validated section (a bad key is a ConfigError), without making the driver: a
    command checks it before its first side effect."""
    cls = driver_class(name)
    return config.cloud_settings(name, getattr(cls, "Settings", None), getattr(cls, "ENV", {}))
