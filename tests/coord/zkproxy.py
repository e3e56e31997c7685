"""A TCP proxy in front of the tests' ZooKeeper that can lose one answer on purpose.

ZooKeeper's client protocol is length-prefixed frames (a 4-byte big-endian length, then the body);
after the connect handshake a request starts with its xid and op code, an answer with the same xid.
`lose_answer_to(pattern)` arms the proxy: the next request whose body holds `pattern` (e.g. b"/locks/")
goes to the server, the server's answer to it is dropped, and that client connection is cut. The
server has done the request (a lock created) and the client only sees a lost connection: it
reconnects through the proxy within its session, as after a ZooKeeper restart or a network blip.
"""
from __future__ import annotations

import socket
import struct
import threading

from tests.ci.proxy import close_both


class ZooKeeperProxy:
    def __init__(self, target: str):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pattern: bytes | None = None
        self.lost: list[bytes] = []  # the request bodies whose answers were dropped
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="zk-proxy").start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_answer_to(self, pattern: bytes) -> None:
        with self._lock:
            self._pattern = pattern

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            Connection(self, client, server)


class Connection:
    def __init__(self, proxy: ZooKeeperProxy, client: socket.socket, server: socket.socket):
        self.proxy, self.client, self.server = proxy, client, server
        self.doomed_xid: int | None = None
        self.closed = threading.Event()
        threading.Thread(target=self._pump, args=(client, server, self._to_server), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, self._to_client), daemon=True).start()

    def _pump(self, source, sink, judge) -> None:
        first = True
        try:
            while not self.closed.is_set():
                frame = _read_frame(source)
                if frame is None:
                    break
                if not first and not judge(frame):
                    break
                first = False
                sink.sendall(struct.pack(">i", len(frame)) + frame)
        except OSError:
            pass
        self._close()

    def _to_server(self, body: bytes) -> bool:
        with self.proxy._lock:
            pattern = self.proxy._pattern
            if pattern is not None and pattern in body and len(body) >= 8:
                self.proxy._pattern = None
                self.doomed_xid = struct.unpack(">i", body[:4])[0]
                self.proxy.lost.append(body)
        return True

    def _to_client(self, body: bytes) -> bool:
        """False (cut the connection) for the answer to the doomed request: the client never sees it."""
        return not (self.doomed_xid is not None and len(body) >= 4
                    and struct.unpack(">i", body[:4])[0] == self.doomed_xid)

    def _close(self) -> None:
        self.closed.set()
        close_both(self.client, self.server)


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    return _read_exactly(sock, struct.unpack(">i", head)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
