"""A fake Gerrit SSH server (asyncssh on its own thread and event loop, 127.0.0.1, a free port).

It keeps a small model of changes (patch sets, comments, votes, WIP/private/abandoned/merged state)
and speaks Gerrit 3.x's real formats:
- `gerrit stream-events`: one JSON event per line (patchset-created, comment-added with the full
  approvals list of the change's labels: value "0" where the author has no vote, oldValue only on a
  vote given in that comment, numbers as strings; wip-state-changed, private-state-changed,
  change-abandoned, change-restored, change-merged), a per-connection buffer of 128 events whose
  overflow becomes one dropped-output event;
- `gerrit query --format=JSON [--current-patch-set] [--patch-sets] [--all-approvals] [--comments]
  [--start N] QUERY` (status:open, since:"...", change:N, limit:N), newest change first, ending with
  the stats line (`moreChanges`); approvals there are real votes only, with grantedOn;
- `gerrit version`; `gerrit review ...`: recorded (argv split the way Gerrit splits it).
Tests can drop every streaming connection mid-stream, pause the stream (a stalled consumer), or write
raw bytes (malformed lines, benchmarks). Every command line is recorded in `commands`.
"""
from __future__ import annotations

import asyncio
import calendar
import collections
import hashlib
import json
import re
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh

DROPPED = json.dumps({"type": "dropped-output", "eventCreatedOn": 0}).encode() + b"\n"
LABELS = ("Code-Review", "Verified", "Workflow")  # every change has these labels
VERSION = b"gerrit version 3.9.1\n"


class FakeGerrit:
    """Start with `start()`, stop with `stop()`; thread-safe methods publish events and change state."""

    def __init__(self, authorized_key: str, buffer: int = 128, url: str = "http://gerrit.example"):
        self.authorized_key = authorized_key
        self.buffer = buffer
        self.url = url
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        self.changes: dict[int, dict[str, Any]] = {}
        self.commands: list[str] = []
        self.reviews: list[list[str]] = []
        self.stream_connections = 0
        self.fail_queries = 0  # how many of the next `gerrit query` commands fail
        self.clock = lambda: int(time.time())
        self._streams: set[_Subscriber] = set()
        self._paused = False
        self._held = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-gerrit", daemon=True)
        self._server = None

    # -- life cycle
    def start(self) -> "FakeGerrit":
        self._thread.start()
        self._server = self._call(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def known_hosts_line(self) -> str:
        key = self.host_key.export_public_key("openssh").decode().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def write_known_hosts(self, path: Path) -> Path:
        Path(path).write_text(self.known_hosts_line())
        return Path(path)

    # -- state changes that publish events (real format)
    def upload(self, number: int, patchset: int | None = None, *, project: str = "openstack/nova",
               branch: str = "master", kind: str = "REWORK", wip: bool = False, private: bool = False,
               uploader: str = "alice", publish: bool = True, when: int | None = None) -> dict:
        """A new patch set (the first one makes the change); publishes patchset-created."""
        when = self.clock() if when is None else when
        with self._lock:
            change = self.changes.setdefault(number, {
                "project": project, "branch": branch, "id": "I" + hashlib.sha1(str(number).encode()).hexdigest(),
                "number": number, "subject": f"Change {number}", "owner": account(uploader),
                "url": f"{self.url}/c/{project}/+/{number}", "status": "NEW", "open": True,
                "patchSets": [], "comments": []})
            change.update(project=project, branch=branch, wip=wip, private=private)
            patchset = patchset or len(change["patchSets"]) + 1
            ps = {"number": patchset, "revision": hashlib.sha1(f"{number}/{patchset}".encode()).hexdigest(),
                  "parents": ["0" * 40], "ref": f"refs/changes/{number % 100:02d}/{number}/{patchset}",
                  "uploader": account(uploader), "author": account(uploader), "createdOn": when,
                  "kind": kind, "approvals": []}
            change["patchSets"].append(ps)
            change["comments"].append({"timestamp": when, "reviewer": account(uploader),
                                       "message": f"Uploaded patch set {patchset}."})
            change["lastUpdated"] = when
            event = {"type": "patchset-created", "change": _public(change), "patchSet": _bare(ps),
                     "uploader": account(uploader), "eventCreatedOn": when}
        if publish:
            self.publish(event)
        return event

    def comment(self, number: int, patchset: int, text: str, *, author: str = "bob",
                votes: dict[str, int] | None = None, publish: bool = True, when: int | None = None) -> dict:
        """A review comment (optionally with votes); publishes comment-added."""
        when = self.clock() if when is None else when
        with self._lock:
            change = self.changes[number]
            ps = next(p for p in change["patchSets"] if p["number"] == patchset)
            votes = votes or {}
            header = f"Patch Set {patchset}:" + "".join(f" {k}{v:+d}" for k, v in votes.items())
            message = f"{header}\n\n{text}" if text else header
            for label, value in votes.items():
                ps["approvals"] = [a for a in ps["approvals"] if not (a["type"] == label and
                                                                       a["by"]["username"] == author)]
                ps["approvals"].append({"type": label, "description": label, "value": str(value),
                                        "grantedOn": when, "by": account(author)})
            approvals = []  # Gerrit 3.x: every label, the author's current value ("0": none)
            for label in LABELS:
                mine = next((a for a in ps["approvals"] if a["type"] == label
                             and a["by"]["username"] == author), None)
                approval = {"type": label, "description": label, "value": mine["value"] if mine else "0"}
                if label in votes:
                    approval["oldValue"] = "0"
                approvals.append(approval)
            change["comments"].append({"timestamp": when, "reviewer": account(author), "message": message})
            change["lastUpdated"] = when
            event = {"type": "comment-added", "change": _public(change), "patchSet": _bare(ps),
                     "author": account(author), "approvals": approvals, "comment": message,
                     "eventCreatedOn": when}
        if publish:
            self.publish(event)
        return event

    def set_wip(self, number: int, wip: bool, **kw) -> dict:
        """Mark the change work in progress (or ready); publishes wip-state-changed."""
        message = "Set Work In Progress" if wip else "Set Ready For Review"
        return self._state(number, "wip-state-changed", "changer", message, wip=wip, **kw)

    def set_private(self, number: int, private: bool, **kw) -> dict:
        """Mark the change private (or public); publishes private-state-changed."""
        message = "Set private" if private else "Unset private"
        return self._state(number, "private-state-changed", "changer", message, private=private, **kw)

    def abandon(self, number: int, **kw) -> dict:
        """Abandon the change; publishes change-abandoned."""
        return self._state(number, "change-abandoned", "abandoner", "Abandoned", status="ABANDONED",
                           open=False, **kw)

    def restore(self, number: int, **kw) -> dict:
        """Restore an abandoned change; publishes change-restored."""
        return self._state(number, "change-restored", "restorer", "Restored", status="NEW", open=True, **kw)

    def merge(self, number: int, **kw) -> dict:
        """Merge the change; publishes change-merged."""
        return self._state(number, "change-merged", "submitter", None, status="MERGED", open=False, **kw)

    def _state(self, number: int, kind: str, who_field: str, message: str | None, *, who: str = "alice",
               publish: bool = True, when: int | None = None, **state) -> dict:
        when = self.clock() if when is None else when
        with self._lock:
            change = self.changes[number]
            change.update(state)
            if message:
                change["comments"].append({"timestamp": when, "reviewer": account(who), "message": message})
            change["lastUpdated"] = when
            ps = change["patchSets"][-1]
            event = {"type": kind, "change": _public(change), "patchSet": _bare(ps), who_field: account(who),
                     "eventCreatedOn": when}
            if kind == "change-merged":
                event["newRev"] = ps["revision"]
            elif kind in ("change-restored", "change-abandoned"):
                event["reason"] = ""
        if publish:
            self.publish(event)
        return event

    def publish(self, event: dict) -> None:
        """Send one event to every streaming connection (subject to each one's 128-event buffer)."""
        self.publish_raw(json.dumps(event).encode() + b"\n", counted=True)

    def publish_raw(self, data: bytes, counted: bool = False) -> None:
        """Write raw bytes to every stream (malformed lines, benchmark blocks); not buffer-limited
        unless `counted`."""
        self._loop.call_soon_threadsafe(self._deliver, data, counted)

    # -- connection control
    def drop(self) -> int:
        """Abort every connection that is streaming events; return how many."""
        return self._call(self._drop())

    def hold(self, held: bool = True) -> None:
        """Refuse (or accept again) new SSH connections, as when Gerrit is unreachable: a client that
        was dropped misses every event published meanwhile."""
        self._held = held

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) writing to streams, like a consumer that stalls: the buffers fill up."""
        self._call(self._pause(paused))

    def streaming(self) -> int:
        """Number of connections currently streaming events."""
        return self._call(self._count())

    # -- internals (event loop thread)
    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self):
        return await asyncssh.create_server(
            lambda: _Server(self), "127.0.0.1", 0, server_host_keys=[self.host_key], encoding=None,
            authorized_client_keys=asyncssh.import_authorized_keys(self.authorized_key),
            process_factory=self._process, keepalive_interval=0)

    async def _close(self):
        self._server.close()
        await self._drop()
        await self._server.wait_closed()

    async def _drop(self):
        subs = list(self._streams)
        for sub in subs:
            self._streams.discard(sub)
            sub.ready.set()
            sub.conn.abort()
        return len(subs)

    async def _pause(self, paused):
        self._paused = paused
        if not paused:
            for sub in self._streams:
                sub.ready.set()

    async def _count(self):
        return len(self._streams)

    def _deliver(self, data: bytes, counted: bool) -> None:
        for sub in self._streams:
            if counted and sub.counted >= self.buffer:
                sub.dropped = True
                continue
            sub.pending.append((data, counted))
            sub.counted += counted
            if not self._paused:
                sub.ready.set()

    async def _process(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        with self._lock:
            self.commands.append(command)
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            process.stderr.write(f"fatal: {exc}\n".encode())
            process.exit(1)
            return
        if argv[:2] == ["gerrit", "stream-events"]:
            await self._stream(process)
        elif argv[:2] == ["gerrit", "query"] and self.fail_queries > 0:
            self.fail_queries -= 1
            process.stderr.write(b"fatal: internal server error\n")
            process.exit(1)
        elif argv[:2] == ["gerrit", "query"]:
            process.stdout.write(self._query(argv[2:]))
            process.exit(0)
        elif argv[:2] == ["gerrit", "version"]:
            process.stdout.write(VERSION)
            process.exit(0)
        elif argv[:2] == ["gerrit", "review"]:
            with self._lock:
                self.reviews.append(argv)
            process.exit(0)
        else:
            process.stderr.write(f"fatal: {argv[:2]}: not a Gerrit command\n".encode())
            process.exit(1)

    async def _stream(self, process) -> None:
        sub = _Subscriber(process.channel.get_connection())
        self._streams.add(sub)
        self.stream_connections += 1
        try:
            while sub in self._streams:
                await sub.ready.wait()
                sub.ready.clear()
                if self._paused:
                    continue
                items, sub.pending = sub.pending, collections.deque()
                sub.counted = 0
                data = b"".join(d for d, _ in items)
                if sub.dropped:
                    data += DROPPED
                    sub.dropped = False
                process.stdout.write(data)
                await process.stdout.drain()
        except (asyncssh.Error, ConnectionError, BrokenPipeError):
            pass
        finally:
            self._streams.discard(sub)

    def _query(self, args: list[str]) -> bytes:
        options = {a for a in args if a.startswith("--")}
        start = int(args[args.index("--start") + 1]) if "--start" in args else 0
        words = [a for i, a in enumerate(args) if not a.startswith("--") and not (i and args[i - 1] == "--start")]
        query = " ".join(words)
        terms = dict(re.findall(r'(\w+):("[^"]*"|\S+)', query))
        limit = int(terms.get("limit", 500))
        rows = []
        with self._lock:
            for change in sorted(self.changes.values(), key=lambda c: (-c["lastUpdated"], -c["number"])):
                if terms.get("status") == "open" and not change["open"]:
                    continue
                if "change" in terms and str(change["number"]) != terms["change"]:
                    continue
                if "since" in terms and change["lastUpdated"] < _parse_since(terms["since"].strip('"')):
                    continue
                record = _public(change)
                record["lastUpdated"] = change["lastUpdated"]
                ps_form = dict if "--all-approvals" in options else _bare
                if "--current-patch-set" in options:
                    record["currentPatchSet"] = dict(change["patchSets"][-1])
                if "--patch-sets" in options or "--all-approvals" in options:
                    record["patchSets"] = [ps_form(p) for p in change["patchSets"]]
                if "--comments" in options:
                    record["comments"] = list(change["comments"])
                rows.append(json.dumps(record).encode())
        more = len(rows) > start + limit
        rows = rows[start:start + limit]
        stats = {"type": "stats", "rowCount": len(rows), "runTimeMilliseconds": 1, "moreChanges": more}
        return b"".join(r + b"\n" for r in rows) + json.dumps(stats).encode() + b"\n"


class _Subscriber:
    def __init__(self, conn):
        self.conn = conn
        self.pending: collections.deque = collections.deque()
        self.counted = 0
        self.dropped = False
        self.ready = asyncio.Event()


class _Server(asyncssh.SSHServer):
    def __init__(self, fake: FakeGerrit):
        self.fake = fake

    def connection_made(self, conn) -> None:
        if self.fake._held:
            asyncio.get_running_loop().call_soon(conn.abort)


def account(username: str) -> dict:
    return {"name": username.title(), "email": f"{username}@example.org", "username": username}


def _public(change: dict) -> dict:
    keys = ("project", "branch", "id", "number", "subject", "owner", "url", "status", "wip", "private")
    # Gerrit leaves out "wip"/"private" when false
    return {k: change[k] for k in keys if change.get(k) is not None and change.get(k) is not False}


def _bare(ps: dict) -> dict:
    return {k: v for k, v in ps.items() if k != "approvals"}


def _parse_since(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))
