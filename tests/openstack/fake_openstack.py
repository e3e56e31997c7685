"""A fake OpenStack cloud on 127.0.0.1: Keystone v3 (and v2.0 for Rackspace API keys), Nova 2.1,
Glance v2 and the few Neutron v2.0 calls the driver makes, speaking the real wire format.

State changes by poll count: a server answers BUILD for `build_polls` reads, then ACTIVE (or ERROR
with a fault when one is injected); a snapshot image goes queued -> saving -> active (or killed);
deletes and stop/start take `settle_polls` reads. Faults are injected per request
(`fail_next(method, path_regex, status, retry_after=...)`) or per resource (`server_error`,
`image_killed`). Every request is recorded in `requests` as (method, path, status).
"""
from __future__ import annotations

import _thread
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TIME = "2026-01-01T00:00:00Z"


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    retry_after: str | None
    times: int


class FakeOpenStack:
    """The fake cloud: start() it, point the driver at `auth_url`, inspect its state dicts."""

    def __init__(self, username="demo", password="secret", project="demo", region="RegionOne",
                 api_key="rax-key", build_polls=2, image_polls=2, settle_polls=1, page_size=3,
                 access_ipv4=False):
        self.username, self.password, self.project, self.region = username, password, project, region
        self.api_key = api_key
        self.project_id = uuid.uuid4().hex
        self.build_polls, self.image_polls, self.settle_polls = build_polls, image_polls, settle_polls
        self.page_size = page_size
        self.access_ipv4 = access_ipv4
        self.lock = threading.RLock()
        self.tokens: set[str] = set()
        self.servers: dict[str, dict] = {}
        self.images: dict[str, dict] = {}
        self.keypairs: dict[str, dict] = {}
        self.ports: dict[str, dict] = {}
        self.floatingips: dict[str, dict] = {}
        self.flavors = {"2": {"id": "2", "name": "m1.small", "ram": 2048, "vcpus": 1, "disk": 20},
                        "general1-2": {"id": "general1-2", "name": "2 GB General Purpose v1",
                                       "ram": 2048, "vcpus": 2, "disk": 40}}
        self.networks = {
            "00000000-0000-0000-0000-000000000000": {"id": "00000000-0000-0000-0000-000000000000",
                                                     "name": "public", "router:external": True},
            "11111111-1111-1111-1111-111111111111": {"id": "11111111-1111-1111-1111-111111111111",
                                                     "name": "private", "router:external": False},
        }
        self.faults: list[Fault] = []
        self.server_faults: list[str] = []  # next servers go to ERROR with these messages
        self.image_faults: list[str] = []  # next snapshots end in these states (killed, deleted, gone)
        self.requests: list[tuple[str, str, int]] = []
        self.interrupts: list[tuple[str, re.Pattern]] = []  # requests that send SIGINT to the client
        self._ips = itertools.count(10)
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "FakeOpenStack":
        fake = self

        class Handler(_Handler):
            cloud = fake

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-openstack", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=10)
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    # -- seeding and faults -----------------------------------------------------------------
    def add_image(self, name, status="active", created_at=TIME, **properties) -> str:
        image_id = str(uuid.uuid4())
        with self.lock:
            self.images[image_id] = {"id": image_id, "name": name, "status": status, "created_at": created_at,
                                     "updated_at": created_at, "visibility": "public", "tags": [],
                                     "min_disk": 0, "min_ram": 0, "_polls": 0, "_end": "active", **properties}
        return image_id

    def add_keypair(self, name, public_key) -> None:
        with self.lock:
            self.keypairs[name] = {"name": name, "public_key": public_key, "fingerprint": "00:11",
                                   "type": "ssh", "user_id": "u"}

    def fail_next(self, method, path, status, retry_after=None, times=1) -> None:
        """Answer the next `times` requests matching method and path regex with `status`."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path), status, retry_after, times))

    def interrupt_on(self, method, path) -> None:
        """Deliver a KeyboardInterrupt to the main thread (the client) when this request arrives."""
        with self.lock:
            self.interrupts.append((method, re.compile(path)))

    def server_error(self, message="No valid host was found. There are not enough hosts available.") -> None:
        self.server_faults.append(message)

    def image_killed(self, state="killed") -> None:
        """The next snapshot ends in `state` (killed, deleted, or "gone": removed, then 404)."""
        self.image_faults.append(state)

    def statuses(self, method, path_regex) -> list[int]:
        return [s for m, p, s in self.requests if m == method and re.search(path_regex, p)]

    # -- state machine (called with the lock held) -----------------------------------------
    def tick_server(self, server: dict) -> dict | None:
        """Advance one poll; return the server or None when it is gone."""
        server["_polls"] += 1
        if server["_deleting"] is not None:
            server["_deleting"] += 1
            if server["_deleting"] > self.settle_polls:
                self.servers.pop(server["id"], None)
                for port_id in [p for p, port in self.ports.items() if port["device_id"] == server["id"]]:
                    del self.ports[port_id]
                    for fip in self.floatingips.values():
                        if fip["port_id"] == port_id:
                            fip.update(port_id=None, fixed_ip_address=None, status="DOWN")
                return None
            return server
        if server["status"] == "BUILD" and server["_polls"] > self.build_polls:
            if server["_fault"]:
                server.update(status="ERROR", fault={"code": 500, "message": server["_fault"], "created": TIME})
            else:
                server["status"] = "ACTIVE"
        if server["_target"]:
            server["_settle"] += 1
            if server["_settle"] > self.settle_polls:
                server.update(status=server["_target"], _target=None)
                server["OS-EXT-STS:task_state"] = None
        return server

    def tick_image(self, image: dict) -> dict | None:
        """Advance one poll; return the image or None when it is gone (end state "gone": removed)."""
        if image["status"] in ("queued", "saving"):
            image["_polls"] += 1
            if image["_polls"] > self.image_polls:
                image["status"] = image["_end"]
            elif image["_polls"] > self.image_polls // 2:
                image["status"] = "saving"
        if image["status"] == "gone":
            self.images.pop(image["id"], None)
            return None
        return image

    def server_view(self, server: dict) -> dict:
        view = {k: v for k, v in server.items() if not k.startswith("_")}
        addresses: dict[str, list] = {}
        for port in self.ports.values():
            if port["device_id"] != server["id"]:
                continue
            net = self.networks[port["network_id"]]["name"]
            addresses.setdefault(net, []).append({"addr": port["ip"], "version": 4, "OS-EXT-IPS:type": "fixed"})
            for fip in self.floatingips.values():
                if fip["port_id"] == port["id"]:
                    addresses[net].append({"addr": fip["floating_ip_address"], "version": 4,
                                           "OS-EXT-IPS:type": "floating"})
        view["addresses"] = addresses if server["status"] != "BUILD" else {}
        if self.access_ipv4 and "public" in addresses and server["status"] != "BUILD":
            view["accessIPv4"] = addresses["public"][0]["addr"]
        return view

    def new_server(self, body: dict) -> tuple[int, dict]:
        req = body.get("server") or {}
        name, image_ref, flavor_ref = req.get("name"), req.get("imageRef"), req.get("flavorRef")
        if not name or not image_ref or not flavor_ref:
            return 400, _nova_error(400, "name, imageRef and flavorRef are required")
        image = self.images.get(image_ref)
        if not image or image["status"] != "active":
            return 400, _nova_error(400, f"Can not find requested image {image_ref}")
        if flavor_ref not in self.flavors:
            return 400, _nova_error(400, f"Flavor {flavor_ref} could not be found.")
        key_name = req.get("key_name")
        if key_name and key_name not in self.keypairs:
            return 400, _nova_error(400, "Invalid key_name provided.")
        meta = req.get("metadata") or {}
        if any(not isinstance(v, str) or len(k) > 255 or len(v) > 255 for k, v in meta.items()):
            return 400, _nova_error(400, "Invalid input for field/attribute metadata.")
        requested = req.get("networks")  # absent/"auto": every network; "none": no NIC; a list of {"uuid"}
        if requested == "none":
            nets = []
        elif isinstance(requested, list) and requested:
            nets = [n.get("uuid") for n in requested if isinstance(n, dict)]
        else:
            nets = ["00000000-0000-0000-0000-000000000000", "11111111-1111-1111-1111-111111111111"]
        for net in nets:
            if net not in self.networks:
                return 400, _nova_error(400, f"Network {net} could not be found.")
        server_id = str(uuid.uuid4())
        self.servers[server_id] = {
            "id": server_id, "name": name, "status": "BUILD", "metadata": meta, "key_name": key_name,
            "image": {"id": image_ref}, "flavor": {"id": flavor_ref}, "accessIPv4": "", "accessIPv6": "",
            "created": TIME, "updated": TIME, "tenant_id": self.project_id, "user_id": "u",
            "OS-EXT-STS:task_state": "spawning", "OS-EXT-STS:vm_state": "building",
            "_polls": 0, "_deleting": None, "_target": None, "_settle": 0,
            "_fault": self.server_faults.pop(0) if self.server_faults else None,
        }
        for net in nets:
            port_id = str(uuid.uuid4())
            self.ports[port_id] = {"id": port_id, "device_id": server_id, "network_id": net,
                                   "ip": f"192.0.2.{next(self._ips)}",
                                   "fixed_ips": []}
            self.ports[port_id]["fixed_ips"] = [{"ip_address": self.ports[port_id]["ip"]}]
        return 202, {"server": {"id": server_id, "links": [], "adminPass": "x",
                                "OS-DCF:diskConfig": "AUTO", "security_groups": [{"name": "default"}]}}

    def server_action(self, server: dict, body: dict) -> tuple[int, dict | None, dict]:
        if "createImage" in body:
            req = body["createImage"]
            if server["status"] not in ("ACTIVE", "SHUTOFF"):
                return 409, _nova_error(409, f"Cannot 'createImage' instance {server['id']} while it is in "
                                             f"vm_state {server['status'].lower()}", "conflictingRequest"), {}
            meta = req.get("metadata") or {}
            image_id = self.add_image(req["name"], status="queued", instance_uuid=server["id"],
                                      image_type="snapshot", base_image_ref=server["image"]["id"], **meta)
            self.images[image_id]["_end"] = self.image_faults.pop(0) if self.image_faults else "active"
            return 202, None, {"Location": f"{self.url}/image/v2/images/{image_id}"}
        if "os-stop" in body or "os-start" in body:
            want = "SHUTOFF" if "os-stop" in body else "ACTIVE"
            if server["status"] == want or server["_target"] == want:
                return 409, _nova_error(409, "Instance is in the wrong state", "conflictingRequest"), {}
            server.update(_target=want, _settle=0)
            server["OS-EXT-STS:task_state"] = "powering-off" if want == "SHUTOFF" else "powering-on"
            return 202, None, {}
        return 400, _nova_error(400, f"Unsupported action {sorted(body)}"), {}


def _nova_error(code, message, kind=None):
    kind = kind or {400: "badRequest", 404: "itemNotFound", 409: "conflictingRequest",
                    413: "overLimit", 429: "overLimit"}.get(code, "computeFault")
    return {kind: {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    cloud: FakeOpenStack
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # headers and body leave in one write (two small writes meet delayed ACKs: 40 ms each)

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _send(self, status, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.cloud.requests.append((self.command, self.path, status))  # before the client can see the answer
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send(400, _nova_error(400, "malformed JSON"))
        split = urlsplit(self.path)
        path, query = split.path.rstrip("/") or "/", parse_qs(split.query)
        cloud = self.cloud
        with cloud.lock:
            for fault in cloud.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                    return self._send(fault.status, _nova_error(fault.status, "injected fault"), headers)
            for hook in list(cloud.interrupts):
                if hook[0] == method and hook[1].search(path):
                    cloud.interrupts.remove(hook)
                    _thread.interrupt_main()
            if path.startswith("/identity"):
                return self._identity(method, path[len("/identity"):], body)
            if self.headers.get("X-Auth-Token") not in cloud.tokens:
                return self._send(401, {"error": {"code": 401, "message": "The request you have made "
                                                  "requires authentication."}})
            for prefix, handler in (("/compute/v2.1", self._compute), ("/image", self._image),
                                    ("/network", self._network)):
                if path.startswith(prefix):
                    return handler(method, path[len(prefix):] or "/", query, body)
            return self._send(404, _nova_error(404, f"no such path {path}"))

    def _microversion(self) -> tuple[int, int]:
        value = self.headers.get("X-OpenStack-Nova-API-Version") or \
            (self.headers.get("OpenStack-API-Version") or "compute 2.1").split()[-1]
        major, _, minor = value.partition(".")
        return int(major), int(minor or 0)

    # -- Keystone ---------------------------------------------------------------------------
    def _identity(self, method, path, body):
        cloud = self.cloud
        v3 = {"id": "v3.14", "status": "stable", "updated": TIME, "media-types": [],
              "links": [{"rel": "self", "href": cloud.auth_url + "/"}]}
        if method == "GET" and path in ("", "/"):
            return self._send(300, {"versions": {"values": [v3]}})
        if method == "GET" and path == "/v3":
            return self._send(200, {"version": v3})
        if method == "POST" and path == "/v3/auth/tokens":
            ident = body.get("auth", {}).get("identity", {})
            pw = ident.get("password", {}).get("user", {})
            appcred = ident.get("application_credential", {})
            ok = (pw.get("name") == cloud.username and pw.get("password") == cloud.password) or \
                (appcred.get("id") == "appcred-id" and appcred.get("secret") == cloud.password)
            if not ok:
                return self._send(401, {"error": {"code": 401, "message": "The request you have made "
                                                  "requires authentication.", "title": "Unauthorized"}})
            token_id = uuid.uuid4().hex
            cloud.tokens.add(token_id)
            token = {"token": {
                "methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z", "issued_at": TIME,
                "user": {"id": "u", "name": cloud.username, "domain": {"id": "default", "name": "Default"}},
                "project": {"id": cloud.project_id, "name": cloud.project,
                            "domain": {"id": "default", "name": "Default"}},
                "roles": [{"id": "r", "name": "member"}], "audit_ids": [uuid.uuid4().hex],
                "catalog": [{"type": kind, "name": kind, "id": kind,
                             "endpoints": [{"id": kind + "-public", "interface": "public", "url": url,
                                            "region": cloud.region, "region_id": cloud.region}]}
                            for kind, url in self._endpoints()]}}
            return self._send(201, token, {"X-Subject-Token": token_id})
        if method == "POST" and path == "/v2.0/tokens":
            auth = body.get("auth", {})
            rax = auth.get("RAX-KSKEY:apiKeyCredentials", {})
            pw = auth.get("passwordCredentials", {})
            ok = (rax.get("username") == cloud.username and rax.get("apiKey") == cloud.api_key) or \
                (pw.get("username") == cloud.username and pw.get("password") == cloud.password)
            if not ok:
                return self._send(401, {"unauthorized": {"code": 401, "message": "Username or api key "
                                                         "is invalid."}})
            token_id = uuid.uuid4().hex
            cloud.tokens.add(token_id)
            token = {"access": {
                "token": {"id": token_id, "expires": "2099-01-01T00:00:00Z",
                          "tenant": {"id": cloud.project_id, "name": cloud.project}},
                "user": {"id": "u", "name": cloud.username, "roles": [{"name": "member"}]},
                "serviceCatalog": [{"type": kind, "name": kind,
                                    "endpoints": [{"publicURL": url, "region": cloud.region,
                                                   "tenantId": cloud.project_id}]}
                                   for kind, url in self._endpoints()]}}
            return self._send(200, token)
        return self._send(404, {"error": {"code": 404, "message": "not found"}})

    def _endpoints(self):
        base = self.cloud.url
        return [("compute", base + "/compute/v2.1"), ("image", base + "/image"), ("network", base + "/network")]

    # -- Nova -------------------------------------------------------------------------------
    def _compute(self, method, path, query, body):
        cloud = self.cloud
        parts = path.strip("/").split("/")
        if parts[0] == "servers":
            if method == "GET" and len(parts) == 2 and parts[1] == "detail" or method == "GET" and len(parts) == 1:
                views = [cloud.server_view(s) for s in list(cloud.servers.values()) if cloud.tick_server(s)]
                name = (query.get("name") or [None])[0]
                if name:
                    views = [v for v in views if re.search(name, v["name"])]
                return self._send(200, {"servers": views})
            if method == "POST" and len(parts) == 1:
                if self._microversion() >= (2, 37) and "networks" not in (body.get("server") or {}):
                    return self._send(400, _nova_error(400, "Invalid input: 'networks' is a required property"))
                status, reply = cloud.new_server(body)
                return self._send(status, reply)
            server = cloud.servers.get(parts[1]) if len(parts) > 1 else None
            if server is None or cloud.tick_server(server) is None:
                return self._send(404, _nova_error(404, f"Instance {parts[1] if len(parts) > 1 else ''} "
                                                        "could not be found."))
            if method == "GET" and len(parts) == 2:
                return self._send(200, {"server": cloud.server_view(server)})
            if method == "DELETE" and len(parts) == 2:
                if server["_deleting"] is None:
                    server["_deleting"] = 0
                    server["OS-EXT-STS:task_state"] = "deleting"
                return self._send(204)
            if method == "POST" and parts[2:] == ["action"]:
                status, reply, headers = cloud.server_action(server, body)
                if "Location" in headers and self._microversion() >= (2, 45):
                    reply, headers = {"image_id": headers["Location"].rsplit("/", 1)[-1]}, {}
                return self._send(status, reply, headers)
        if parts[0] == "flavors":
            if method == "GET" and parts[1:] in ([], ["detail"]):
                return self._send(200, {"flavors": list(cloud.flavors.values())})
            if method == "GET" and len(parts) == 2 and parts[1] in cloud.flavors:
                return self._send(200, {"flavor": cloud.flavors[parts[1]]})
            return self._send(404, _nova_error(404, f"Flavor {parts[-1]} could not be found."))
        if parts[0] == "os-keypairs":
            if method == "GET" and len(parts) == 1:
                return self._send(200, {"keypairs": [{"keypair": k} for k in cloud.keypairs.values()]})
            if method == "POST" and len(parts) == 1:
                req = body.get("keypair") or {}
                if not req.get("name") or not req.get("public_key"):
                    return self._send(400, _nova_error(400, "Keypair data is invalid"))
                if req["name"] in cloud.keypairs:
                    return self._send(409, _nova_error(409, f"Key pair '{req['name']}' already exists."))
                cloud.add_keypair(req["name"], req["public_key"])
                return self._send(200, {"keypair": cloud.keypairs[req["name"]]})
            if len(parts) == 2 and parts[1] in cloud.keypairs:
                if method == "DELETE":
                    del cloud.keypairs[parts[1]]
                    return self._send(202)
                return self._send(200, {"keypair": cloud.keypairs[parts[1]]})
            return self._send(404, _nova_error(404, f"Keypair {parts[-1]} not found."))
        if parts[0] == "images" and method == "GET":  # the deprecated image proxy: images by name
            images = [_nova_image(i) for i in cloud.images.values()]
            if parts[1:] in ([], ["detail"]):
                name = (query.get("name") or [None])[0]
                return self._send(200, {"images": [i for i in images if not name or i["name"] == name]})
            found = [i for i in images if i["id"] == parts[1]]
            if found:
                return self._send(200, {"image": found[0]})
            return self._send(404, _nova_error(404, "Image not found."))
        return self._send(404, _nova_error(404, f"no such compute path {path}"))

    # -- Glance -----------------------------------------------------------------------------
    def _image(self, method, path, query, body):
        cloud = self.cloud
        if method == "GET" and path == "/v2/schemas/image":
            return self._send(200, {"name": "image", "properties": {}})
        if method == "GET" and path == "/v2/images":
            images = sorted(cloud.images.values(), key=lambda i: (i["created_at"], i["id"]), reverse=True)
            images = [i for i in images if cloud.tick_image(i)]
            for key in ("name", "status", "visibility"):
                if key in query:
                    images = [i for i in images if i.get(key) == query[key][0]]
            marker = (query.get("marker") or [None])[0]
            if marker:
                ids = [i["id"] for i in images]
                images = images[ids.index(marker) + 1:] if marker in ids else []
            limit = min(int((query.get("limit") or [cloud.page_size])[0]), cloud.page_size)
            page = images[:limit]
            reply = {"images": [_glance_view(i) for i in page], "schema": "/v2/schemas/images",
                     "first": "/v2/images"}
            if len(images) > limit:
                extra = "".join(f"&{k}={v[0]}" for k, v in query.items() if k not in ("marker", "limit"))
                reply["next"] = f"/v2/images?limit={limit}&marker={page[-1]['id']}{extra}"
            return self._send(200, reply)
        match = re.fullmatch(r"/v2/images/([^/]+)", path)
        image = cloud.images.get(match.group(1)) if match else None
        if image is None or cloud.tick_image(image) is None:
            return self._send(404, {"code": 404, "title": "Not Found",
                                    "message": f"No image found with ID {match.group(1) if match else path}"})
        if method == "GET":
            return self._send(200, _glance_view(image))
        if method == "DELETE":
            del cloud.images[image["id"]]
            return self._send(204)
        return self._send(405, {"code": 405, "message": "method not allowed"})

    # -- Neutron ----------------------------------------------------------------------------
    def _network(self, method, path, query, body):
        cloud = self.cloud
        if method == "GET" and path == "/v2.0/networks":
            nets = [n for n in cloud.networks.values()
                    if all(str(n.get(k)) == v[0] for k, v in query.items() if k in ("name", "id"))]
            return self._send(200, {"networks": nets})
        if method == "GET" and path == "/v2.0/ports":
            device = (query.get("device_id") or [None])[0]
            ports = [{k: v for k, v in p.items() if k != "ip"} for p in cloud.ports.values()
                     if device is None or p["device_id"] == device]
            return self._send(200, {"ports": ports})
        if method == "GET" and path == "/v2.0/floatingips":
            return self._send(200, {"floatingips": list(cloud.floatingips.values())})
        if method == "POST" and path == "/v2.0/floatingips":
            req = body.get("floatingip") or {}
            if req.get("floating_network_id") not in cloud.networks:
                return self._send(404, {"NeutronError": {"type": "NetworkNotFound", "message": "Network "
                                        f"{req.get('floating_network_id')} could not be found.", "detail": ""}})
            port = cloud.ports.get(req.get("port_id") or "")
            fip_id = str(uuid.uuid4())
            cloud.floatingips[fip_id] = {
                "id": fip_id, "floating_network_id": req["floating_network_id"],
                "floating_ip_address": f"198.51.100.{next(cloud._ips)}", "description": req.get("description", ""),
                "port_id": port["id"] if port else None, "fixed_ip_address": port["ip"] if port else None,
                "status": "ACTIVE" if port else "DOWN", "project_id": cloud.project_id}
            return self._send(201, {"floatingip": cloud.floatingips[fip_id]})
        match = re.fullmatch(r"/v2.0/floatingips/([^/]+)", path)
        if match and match.group(1) in cloud.floatingips:
            if method == "DELETE":
                del cloud.floatingips[match.group(1)]
                return self._send(204)
            return self._send(200, {"floatingip": cloud.floatingips[match.group(1)]})
        return self._send(404, {"NeutronError": {"type": "HTTPNotFound", "message": f"{path} not found",
                                                 "detail": ""}})


def _glance_view(image: dict) -> dict:
    view = {k: v for k, v in image.items() if not k.startswith("_")}
    view.update(self=f"/v2/images/{image['id']}", file=f"/v2/images/{image['id']}/file", schema="/v2/schemas/image")
    return view


def _nova_image(image: dict) -> dict:
    status = {"active": "ACTIVE", "queued": "SAVING", "saving": "SAVING", "killed": "ERROR"}.get(
        image["status"], "UNKNOWN")
    meta = {k: v for k, v in image.items() if k not in ("id", "name", "status", "created_at", "updated_at")
            and not k.startswith("_") and isinstance(v, str)}
    return {"id": image["id"], "name": image["name"], "status": status, "created": image["created_at"],
            "updated": image["updated_at"], "metadata": meta, "minDisk": 0, "minRam": 0, "progress": 100}
