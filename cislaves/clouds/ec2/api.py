"""EC2 plumbing for the driver: botocore clients with adaptive retries, error translation, tag helpers.

Kept apart from cislaves.clouds.ec2 so the driver module reads as the cloud interface only.
"""
from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any

from cislaves import TOOL, __version__
from cislaves.clouds.base import TAG_TOOL
from cislaves.clouds.ec2 import model
from cislaves.clouds.ec2.settings import Settings
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

# EC2 states of instances this tool still holds (terminated/shutting-down ones are gone).
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
             "InvalidAMIID.Malformed", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
             "InvalidSnapshot.NotFound", "InvalidInstanceID.Malformed", "InvalidVolume.NotFound")


class Clients:
    """botocore EC2 clients per region, sharing one session, with adaptive retries and a call counter.

    botocore's own session, not boto3's: a bake uses no boto3 resources, and boto3's import and
    session cost about 0.06 s and 3 MiB. The session reads the trimmed EC2 model (model.py) from
    `cache_root` when it can, else botocore's full model."""

    def __init__(self, settings: Settings, cache_root: Path | None = None):
        from botocore.config import Config as BotoConfig

        self.settings = settings
        self.model_path = model.data_path(cache_root)
        self.session = self._session(self.model_path)
        self.config = BotoConfig(retries={"mode": "adaptive", "total_max_attempts": settings.max_attempts},
                                 connect_timeout=10, read_timeout=60,
                                 user_agent_extra=f"{TOOL}/{__version__}")
        self.calls: collections.Counter[str] = collections.Counter()  # operation -> logical calls
        self.requests = 0  # HTTP requests, retries included
        self._clients: dict[str, Any] = {}

    def __call__(self, region: str | None = None):
        region = region or self.settings.region
        if region not in self._clients:
            client = self._client(region)
            client.meta.events.register("before-call.ec2", self._count_call)
            client.meta.events.register("before-send.ec2", self._count_request)
            client.meta.events.register_first("needs-retry.ec2", refused_is_final)
            self._clients[region] = client
        return self._clients[region]

    def _session(self, model_path: Path | None):
        """A botocore session (profile errors as one line), the trimmed model's folder first on its
        loader's search path (botocore's documented extension point; nothing is patched)."""
        import botocore.session
        from botocore.exceptions import ProfileNotFound

        session = botocore.session.Session(profile=self.settings.profile)
        try:
            loader = session.get_component("data_loader")  # reads the config files: an unknown profile fails here
        except ProfileNotFound as exc:
            where = "clouds.ec2.profile" if self.settings.profile else "environment AWS_PROFILE"
            raise ConfigError(f"{where}: {exc}; expected a profile of the AWS config files") from None
        if model_path is not None:
            loader.search_paths.insert(0, str(model_path))
        return session

    def _client(self, region: str):
        """A client on the trimmed model; if that model does not load or lacks an operation, it is
        discarded (regenerated next time) and this process goes on with botocore's full model."""
        if self.model_path is not None:
            try:
                client = self._create(region)
                missing = set(model.OPERATIONS) - set(client.meta.service_model.operation_names)
                if not missing:
                    return client
                client.close()
                reason: Any = f"it lacks {', '.join(sorted(missing))}"
            except Exception as exc:  # a damaged file: any parse or lookup error; the full model decides
                reason = exc
            log.warning("ec2: the trimmed botocore model in %s is unusable (%s); using botocore's full model",
                        self.model_path, reason)
            model.discard(self.model_path)
            self.model_path = None
            self.session = self._session(None)
        return self._create(region)

    def _create(self, region: str):
        return self.session.create_client("ec2", region_name=region, config=self.config,
                                          endpoint_url=self.settings.endpoint_url or None)

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
    """Call an EC2 operation; AWS errors become one-line CloudErrors naming the operation and region,
    carrying EC2's error code (`code`) and the HTTP status (`status`).

    With ignore_missing, a 'does not exist' answer (by code) returns {} (for idempotent deletes and lookups).
    """
    region = region or clients.settings.region
    try:
        return getattr(clients(region), operation)(**params)
    except Exception as exc:
        error = translate(exc, operation, region)
        if error is None:
            raise
        if ignore_missing and error.code in NOT_FOUND:
            return {}
        raise error from None


def pages(clients: Clients, operation: str, key: str, region: str | None = None, **params) -> list[dict]:
    """Every item under `key` of a paginated describe call (translated errors, like `call`)."""
    region = region or clients.settings.region
    try:
        paginator = clients(region).get_paginator(operation)
        return [item for page in paginator.paginate(**params) for item in page.get(key, [])]
    except Exception as exc:
        error = translate(exc, operation, region)
        if error is None:
            raise
        raise error from None


def refused_is_final(caught_exception=None, **_):
    """botocore's needs-retry hook, ahead of its retry handler: an endpoint that refuses connections (or
    whose name does not resolve) will not accept the next attempt either, so the call fails at once
    instead of after max_attempts backoffs (64 s). False means "no retry"; None leaves the decision
    to botocore's handler (throttling, 5xx, timeouts and dropped connections are still retried)."""
    from botocore.exceptions import EndpointConnectionError

    if isinstance(caught_exception, EndpointConnectionError):
        return False
    return None


def translate(exc: Exception, operation: str, region: str) -> CloudError | None:
    """botocore's exception as a one-line CloudError naming the cloud, operation, region and code
    (None for anything that is not botocore's). An unparsable answer (an HTML page from a wrong
    endpoint) keeps only its first line: the page itself is no message."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or None
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return CloudError(f"ec2 {operation} in {region} failed: {code}: {_first_line(error.get('Message'))}",
                          cloud="ec2", operation=operation, code=code, status=status)
    if isinstance(exc, NoCredentialsError):
        return CloudError("ec2: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          "AWS_PROFILE, or run where an instance role applies", cloud="ec2", operation=operation,
                          code="NoCredentials")
    if isinstance(exc, BotoCoreError):
        code = type(exc).__name__
        return CloudError(f"ec2 {operation} in {region} failed: {code}: {_first_line(exc)}", cloud="ec2",
                          operation=operation, code=code)
    return None


def _first_line(text) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first[:300] + ("..." if len(first) > 300 or len(lines) > 1 else "")


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
