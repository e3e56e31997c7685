"""The runner as the listener's work function, ready instances, and recovery after a crash.

Runner     the dispatcher's `work(job, stopping)`: a queued job becomes a buildset (one build per
           configured job its trigger runs), each build in its own thread through run_build; a build
           is aborted when a newer patch set of the change is queued (manual runs excepted), when
           `fab cancel` asks, or when the listener stops (then it runs again at the next start).
ReadyPool  keeps ci.ready instances booted per job from the job's newest image; replaces one taken
           by a build, one whose image is no longer the newest, one older than a day; destroys them
           on stop. Ready instances count against ci.max_instances like builds' instances.
Reporter   (cislaves.ci.report) once a buildset's builds have all ended: publish each build's logs,
           then one report; also keeps the status page current.
reap       at start: builds whose process died are ABORTED (to run again), and this owner's job and
           ready instances that no live process counts are destroyed (found by tag).
All state shared between these lives in the builds database, none in memory.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

from cislaves import clouds, distros
from cislaves.ci import builds as store_mod
from cislaves.ci import jobsettings
from cislaves.ci.builds import BuildStore
from cislaves.ci.report import Reporter
from cislaves.ci.runner import destroy_slot, run_build
from cislaves.ci.settings import ci_settings, queue_path
from cislaves.errors import CislavesError, Interrupted
from cislaves.interrupts import shielded
from cislaves.records import TAG_OWNER, TAG_ROLE, TAG_RUN, LaunchSpec, new_run_id, standard_tags
from cislaves.state import State, me

log = logging.getLogger(__name__)
READY_MAX_AGE = 86400.0  # a ready instance older than this is replaced
REFRESH = 30.0  # seconds between the pool's looks at images and ages when nothing wakes it


class Runner:
    """Plugged into the listener as Service(..., work=Runner(config)); start() before, stop() after."""

    def __init__(self, config):
        self.config = config
        self.ci = ci_settings(config)
        self.queue_path = queue_path(config, self.ci)
        self.store_path = store_mod.path_for(self.queue_path)
        wanted = {name: n for name, n in self.ci.ready.items() if n > 0}
        self.pool = ReadyPool(config, wanted) if wanted else None
        self.reporter = Reporter(config)  # checks the report settings (one line) before anything starts
        self._active = 0
        self._idle = threading.Condition()

    def start(self) -> None:
        for line in reap(self.config):
            log.info("recovered: %s", line)
        if self.pool:
            self.pool.start()
        self.reporter.start()  # first sends what a previous listener still owed

    def stop(self, timeout: float = 600) -> None:
        """Wait for running builds to finish their cleanup (they abort once the listener stops), then
        destroy the ready instances."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout)
        if self.pool:
            self.pool.stop()
        self.reporter.stop()

    def __call__(self, job, stopping: threading.Event) -> tuple[str, str]:
        only = job.event.get("cislaves", {}).get("jobs") if isinstance(job.event.get("cislaves"), dict) else None
        wanted = jobsettings.jobs_for(self.ci.jobs, job.trigger, only)
        if not wanted:
            return "succeeded", f"no job in ci.jobs runs for trigger {job.trigger}"
        store = BuildStore(self.store_path)
        try:
            done = store.latest(job.id)
            todo = []
            for spec in wanted:
                previous = done.get(spec.name)
                if previous is None or previous.state != "finished" or previous.rerun:
                    todo.append(store.create(job, spec.name, spec.voting))
            threads = [threading.Thread(target=self._build, args=(job, build, stopping), daemon=True,
                                        name=f"ci-build-{build.id}") for build in todo]
            with self._idle:
                self._active += len(threads)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            latest = store.latest(job.id)
        finally:
            store.close()
        if stopping.is_set() and any(b.rerun for b in latest.values()):
            raise Interrupted("the listener stopped during the buildset")
        self.reporter.submit(job.id)  # results are stored: publish, then report once
        results = [latest[s.name].result for s in wanted if s.name in latest]
        summary = ", ".join(f"{latest[s.name].result} {s.name}" for s in wanted if s.name in latest)
        if all(r == "SUCCESS" for r in results):
            return "succeeded", summary
        if all(r == "ABORTED" for r in results):
            return "cancelled", summary
        return "failed", summary

    def _build(self, job, build, stopping: threading.Event) -> None:
        store = BuildStore(self.store_path)
        queue = sqlite3.connect(f"file:{self.queue_path}?mode=ro", uri=True, timeout=30)

        def should_stop():
            if stopping.is_set():
                return "the listener stopped; the build runs again at the next start", True
            reason = store.cancel_reason(build.id)
            if reason:
                return reason, False
            if job.event_type != "manual":
                row = queue.execute("SELECT max(patchset) FROM jobs WHERE change=? AND patchset>? AND "
                                    "event_type!='manual'", (job.change, job.patchset)).fetchone()
                if row and row[0]:
                    return f"superseded by patch set {row[0]}", False
            return None

        try:
            self.reporter.changed()
            run_build(build, self.config, should_stop, self.pool.wake if self.pool else None)
        except Exception:  # run_build records its own failures; this is a bug: keep the worker alive
            log.exception("build %s crashed", build.id)
        finally:
            queue.close()
            store.close()
            self.reporter.changed()  # the status page shows the result
            with self._idle:
                self._active -= 1
                self._idle.notify_all()


class ReadyPool:
    """Instances booted ahead for jobs (nodepool's min-ready), tended by one thread."""

    def __init__(self, config, wanted: dict[str, int]):
        self.config, self.wanted = config, wanted
        self.ci = ci_settings(config)
        self.store_path = store_mod.path_for(queue_path(config, self.ci))
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ci-ready-pool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, job: str | None = None) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(600)
        store = BuildStore(self.store_path)
        try:
            with shielded():
                for slot in store.slots():
                    if slot.purpose == "ready" and slot.owner == me() and store.retire(slot):
                        self._remove(store, slot)
        finally:
            store.close()

    def _loop(self) -> None:
        store = BuildStore(self.store_path)
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    self.tend(store)
                except Exception:  # one failure never stops the pool; it tries again later
                    log.exception("ready pool")
                self._wake.wait(REFRESH)
        finally:
            store.close()

    def tend(self, store: BuildStore) -> None:
        """Retire stale ready instances and boot the missing ones."""
        for name, count in self.wanted.items():
            job = next(j for j in self.ci.jobs if j.name == name)
            cloud_name = job.cloud or self.config.defaults.cloud
            plan = jobsettings.Plan(job, self.config.relative(job.run), cloud_name,
                                    job.distribution or self.config.defaults.distribution)
            cloud = clouds.get(cloud_name, self.config)
            try:
                try:
                    image = jobsettings.newest_image(self.config, cloud, plan)
                except CislavesError as exc:
                    log.warning("ready instances of %s: %s", name, exc)
                    continue
                mine = [s for s in store.slots(cloud_name) if s.purpose == "ready" and s.job == name]
                for slot in mine:
                    stale = slot.image_id != image.id or time.time() - slot.created > READY_MAX_AGE
                    if slot.state == "ready" and stale and store.retire(slot):
                        log.info("ready instance of %s retired (%s)", name,
                                 "newer image" if slot.image_id != image.id else "older than a day")
                        with shielded():
                            self._remove(store, slot, cloud)
                have = len([s for s in store.slots(cloud_name) if s.purpose == "ready" and s.job == name
                            and s.state in ("booting", "ready")])
                while have < count and not self._stopping.is_set():
                    if not self._boot(store, cloud, plan, image):
                        break
                    have += 1
            finally:
                cloud.close()

    def _boot(self, store: BuildStore, cloud, plan, image) -> bool:
        run_id = new_run_id()
        slot = store.take_slot(plan.cloud, self.ci.max_instances.get(plan.cloud), "ready", job=plan.name,
                               run_id=run_id)
        if slot is None:
            return False
        state = State(self.config.data_dir)
        dist = distros.get(plan.distribution)
        name = f"{self.config.top.image_name_prefix}-ready-{slot.id}"
        spec = LaunchSpec(distribution=dist, image=image, run_id=run_id, name=name,
                          tags=standard_tags(run_id, dist.name, "ready", name=name, ttl_hours=25,
                                             owner=state.owner_id()),
                          key_dir=self.config.data_dir / "keys" / run_id, role="ready")
        state.start_run(run_id, plan.cloud, dist.name, "ready")
        try:
            began = time.monotonic()
            instance = cloud.launch(spec)
        except BaseException as exc:
            with shielded():
                self._remove(store, slot, cloud)
            if isinstance(exc, Exception):
                log.warning("ready instance for %s: boot failed: %s", plan.name, exc)
                return False
            raise
        store.set_slot(slot, instance=instance.to_dict(), image_id=image.id, state="ready")
        log.info("ready instance %s for %s booted in %.2fs", instance.id, plan.name, time.monotonic() - began)
        return True

    def _remove(self, store: BuildStore, slot, cloud=None) -> None:
        own = cloud is None
        cloud = cloud or clouds.get(slot.cloud, self.config)
        try:
            destroy_slot(self.config, cloud, store, slot)
        finally:
            if own:
                cloud.close()


def reap(config) -> list[str]:
    """After a crash: mark the dead process's builds ABORTED (to run again), destroy the instances no
    live process counts (this owner's, by tag), drop their slots. Returns what it did, one line each."""
    ci = ci_settings(config)
    store = BuildStore(store_mod.path_for(queue_path(config, ci)))
    done: list[str] = []
    try:
        for build in store.orphans():
            store.finish(build, "ABORTED", "the listener stopped while it ran; it runs again", rerun=True)
            done.append(f"build {build.id} ({build.name}, change {build.change} patch set {build.patchset}) "
                        f"will run again")
        dead = store.dead_slots()
        names = {s.cloud for s in dead} | {j.cloud or config.defaults.cloud for j in ci.jobs}
        owner = State(config.data_dir).owner_id()
        with shielded():
            for name in sorted(names):
                cloud = clouds.get(name, config)
                try:
                    for slot in [s for s in dead if s.cloud == name]:
                        done += destroy_slot(config, cloud, store, slot)
                    live = {s.run_id for s in store.slots(name)}
                    for inst in cloud.list_instances({TAG_OWNER: owner}):
                        if inst.tags.get(TAG_ROLE) in ("job", "ready") and inst.tags.get(TAG_RUN) not in live:
                            cloud.destroy(inst)
                            State(config.data_dir).end_run(inst.tags.get(TAG_RUN, ""))
                            done.append(f"instance {inst.id} (leftover of run {inst.tags.get(TAG_RUN)})")
                finally:
                    cloud.close()
    finally:
        store.close()
    return done
