"""The one SSH and key settings block every cloud accepts (Packer's communicator settings are the model).

A driver's settings model inherits `SSHSettings`; the driver then calls `login_key` once per launch
(an existing key pair, or a temporary one made for the run and removed with it) and `apply_ssh` to
fill an Instance's SSH fields from the settings and the addresses the cloud reported.

Old names (per cloud: key_pair, key_filename, ssh_username, username...) are accepted with a one-line
deprecation warning: a model lists them in DEPRECATED, and the config loader renames them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from cislaves.config import Strict
from cislaves.errors import CloudError, ConfigError
from cislaves.keys import generate_keypair, public_key_of
from cislaves.records import Instance

BASTION = r"^([^@\s]+@)?[^@:\s]+(:\d+)?$"


class SSHSettings(Strict):
    """clouds.<name>.ssh_* and the common timeouts; the same names on every cloud."""

    DEPRECATED: ClassVar[dict[str, str]] = {}  # old key -> new key, renamed with a warning

    ssh_user: str | None = None  # login user (default: the distribution's user on this cloud)
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_host: str | None = None  # connect here instead of the instance's address (tunnels, NAT, tests)
    ssh_interface: str | None = None  # which address: public or private (where the cloud has both)
    ssh_bastion: str | None = Field(None, pattern=BASTION)  # user@host:port, like ssh -J
    ssh_proxy_command: str | None = None  # an OpenSSH ProxyCommand (wins over ssh_bastion)
    ssh_timeout: float = Field(300, gt=0)  # how long to wait for SSH after boot
    ssh_key_pair: str | None = None  # an existing key pair of the cloud ...
    ssh_private_key_file: Path | None = None  # ... and its private key; neither: a temporary key pair
    launch_timeout: float = Field(900, gt=0)
    image_timeout: float = Field(3600, gt=0)
    destroy_timeout: float = Field(600, gt=0)

    @field_validator("ssh_private_key_file")
    @classmethod
    def _relative_to_the_config_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return relative_to_config(value, info)


def relative_to_config(value: Path | None, info: ValidationInfo) -> Path | None:
    """For a path field's validator: a relative path in the file means the file's folder (an
    environment variable's: the current directory, as a shell user expects)."""
    context = info.context or {}
    config = context.get("config")
    if value is None or config is None or info.field_name in context.get("from_env", ()):
        return value
    return config.relative(value)


@dataclass
class LoginKey:
    """The key a run logs in with."""

    private_key_file: Path
    public_key: str  # OpenSSH public key line
    key_pair: str | None  # the cloud's key pair name (an existing one, or the temporary one to create)
    temporary: bool  # made for this run: the driver creates it on the cloud and removes it with the instance


def login_key(settings: SSHSettings, key_dir: Path, name: str, *, cloud: str) -> LoginKey:
    """The configured key (ssh_private_key_file, with ssh_key_pair where the cloud names key pairs), or a
    new ed25519 key in key_dir whose cloud key pair, if any, is to be called `name`."""
    if settings.ssh_private_key_file:
        path = Path(settings.ssh_private_key_file).expanduser()
        try:
            public = public_key_of(path)
        except FileNotFoundError:
            raise ConfigError(f"clouds.{cloud}.ssh_private_key_file: {path} does not exist") from None
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(f"clouds.{cloud}.ssh_private_key_file: {path} is not a readable "
                              f"unencrypted private key ({type(exc).__name__})") from None
        return LoginKey(path, public, settings.ssh_key_pair, temporary=False)
    if settings.ssh_key_pair:
        raise ConfigError(f"clouds.{cloud}.ssh_key_pair {settings.ssh_key_pair!r} needs "
                          f"ssh_private_key_file (the private key of that key pair)")
    path = Path(key_dir) / "id_ed25519"
    public = generate_keypair(path, comment=name)
    return LoginKey(path, public, name, temporary=True)


def apply_ssh(instance: Instance, settings: SSHSettings, addresses: dict[str, str | None], *,
              default_interface: str, default_user: str) -> Instance:
    """Fill the instance's address, port, user, bastion and proxy from the settings.

    `addresses` maps the interfaces the cloud offers ("public", "private", ...) to the address it
    reported (None when the instance has none there). ssh_host overrides them all.
    """
    interface = settings.ssh_interface or default_interface
    if settings.ssh_interface and settings.ssh_interface not in addresses:
        raise ConfigError(f"clouds.{instance.cloud}.ssh_interface: {settings.ssh_interface!r} is not one "
                          f"of {', '.join(sorted(addresses))}")
    instance.address = settings.ssh_host or addresses.get(interface)
    instance.port = settings.ssh_port
    instance.user = settings.ssh_user or default_user
    instance.proxy_command = (expand_proxy(settings.ssh_proxy_command, instance.address or "", instance.port)
                              if settings.ssh_proxy_command else None)
    instance.jump_host = settings.ssh_bastion
    if not settings.ssh_host:
        if not instance.address:
            others = [k for k, v in sorted(addresses.items()) if v]
            hint = f"; it has: {', '.join(others)} (set ssh_interface)" if others else ""
            raise CloudError(f"{instance.cloud}: instance {instance.id} has no {interface} address to "
                             f"connect to{hint}", cloud=instance.cloud, operation="launch", code="NoAddress")
    return instance


def expand_proxy(command: str, host: str, port: int) -> str:
    """OpenSSH's %h, %p and %% in a ProxyCommand (paramiko does not expand them)."""
    return re.sub(r"%[hp%]", lambda m: {"%h": host, "%p": str(port), "%%": "%"}[m.group(0)], command)


def ssh_timeout(cloud, config) -> float:
    """How long to wait for SSH on this cloud: its ssh_timeout (which defaults to timeouts.ssh)."""
    return getattr(getattr(cloud, "settings", None), "ssh_timeout", None) or config.timeouts.ssh
