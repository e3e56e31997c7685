"""The fake GCE over HTTP: compute v1 routes, an OAuth2 token endpoint for service accounts, bearer auth.

    with FakeGCEServer() as server:
        server.fake.add_image("debian-cloud", "debian-12-bookworm-v1", "debian-12")
        info = server.service_account_info("my-project")   # a service account key whose token_uri is here
        ...  # googleapiclient with client_options={"api_endpoint": server.endpoint}

A compute request needs `Authorization: Bearer <token>` with a token this server issued, for a JWT
signed with the service account's key (verified with its public key), as Google's token endpoint does.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.gce.fake_gce import ApiError
from tests.gce.fake_gce_resources import FakeGCE

_P = r"^/compute/v1/projects/(?P<project>[^/]+)/"
_Z = _P + r"zones/(?P<zone>[^/]+)/"
ROUTES = [
    ("GET", _Z + r"instances$", "instances.list"),
    ("POST", _Z + r"instances$", "instances.insert"),
    ("GET", _Z + r"instances/(?P<name>[^/]+)$", "instances.get"),
    ("DELETE", _Z + r"instances/(?P<name>[^/]+)$", "instances.delete"),
    ("POST", _Z + r"instances/(?P<name>[^/]+)/(?P<verb>stop|start|suspend|resume)$", "instances.action"),
    ("GET", _P + r"aggregated/instances$", "instances.aggregatedList"),
    ("GET", _Z + r"disks$", "disks.list"),
    ("GET", _Z + r"disks/(?P<name>[^/]+)$", "disks.get"),
    ("DELETE", _Z + r"disks/(?P<name>[^/]+)$", "disks.delete"),
    ("GET", _P + r"aggregated/disks$", "disks.aggregatedList"),
    ("GET", _P + r"global/images$", "images.list"),
    ("POST", _P + r"global/images$", "images.insert"),
    ("GET", _P + r"global/images/family/(?P<name>[^/]+)$", "images.getFromFamily"),
    ("GET", _P + r"global/images/(?P<name>[^/]+)$", "images.get"),
    ("DELETE", _P + r"global/images/(?P<name>[^/]+)$", "images.delete"),
    ("GET", _Z + r"operations/(?P<name>[^/]+)$", "zoneOperations.get"),
    ("GET", _P + r"global/operations/(?P<name>[^/]+)$", "globalOperations.get"),
]
READS = {"instances.list", "instances.get", "instances.aggregatedList", "disks.list", "disks.get",
         "disks.aggregatedList", "images.list", "images.getFromFamily", "images.get", "zoneOperations.get",
         "globalOperations.get"}
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # google-auth signs for this audience always
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@functools.lru_cache(maxsize=1)
def _service_key() -> tuple[str, str]:
    """(private PEM, public PEM) of the fake service account: generated once per test session."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class FakeGCEServer:
    """FakeGCE served on 127.0.0.1 (a free port) from a thread; a context manager."""

    def __init__(self, step: float = 0.05, page_size: int | None = None, require_auth: bool = True):
        self.fake = FakeGCE(step=step, page_size=page_size)
        self.require_auth = require_auth
        self.tokens: set[str] = set()
        self.token_requests = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.endpoint = f"{self.url}/compute/v1/"
        self.fake.base = self.endpoint
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-gce", daemon=True)

    def __enter__(self) -> "FakeGCEServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def service_account_info(self, project: str) -> dict:
        """A service account key file's content for `project`, with token_uri pointing here."""
        return {"type": "service_account", "project_id": project, "private_key_id": "fake-key-1",
                "private_key": _service_key()[0], "client_email": f"baker@{project}.iam.gserviceaccount.com",
                "client_id": "1234567890", "token_uri": f"{self.url}/token",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth"}

    # -- request handling --------------------------------------------------------------------
    def token(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        """Google's token endpoint for a service account: a JWT signed with its key buys a token."""
        from google.auth import jwt

        self.token_requests += 1
        if form.get("grant_type") != [JWT_GRANT] or not form.get("assertion"):
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        try:
            jwt.decode(form["assertion"][0], certs=_service_key()[1], audience=[GOOGLE_TOKEN_URI, f"{self.url}/token"])
        except Exception as exc:  # any bad JWT is an invalid grant, as Google says
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def authorised(self, header: str | None) -> bool:
        if not self.require_auth:
            return True
        return bool(header) and header.startswith("Bearer ") and header[7:] in self.tokens

    def compute(self, verb: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        for method, pattern, method_id in ROUTES:
            match = re.match(pattern, path)
            if method == verb and match:
                args = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
                method_id = method_id if "verb" not in args else f"instances.{args['verb']}"
                with self.fake.lock:
                    self.fake.advance()
                    self.fake.calls.append(method_id)
                    if method_id in READS:
                        self.fake.fault_for(method_id)
                        return 200, self._call(method_id, args, query, body)
                    return 200, self._mutate(method_id, args, query, body)
        raise ApiError(404, "notFound", f"The requested URL {path} was not found on this server.")

    def _mutate(self, method_id: str, args: dict, query: dict, body: dict) -> dict:
        """A mutation, idempotent by requestId as Compute Engine makes it: a request id seen before is
        answered with the operation it made (its current state), and nothing is done again."""
        fake, request_id = self.fake, query.get("requestId")
        fake.request_ids.append((method_id, request_id))
        if request_id is not None:
            try:
                if uuid.UUID(request_id).int == 0:
                    raise ValueError
            except ValueError:
                raise ApiError(400, "invalid", f"Invalid value for field 'requestId': '{request_id}'. The "
                                               f"request ID must be a valid UUID.") from None
            if request_id in fake.requests:
                return copy.deepcopy(fake.operations[fake.requests[request_id]])
        answer = self._call(method_id, args, query, body)
        if request_id is not None:
            fake.requests[request_id] = answer["name"]
        if fake.lost.get(method_id):
            fake.lost[method_id] -= 1  # the work is done, but the client never hears of it
            raise ApiError(503, "backendError", "Backend Error")
        return answer

    def _call(self, method_id: str, a: dict, query: dict, body: dict) -> dict:
        fake, p = self.fake, a["project"]
        if method_id == "instances.insert":
            return fake.insert_instance(p, a["zone"], body)
        if method_id == "instances.get":
            return fake.get_instance(p, a["zone"], a["name"])
        if method_id == "instances.delete":
            return fake.delete_instance(p, a["zone"], a["name"])
        if method_id in ("instances.stop", "instances.start", "instances.suspend", "instances.resume"):
            return fake.instance_action(p, a["zone"], a["name"], a["verb"])
        if method_id == "disks.get":
            return fake.get_disk(p, a["zone"], a["name"])
        if method_id == "disks.delete":
            return fake.delete_disk(p, a["zone"], a["name"])
        if method_id == "images.insert":
            return fake.insert_image(p, body, force=query.get("forceCreate") == "true")
        if method_id == "images.get":
            return fake.get_image(p, a["name"])
        if method_id == "images.getFromFamily":
            return copy.deepcopy(fake.from_family(p, a["name"]))
        if method_id == "images.delete":
            return fake.delete_image(p, a["name"])
        if method_id.endswith("Operations.get"):
            return fake.get_operation(a["name"], a.get("zone"))
        return self._list(method_id, p, a.get("zone"), query)

    def _list(self, method_id: str, project: str, zone: str | None, query: dict) -> dict:
        collection, kind = method_id.split(".")
        store = {"instances": self.fake.instances, "disks": self.fake.disks, "images": self.fake.images}[collection]
        items = [v for k, v in store.items() if k[0] == project and (zone is None or k[1] == zone)]
        page, token = self.fake.page(items, query)
        singular = collection[:-1]
        if kind == "aggregatedList":
            grouped: dict[str, dict] = {}
            for item in page:
                scope = "zones/" + item["zone"].rsplit("/", 1)[1]
                grouped.setdefault(scope, {collection: []})[collection].append(item)
            answer = {"kind": f"compute#{singular}AggregatedList", "items": grouped,
                      "selfLink": f"{self.endpoint}projects/{project}/aggregated/{collection}"}
        else:
            scope = f"zones/{zone}/" if zone else "global/"
            answer = {"kind": f"compute#{singular}List", "id": f"projects/{project}/{scope}{collection}",
                      "selfLink": f"{self.endpoint}projects/{project}/{scope}{collection}"}
            if page:
                answer["items"] = page
        if token:
            answer["nextPageToken"] = token
        return answer


def _handler(server: FakeGCEServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed ACK

        def log_message(self, *args) -> None:  # quiet: tests read server.fake.calls instead
            pass

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_DELETE(self):
            self._serve("DELETE")

        def _serve(self, verb: str) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                if verb == "POST" and parsed.path == "/token":
                    status, answer = server.token(urllib.parse.parse_qs(raw.decode()))
                elif not server.authorised(self.headers.get("Authorization")):
                    status, answer = 401, {"error": {
                        "code": 401, "status": "UNAUTHENTICATED",
                        "message": "Request is missing required authentication credential.",
                        "errors": [{"message": "Login Required.", "domain": "global", "reason": "required"}]}}
                else:
                    body = json.loads(raw) if raw else {}
                    status, answer = server.compute(verb, parsed.path, query, body)
            except ApiError as exc:
                status, answer = exc.status, exc.body()
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
