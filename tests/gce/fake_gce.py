"""A fake Google Compute Engine (compute v1) for tests: the state and the rules; HTTP is in fake_gce_http.

It keeps instances, disks, images and operations in memory and answers in the real JSON shapes
(kinds, selfLinks, Operation resources, list pages with nextPageToken, Google error bodies).
Time moves for real: an operation is PENDING, then RUNNING after one `step`, then DONE after two,
and the resource it changes moves through GCE's statuses at the same moments (PROVISIONING, STAGING,
RUNNING; STOPPING, TERMINATED; image PENDING, READY). Nothing sleeps: the pending changes due by now
are applied when a request arrives.

The rules the driver must respect are enforced as GCE does: names and labels are validated, a disk
attached to a running instance cannot be imaged (without forceCreate), a disk in use cannot be deleted,
an image's source disk must exist, an OBSOLETE image cannot be booted (a DEPRECATED one can, with a
DEPRECATED_RESOURCE_USED warning in the operation), a SUSPENDED instance needs resume, not start.
Mutations are idempotent by requestId (a retry with the same id gets the first operation back).
`inject` makes a call fail (HTTP error, e.g. `read_quota_exceeded()`), end its operation with errors
(QUOTA_EXCEEDED; RESOURCE_ALREADY_EXISTS when another client wins the name) or warnings, or hang;
`lose_answer` makes a call do its work and answer 503 (the lost insert answer).
Shapes follow the compute v1 discovery document and libcloud's recorded GCE fixtures.
"""
from __future__ import annotations

import copy
import datetime as dt
import heapq
import itertools
import re
import threading
import time
from dataclasses import dataclass

NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_FILTER_TERM = re.compile(r'\s*\(\s*([A-Za-z0-9_.-]+)\s*(!=|=)\s*("([^"]*)"|[^\s)"]*)\s*\)\s*(AND\s+)?')
TZ = dt.timezone(dt.timedelta(hours=-8))  # the API answers in Pacific time, as the real one does


STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
# the HTTP status an operation error reports (httpErrorStatusCode / httpErrorMessage), as the API does
OPERATION_HTTP = {"QUOTA_EXCEEDED": (403, "FORBIDDEN"), "RESOURCE_ALREADY_EXISTS": (409, "CONFLICT")}


class ApiError(Exception):
    """An HTTP error answer in Google's error format (reason in errors[0], and a google.rpc status)."""

    def __init__(self, status: int, reason: str, message: str, domain: str = "global",
                 details: list | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.domain, self.details = status, reason, message, domain, details

    def body(self) -> dict:
        error = {"code": self.status, "message": self.message,
                 "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}]}
        if self.status in STATUS_NAMES:
            error["status"] = STATUS_NAMES[self.status]
        if self.details:
            error["details"] = self.details
        return {"error": error}


def read_quota_exceeded(project_number: str = "123456789012") -> ApiError:
    """The answer Google gives when the per-minute read quota of compute runs out (403 rateLimitExceeded)."""
    message = (f"Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' of service "
               f"'compute.googleapis.com' for consumer 'project_number:{project_number}'.")
    return ApiError(403, "rateLimitExceeded", message, domain="usageLimits", details=[{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
        "domain": "googleapis.com", "metadata": {
            "service": "compute.googleapis.com", "consumer": f"projects/{project_number}",
            "quota_metric": "compute.googleapis.com/read_requests", "quota_limit": "ReadRequestsPerMinutePerProject",
            "quota_limit_value": "1500"}}])


@dataclass
class Fault:
    method: str  # API method id without "compute.", e.g. "instances.insert"
    http: tuple[int, str, str] | ApiError | None = None  # (status, reason, message): the call itself fails
    error: tuple[str, str] | None = None  # (code, message): the operation ends DONE with this error
    hang: bool = False  # the operation never finishes
    keep: bool = False  # with `error` on images.insert: the image stays, status FAILED
    warnings: list[tuple[str, str]] | None = None  # (code, message): the DONE operation carries warnings[]
    conflict: bool = False  # instances.insert: another client creates that name meanwhile (RESOURCE_ALREADY_EXISTS)
    no_external_ip: bool = False  # instances.insert: the instance comes up without accessConfigs
    times: int = 1


class FakeCompute:
    """The fake's state. All public methods are thread-safe; `base` is the URL selfLinks start with."""

    def __init__(self, step: float = 0.05, page_size: int | None = None):
        self.step = step
        self.page_size = page_size
        self.base = "http://127.0.0.1/compute/v1/"
        self.instances: dict[tuple[str, str, str], dict] = {}
        self.disks: dict[tuple[str, str, str], dict] = {}
        self.images: dict[tuple[str, str], dict] = {}
        self.operations: dict[str, dict] = {}
        self.faults: list[Fault] = []
        self.calls: list[str] = []  # method ids in order, e.g. "instances.insert"
        self.request_ids: list[tuple[str, str | None]] = []  # (method id, requestId) of every mutation
        self.requests: dict[str, str] = {}  # requestId -> the operation it made (idempotent retries)
        self.lost: dict[str, int] = {}  # method id -> how many answers to lose (503 after the work is done)
        self.inserted: list[dict] = []  # every instance as it was created (they outlive deletion here)
        self.lock = threading.RLock()
        self._events: list = []
        self._seq = itertools.count(1)
        self._ids = itertools.count(1000)

    # -- test API --------------------------------------------------------------------------
    def add_image(self, project: str, name: str, family: str | None = None, *, created: dt.datetime | None = None,
                  status: str = "READY", deprecated: bool | str = False, labels: dict | None = None,
                  replacement: str | None = None) -> dict:
        """Seed an image (e.g. a public base image in debian-cloud); deprecated: True/"DEPRECATED", "OBSOLETE"."""
        with self.lock:
            image = {"kind": "compute#image", "id": self._id(), "name": name, "status": status,
                     "creationTimestamp": _stamp(created), "family": family, "diskSizeGb": "10",
                     "labels": dict(labels or {}), "selfLink": self._link(project, "global/images", name),
                     "architecture": "X86_64", "sourceType": "RAW"}
            if deprecated:
                image["deprecated"] = {"state": "DEPRECATED" if deprecated is True else deprecated}
                if replacement:
                    image["deprecated"]["replacement"] = self._link(project, "global/images", replacement)
            self.images[(project, name)] = image
            return copy.deepcopy(image)

    def add_disk(self, project: str, zone: str, name: str, labels: dict | None = None) -> dict:
        """Seed a detached disk (e.g. one a crashed run left behind)."""
        with self.lock:
            disk = {"kind": "compute#disk", "id": self._id(), "name": name, "status": "READY", "sizeGb": "10",
                    "zone": self._link(project, "zones", zone), "labels": dict(labels or {}), "users": [],
                    "creationTimestamp": _stamp(), "selfLink": self._link(project, f"zones/{zone}/disks", name)}
            self.disks[(project, zone, name)] = disk
            return copy.deepcopy(disk)

    def inject(self, method: str, **kwargs) -> Fault:
        """Make the next call(s) of `method` fail; see Fault."""
        fault = Fault(method, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def lose_answer(self, method: str, times: int = 1) -> None:
        """The next call(s) of `method` do their work, then answer 503 backendError (a lost answer)."""
        with self.lock:
            self.lost[method] = self.lost.get(method, 0) + times

    def snapshot(self) -> dict[str, list[dict]]:
        """Deep copies of every instance, disk and image (after applying what is due)."""
        with self.lock:
            self.advance()
            return {"instances": copy.deepcopy(list(self.instances.values())),
                    "disks": copy.deepcopy(list(self.disks.values())),
                    "images": copy.deepcopy(list(self.images.values()))}

    # -- time ------------------------------------------------------------------------------
    def advance(self) -> None:
        """Apply every scheduled change whose time has come, in order."""
        with self.lock:
            now = time.monotonic()
            while self._events and self._events[0][0] <= now:
                _, _, change = heapq.heappop(self._events)
                change()

    def _later(self, steps: int, change) -> None:
        heapq.heappush(self._events, (time.monotonic() + steps * self.step, next(self._seq), change))

    # -- dispatch --------------------------------------------------------------------------
    def fault_for(self, method: str) -> Fault | None:
        """The fault injected for this call of `method`, if any (an HTTP fault is raised here)."""
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.times > 0:
                    fault.times -= 1
                    if isinstance(fault.http, ApiError):
                        raise fault.http
                    if fault.http:
                        raise ApiError(*fault.http)
                    return fault
            return None

    # -- operations ------------------------------------------------------------------------
    def operation(self, project: str, zone: str | None, kind: str, target: dict, fault: Fault | None,
                  running=None, done=None, failed=None, warnings: list[tuple[str, str]] | None = None) -> dict:
        """A new Operation on `target`: PENDING now, RUNNING after a step (calls `running`), DONE after
        two (calls `done`, or `failed` and records the injected error)."""
        name = f"operation-{int(time.time() * 1000)}-{next(self._seq):06d}"
        scope = f"zones/{zone}" if zone else "global"
        op = {"kind": "compute#operation", "id": self._id(), "name": name, "operationType": kind,
              "targetLink": target["selfLink"], "targetId": target["id"], "status": "PENDING",
              "user": "fake@example.iam.gserviceaccount.com", "progress": 0, "insertTime": _stamp(),
              "selfLink": self._link(project, f"{scope}/operations", name)}
        if zone:
            op["zone"] = self._link(project, "zones", zone)
        self.operations[name] = op

        def start():
            op.update(status="RUNNING", startTime=_stamp())
            if running:
                running()

        def finish():
            if fault and fault.error:
                code, message = fault.error
                op["error"] = {"errors": [{"code": code, "message": message}]}
                status, text = OPERATION_HTTP.get(code, (400, "BAD REQUEST"))
                op.update(httpErrorStatusCode=status, httpErrorMessage=text)
                if failed:
                    failed()
            elif done:
                done()
            found = list(warnings or []) + list((fault.warnings if fault else None) or [])
            if found:
                op["warnings"] = [{"code": c, "message": m, "data": [{"key": "resource_name",
                                                                       "value": target["selfLink"]}]}
                                  for c, m in found]
            op.update(status="DONE", progress=100, endTime=_stamp())

        self._later(1, start)
        if not (fault and fault.hang):
            self._later(2, finish)
        return copy.deepcopy(op)

    def get_operation(self, name: str, zone: str | None) -> dict:
        op = self.operations.get(name)
        if op is None or (zone is None) != ("zone" not in op):
            raise ApiError(404, "notFound", f"The resource 'operations/{name}' was not found")
        return copy.deepcopy(op)

    # -- helpers shared by the resource handlers --------------------------------------------
    def _id(self) -> str:
        return str(next(self._ids) * 7919)

    def _link(self, project: str, collection: str, name: str) -> str:
        return f"{self.base}projects/{project}/{collection}/{name}"

    def resolve(self, reference: str, project: str) -> str:
        """A reference (URL, projects/..., or project-relative path) as 'projects/P/...'."""
        path = reference.split("/compute/v1/", 1)[-1]
        return path if path.startswith("projects/") else f"projects/{project}/{path}"

    def find_image(self, reference: str, project: str) -> dict:
        path = self.resolve(reference, project)
        match = re.match(r"^projects/([^/]+)/global/images/(family/)?([^/]+)$", path)
        if not match:
            raise ApiError(400, "invalid", f"Invalid value for field 'image': '{reference}'.")
        if match[2]:
            return self.from_family(match[1], match[3])
        image = self.images.get((match[1], match[3]))
        if image is None:
            raise ApiError(404, "notFound", f"The resource '{path}' was not found")
        return image

    def from_family(self, project: str, family: str) -> dict:
        candidates = [i for (p, _), i in self.images.items() if p == project and i.get("family") == family
                      and i["status"] == "READY" and i.get("deprecated", {}).get("state", "ACTIVE") == "ACTIVE"]
        if not candidates:
            raise ApiError(404, "notFound",
                           f"The resource 'projects/{project}/global/images/family/{family}' was not found")
        return max(candidates, key=lambda i: i["creationTimestamp"])

    def page(self, items: list[dict], query: dict) -> tuple[list[dict], str | None]:
        """Filter (AIP-160 subset: parenthesised `field = value` terms, ANDed) and paginate."""
        terms = parse_filter(query.get("filter", ""))
        items = [i for i in items if all(_matches(i, f, op, v) for f, op, v in terms)]
        items.sort(key=lambda i: i["name"])
        size = min(int(query.get("maxResults", 500)), self.page_size or 500)
        start = int(query.get("pageToken") or 0)
        token = str(start + size) if start + size < len(items) else None
        return copy.deepcopy(items[start:start + size]), token


def check_name(name, field: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise ApiError(400, "invalid", f"Invalid value for field '{field}': '{name}'. Must be a match of "
                                       f"regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")


def check_labels(labels, field: str) -> None:
    if not isinstance(labels, dict) or len(labels) > 64:
        raise ApiError(400, "invalid", f"Invalid value for field '{field}': at most 64 labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise ApiError(400, "invalid", f"Invalid value for field '{field}': '{key}={value}'. Label keys "
                                           f"and values must match [a-z][a-z0-9_-]{{0,62}} / [a-z0-9_-]{{0,63}}")


def parse_filter(text: str) -> list[tuple[str, str, str]]:
    """[(field, '=' or '!=', value)] from '(a.b = "x") (c != y)'; ApiError for anything else."""
    terms, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _FILTER_TERM.match(text, pos)
        if not match:
            raise ApiError(400, "invalid", f"Invalid value for field 'filter': '{text}'. Invalid list filter "
                                           f"expression.")
        value = match[4] if match[4] is not None else match[3]
        terms.append((match[1], match[2], value))
        pos = match.end()
    return terms


def _matches(item: dict, field: str, op: str, value: str) -> bool:
    node = item
    for part in field.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    equal = node is not None and str(node) == value
    return equal if op == "=" else not equal


def _stamp(when: dt.datetime | None = None) -> str:
    when = (when or dt.datetime.now(dt.timezone.utc)).astimezone(TZ)
    return when.isoformat(timespec="milliseconds")
