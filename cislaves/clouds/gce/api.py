"""The Compute Engine API plumbing of the GCE driver: credentials, the client, calls, operations, pages.

The client is built from the discovery document shipped with google-api-python-client (no network).
Every request goes through `execute`, which retries what Google says is worth retrying (5xx, 429,
403 with reason rateLimitExceeded/userRateLimitExceeded, a lost connection) up to `Retry.retries` times
with exponential backoff, and turns failures into one-line CloudErrors that keep Google's error reason
as `code` and the HTTP status as `status` (404 is `NotFound`, 409 `Conflict`). Operation polls and
list pages go through it too, so `api_retries` holds everywhere. Every operation goes through
`wait_operation`, which polls it with a deadline, logs its warnings[], and raises `OperationError`
(or `Conflict` for RESOURCE_ALREADY_EXISTS) with the operation's own error codes when it ends badly.

The library's own retry (`execute(num_retries=N)`) is not used: its backoff cannot be tuned or logged
per call; ours is the same exponential backoff with jitter, from `Retry.delay`.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cislaves import netfail
from cislaves.errors import CloudError, ConfigError
from cislaves.waiting import Pending, wait_for

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/compute"]
QUOTA_HINT = "ask for more quota in the Cloud Console, or choose another machine_type or zone"
RATE_HINT = "the project's per-minute API quota ran out; raise clouds.gce.api_retries or ask for more quota"
# Google's error reasons (HTTP answers) and operation error codes the driver acts on
RATE_LIMITED = {"rateLimitExceeded", "userRateLimitExceeded"}
QUOTA_REASONS = {"quotaExceeded"}
QUOTA_CODES = {"QUOTA_EXCEEDED"}
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"


class NotFound(CloudError):
    """The resource does not exist (HTTP 404)."""


class Conflict(CloudError):
    """The resource already exists (HTTP 409, or RESOURCE_ALREADY_EXISTS in an operation): it is not ours."""


class OperationError(CloudError):
    """A Compute operation finished with errors; `codes` holds their error codes (`code` the first)."""

    def __init__(self, message: str, codes: list[str], status: int | None = None):
        super().__init__(message, cloud="gce", code=codes[0] if codes else None, status=status)
        self.codes = codes


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a request is retried (clouds.gce.api_retries / api_retry_delay)."""

    retries: int = 6
    delay: float = 1.0  # the first backoff; doubled per retry, with jitter
    max_delay: float = 32.0


def load_credentials(credentials_file: Path | None, where: str) -> tuple[Any, str | None]:
    """Credentials and their project: from a credentials JSON file (usually a service account's key), or
    Application Default Credentials when no file is named. A bad file or no credentials is a ConfigError."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    if credentials_file is None:
        try:
            return google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as exc:
            raise ConfigError(f"{where}: not set and no application default credentials were found "
                              f"({_first_line(exc)}); name a service account JSON key file") from None
    path = Path(credentials_file).expanduser()
    try:
        info = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{where}: {path}: not a JSON file") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind not in ("service_account", "authorized_user"):
        raise ConfigError(f"{where}: {path}: expected a service account key (\"type\": \"service_account\") "
                          f"or authorized user credentials, got type {kind!r}")
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    try:
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES), \
                info.get("project_id")
        return user_credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES), \
            info.get("quota_project_id")
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: {path}: not usable credentials: {_first_line(exc)}") from None


def build_client(credentials: Any, endpoint: str | None, timeout: float):
    """A compute v1 client over an authorised httplib2 connection; `endpoint` replaces the base URL."""
    import google_auth_httplib2
    import httplib2
    from googleapiclient import discovery

    http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=timeout))
    options = {"api_endpoint": endpoint} if endpoint else None
    return discovery.build("compute", "v1", http=http, static_discovery=True, cache_discovery=False,
                           client_options=options)


def execute(request, what: str, retry: Retry = Retry()) -> dict[str, Any]:
    """Run one API request, retrying what is retryable; failures become one-line CloudErrors naming `what`.

    A retried insert is safe only with a requestId in the request (the driver sends one with every
    mutation): Google then answers the retry with the first attempt's operation instead of a 409.
    """
    import httplib2
    from google.auth.exceptions import RefreshError, TransportError
    from googleapiclient.errors import HttpError

    attempt = 0
    while True:
        try:
            return request.execute(num_retries=0)
        except HttpError as exc:
            status, reason, message = exc.status_code, *_http_error(exc)
            if attempt < retry.retries and _retryable(status, reason):
                attempt = _back_off(attempt, retry, what, f"HTTP {status} {reason or ''}".strip())
                continue
            text = f"gce: {what} failed: HTTP {status}: {_one_line(message or exc.reason or 'no message')}"
            if reason in QUOTA_REASONS:
                text += f" ({QUOTA_HINT})"
            elif reason in RATE_LIMITED:
                text += f" ({RATE_HINT}; retried {attempt} time(s))"
            kind = NotFound if status == 404 else Conflict if status == 409 else CloudError
            raise kind(text, cloud="gce", code=reason, status=status) from None
        except RefreshError as exc:
            raise CloudError(f"gce: {what} failed: could not get an access token: {_first_line(exc)}",
                             cloud="gce", code="RefreshError") from None
        except (TransportError, httplib2.HttpLib2Error, OSError) as exc:
            if attempt < retry.retries and not netfail.refused(exc):  # a refusal answers the same next time
                attempt = _back_off(attempt, retry, what, type(exc).__name__)
                continue
            raise CloudError(f"gce: {what} failed: cannot reach the Compute API: {_first_line(exc)}",
                             cloud="gce", code=type(exc).__name__) from None


def wait_operation(client, project: str, operation: dict[str, Any], what: str, timeout: float,
                   max_delay: float = 2.0, retry: Retry = Retry()) -> dict[str, Any]:
    """Poll a zone, region or global operation until DONE (WaitTimeout after `timeout`); log its warnings;
    raise Conflict (RESOURCE_ALREADY_EXISTS, naming the resource) or OperationError carrying the
    operation's error codes and messages if it ended with errors."""
    name = operation["name"]

    def request():
        if operation.get("zone"):
            return client.zoneOperations().get(project=project, zone=basename(operation["zone"]),
                                               operation=name)
        if operation.get("region"):
            return client.regionOperations().get(project=project, region=basename(operation["region"]),
                                                 operation=name)
        return client.globalOperations().get(project=project, operation=name)

    def probe():
        current = execute(request(), f"reading operation {name} ({what})", retry)
        return current if current.get("status") == "DONE" else Pending(f"status {current.get('status')}")

    done = operation
    if operation.get("status") != "DONE":
        done = wait_for(probe, f"GCE operation {name} ({what})", timeout, first_delay=0.05,
                        max_delay=max_delay)
    for warning in done.get("warnings") or []:
        log.warning("gce: %s: warning %s: %s", what, warning.get("code", "WARNING"),
                    _one_line(warning.get("message", "")))
    errors = (done.get("error") or {}).get("errors") or []
    if not errors:
        return done
    codes = [str(e.get("code", "ERROR")) for e in errors]
    status = done.get("httpErrorStatusCode")
    if ALREADY_EXISTS in codes:
        target = resource_path(done.get("targetLink", "")) or "the resource"
        raise Conflict(f"gce: {what} failed: {target} already exists ({ALREADY_EXISTS}); it was not created "
                       f"by this run and is left alone: choose another name or remove it yourself",
                       cloud="gce", code=ALREADY_EXISTS, status=status)
    details = "; ".join(f"{e.get('code', 'ERROR')}: {_one_line(e.get('message', ''))}" for e in errors)
    text = f"gce: {what} failed: {details}"
    if QUOTA_CODES & set(codes):
        text += f" ({QUOTA_HINT})"
    raise OperationError(text, codes, status)


def list_all(collection, what: str, retry: Retry = Retry(), **kwargs) -> Iterator[dict[str, Any]]:
    """Every item of a paged list call (following nextPageToken)."""
    request = collection.list(**kwargs)
    while request is not None:
        response = execute(request, what, retry)
        yield from response.get("items", [])
        request = collection.list_next(request, response)


def aggregated(collection, what: str, key: str, retry: Retry = Retry(), **kwargs) -> Iterator[dict[str, Any]]:
    """Every item of a paged aggregatedList call, across all zones (`key` is e.g. "instances")."""
    request = collection.aggregatedList(**kwargs)
    while request is not None:
        response = execute(request, what, retry)
        for scoped in (response.get("items") or {}).values():
            yield from scoped.get(key, [])
        request = collection.aggregatedList_next(request, response)


def basename(url_or_name: str) -> str:
    """The last path segment of a selfLink or a relative resource path ("zones/x" -> "x")."""
    return url_or_name.rstrip("/").rsplit("/", 1)[-1]


def _retryable(status: int, reason: str | None) -> bool:
    return status >= 500 or status == 429 or (status == 403 and reason in RATE_LIMITED)


def _back_off(attempt: int, retry: Retry, what: str, why: str) -> int:
    """Sleep before retry number attempt+1 (exponential, with jitter); the new attempt count."""
    delay = min(retry.delay * 2 ** attempt, retry.max_delay) * (0.5 + random.random() / 2)
    log.warning("gce: %s: %s; retry %d of %d in %.2fs", what, why, attempt + 1, retry.retries, delay)
    time.sleep(delay)  # the backoff between retries of one request (not a wait for state)
    return attempt + 1


def _http_error(exc) -> tuple[str | None, str | None]:
    """(reason, message) from Google's error body {"error": {"message", "errors": [{"reason"}]}}."""
    try:
        error = json.loads(exc.content.decode("utf-8"))["error"]
        errors = error.get("errors") or [{}]
        return errors[0].get("reason") or error.get("status"), error.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None


def resource_path(link: str) -> str | None:
    """'projects/P/zones/Z/instances/N' from a selfLink/targetLink."""
    if "/projects/" in link:
        return "projects/" + link.split("/projects/", 1)[1]
    return link or None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _first_line(exc: BaseException) -> str:
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = first.strip() or type(exc).__name__
    return _one_line(text.splitlines()[0])
