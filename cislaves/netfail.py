"""Which connection failures are final: the endpoint refused the connection, or its name did not resolve.

A cloud API call retries what may pass (throttling, 5xx, a timeout, a dropped connection), but an
endpoint that refuses connections or a host name that does not resolve will answer the next attempt
the same way: retrying them turned a wrong URL into two minutes of silence. The SDKs wrap the socket's
error (requests -> keystoneauth, httplib2, urllib3), so the exception's cause chain is searched.
"""
from __future__ import annotations

import socket


def refused(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from or while handling) is a refused connection,
    a name that does not resolve, or urllib3's "could not establish a new connection"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
            return True
        if type(exc).__name__ == "NewConnectionError" and type(exc).__module__.startswith("urllib3"):
            return not isinstance(exc, TimeoutError) and "timed out" not in str(exc)
        exc = exc.__cause__ or exc.__context__ or _inner(exc)
    return False


def _inner(exc: BaseException) -> BaseException | None:
    """requests/urllib3 keep the underlying error in args or `reason` rather than as a cause."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, BaseException):
            return arg
    return None
