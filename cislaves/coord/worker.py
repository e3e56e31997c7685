"""`fab worker`: runs queued builds from ZooKeeper with the CI runner (cislaves.ci.runner.run_build).

Takes only builds for the clouds it can drive, at most `concurrency` at once. A build's item stays
locked (ephemeral) while it runs; the result is stored before the item goes. A worker that lost its
connection finishes what it runs, stores the results once the connection is back, and takes nothing
new meanwhile. When its session expired, the locks are gone and another worker may already run the
builds: those are aborted and their results dropped, so a build never runs twice at once. Before an
item runs again, the instances of its earlier attempts (tagged with their build ids) are removed.
"""
from __future__ import annotations

import logging
import threading
import uuid

from kazoo.exceptions import KazooException
from kazoo.protocol.states import KazooState

from cislaves import clouds as clouds_mod
from cislaves.ci import builds as store_mod
from cislaves.ci.builds import BuildStore
from cislaves.ci.queue import Job
from cislaves.ci.runner import _end_run, run_build
from cislaves.ci.settings import ci_settings, queue_path
from cislaves.coord import rebakes
from cislaves.coord.builds import BuildQueue, Item, buildset_name, worker_identity
from cislaves.coord.settings import connect, zookeeper_settings
from cislaves.errors import CislavesError, ConfigError
from cislaves.interrupts import shielded
from cislaves.records import TAG_BUILD, TAG_RUN

log = logging.getLogger(__name__)
IDLE = 1.0  # seconds between looks at the queue when no watch fired


class Worker:
    def __init__(self, config, concurrency: int = 1, clouds: list[str] | None = None):
        self.config, self.concurrency = config, concurrency
        self.ci = ci_settings(config)
        self.settings = zookeeper_settings(config)
        if self.settings is None:
            raise ConfigError(f"{config.where}: worker needs a zookeeper section (hosts)")
        self.clouds = {clouds_mod.check_name(c, "argument 'clouds'") for c in clouds} if clouds else None
        self.store_path = store_mod.path_for(queue_path(config, self.ci))
        self.ident = worker_identity(f"worker-{uuid.uuid4().hex[:8]}")
        self.connected, self.stopping = threading.Event(), threading.Event()
        self.wake = threading.Event()
        self._active: dict[str, threading.Thread] = {}
        self._guard = threading.Condition()
        self._generation = 0  # sessions lost so far: a build of an earlier session is aborted
        self.zk = self.queue = None
        self._closing = False
        from cislaves.ci.publish import Publisher

        self.publisher = Publisher.from_config(config)  # its one-line errors come before any build

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: take builds and run them; then abort the running ones (they run again elsewhere)."""
        from cislaves.ci import pool

        for line in pool.reap(self.config):  # what a killed worker on this host's data dir left
            log.info("recovered: %s", line)
        self._warm_up()
        self.zk = connect(self.settings)
        self.connected.set()
        self.zk.add_listener(self._on_state)
        self.queue = BuildQueue(self.zk, self.settings.root)
        self.rebakes = rebakes.queue_for(self.zk, self.settings)
        self._cancels: set[str] = set()
        self.zk.ChildrenWatch(f"{self.queue.root}/cancels", self._on_cancels)
        log.info("worker %s: %s, concurrency %d, clouds %s", self.ident["worker"], self.settings.hosts,
                 self.concurrency, ",".join(sorted(self.clouds)) if self.clouds else "all")
        try:
            while not stop.is_set():
                if not self.connected.is_set():
                    self.connected.wait(0.5)
                    continue
                with self._guard:
                    if len(self._active) >= self.concurrency:
                        self._guard.wait(0.5)
                        continue
                self.wake.clear()
                try:
                    for queue in (self.queue, self.rebakes):
                        for name in queue.release_strays():
                            log.info("worker: released the lock of item %s (taken while ZooKeeper was "
                                     "failing; it was never started)", name)
                    queue = self.rebakes
                    item = self.rebakes.take(self.clouds, self.ident, watch=self._on_change)
                    if item is None:
                        queue = self.queue
                        item = self.queue.take(self.clouds, self.ident, watch=self._on_change)
                except KazooException as exc:
                    log.info("worker: ZooKeeper unavailable (%s); taking nothing until it returns", type(exc).__name__)
                    self.connected.wait(0.5)
                    continue
                if item is None:
                    self.wake.wait(IDLE)
                    continue
                run = self._run if queue is self.queue else self._rebake
                thread = threading.Thread(target=run, args=(item,), name=f"zk-build-{item.name[:8]}",
                                          daemon=True)
                with self._guard:
                    self._active[item.name] = thread
                thread.start()
        finally:
            self.stopping.set()
            for thread in list(self._active.values()):
                thread.join(600)
            self._closing = True  # the LOST that stop() reports is no expiry
            self.zk.stop()
            self.zk.close()
            self.publisher.close()

    def _warm_up(self) -> None:
        """Load the drivers of the clouds this worker drives now, not in its first build's time."""
        from cislaves import remote  # noqa: F401 (paramiko: every build's SSH)

        names = self.clouds or {j.cloud or self.config.defaults.cloud for j in self.ci.jobs}
        for name in sorted(names):
            try:
                clouds_mod.get(name, self.config).close()
            except Exception as exc:  # a cloud without credentials here: its builds say so
                log.warning("worker: cloud %s: %s", name, exc)

    # -- kazoo callbacks (its event thread: no blocking calls)
    def _on_state(self, state) -> None:
        if self._closing:
            return
        if state == KazooState.CONNECTED:
            self.connected.set()
        else:
            self.connected.clear()
            if state == KazooState.LOST:
                log.warning("worker: the ZooKeeper session expired; running builds are aborted (their "
                            "locks are gone, they run again)")
                self._generation += 1
        self.wake.set()

    def _on_cancels(self, children) -> None:
        self._cancels = set(children)  # read by the builds' stop checks (no ZooKeeper call there)

    def _on_change(self, event) -> None:
        self.wake.set()

    # -- one build
    def _run(self, item: Item) -> None:
        generation = self._generation
        buildset = buildset_name(item.data.get("key") or "")
        try:
            self._leftovers(item)
            store = BuildStore(self.store_path)
            try:
                job = Job(**item.data["job"])
                build = store.create(job, item.data["name"], bool(item.data.get("voting", True)))
            finally:
                store.close()
            self._retry(lambda: self.queue.started(item, build.id, self.ident))

            def should_stop():
                if self.stopping.is_set():
                    return "the worker stopped; the build runs again on another worker", True
                if self._generation != generation:
                    return "the worker's ZooKeeper session expired; the build runs again", True
                if buildset in self._cancels:
                    return self._retry(lambda: self.queue.cancelled(item.data.get("key") or "")) or \
                        "cancelled", False
                return None

            build = run_build(build, self.config, should_stop)
            result = {"result": build.result, "detail": build.detail, "build_id": build.id,
                      "log_dir": build.log_dir, "started": build.started, "finished": build.finished,
                      "rerun": build.rerun, "build": {"voting": build.voting, "attempt": build.attempt,
                                                      "cloud": build.cloud}, **self.ident}
            if not build.rerun and build.result != "ABORTED" and build.log_dir:
                result["url"] = self._publish(build)
            if build.rerun:
                self._retry(lambda: self.queue.release(item))
            elif not self._retry(lambda: self.queue.finish(item, result)):
                log.warning("build %s: its lock was lost; result %s dropped (it runs again)", build.id,
                            build.result)
        except Exception as exc:
            # not the build's own failure (run_build records those): the worker failed around it. The
            # item ends ERROR (stored, reported) rather than keeping its lock, which would leave it
            # queued for as long as this worker lives.
            log.exception("item %s crashed", item.name)
            detail = f"the worker failed: {type(exc).__name__}: {exc}"
            self._retry(lambda: self.queue.finish(item, {"result": "ERROR", "detail": detail, "rerun": False,
                                                         **self.ident}))
        finally:
            self._done(item)

    def _publish(self, build) -> str | None:
        """The build's logs to the log server before its result is stored (the report links there);
        a failed publish leaves the report pointing at this host's build directory."""
        from pathlib import Path

        try:
            return self.publisher.publish_build(Path(build.log_dir))
        except Exception as exc:
            log.warning("build %s: publishing its logs failed (%s); the report names %s", build.id,
                        exc if isinstance(exc, CislavesError) else type(exc).__name__, build.log_dir)
            return None

    def _rebake(self, item: Item) -> None:
        """A rebake target: bake and validate it here, store its result (interrupted: it runs again)."""
        try:
            self._retry(lambda: self.rebakes.started(item, f"rebake-{uuid.uuid4().hex[:8]}", self.ident))
            log.info("rebake target %s", item.data.get("target"))
            result = {**rebakes.run(self.config, item.data, self.stopping), **self.ident}
            if result.get("rerun"):
                self._retry(lambda: self.rebakes.release(item))
            else:
                self._retry(lambda: self.rebakes.finish(item, result))
        except Exception as exc:
            log.exception("rebake item %s crashed", item.name)  # a failed target, not a held lock
            error = f"the worker failed: {type(exc).__name__}: {exc}"
            self._retry(lambda: self.rebakes.finish(item, {"result": "failed", "step": "worker", "error": error,
                                                           **self.ident}))
        finally:
            self._done(item)

    def _done(self, item: Item) -> None:
        with self._guard:
            self._active.pop(item.name, None)
            self._guard.notify_all()
        self.wake.set()

    def _retry(self, call):
        """Run a ZooKeeper call, waiting for the connection as long as it takes (a worker finishes
        what it runs and stores the result when ZooKeeper is back)."""
        while True:
            try:
                return call()
            except KazooException as exc:
                log.info("ZooKeeper call failed (%s); waiting for the connection", type(exc).__name__)
                self.connected.wait(1.0)

    def _leftovers(self, item: Item) -> None:
        """Instances of earlier attempts (a dead worker's), found by their build tag, removed."""
        if not item.attempts:
            return
        cloud = clouds_mod.get(item.data["cloud"], self.config)
        try:
            with shielded():
                for build_id in item.attempts:
                    for inst in cloud.list_instances({TAG_BUILD: build_id}):
                        cloud.destroy(inst)
                        _end_run(self.config, inst.tags.get(TAG_RUN, ""))
                        log.info("removed instance %s of an earlier attempt (build %s)", inst.id, build_id)
        finally:
            cloud.close()
