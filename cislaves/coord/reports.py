"""Reports with `ci.backend: zookeeper`: one Gerrit comment per buildset, sent by the leader.

A buildset's builds may run on several hosts. Each worker publishes its build's logs (cislaves.ci.publish:
rsync/S3 targets make them reachable from anywhere) before it stores the result, and puts the URL in
the result. The worker that stores a buildset's last result creates <root>/reports/<set> in the same
transaction (cislaves.coord.builds.BuildQueue.finish: every result's transaction checks and bumps the
buildset node's version, so of two results stored at once one is retried and sees the other). The
leader's listener runs this reporter over those nodes: it builds the comment from the results in
ZooKeeper (cislaves.ci.report.message/vote, the local backend's format), sends it, and marks the node
reported. A new leader sends what the old one still owed; a node marked reported is never sent again
(the one window is the instant between Gerrit's answer and that write, as with the local backend).
The same thread keeps the status page current from ZooKeeper (every host's builds), when the queue,
locks or results change.

Why the leader rather than the last worker: the owed node outlives a worker that dies right after
storing the result, and exactly one process (the elected leader) reads the nodes at any time.
"""
from __future__ import annotations

import json
import logging
import time

from kazoo.exceptions import BadVersionError, KazooException, NoNodeError

from cislaves.ci import report as report_mod
from cislaves.ci.builds import Build
from cislaves.coord.builds import BuildQueue, buildset_name, item_name
from cislaves.errors import CislavesError

log = logging.getLogger(__name__)
LOOK_EVERY = 1.0  # seconds between looks at the owed reports when no watch fired


def build_of(result: dict) -> Build:
    """A Build record (what cislaves.ci.report and the status page read) from a stored result."""
    job = result.get("job") or {}
    fields = result.get("build") or {}
    return Build(id=result.get("build_id") or "", job_id=job.get("id", 0), attempt=fields.get("attempt", 1),
                 name=result.get("name") or "", change=job.get("change", 0), patchset=job.get("patchset", 0),
                 project=job.get("project"), branch=job.get("branch"), ref=job.get("ref", ""),
                 revision=job.get("revision"), trigger=job.get("trigger", ""),
                 event_type=job.get("event_type", ""), event=job.get("event") or {},
                 voting=fields.get("voting", True), state="finished", result=result.get("result"),
                 detail=result.get("detail"), log_dir=result.get("log_dir"), started=result.get("started"),
                 finished=result.get("finished"), cloud=fields.get("cloud"))


class ZKReporter(report_mod.ReporterThread):
    """The leader's thread owing Gerrit its comments (see the module docstring)."""

    thread_name = "zk-reporter"

    def __init__(self, config, zk, root: str):
        super().__init__(config)
        self.zk, self.root = zk, root.rstrip("/")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                for name in sorted(self.zk.get_children(f"{self.root}/reports", watch=lambda e: self._wake.set())):
                    if self._stopping.is_set():
                        break
                    self._attempt(name)
            except KazooException as exc:
                log.info("reporter: ZooKeeper unavailable (%s)", type(exc).__name__)
            try:
                self._status()
            except Exception as exc:  # never stops the reports
                log.warning("status page: %s", exc if isinstance(exc, CislavesError) else
                            f"{type(exc).__name__}: {exc}")
            self._wake.wait(LOOK_EVERY)

    def _status(self) -> None:
        stats = [self.zk.exists(f"{self.root}/{kind}") for kind in ("queue", "locks", "results")]
        fingerprint = tuple(s.cversion if s else None for s in stats)
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        pending, done = BuildQueue(self.zk, self.root).listing()
        rows = []
        for data in pending:
            build = build_of({**data, "build_id": (data.get("running") or {}).get("build_id")})
            build.state, build.result = ("running" if data.get("running") else "queued"), None
            build.started = (data.get("running") or {}).get("started")
            build.created = data.get("enqueued") or 0.0
            rows.append(build)
        for data in done[-200:]:
            build = build_of(data)
            build.created = data.get("enqueued") or 0.0
            rows.append(build)
        self.publisher.publish_status(rows)

    def _attempt(self, name: str) -> None:
        path = f"{self.root}/reports/{name}"
        try:
            raw, stat = self.zk.get(path)
        except NoNodeError:
            return
        owed = json.loads(raw)
        if owed.get("state") != "owed" or owed.get("next_try", 0) > time.time():
            return
        try:
            state = self._send(owed)
            owed.update(state=state, done=time.time(), error=None)
        except Exception as exc:
            text = str(exc) if isinstance(exc, CislavesError) else f"{type(exc).__name__}: {exc}"
            attempts = owed.get("attempts", 0) + 1
            delay = self._retry_in(attempts)
            given_up = time.time() - owed.get("created", time.time()) > report_mod.GIVE_UP
            owed.update(attempts=attempts, error=text, next_try=time.time() + delay,
                        state="failed" if given_up else "owed")
            log.warning("buildset %s: report failed (attempt %d, again in %.0fs): %s", name, attempts,
                        delay, text)
        try:
            self.zk.set(path, json.dumps(owed).encode(), version=stat.version)
        except BadVersionError:  # another leader wrote it meanwhile (a failover): theirs stands
            log.warning("buildset %s: report node changed by another leader", name)

    def _send(self, owed: dict) -> str:
        key = owed["key"]
        names = json.loads(self.zk.get(f"{self.root}/buildsets/{buildset_name(key)}")[0])["names"]
        results = [json.loads(self.zk.get(f"{self.root}/results/{item_name(key, n)}")[0]) for n in names]
        builds = [build_of(r) for r in results]
        urls = {r.get("build_id"): r["url"] for r in results if r.get("url")}
        shown = [b for b in builds if b.result != "ABORTED"]
        if not shown:
            return "skipped"
        what = f"buildset {buildset_name(key)}"
        state, text = self._comment(shown, urls, what)
        self._email(shown, text, what)
        return state

