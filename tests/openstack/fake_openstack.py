"""A fake OpenStack cloud on 127.0.0.1: Keystone v3 (and v2.0 for Rackspace API keys), Nova 2.1,
Glance v2 and the Neutron v2.0 calls the driver makes, speaking the real wire format.

Every service answers below `/<region>/` for each of `regions` (one shared state; the region of each
request is recorded). `rackspace=True` answers as Rackspace does: a v2.0 token naming the default
region, versioned catalog URLs, a legacy v2 compute API without microversions, createImage without
a Location header, public + ServiceNet attached to every server, accessIPv4, no floating IPs.
Otherwise it is a devstack-like cloud: an external `public` network, a `private` one routed to it,
409 NetworkAmbiguous when a server could go on several networks, floating IPs only on routed ports.

State changes by poll count: a server answers BUILD for `build_polls` reads, then ACTIVE (or ERROR
with a fault when one is injected); a snapshot image goes queued -> saving -> active (or killed);
deletes and stop/start take `settle_polls` reads. Lists page as Nova (`limit`/`marker`,
`<key>_links`: servers, flavors, key pairs from 2.35) and Glance (`next`) do; the compute API's
version document says `nova_max` (microversions above it get 406). Faults are injected per request (`fail_next(method,
path_regex, status, retry_after=...)`, `retry_after` in seconds or `retry_at=` seconds ahead as an
HTTP date) or per resource (`server_error`, `image_killed`). Every request is recorded in
`requests` as (method, path below the region, status) and its region in `regions_seen`.
"""
from __future__ import annotations

import _thread
import email.utils
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.openstack import fake_identity

TIME = "2026-01-01T00:00:00Z"
PUBLIC, PRIVATE = "00000000-0000-0000-0000-000000000000", "11111111-1111-1111-1111-111111111111"
NOVA_MAX = "2.96"  # the default `nova_max`: a cloud as new as the python-novaclient pinned
COMPUTE = re.compile(r"^/compute/v2(\.1)?(/[0-9a-f]{32})?(?=/|$)")


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    retry_after: str | None
    times: int
    retry_at: float | None = None  # seconds ahead, sent as an HTTP date


class FakeOpenStack:
    """The fake cloud: start() it, point the driver at `auth_url`, inspect its state dicts."""

    def __init__(self, username="demo", password="secret", project="demo", region="RegionOne",
                 api_key="rax-key", build_polls=2, image_polls=2, settle_polls=1, page_size=3,
                 server_page_size=3, access_ipv4=False, rackspace=False, regions=None, default_region=None,
                 nova_max=NOVA_MAX):
        self.username, self.password, self.project = username, password, project
        self.regions = list(regions or [region])
        self.region = self.regions[0] if regions else region  # what openstack_env names (OS_REGION_NAME)
        self.default_region = default_region or self.regions[0]
        self.api_key = api_key
        self.project_id = uuid.uuid4().hex
        self.build_polls, self.image_polls, self.settle_polls = build_polls, image_polls, settle_polls
        self.page_size, self.server_page_size = page_size, server_page_size
        self.nova_max = nova_max  # the newest microversion the compute API answers (its version document)
        self.rackspace = rackspace
        self.access_ipv4 = access_ipv4 or rackspace
        self.image_location = not rackspace  # Rackspace may answer createImage without a Location
        self.regions_seen: list[str] = []
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
        self.networks: dict[str, dict] = {}
        self.routers: dict[str, dict] = {}
        self._ips = itertools.count(10)
        self._seq = itertools.count()
        self.add_network("public", external=not rackspace, net_id=PUBLIC)
        self.add_network("private", net_id=PRIVATE, router_to=None if rackspace else "public")
        self.faults: list[Fault] = []
        self.server_faults: list[str] = []  # next servers go to ERROR with these messages
        self.admin_pass = "x"  # what a server create answers as its root password (a secret)
        self.image_faults: list[str] = []  # next snapshots end in these states (killed, deleted, gone)
        self.requests: list[tuple[str, str, int]] = []
        self.interrupts: list[tuple[str, re.Pattern]] = []  # requests that send SIGINT to the client
        self.lost: list[tuple[str, re.Pattern, int]] = []  # requests done whose answer is an error instead
        self.links_given: list[str] = []  # Glance `next` links, as the fake wrote them
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

    def add_network(self, name, external=False, router_to=None, net_id=None) -> str:
        """A network with one subnet; `router_to`: a router links it to that (external) network."""
        net_id = net_id or str(uuid.uuid4())
        with self.lock:
            self.networks[net_id] = {"id": net_id, "name": name, "router:external": external, "shared": False,
                                     "status": "ACTIVE", "admin_state_up": True, "subnets": [str(uuid.uuid4())],
                                     "tenant_id": self.project_id, "project_id": self.project_id}
            if router_to:
                gateway = next(n["id"] for n in self.networks.values() if n["name"] == router_to)
                router_id = str(uuid.uuid4())
                self.routers[router_id] = {"id": router_id, "name": f"router-{name}", "status": "ACTIVE",
                                           "external_gateway_info": {"network_id": gateway, "enable_snat": True},
                                           "project_id": self.project_id}
                self._add_port(router_id, net_id, "network:router_interface")
        return net_id

    def fail_next(self, method, path, status, retry_after=None, times=1, retry_at=None) -> None:
        """Answer the next `times` requests matching method and path regex with `status` (and a
        Retry-After of `retry_after` seconds, or the HTTP date `retry_at` seconds from the answer)."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path), status, retry_after, times, retry_at))

    def interrupt_on(self, method, path) -> None:
        """Deliver a KeyboardInterrupt to the main thread (the client) when this request arrives."""
        with self.lock:
            self.interrupts.append((method, re.compile(path)))

    def lose_answer(self, method, path, status=503) -> None:
        """Carry out the next request matching method and path, then answer `status` (the answer is lost)."""
        with self.lock:
            self.lost.append((method, re.compile(path), status))

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
            addresses.setdefault(net, []).append({"addr": port["ip"], "version": 4, "OS-EXT-IPS:type": "fixed",
                                                  "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
            if self.rackspace and net == "public":  # Rackspace lists IPv6 next to IPv4 on public
                addresses[net].append({"addr": f"2001:db8::{port['ip'].rsplit('.', 1)[-1]}", "version": 6})
            for fip in self.floatingips.values():
                if fip["port_id"] == port["id"]:
                    addresses[net].append({"addr": fip["floating_ip_address"], "version": 4,
                                           "OS-EXT-IPS:type": "floating"})
        building = server["status"] == "BUILD"
        view["addresses"] = addresses if not building else {}
        if self.access_ipv4 and not building:
            view["accessIPv4"] = server["_access_ipv4"]
        return view

    def new_server(self, body: dict, microversion) -> tuple[int, dict]:
        req = body.get("server") or {}
        name, image_ref, flavor_ref = req.get("name"), req.get("imageRef"), req.get("flavorRef")
        if not name or not image_ref or not flavor_ref:
            return 400, _nova_error(400, "name, imageRef and flavorRef are required")
        if microversion >= (2, 37) and "networks" not in req:
            return 400, _nova_error(400, "Invalid input for field/attribute server. Value: ... "
                                         "'networks' is a required property")
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
        requested = req.get("networks")  # absent/"auto": Nova chooses; "none": no NIC; a list of {"uuid"}
        if requested == "none":
            nets = []
        elif isinstance(requested, list) and requested:
            nets = [n.get("uuid") for n in requested if isinstance(n, dict)]
        elif self.rackspace:
            nets = [PUBLIC, PRIVATE]  # Rackspace: PublicNet and ServiceNet unless told otherwise
        else:  # Nova's allocate_for_instance: the project's networks (external ones are not candidates)
            nets = [n["id"] for n in self.networks.values() if not n["router:external"]]
            if len(nets) > 1:
                return 409, _nova_error(409, "Multiple possible networks found, use a Network ID to be more "
                                             "specific.", "conflictingRequest")
        for net in nets:
            if net not in self.networks:
                return 400, _nova_error(400, f"Network {net} could not be found.")
        server_id = str(uuid.uuid4())
        self.servers[server_id] = {
            "id": server_id, "name": name, "status": "BUILD", "metadata": meta, "key_name": key_name,
            "image": {"id": image_ref}, "flavor": {"id": flavor_ref}, "accessIPv4": "", "accessIPv6": "",
            "created": TIME, "updated": TIME, "tenant_id": self.project_id, "user_id": "u",
            "OS-EXT-STS:task_state": "spawning", "OS-EXT-STS:vm_state": "building",
            "_polls": 0, "_deleting": None, "_target": None, "_settle": 0, "_seq": next(self._seq),
            "_access_ipv4": f"203.0.113.{next(self._ips)}",
            "_fault": self.server_faults.pop(0) if self.server_faults else None,
        }
        for net in nets:
            self._add_port(server_id, net, "compute:nova")
        return 202, {"server": {"id": server_id, "links": [], "adminPass": self.admin_pass,
                                "OS-DCF:diskConfig": "AUTO", "security_groups": [{"name": "default"}]}}

    def _add_port(self, device_id: str, net_id: str, owner: str) -> dict:
        port_id = str(uuid.uuid4())
        ip = f"192.0.2.{next(self._ips)}"
        self.ports[port_id] = {"id": port_id, "device_id": device_id, "device_owner": owner, "network_id": net_id,
                               "ip": ip, "status": "ACTIVE", "mac_address": f"fa:16:3e:00:00:{len(self.ports):02x}",
                               "fixed_ips": [{"subnet_id": self.networks[net_id]["subnets"][0], "ip_address": ip}]}
        return self.ports[port_id]

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
            headers = {"Location": f"{self.url}/{self.regions[0]}/image/v2/images/{image_id}"} \
                if self.image_location else {}
            return 202, None, headers
        if "os-stop" in body or "os-start" in body:
            want = "SHUTOFF" if "os-stop" in body else "ACTIVE"
            if server["status"] == want or server["_target"] == want:
                return 409, _nova_error(409, "Instance is in the wrong state", "conflictingRequest"), {}
            server.update(_target=want, _settle=0)
            server["OS-EXT-STS:task_state"] = "powering-off" if want == "SHUTOFF" else "powering-on"
            return 202, None, {}
        return 400, _nova_error(400, f"Unsupported action {sorted(body)}"), {}

    def routed(self, net_id: str, external: str) -> bool:
        """Whether a router with its gateway on `external` has an interface on `net_id`."""
        gateways = {r["id"] for r in self.routers.values()
                    if (r.get("external_gateway_info") or {}).get("network_id") == external}
        return any(p["device_id"] in gateways and p["network_id"] == net_id for p in self.ports.values())


def _nova_error(code, message, kind=None):
    kind = kind or {400: "badRequest", 404: "itemNotFound", 406: "computeFault", 409: "conflictingRequest",
                    413: "overLimit", 429: "overLimit"}.get(code, "computeFault")
    return {kind: {"code": code, "message": message}}


def _neutron_error(kind, message):
    return {"NeutronError": {"type": kind, "message": message, "detail": ""}}


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
        if getattr(self, "_lose", None):  # done, but the client hears an error
            status, body, headers, self._lose = self._lose, _nova_error(self._lose, "answer lost"), {}, None
        data = json.dumps(body).encode() if body is not None else b""
        self.cloud.requests.append((self.command, self._path, status))  # before the client can see the answer
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
        cloud = self.cloud
        split = urlsplit(self.path)
        region, _, rest = split.path.lstrip("/").partition("/")
        if region in cloud.regions:
            self._path = "/" + rest + (f"?{split.query}" if split.query else "")
        else:
            region, self._path = None, self.path
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send(400, _nova_error(400, "malformed JSON"))
        path, query = urlsplit(self._path).path.rstrip("/") or "/", parse_qs(split.query)
        with cloud.lock:
            if region:
                cloud.regions_seen.append(region)
            for fault in cloud.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                    if fault.retry_at is not None:
                        headers["Retry-After"] = email.utils.formatdate(time.time() + fault.retry_at, usegmt=True)
                    return self._send(fault.status, _nova_error(fault.status, "injected fault"), headers)
            for hook in list(cloud.interrupts):
                if hook[0] == method and hook[1].search(path):
                    cloud.interrupts.remove(hook)
                    _thread.interrupt_main()
            self._lose = None
            for lost in list(cloud.lost):
                if lost[0] == method and lost[1].search(path):
                    cloud.lost.remove(lost)
                    self._lose = lost[2]
            if path.startswith("/identity"):
                return self._identity(method, path[len("/identity"):], body)
            if self.headers.get("X-Auth-Token") not in cloud.tokens:
                return self._send(401, {"error": {"code": 401, "message": "The request you have made "
                                                  "requires authentication."}})
            if region:
                compute = COMPUTE.match(path)
                if compute:
                    return self._compute(method, path[compute.end():] or "/", query, body, compute)
                for prefix, handler in (("/image", self._image), ("/network", self._network)):
                    if path.startswith(prefix):
                        return handler(method, path[len(prefix):] or "/", query, body)
            return self._send(404, _nova_error(404, f"no such path {path}"))

    def _microversion(self) -> tuple[int, int]:
        if self.cloud.rackspace:
            return (2, 0)  # a legacy v2 API: no microversions, the headers are ignored
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
            return self._send(*fake_identity.v3_token(cloud, body))
        if method == "POST" and path == "/v2.0/tokens":
            return self._send(*fake_identity.v2_token(cloud, body))
        return self._send(404, {"error": {"code": 404, "message": "not found"}})

    # -- Nova -------------------------------------------------------------------------------
    def _compute(self, method, path, query, body, prefix):
        cloud = self.cloud
        parts = path.strip("/").split("/")
        if parts == [""] and method == "GET":  # the version document
            if cloud.rackspace:
                return self._send(200, {"version": {"id": "v2.0", "status": "CURRENT", "version": "",
                                                    "min_version": "", "updated": "2011-01-21T11:33:21Z"}})
            return self._send(200, {"version": {"id": "v2.1", "status": "CURRENT", "version": cloud.nova_max,
                                                "min_version": "2.1", "updated": "2013-07-23T11:33:21Z"}})
        wanted = self._microversion()
        if wanted > tuple(int(p) for p in cloud.nova_max.split(".")):
            return self._send(406, _nova_error(406, f"Version {wanted[0]}.{wanted[1]} is not supported by the "
                                                    f"API. Minimum is 2.1 and maximum is {cloud.nova_max}."))
        if parts[0] == "servers":
            if method == "GET" and (parts[1:] == ["detail"] or len(parts) == 1):
                return self._server_list(query, prefix)
            if method == "POST" and len(parts) == 1:
                status, reply = cloud.new_server(body, wanted)
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
                if "Location" in headers and wanted >= (2, 45):
                    reply, headers = {"image_id": headers["Location"].rsplit("/", 1)[-1]}, {}
                return self._send(status, reply, headers)
        if parts[0] == "flavors":
            if method == "GET" and parts[1:] in ([], ["detail"]):  # by flavor id, paged like servers
                flavors = sorted(cloud.flavors.values(), key=lambda f: f["id"])
                return self._page(flavors, "flavors", query, prefix, "/flavors/detail", cloud.page_size)
            if method == "GET" and len(parts) == 2 and parts[1] in cloud.flavors:
                return self._send(200, {"flavor": cloud.flavors[parts[1]]})
            return self._send(404, _nova_error(404, f"Flavor {parts[-1]} could not be found."))
        if parts[0] == "os-keypairs":
            if method == "GET" and len(parts) == 1:  # paged from 2.35 (limit, marker: a name)
                pairs = [{"keypair": k} for k in cloud.keypairs.values()]
                if wanted < (2, 35):
                    return self._send(200, {"keypairs": pairs})
                return self._page(pairs, "keypairs", query, prefix, "/os-keypairs", cloud.page_size,
                                  key_of=lambda p: p["keypair"]["name"])
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
        return self._send(404, _nova_error(404, f"no such compute path {path}"))

    def _server_list(self, query, prefix):
        """Servers newest first, at most `server_page_size` a page."""
        cloud = self.cloud
        servers = sorted((s for s in list(cloud.servers.values()) if cloud.tick_server(s)),
                         key=lambda s: s["_seq"], reverse=True)
        name = (query.get("name") or [None])[0]
        views = [cloud.server_view(s) for s in servers if not name or re.search(name, s["name"])]
        return self._page(views, "servers", query, prefix, "/servers/detail", cloud.server_page_size)

    def _page(self, items, key, query, prefix, path, page_size, key_of=None):
        """Nova's paging: after `marker` (400 when it names nothing), at most `page_size` (or `limit`)
        items, and a `<key>_links` rel=next (carrying the marker) whenever a page is full."""
        key_of = key_of or (lambda item: item["id"])
        marker = (query.get("marker") or [None])[0]
        if marker:
            ids = [key_of(i) for i in items]
            if marker not in ids:
                return self._send(400, _nova_error(400, f"marker [{marker}] not found"))
            items = items[ids.index(marker) + 1:]
        limit = min(int((query.get("limit") or [page_size])[0]), page_size)
        page = items[:limit]
        reply: dict = {key: page}
        if page and len(page) == limit:
            params = {k: v[0] for k, v in query.items() if k != "marker"}
            params.update(limit=limit, marker=key_of(page[-1]))
            region = self.path.lstrip("/").split("/", 1)[0]
            reply[f"{key}_links"] = [{"rel": "next", "href": f"{self.cloud.url}/{region}{prefix.group(0)}{path}?"
                                                             f"{urlencode(params)}"}]
        return self._send(200, reply)

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
            if len(images) > limit:  # Glance's next link: the request's filters, the limit and the marker
                params = {k: v[0] for k, v in query.items() if k not in ("marker", "limit")}
                reply["next"] = f"/v2/images?{urlencode({**params, 'limit': limit, 'marker': page[-1]['id']})}"
                cloud.links_given.append(reply["next"])
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
        if not path.startswith("/v2.0/"):
            return self._send(404, {"NeutronError": {"type": "HTTPNotFound", "message": f"{path} not found",
                                                     "detail": ""}})
        path = path[len("/v2.0"):]
        if method == "GET" and path == "/extensions":
            aliases = ["external-net", "quotas", "security-group"] + ([] if cloud.rackspace else ["router"])
            return self._send(200, {"extensions": [{"alias": a, "name": a, "description": a, "updated": TIME,
                                                    "links": []} for a in aliases]})
        if method == "GET" and path == "/networks":
            nets = [n for n in cloud.networks.values()
                    if all(str(n.get(k)) == v[0] for k, v in query.items() if k in ("name", "id"))]
            return self._send(200, {"networks": nets})
        if method == "GET" and path == "/ports":
            device = (query.get("device_id") or [None])[0]
            ports = [{k: v for k, v in p.items() if k != "ip"} for p in cloud.ports.values()
                     if device is None or p["device_id"] == device]
            return self._send(200, {"ports": ports})
        if cloud.rackspace and (path.startswith("/floatingips") or path.startswith("/routers")):
            return self._send(404, {"NeutronError": {"type": "HTTPNotFound", "message": "The resource could "
                                                     "not be found.", "detail": ""}})
        if method == "GET" and path == "/routers":
            return self._send(200, {"routers": list(cloud.routers.values())})
        if method == "GET" and path == "/floatingips":
            return self._send(200, {"floatingips": list(cloud.floatingips.values())})
        if method == "POST" and path == "/floatingips":
            return self._new_floating_ip(body.get("floatingip") or {})
        match = re.fullmatch(r"/floatingips/([^/]+)", path)
        if match and match.group(1) in cloud.floatingips:
            if method == "DELETE":
                del cloud.floatingips[match.group(1)]
                return self._send(204)
            return self._send(200, {"floatingip": cloud.floatingips[match.group(1)]})
        return self._send(404, _neutron_error("HTTPNotFound", f"{path} not found"))

    def _new_floating_ip(self, req):
        cloud = self.cloud
        external = req.get("floating_network_id")
        if external not in cloud.networks:
            return self._send(404, _neutron_error("NetworkNotFound", f"Network {external} could not be found."))
        port = cloud.ports.get(req.get("port_id") or "")
        if port and not cloud.routed(port["network_id"], external):
            return self._send(404, _neutron_error(
                "ExternalGatewayForFloatingIPNotFound",
                f"External network {external} is not reachable from subnet {port['fixed_ips'][0]['subnet_id']}.  "
                f"Therefore, cannot associate Port {port['id']} with a Floating IP."))
        fip_id = str(uuid.uuid4())
        cloud.floatingips[fip_id] = {
            "id": fip_id, "floating_network_id": external, "router_id": None,
            "floating_ip_address": f"198.51.100.{next(cloud._ips)}", "description": req.get("description", ""),
            "port_id": port["id"] if port else None, "fixed_ip_address": port["ip"] if port else None,
            "status": "ACTIVE" if port else "DOWN", "project_id": cloud.project_id}
        return self._send(201, {"floatingip": cloud.floatingips[fip_id]})


def _glance_view(image: dict) -> dict:
    view = {k: v for k, v in image.items() if not k.startswith("_")}
    view.update(self=f"/v2/images/{image['id']}", file=f"/v2/images/{image['id']}/file", schema="/v2/schemas/image")
    return view
