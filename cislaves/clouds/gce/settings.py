"""clouds.gce: the GCE settings, on top of the SSH and timeout block every cloud shares (clouds/ssh.py).

Old names keep working with a one-line deprecation warning: username -> ssh_user, private_key_file ->
ssh_private_key_file, public_key_file -> ssh_public_key_file, operation_timeout -> launch_timeout.
The seed's variables OS_USERNAME, GCE_PRIVATE_KEY_FILENAME and GCE_PUBLIC_KEY_FILENAME set the new
fields (see GCECloud.ENV).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from cislaves.clouds.ssh import SSHSettings, relative_to_config

USER = r"^[a-z_][a-z0-9_-]{0,31}$"  # a Linux login the guest agent will create from ssh-keys


class GCESettings(SSHSettings):
    """clouds.gce in the configuration file; environment variables in GCECloud.ENV override it."""

    DEPRECATED: ClassVar[dict[str, str]] = {
        "username": "ssh_user", "private_key_file": "ssh_private_key_file",
        "public_key_file": "ssh_public_key_file", "operation_timeout": "launch_timeout"}

    project: str | None = Field(None, pattern=r"^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    zone: str = Field("us-central1-a", pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    machine_type: str = Field("e2-standard-2", pattern=r"^[a-z][-a-z0-9]{0,62}$")
    credentials_file: Path | None = None  # a service account JSON key; None: application default
    api_endpoint: str | None = Field(None, pattern=r"^https?://")  # base URL ending in /compute/v1/
    ssh_user: str | None = Field(None, pattern=USER)  # written into ssh-keys (default: cislaves)
    ssh_public_key_file: Path | None = None  # GCE only; default: derived from ssh_private_key_file
    image: str | None = None  # explicit base image: NAME, projects/P/global/images/NAME or .../family/F
    image_family: str = "cislaves-{distribution}"  # family of the baked images
    network: str = "global/networks/default"
    subnetwork: str | None = None
    external_ip: bool = True  # an ephemeral public address; ssh_interface defaults to public with it
    disk_size_gb: int | None = Field(None, ge=10, le=65536)  # default: the image's size
    disk_type: str = Field("pd-balanced", pattern=r"^[a-z][-a-z0-9]{0,62}$")
    poll_max_delay: float = Field(5, gt=0)
    request_timeout: float = Field(60, gt=0)
    api_retries: int = Field(6, ge=0, le=20)  # every request: calls, operation polls, list pages
    api_retry_delay: float = Field(1.0, gt=0, le=60)  # first backoff (doubled per retry, at most 32 s)

    @field_validator("credentials_file", "ssh_public_key_file")
    @classmethod
    def _relative_to_the_config_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return relative_to_config(value, info)

    @field_validator("image_family")
    @classmethod
    def _family_template(cls, value: str) -> str:
        try:
            value.format(distribution="debian12")
        except (KeyError, IndexError, ValueError):
            raise ValueError("expected a family name; the only placeholder is {distribution}") from None
        return value

    @field_validator("ssh_interface")
    @classmethod
    def _interface(cls, value: str | None) -> str | None:
        if value not in (None, "public", "private"):
            raise ValueError("expected public (the external IP) or private (the internal IP)")
        return value

    @model_validator(mode="after")
    def _ssh_keys(self) -> "GCESettings":
        if self.ssh_key_pair:
            raise ValueError("ssh_key_pair: GCE has no named key pairs (the key goes into the instance's "
                             "ssh-keys metadata): set ssh_private_key_file instead")
        if self.ssh_public_key_file and not self.ssh_private_key_file:
            raise ValueError("ssh_public_key_file (GCE_PUBLIC_KEY_FILENAME) is set but ssh_private_key_file "
                             "(GCE_PRIVATE_KEY_FILENAME) is not: SSH needs both")
        if self.ssh_interface == "public" and not self.external_ip:
            raise ValueError("ssh_interface: public needs external_ip: true (or use ssh_interface: private)")
        return self

    @property
    def interface(self) -> str:
        """The address SSH uses: public (the external IP) unless there is none or private was asked for."""
        return self.ssh_interface or ("public" if self.external_ip else "private")
