"""HTTP plumbing of the OpenStack driver: one region and one versioned endpoint per service, one
retry loop for rate limits (413/429 with Retry-After in seconds or as an HTTP date) and transient
5xx answers within a deadline, and errors that keep the HTTP status and the provider's fault code.

Nova is spoken through python-novaclient (nova.py), on this module's keystoneauth1 session and
compute endpoint; its exceptions carry the answer (nova.KeepAnswer), so `call` reads the same
status, fault code (Nova's `conflictingRequest`) and Retry-After from them as from a session
answer. Glance v2 and Neutron v2.0, which novaclient has no API for, are JSON on the session here
(`request`, `glance_images`): their fault codes (Neutron's `NeutronError.type`, Glance's `title`),
`Retry-After` and Glance's `next` links reach the driver as they arrived.
"""
from __future__ import annotations

import email.utils
import logging
import re
import time
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from keystoneauth1 import exceptions as ks_exc
from novaclient import exceptions as nova_exc

from cislaves import netfail
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = {413, 429, 500, 502, 503, 504}
FIRST_DELAY = 0.5
MAX_DELAY = 10.0
# the API version each service is spoken in; a catalog URL may carry it or not
VERSIONS = {"compute": "v2.1", "image": "v2", "network": "v2.0"}
VERSION_SEGMENT = re.compile(r"^v\d+(\.\d+)?$")


class NotFound(CloudError):
    """The cloud answered 404 for a resource."""


class Api:
    """Calls to one cloud in one region, retried within `deadline` seconds.

    `label` (e.g. 'rackspace DFW') starts every error; `service_names` picks among several services of
    one type in a catalog (Rackspace lists compute three times); `region` None means: the token's
    default region (RAX-AUTH:defaultRegion), else the only one of the catalog, else an error naming
    `region_setting`.
    """

    def __init__(self, session, cloud: str, region: str | None, interface: str, deadline: float, *,
                 service_names: dict[str, str] | None = None,
                 region_setting: str = "region_name (OS_REGION_NAME)"):
        self.session, self.cloud, self.deadline = session, cloud, deadline
        self.region, self.interface = region, interface
        self.service_names = service_names or {}
        self.region_setting = region_setting
        self._endpoints: dict[str, str] = {}
        self._region_checked = False

    @property
    def label(self) -> str:
        return f"{self.cloud} {self.region or ''}".strip()

    # -- the retry loop --------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs): a session request (a requests.Response, whatever its status) or a
        novaclient call (its result, or its exception); retried on 413/429/5xx and connection failures
        until the deadline. Returns the 2xx response or the result; 404 raises NotFound, any other
        failure a CloudError "<label>: <what> failed: <reason>" with the HTTP status and fault code."""
        deadline = time.monotonic() + self.deadline
        delay = FIRST_DELAY
        attempt = 0
        while True:
            attempt += 1
            refused = False
            try:
                resp = fn(*args, **kwargs)
            except ks_exc.SSLError as exc:
                raise self._error(what, f"TLS failed: {exc}") from None
            except ks_exc.ConnectionError as exc:  # a refusal is final: it answers the same next time
                refused = netfail.refused(exc)
                status, code, reason, retry_after = None, None, f"cannot connect: {_connect_reason(exc, refused)}", 0.0
            except ks_exc.HttpError as exc:  # from authentication (the token request)
                status, code = exc.http_status, None
                reason, retry_after = f"HTTP {status}: {' '.join(str(exc.message or exc).split())}", 0.0
            except ks_exc.EndpointNotFound as exc:
                raise self._error(what, f"the service catalog has no endpoint for it ({exc})") from None
            except ks_exc.ClientException as exc:
                raise self._error(what, str(exc)) from None
            except nova_exc.ClientException as exc:  # from nova.KeepAnswer: the answer is attached
                status, code, reason, retry_after = describe_nova(exc)
            else:
                if not isinstance(resp, requests.Response) or resp.status_code < 400:
                    return resp
                status, code, reason, retry_after = describe(resp)
            if status == 404:
                raise NotFound(f"{self.label}: {what} failed: {reason}", cloud=self.cloud, operation=what,
                               code=code, status=404)
            if status == 401:
                raise CloudError(f"{self.label}: {what} failed: authentication refused ({reason}); check the "
                                 "credentials (OS_USERNAME, OS_PASSWORD, RACKSPACE_API_KEY, OS_CLOUD...)",
                                 cloud=self.cloud, operation=what, code=code, status=401)
            retriable = (status is None and not refused) or status in RETRY_STATUSES
            wait = max(delay, retry_after)
            left = deadline - time.monotonic()
            if not retriable or wait > left:
                tail = f" (gave up after {attempt} attempts)" if retriable else ""
                raise CloudError(f"{self.label}: {what} failed: {reason}{tail}", cloud=self.cloud,
                                 operation=what, code=code, status=status)
            log.warning("%s: %s: %s; retrying in %.1fs", self.label, what, reason, wait)
            time.sleep(wait)  # the pause the server asked for (Retry-After), or backoff
            delay = min(delay * 2, MAX_DELAY)

    def _error(self, what: str, reason: str) -> CloudError:
        return CloudError(f"{self.label}: {what} failed: {reason}", cloud=self.cloud, operation=what)

    # -- requests --------------------------------------------------------------------------
    def send(self, service: str, method: str, path: str, *, json: Any = None, params: dict | None = None):
        """One attempt at `path` below the versioned endpoint of `service` ("image", "network"), or at
        an absolute URL; the response whatever its status (for `call`)."""
        url = path if urlsplit(path).scheme else self.endpoint(service) + "/" + path.lstrip("/")
        return self.session.request(url, method, json=json, params=params, headers={"Accept": "application/json"},
                                    raise_exc=False, authenticated=True)

    def request(self, service: str, method: str, path: str, what: str, *, json: Any = None,
                params: dict | None = None):
        """`send`, retried as `call` says; the 2xx response."""
        return self.call(what, self.send, service, method, path, json=json, params=params)

    def get(self, service: str, path: str, what: str, **params) -> dict:
        return _json(self.request(service, "GET", path, what, params=params or None))

    def post(self, service: str, path: str, body: dict, what: str) -> Any:
        return self.request(service, "POST", path, what, json=body)

    def delete(self, service: str, path: str, what: str) -> bool:
        """DELETE; False when it was already gone (404)."""
        try:
            self.request(service, "DELETE", path, what)
        except NotFound:
            return False
        return True

    def glance_images(self, **params) -> Iterator[dict]:
        """Every image Glance lists for `params`, following each `next` link as given (it carries the
        filters and the marker); the link is relative to the Glance root, so its version is ours."""
        path: str | None = "images"
        first = True
        while path:
            page = self.get("image", path, "listing images", **(params if first else {}))
            first = False
            yield from page.get("images", [])
            path = _below_version(page.get("next"))

    # -- the catalog -------------------------------------------------------------------------
    def endpoint(self, service: str) -> str:
        """The versioned URL of `service` in the run's one region (whatever version the catalog wrote)."""
        if service not in self._endpoints:
            catalog = self._catalog()
            self._pick_region(catalog)
            found = self._endpoints_of(catalog, service, self.region)
            if not found:
                where = f"region {self.region!r}" if self.region else "any region"
                raise CloudError(f"{self.label}: the service catalog has no {service} endpoint in {where} "
                                 f"(interface {self.interface}); check clouds.{self.cloud}.{self.region_setting}",
                                 cloud=self.cloud, operation=f"finding the {service} endpoint", code="NoEndpoint")
            self._endpoints[service] = versioned(found[0].url, service)
        return self._endpoints[service]

    def has_service(self, service: str) -> bool:
        catalog = self._catalog()
        self._pick_region(catalog)
        return bool(self._endpoints_of(catalog, service, self.region))

    def _catalog(self):
        return self.call("authenticating", self.session.auth.get_access, self.session)

    def _endpoints_of(self, access, service: str, region: str | None) -> list:
        """Endpoints of `service` in `region` (any region: None), of the preferred catalog name if the
        catalog has it, else of any name."""
        preferred = [self.service_names[service]] if service in self.service_names else []
        for name in [*preferred, None]:
            data = access.service_catalog.get_endpoints_data(
                service_type=service, interface=self.interface, region_name=region,
                service_name=name).get(service, [])
            found = [e for e in data if region is None or e.region_name == region]
            if found or name is None:
                return found
        return []

    def _pick_region(self, access) -> None:
        """One region for every service: the configured one, else the token's default, else the only one."""
        if self._region_checked:
            return
        regions = sorted({e.region_name for e in self._endpoints_of(access, "compute", None) if e.region_name})
        if self.region is not None and regions and self.region not in regions:
            raise CloudError(f"{self.label}: the service catalog has no endpoint in region {self.region!r} (it has "
                             f"{', '.join(regions)}); check clouds.{self.cloud}.{self.region_setting}",
                             cloud=self.cloud, operation="finding the endpoints", code="NoEndpoint")
        if self.region is None:
            default = _default_region(access)
            if default and default in regions:
                self.region = default
            elif len(regions) > 1:
                raise ConfigError(f"clouds.{self.cloud}.{self.region_setting}: not set, and the service catalog "
                                  f"has several regions ({', '.join(regions)}); set one of them")
            elif regions:
                self.region = regions[0]
        self._region_checked = True


def versioned(url: str, service: str) -> str:
    """The catalog URL with the version this driver speaks: `.../v2` and `.../` both give `.../v2`
    for Glance, and a Nova URL keeps its own version and project segment (`/v2/<tenant>`)."""
    want = VERSIONS[service]
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if service == "compute":
        if not any(VERSION_SEGMENT.match(s) for s in segments):
            segments.append(want)
    elif segments and VERSION_SEGMENT.match(segments[-1]):
        segments[-1] = want
    else:
        segments.append(want)
    return urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments), "", "")).rstrip("/")


def describe(resp) -> tuple[int, str | None, str, float]:
    """(HTTP status, the provider's fault code, one-line reason, Retry-After seconds) of an error answer."""
    code, message = _fault(resp)
    reason = " ".join(str(message or resp.reason or "").split())[:500]
    return resp.status_code, code, f"HTTP {resp.status_code}: {reason}", retry_after(resp.headers.get("Retry-After"))


def describe_nova(exc: nova_exc.ClientException) -> tuple[int | None, str | None, str, float]:
    """`describe` for a novaclient error: read from the answer nova.KeepAnswer attached, else from what
    novaclient kept (status and message; its retry_after is whole seconds only)."""
    if getattr(exc, "response", None) is not None:
        return describe(exc.response)
    message = " ".join(str(exc.message or "").split())[:500]
    return exc.code, None, f"HTTP {exc.code}: {message}", float(getattr(exc, "retry_after", 0) or 0)


def retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to wait for a Retry-After header: a number of seconds, or an HTTP date."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        log.debug("unreadable Retry-After header %r", value)
        return 0.0
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _fault(resp) -> tuple[str | None, str | None]:
    """(code, message) from Nova's {"itemNotFound": {...}}, Neutron's {"NeutronError": {"type"...}},
    Glance's and Keystone's {"title", "message"} / {"error": {...}}, or a plain text body."""
    try:
        body: Any = resp.json()
    except ValueError:
        text = (resp.text or "").strip()
        return None, text.splitlines()[-1] if text else None
    if not isinstance(body, dict):
        return None, None
    if isinstance(body.get("message"), str):
        return body.get("title"), body["message"]
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            code = value.get("type") or value.get("title") if key in ("NeutronError", "error") else key
            return code, value["message"]
    return None, None


def _default_region(access) -> str | None:
    """Rackspace's token names the account's default region (user.RAX-AUTH:defaultRegion)."""
    user = getattr(access, "_user", None) or {}
    if not user and hasattr(access, "_data"):
        user = (access._data.get("access") or {}).get("user") or {}
    return user.get("RAX-AUTH:defaultRegion") or None


def _below_version(link: str | None) -> str | None:
    """A Glance `next` link ("/v2/images?marker=...") below the versioned endpoint ("images?marker=...")."""
    if not link or urlsplit(link).scheme:
        return link
    segments = link.lstrip("/").split("/", 1)
    if len(segments) == 2 and VERSION_SEGMENT.match(segments[0]):
        return segments[1]
    return link.lstrip("/")


def _json(resp) -> dict:
    if not resp.content:
        return {}
    try:
        return resp.json()
    except ValueError:
        return {}


def _connect_reason(exc: Exception, refused: bool) -> str:
    """keystoneauth's connection error in one short line: for a refusal, the URL only (not urllib3's
    pool repr nested three deep)."""
    text = " ".join(str(exc).split())
    url = text.split(": ", 1)[0].replace("Unable to establish connection to ", "")
    return f"{url}: connection refused or name not resolved" if refused and url != text else text
