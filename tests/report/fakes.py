"""Real servers on 127.0.0.1 for the report tests.

ReviewGerrit  the runner tests' Gerrit (SSH, git, stream) whose `gerrit review` can refuse for a while
              (`refuse` = how many of the next reviews fail with exit 1, as a Gerrit that is down would).
RestGerrit    Gerrit's REST review endpoint: POST /a/changes/<id>/revisions/<rev>/review with HTTP
              basic auth, answering with the `)]}'` prefix; records reviews; `refuse` answers 503.
LogServer     serves a directory over HTTP (the published logs, as nginx would).
SmtpServer    aiosmtpd with STARTTLS (a self-signed certificate for 127.0.0.1) and AUTH LOGIN/PLAIN
              required; records the messages and the logins it accepted.
"""
from __future__ import annotations

import base64
import datetime as dt
import email
import functools
import ipaddress
import json
import socket
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.runner.gitgerrit import GitGerrit


class ReviewGerrit(GitGerrit):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refuse = 0
        self.refused = 0

    async def _process(self, process) -> None:
        command = process.command or ""
        if command.startswith("gerrit review ") and self.refuse > 0:
            with self._lock:
                self.refuse -= 1
                self.refused += 1
                self.commands.append(command)
            process.stderr.write(b"fatal: internal server error\n")
            process.exit(1)
            return
        await super()._process(process)


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RestGerrit(_Server):
    """Records (change id, revision, body) of each accepted review in `reviews`."""

    def __init__(self, user: str, password: str):
        self.user, self.password = user, password
        self.reviews: list[tuple[str, str, dict]] = []
        self.refuse = 0
        self.refused = 0
        self.unauthorized = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.split("/")
                # /a/changes/<id>/revisions/<rev>/review
                if len(parts) != 7 or parts[1:3] != ["a", "changes"] or parts[4] != "revisions" or parts[6] != "review":
                    return self._answer(404, b"Not found\n")
                expected = "Basic " + base64.b64encode(f"{fake.user}:{fake.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    fake.unauthorized += 1
                    return self._answer(401, b"Unauthorized\n")
                if fake.refuse > 0:
                    fake.refuse -= 1
                    fake.refused += 1
                    return self._answer(503, b"Service Unavailable\n")
                data = json.loads(body)
                fake.reviews.append((urllib.parse.unquote(parts[3]), urllib.parse.unquote(parts[5]), data))
                answer = {"labels": data.get("labels", {})}
                self._answer(200, b")]}'\n" + json.dumps(answer).encode(), "application/json; charset=UTF-8")

            def _answer(self, status, body, kind="text/plain"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(Handler)


class LogServer(_Server):
    def __init__(self, root: Path):
        Path(root).mkdir(parents=True, exist_ok=True)

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        super().__init__(functools.partial(Handler, directory=str(root)))


class SmtpServer:
    """.port, .ca_file (the certificate to trust), .messages, .logins (user names accepted)."""

    def __init__(self, folder: Path, user: str, password: str):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list[email.message.Message] = []
        self.logins: list[str] = []
        self.ca_file = Path(folder) / "smtp-cert.pem"
        key_file = Path(folder) / "smtp-key.pem"
        _self_signed(self.ca_file, key_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        fake = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                fake.messages.append(email.message_from_bytes(envelope.original_content or envelope.content))
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == user.encode() and auth_data.password == password.encode()
            if ok:
                fake.logins.append(auth_data.login.decode())
            return AuthResult(success=ok)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=authenticator)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def _self_signed(cert_file: Path, key_file: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
