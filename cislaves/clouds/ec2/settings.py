"""The `clouds.ec2` settings: EC2's own keys on top of the SSH/key/timeout block every cloud shares."""
from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cislaves.clouds.ssh import SSHSettings
from cislaves.config import Strict

REGION = r"^[a-z]{2}(-[a-z]+)+-\d+$"
AMI_ID = r"^ami-[0-9a-f]{8,17}$"
# ssh_interface values: EC2's four addresses, plus the common public/private of every cloud
INTERFACES = ("public_ip", "private_ip", "public_dns", "private_dns", "public", "private")


class BaseImageSetting(Strict):
    """How to pick the base AMI of one distribution: a fixed id, or an owner and name pattern."""

    ami: str | None = Field(None, pattern=AMI_ID)
    owner: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _something(self):
        if not (self.ami or self.owner or self.name):
            raise ValueError("give 'ami', or 'owner' and/or 'name' (an AMI name pattern)")
        return self


class Settings(SSHSettings):
    """The `clouds.ec2` section. Credentials are never here: boto3's chain finds them.

    ssh_key_pair + ssh_private_key_file name an existing key pair; ssh_private_key_file alone is
    imported as the run's temporary key pair; neither: a new temporary key pair per run.
    """

    DEPRECATED: ClassVar[dict[str, str]] = {"key_pair": "ssh_key_pair", "key_filename": "ssh_private_key_file"}

    region: str = Field("us-west-2", pattern=REGION)
    profile: str | None = None
    endpoint_url: str | None = Field(None, pattern=r"^https?://")
    instance_type: str = Field("t2.medium", pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$")
    subnet_id: str | None = Field(None, pattern=r"^subnet-[0-9a-f]+$")
    associate_public_ip: bool | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    ssh_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"], min_length=1)
    root_volume_size: int = Field(48, ge=1, le=16384)
    root_volume_type: str = "gp3"
    spot: bool = False
    spot_max_price: str | None = Field(None, pattern=r"^\d+(\.\d+)?$")
    iam_instance_profile: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    copy_regions: list[str] = Field(default_factory=list)
    base_images: dict[str, BaseImageSetting] = Field(default_factory=dict)
    ssh_interface: Literal[INTERFACES] = "public_ip"  # type: ignore[valid-type]
    poll_max_delay: float = Field(5, gt=0)
    max_attempts: int = Field(10, ge=1, le=50)

    @field_validator("copy_regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if not re.match(REGION, region):
                raise ValueError(f"{region!r} is not a region name like eu-west-1")
        return value

    @field_validator("ssh_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR like 203.0.113.0/24") from None
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.lower().startswith("aws:") or not 0 < len(key) <= 128:
                raise ValueError(f"tag key {key!r} must be 1-128 characters, not starting with 'aws:'")
        return value

    @model_validator(mode="after")
    def _combinations(self):
        if self.ssh_key_pair and not self.ssh_private_key_file:
            raise ValueError("ssh_key_pair (AWS_KEY_PAIR) needs ssh_private_key_file (AWS_KEY_FILENAME), the "
                             "private key of that key pair; set both, or neither for a temporary key pair per run")
        if self.ssh_bastion and self.ssh_proxy_command:
            raise ValueError("set ssh_bastion or ssh_proxy_command, not both")
        return self


# field -> environment variable (the seed's names; a set variable overrides the file)
ENV = {"region": "AWS_REGION", "instance_type": "AWS_INSTANCE_TYPE", "ssh_key_pair": "AWS_KEY_PAIR",
       "ssh_private_key_file": "AWS_KEY_FILENAME"}
