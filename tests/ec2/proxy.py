"""A small HTTP proxy in front of moto's EC2 server that records actions and can misbehave on purpose.

It speaks the real wire format both ways: requests are forwarded untouched; rules can answer
RequestLimitExceeded (EC2's throttling error, HTTP 503) a number of times, report images `pending`
(hold them), rewrite image creation dates, fail an action with any EC2 error code, or call a hook
when an action is seen (for example to send SIGINT to a bake waiting for an image).
"""
from __future__ import annotations

import collections
import http.client
import http.server
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Callable

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


def error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>proxy-0000</RequestID></Response>").encode()


class EC2Proxy:
    """Forwards to `upstream` (http://host:port). Start with .start(), stop with .stop(); .url to use."""

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.lock = threading.Lock()
        self.actions: list[str] = []
        self.answered: collections.Counter[str] = collections.Counter()  # action -> injected errors
        self._errors: list[list] = []  # [action or None, code, status, times left, passes left]
        self.held_images: set[str] = set()  # reported pending while held
        self.pending_polls: dict[str, int] = {}  # image id -> polls still answered pending
        self.creation_dates: dict[str, str] = {}
        self.hooks: list[tuple[str, Callable[[dict], None]]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ec2-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "EC2Proxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # -- rules --------------------------------------------------------------------------
    def fail(self, action: str | None, times: int, code: str = "RequestLimitExceeded", status: int = 503,
             skip: int = 0):
        """Answer `action` (None: any action) with an EC2 error `times` times (after letting `skip` pass),
        then pass it through."""
        with self.lock:
            self._errors.append([action, code, status, times, skip])

    def hold_pending(self, image_id: str | None = None, polls: int | None = None) -> None:
        """Report the image `pending` in DescribeImages: for `polls` answers, or until release()."""
        with self.lock:
            if polls is None:
                self.held_images.add(image_id or "*")
            else:
                self.pending_polls[image_id or "*"] = polls

    def release(self) -> None:
        with self.lock:
            self.held_images.clear()
            self.pending_polls.clear()

    def on(self, action: str, hook: Callable[[dict], None]) -> None:
        """Call hook(params) (on the proxy's thread) each time `action` arrives."""
        self.hooks.append((action, hook))

    def count(self, action: str) -> int:
        with self.lock:
            return self.actions.count(action)

    # -- machinery ------------------------------------------------------------------------
    def _injected_error(self, action: str) -> tuple[int, bytes] | None:
        with self.lock:
            for rule in self._errors:
                if rule[3] > 0 and rule[0] in (None, action):
                    if rule[4] > 0:
                        rule[4] -= 1
                        continue
                    rule[3] -= 1
                    self.answered[action] += 1
                    return rule[2], error_xml(rule[1], f"injected by the test proxy ({rule[1]})")
        return None

    def _rewrite_images(self, body: bytes) -> tuple[bytes, bool]:
        """Apply pending/creation-date rules to a DescribeImages answer; True if one said pending."""
        root = ET.fromstring(body)
        namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
        ns = f"{{{namespace}}}" if namespace else ""
        said_pending = False
        with self.lock:
            for item in root.iter(f"{ns}item"):
                image_id = item.findtext(f"{ns}imageId")
                state = item.find(f"{ns}imageState")
                if image_id is None or state is None:
                    continue
                created = item.find(f"{ns}creationDate")
                if image_id in self.creation_dates and created is not None:
                    created.text = self.creation_dates[image_id]
                key = image_id if image_id in self.pending_polls else "*"
                if state.text == "available" and (self.held_images & {image_id, "*"}
                                                  or self.pending_polls.get(key, 0) > 0):
                    if self.pending_polls.get(key, 0) > 0:
                        self.pending_polls[key] -= 1
                    state.text = "pending"
                    said_pending = True
        ET.register_namespace("", namespace)
        return ET.tostring(root, xml_declaration=True, encoding="UTF-8"), said_pending

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Answers go out in two writes (headers, body): with Nagle's algorithm on, botocore, which
            # delays its ACKs, waited about 40 ms for every body.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
                action = params.get("Action", "?")
                with proxy.lock:
                    proxy.actions.append(action)
                injected = proxy._injected_error(action)
                if injected:
                    return self._answer(injected[0], {"Content-Type": "text/xml"}, injected[1])
                status, headers, data = self._forward(body)
                said_pending = False
                if action == "DescribeImages" and status == 200:
                    data, said_pending = proxy._rewrite_images(data)
                for name, hook in proxy.hooks:
                    if name == action or (name == "DescribeImages:pending" and said_pending):
                        hook(params)
                self._answer(status, headers, data)

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    conn.request("POST", self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                    return reply.status, {k: v for k, v in reply.getheaders()
                                          if k.lower() not in HOP_HEADERS}, data
                finally:
                    conn.close()

            def _answer(self, status: int, headers: dict, data: bytes):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
