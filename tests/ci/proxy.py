"""A fault-injecting TCP proxy on 127.0.0.1 between the listener and the fake Gerrit.

Each accepted connection is forwarded to the target by two pump threads. Faults, all real TCP:
- `drop()`: reset every open connection at once (SO_LINGER 0: an RST, as a crashed middlebox sends);
- `drop_after(n)`: reset the connections once `n` more bytes have gone from the server to the
  client (0: right after the next server write, e.g. the event just published); the bytes past the
  cut are never delivered, so a line may be cut in half;
- `stall()`: the open connections stop forwarding in both directions and stay open (a half-open
  connection or a stalled middlebox: no FIN, no RST, nothing); new connections work;
- `refuse()` / `refuse(False)`: stop listening (the kernel answers connection refused) and listen on
  the same port again; meanwhile a socket bound to the port, never listening, keeps it ours (else any
  connect() on the machine, the listener's own retries included, could take it as its source port and
  the listen again fail with "address in use").
Counters: `accepted`, `drops`, `server_bytes`.
"""
from __future__ import annotations

import socket
import struct
import threading

RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class FaultProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.host = host
        self.port = 0
        self.accepted = 0
        self.drops = 0
        self.server_bytes = 0
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._drop_after: int | None = None
        self._listener: socket.socket | None = None
        self._frozen: list[_Link] = []
        self._held: socket.socket | None = None  # the port, bound but not listening, while refused
        self._closed = False

    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        self._closed = True
        self._close_listener()
        self._release_port()
        for link in self._take_links() + self._frozen:
            link.reset()

    # -- faults
    def drop(self) -> int:
        """Reset every open connection; return how many."""
        links = self._take_links()
        for link in links:
            link.reset()
        with self._lock:
            self.drops += bool(links)
        return len(links)

    def drop_after(self, server_bytes: int = 0) -> None:
        """Reset the open connections once `server_bytes` more bytes went from server to client."""
        with self._lock:
            self._drop_after = server_bytes

    def stall(self) -> int:
        """Freeze every open connection (never forwarded again, never closed until stop); return how many."""
        links = self._take_links()
        for link in links:
            link.freeze()
        with self._lock:
            self._frozen += links
        return len(links)

    def refuse(self, refused: bool = True) -> None:
        """Stop (or resume) listening on the proxy's port; open connections are not touched."""
        if refused:
            self._close_listener()
            if self._held is None:
                held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                held.bind((self.host, self.port))  # no listen(): connections are refused
                self._held = held
        else:
            self._listen()

    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    # -- internals
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._release_port()
        threading.Thread(target=self._accept, args=(sock,), name="proxy-accept", daemon=True).start()

    def _release_port(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread
            except OSError:
                pass
            sock.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return  # the listener was closed (refuse or stop)
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(self, client, server)
            with self._lock:
                self._links.add(link)
                self.accepted += 1
            link.start()

    def _take_links(self) -> list["_Link"]:
        with self._lock:
            links, self._links = list(self._links), set()
        return links

    def _forwarded(self, data: bytes) -> tuple[bytes, bool]:
        """Account for `data` going server -> client: (what to send, whether to drop after it)."""
        with self._lock:
            self.server_bytes += len(data)
            budget = self._drop_after
            if budget is None:
                return data, False
            if len(data) < budget:
                self._drop_after = budget - len(data)
                return data, False
            self._drop_after = None
            self.drops += 1
        return (data[:budget] if budget else data), True

    def _discard(self, link: "_Link") -> None:
        with self._lock:
            self._links.discard(link)


class _Link:
    """One proxied connection: client <-> server."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket):
        self.proxy, self.client, self.server = proxy, client, server
        self.frozen = threading.Event()
        self.dead = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.server, False), daemon=True,
                         name="proxy-up").start()
        threading.Thread(target=self._pump, args=(self.server, self.client, True), daemon=True,
                         name="proxy-down").start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        while not self.dead.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if self.dead.is_set():
                return  # reset meanwhile
            if self.frozen.is_set():
                self.dead.wait()  # a frozen link forwards nothing and closes nothing until reset
                return
            if not data:
                self._close()
                return
            cut = False
            if from_server:
                data, cut = self.proxy._forwarded(data)
            try:
                if data:
                    dst.sendall(data)
            except OSError:
                self._close()
                return
            if cut:
                self.proxy._discard(self)
                self.reset()
                return

    def freeze(self) -> None:
        self.frozen.set()

    def reset(self) -> None:
        """Close both sides with an RST. shutdown(SHUT_RD) sends nothing but wakes a pump blocked in
        recv (the kernel closes the socket only when no thread is inside a call on it); then close()
        with SO_LINGER 0 aborts the connection."""
        self.dead.set()
        for sock in (self.client, self.server):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for sock in (self.client, self.server):
            sock.close()

    def _close(self) -> None:
        """One side closed: close both, orderly."""
        self.proxy._discard(self)
        self.dead.set()
        close_both(self.client, self.server)


def close_both(*socks: socket.socket) -> None:
    """Shut down and close each socket (either may be closed already)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
