"""Settings of the static cloud: `clouds.static` in the config file.

    clouds:
      static:
        hosts:
          - {name: array1, ssh_host: 192.0.2.10, ssh_port: 22, ssh_user: jenkins,
             ssh_private_key_file: keys/array1, labels: [fc-array]}

A host's ssh_* keys override the same keys at clouds.static (the shared SSH block, SSHSettings), so a
pool of alike hosts can name its user and key once. Relative paths resolve against the config file's
folder. Keys of the shared block that mean nothing for a machine that is already there (ssh_host and
ssh_interface at the cloud level, ssh_key_pair) are refused by name rather than silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from cislaves.clouds.ssh import BASTION, SSHSettings
from cislaves.config import Strict

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # a host's name is its instance id (file names, `instance=`)
SHARED = ("ssh_port", "ssh_user", "ssh_private_key_file", "ssh_bastion", "ssh_proxy_command")
REFUSED = {
    "ssh_host": "set it per host (clouds.static.hosts[].ssh_host)",
    "ssh_interface": "a static host has one address, its ssh_host",
    "ssh_key_pair": "static hosts have no cloud key pairs; use ssh_private_key_file",
}


def config_relative(value: Path | None, info: ValidationInfo) -> Path | None:
    """A path from the config file, relative to the file's folder (as cislaves.config.Config.relative)."""
    config = (info.context or {}).get("config")
    if value is None:
        return None
    return config.relative(value) if config is not None else Path(value).expanduser()


class Host(Strict):
    """One existing machine. Unset ssh_* keys come from clouds.static (then the defaults)."""

    name: str = Field(pattern=NAME)
    ssh_host: str = Field(min_length=1)
    ssh_port: int | None = Field(None, ge=1, le=65535)
    ssh_user: str | None = None
    ssh_private_key_file: Path | None = None
    ssh_bastion: str | None = Field(None, pattern=BASTION)
    ssh_proxy_command: str | None = None
    labels: list[str] = Field(default_factory=list)  # what jobs ask for (`fab up:cloud=static,image=LABEL`)

    _key = field_validator("ssh_private_key_file")(config_relative)


class Settings(SSHSettings):
    """clouds.static: the hosts, where their leases live, and the defaults of their SSH settings.
    Honoured from the shared block: ssh_user, ssh_port, ssh_private_key_file, ssh_bastion,
    ssh_proxy_command (defaults for every host) and ssh_timeout (how long `up` waits for a host's
    sshd); the launch, image and destroy timeouts are accepted and unused (nothing boots or is imaged)."""

    hosts: list[Host] = Field(default_factory=list)
    lease_dir: Path | None = None  # default <data_dir>/static/leases; data dirs sharing hosts share it

    _paths = field_validator("ssh_private_key_file", "lease_dir")(config_relative)

    @field_validator(*REFUSED)
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(f"not used by the static cloud: {REFUSED[info.field_name]}")
        return value

    @model_validator(mode="after")
    def _hosts(self) -> "Settings":
        seen: set[str] = set()
        for index, host in enumerate(self.hosts):
            if host.name in seen:
                raise ValueError(f"hosts[{index}].name: {host.name!r} is used by another host")
            seen.add(host.name)
            if host.ssh_private_key_file is None and self.ssh_private_key_file is None:
                raise ValueError(f"hosts[{index}] ({host.name}): no ssh_private_key_file (set it on the "
                                 "host, or once at clouds.static)")
        return self

    def ssh_for(self, host: Host) -> SSHSettings:
        """The host's own SSH settings: its keys over the cloud-level ones."""
        values = {key: getattr(self, key) for key in SSHSettings.model_fields}
        values.update({key: getattr(host, key) for key in SHARED if getattr(host, key) is not None})
        values["ssh_host"] = host.ssh_host
        return SSHSettings.model_validate(values)
