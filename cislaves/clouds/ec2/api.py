"""EC2 plumbing for the driver: settings, boto3 clients with adaptive retries, tag and error helpers.

Kept apart from cislaves.clouds.ec2 so the driver module reads as the cloud interface only.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cislaves import TOOL, __version__
from cislaves.clouds.base import TAG_RUN, TAG_TOOL
from cislaves.config import Strict
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

REGION = r"^[a-z]{2}(-[a-z]+)+-\d+$"
AMI_ID = r"^ami-[0-9a-f]{8,17}$"
# EC2 states of instances this tool still holds (terminated/shutting-down ones are gone).
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
             "InvalidAMIID.Malformed", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
             "InvalidSnapshot.NotFound", "InvalidInstanceID.Malformed")
# AMI names: 3-128 characters of letters, digits and ()[] ./-'@_
AMI_NAME_BAD = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]")


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


class Settings(Strict):
    """The `clouds.ec2` section. Credentials are never here: boto3's chain finds them."""

    region: str = Field("us-west-2", pattern=REGION)
    profile: str | None = None
    endpoint_url: str | None = Field(None, pattern=r"^https?://")
    instance_type: str = Field("t2.medium", pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$")
    key_pair: str | None = None
    key_filename: Path | None = None
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
    ssh_interface: Literal["public_ip", "private_ip", "public_dns", "private_dns"] = "public_ip"
    ssh_host: str | None = None
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_user: str | None = None
    ssh_bastion: str | None = Field(None, pattern=r"^([^@\s]+@)?[^@:\s]+(:\d+)?$")
    ssh_proxy_command: str | None = None
    launch_timeout: float = Field(900, gt=0)
    image_timeout: float = Field(3600, gt=0)
    destroy_timeout: float = Field(600, gt=0)
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
    def _key_pair_needs_file(self):
        if bool(self.key_pair) != bool(self.key_filename):
            raise ValueError("key_pair (AWS_KEY_PAIR) and key_filename (AWS_KEY_FILENAME) go together: "
                             "set both, or neither for a temporary key pair per run")
        if self.ssh_bastion and self.ssh_proxy_command:
            raise ValueError("set ssh_bastion or ssh_proxy_command, not both")
        return self


ENV = {"region": "AWS_REGION", "instance_type": "AWS_INSTANCE_TYPE", "key_pair": "AWS_KEY_PAIR",
       "key_filename": "AWS_KEY_FILENAME"}


class Clients:
    """boto3 EC2 clients per region, sharing one session, with adaptive retries and a call counter."""

    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import ProfileNotFound

        self.settings = settings
        try:
            self.session = boto3.session.Session(profile_name=settings.profile)
        except ProfileNotFound as exc:
            where = "clouds.ec2.profile" if settings.profile else "environment AWS_PROFILE"
            raise ConfigError(f"{where}: {exc}; expected a profile of the AWS config files") from None
        self.config = BotoConfig(retries={"mode": "adaptive", "total_max_attempts": settings.max_attempts},
                                 connect_timeout=10, read_timeout=60,
                                 user_agent_extra=f"{TOOL}/{__version__}")
        self.calls: collections.Counter[str] = collections.Counter()  # operation -> logical calls
        self.requests = 0  # HTTP requests, retries included
        self._clients: dict[str, Any] = {}

    def __call__(self, region: str | None = None):
        region = region or self.settings.region
        if region not in self._clients:
            client = self.session.client("ec2", region_name=region, config=self.config,
                                         endpoint_url=self.settings.endpoint_url or None)
            client.meta.events.register("before-call.ec2", self._count_call)
            client.meta.events.register("before-send.ec2", self._count_request)
            self._clients[region] = client
        return self._clients[region]

    def _count_call(self, model=None, **_):
        self.calls[model.name if model is not None else "?"] += 1

    def _count_request(self, **_):
        self.requests += 1

    def endpoint(self) -> str:
        return self().meta.endpoint_url

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def call(clients: Clients, operation: str, region: str | None = None, *, ignore_missing: bool = False,
         **params) -> dict[str, Any]:
    """Call an EC2 operation; AWS errors become one-line CloudErrors naming the operation and region.

    With ignore_missing, a 'does not exist' answer returns {} (for idempotent deletes and lookups).
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    region = region or clients.settings.region
    try:
        return getattr(clients(region), operation)(**params)
    except ClientError as exc:
        code = error_code(exc)
        if ignore_missing and code in NOT_FOUND:
            return {}
        message = exc.response.get("Error", {}).get("Message", "")
        raise CloudError(f"ec2 {operation} in {region} failed: {code}: {message}") from None
    except NoCredentialsError:
        raise CloudError("ec2: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE, or run where an instance role applies") from None
    except BotoCoreError as exc:
        raise CloudError(f"ec2 {operation} in {region} failed: {exc}") from None


def error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def aws_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def tag_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def tag_spec(resource: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource, "Tags": aws_tags(tags)}]


def tag_filters(filters: dict[str, str] | None) -> list[dict[str, Any]]:
    """EC2 filters for our tool's tag plus the given tag key -> value pairs."""
    wanted = {TAG_TOOL: TOOL, **(filters or {})}
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in wanted.items()]


def run_of(resource: dict[str, Any]) -> str | None:
    return tag_dict(resource.get("Tags")).get(TAG_RUN)


def ami_name(name: str, stamp: str) -> str:
    """A valid, unique AMI name: EC2's characters only, with a UTC timestamp unless one is there."""
    name = AMI_NAME_BAD.sub("-", name).strip() or TOOL
    if not re.search(r"\d{8}[T-]?\d{6}", name):
        name = f"{name}-{stamp}"
    return name[-128:] if len(name) > 128 else name


def expand_proxy(command: str, host: str, port: int) -> str:
    """OpenSSH's %h, %p and %% in a ProxyCommand (paramiko does not expand them)."""
    return re.sub(r"%[hp%]", lambda m: {"%h": host, "%p": str(port), "%%": "%"}[m.group(0)], command)
