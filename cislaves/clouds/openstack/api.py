"""HTTP plumbing of the OpenStack driver: one retry loop for rate limits (413/429 with Retry-After)
and transient 5xx answers within a deadline, errors turned into one-line CloudErrors, and the few
Glance v2 / Neutron v2.0 calls novaclient cannot make (through the keystoneauth1 session).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, TypeVar

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exc
from novaclient import exceptions as nova_exc

from cislaves.errors import CloudError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = {413, 429, 500, 502, 503, 504}
FIRST_DELAY = 0.5
MAX_DELAY = 10.0


class NotFound(CloudError):
    """The cloud answered 404 for a resource."""


class Api:
    """Calls to one cloud, retried within `deadline` seconds; `label` (e.g. 'rackspace DFW') starts errors."""

    def __init__(self, session, label: str, region: str | None, interface: str, deadline: float):
        self.session, self.label, self.deadline = session, label, deadline
        self.region, self.interface = region, interface
        self._adapters: dict[str, ks_adapter.Adapter] = {}

    # -- the retry loop --------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs), retrying 413/429/5xx and connection failures until the deadline.

        404 raises NotFound; any other failure a CloudError "<label>: <what> failed: <reason>".
        """
        deadline = time.monotonic() + self.deadline
        delay = FIRST_DELAY
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except (nova_exc.ClientException, ks_exc.HttpError, ks_exc.ConnectionError) as exc:
                status, reason, retry_after = describe(exc)
                if status == 404:
                    raise NotFound(f"{self.label}: {what} failed: {reason}") from None
                retriable = status in RETRY_STATUSES or isinstance(exc, ks_exc.ConnectionError)
                if status == 401 or isinstance(exc, ks_exc.Unauthorized):
                    raise CloudError(f"{self.label}: {what} failed: authentication refused ({reason}); "
                                     "check the credentials (OS_USERNAME, OS_PASSWORD, OS_CLOUD...)") from None
                wait = max(delay, retry_after)
                left = deadline - time.monotonic()
                if not retriable or wait > left:
                    tail = f" (gave up after {attempt} attempts)" if retriable else ""
                    raise CloudError(f"{self.label}: {what} failed: {reason}{tail}") from None
                log.warning("%s: %s: %s; retrying in %.1fs", self.label, what, reason, wait)
                time.sleep(wait)  # the server asked for this pause (Retry-After) or backoff
                delay = min(delay * 2, MAX_DELAY)
            except ks_exc.EndpointNotFound:
                raise CloudError(f"{self.label}: {what} failed: the service catalog has no endpoint for "
                                 f"it in region {self.region!r} (interface {self.interface}); "
                                 "check OS_REGION_NAME") from None
            except ks_exc.ClientException as exc:
                raise CloudError(f"{self.label}: {what} failed: {exc}") from None

    # -- Glance and Neutron through the session ----------------------------------------------
    def adapter(self, service_type: str) -> ks_adapter.Adapter:
        if service_type not in self._adapters:
            self._adapters[service_type] = ks_adapter.Adapter(
                self.session, service_type=service_type, interface=self.interface, region_name=self.region)
        return self._adapters[service_type]

    def get(self, service: str, path: str, what: str, **params) -> dict:
        resp = self.call(what, self.adapter(service).get, path, params=params or None)
        return resp.json()

    def post(self, service: str, path: str, body: dict, what: str) -> dict:
        resp = self.call(what, self.adapter(service).post, path, json=body)
        return resp.json() if resp.content else {}

    def delete(self, service: str, path: str, what: str) -> bool:
        """DELETE; False when it was already gone (404)."""
        try:
            self.call(what, self.adapter(service).delete, path)
        except NotFound:
            return False
        return True

    def glance_images(self, **params) -> Iterator[dict]:
        """Every image Glance lists for `params` (following the `next` links)."""
        path: str | None = "/v2/images"
        first = True
        while path:
            page = self.get("image", path, "listing images", **(params if first else {}))
            first = False
            yield from page.get("images", [])
            path = page.get("next")

    def has_service(self, service_type: str) -> bool:
        try:
            return bool(self.adapter(service_type).get_endpoint())
        except ks_exc.EndpointNotFound:
            return False
        except ks_exc.ClientException as exc:
            raise CloudError(f"{self.label}: reading the service catalog failed: {exc}") from None


def describe(exc: Exception) -> tuple[int | None, str, float]:
    """(HTTP status, one-line reason, Retry-After seconds) of a novaclient/keystoneauth error."""
    if isinstance(exc, nova_exc.ClientException):
        status = getattr(exc, "code", None)
        message = getattr(exc, "message", None) or str(exc)
        retry_after = float(getattr(exc, "retry_after", 0) or 0)
    else:
        status = getattr(exc, "http_status", None)
        message = getattr(exc, "message", None) or str(exc)
        retry_after = float(getattr(exc, "retry_after", 0) or 0)
        response = getattr(exc, "response", None)
        if response is not None:
            message = _body_message(response) or message
            try:
                retry_after = max(retry_after, float(response.headers.get("Retry-After") or 0))
            except ValueError:
                pass
    reason = " ".join(str(message).split())
    if status:
        reason = f"HTTP {status}: {reason}"
    return status, reason, retry_after


def _body_message(response) -> str | None:
    try:
        body: Any = response.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return body["message"]
        for value in body.values():
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    return None
