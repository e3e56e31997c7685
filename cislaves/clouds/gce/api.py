"""The Compute Engine API plumbing of the GCE driver: credentials, the client, calls, operations, pages.

The client is built from the discovery document shipped with google-api-python-client (no network).
Every call goes through `execute`, which turns HTTP, authentication and transport failures into one-line
CloudErrors (404 into `NotFound`, 409 into `Conflict`); every operation goes through `wait_operation`,
which polls it with a deadline and raises `OperationError` with the operation's own error messages when
it ends badly.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from cislaves.clouds.base import wait_for
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/compute"]
QUOTA_HINT = "ask for more quota in the Cloud Console, or choose another machine_type or zone"


class NotFound(CloudError):
    """The resource does not exist (HTTP 404)."""


class Conflict(CloudError):
    """The resource already exists (HTTP 409)."""


class OperationError(CloudError):
    """A Compute operation finished with errors; `codes` holds their error codes."""

    def __init__(self, message: str, codes: list[str]):
        super().__init__(message)
        self.codes = codes


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


def execute(request, what: str, retries: int = 2) -> dict[str, Any]:
    """Run one API request; failures become CloudError (NotFound for 404) in one line naming `what`."""
    import httplib2
    from google.auth.exceptions import RefreshError, TransportError
    from googleapiclient.errors import HttpError

    try:
        return request.execute(num_retries=retries)
    except HttpError as exc:
        status = exc.status_code
        reasons = _http_reasons(exc)
        text = f"gce: {what} failed: HTTP {status}: {_one_line(exc.reason or 'no message')}"
        if any("quota" in r.lower() for r in reasons):
            text += f" ({QUOTA_HINT})"
        if status == 404:
            raise NotFound(text) from None
        if status == 409:
            raise Conflict(text) from None
        raise CloudError(text) from None
    except RefreshError as exc:
        raise CloudError(f"gce: {what} failed: could not get an access token: {_first_line(exc)}") from None
    except (TransportError, httplib2.HttpLib2Error, OSError) as exc:
        raise CloudError(f"gce: {what} failed: cannot reach the Compute API: {_first_line(exc)}") from None


def wait_operation(client, project: str, operation: dict[str, Any], what: str, timeout: float,
                   max_delay: float = 2.0) -> dict[str, Any]:
    """Poll a zone, region or global operation until DONE (WaitTimeout after `timeout`); raise
    OperationError carrying the operation's error codes and messages if it ended with errors."""
    name = operation["name"]
    last = [operation]

    def request():
        if operation.get("zone"):
            return client.zoneOperations().get(project=project, zone=basename(operation["zone"]),
                                               operation=name)
        if operation.get("region"):
            return client.regionOperations().get(project=project, region=basename(operation["region"]),
                                                 operation=name)
        return client.globalOperations().get(project=project, operation=name)

    def probe():
        current = execute(request(), f"reading operation {name} ({what})")
        last[0] = current
        return current if current.get("status") == "DONE" else None

    done = operation
    if operation.get("status") != "DONE":
        done = wait_for(probe, f"GCE operation {name} ({what})", timeout, first_delay=0.05,
                        max_delay=max_delay, describe=lambda: f"status {last[0].get('status')}")
    errors = (done.get("error") or {}).get("errors") or []
    if errors:
        codes = [str(e.get("code", "ERROR")) for e in errors]
        details = "; ".join(f"{e.get('code', 'ERROR')}: {_one_line(e.get('message', ''))}" for e in errors)
        text = f"gce: {what} failed: {details}"
        if any("QUOTA" in c for c in codes):
            text += f" ({QUOTA_HINT})"
        raise OperationError(text, codes)
    return done


def list_all(collection, what: str, **kwargs) -> Iterator[dict[str, Any]]:
    """Every item of a paged list call (following nextPageToken)."""
    request = collection.list(**kwargs)
    while request is not None:
        response = execute(request, what)
        yield from response.get("items", [])
        request = collection.list_next(request, response)


def aggregated(collection, what: str, key: str, **kwargs) -> Iterator[dict[str, Any]]:
    """Every item of a paged aggregatedList call, across all zones (`key` is e.g. "instances")."""
    request = collection.aggregatedList(**kwargs)
    while request is not None:
        response = execute(request, what)
        for scoped in (response.get("items") or {}).values():
            yield from scoped.get(key, [])
        request = collection.aggregatedList_next(request, response)


def basename(url_or_name: str) -> str:
    """The last path segment of a selfLink or a relative resource path ("zones/x" -> "x")."""
    return url_or_name.rstrip("/").rsplit("/", 1)[-1]


def _http_reasons(exc) -> list[str]:
    try:
        errors = json.loads(exc.content.decode("utf-8"))["error"].get("errors", [])
        return [str(e.get("reason", "")) for e in errors]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _first_line(exc: BaseException) -> str:
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = first.strip() or type(exc).__name__
    return _one_line(text.splitlines()[0])
