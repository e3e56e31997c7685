"""A build on a fresh instance: `run_build(build, config, should_stop)`.

A plain function of a build record (cislaves.ci.builds) and the configuration; it shares nothing in
memory with the listener and drives clouds only through the Cloud interface, so a worker on another
host could run it. Steps, each timed into build.json:
  boot       the job's image (a ready instance of it when one waits, else a new one counted against
             ci.max_instances; role "job", tagged with the build id and this host's owner id), SSH
  workspace  fetch the patch set into the project's mirror, check out, tar over the SSH connection
  script     the job's script as the CI user with the GERRIT_* variables, BUILD_ID, JOB_NAME,
             WORKSPACE, LOG_DIR and the job's env; output timestamped (UTC) into job-output.txt
  collect    LOG_DIR and the job's artifacts into the build directory (also after a failure)
  destroy    always, on every outcome (shielded from interrupts)
A boot, SSH or workspace failure is NODE_FAILURE, retried on a fresh instance up to ci.infra_retries.
`should_stop()` returns None, or (reason, rerun): the build is then ABORTED (script killed, instance
destroyed); with rerun, the job's next attempt runs it again. It runs in worker threads: no signal
handlers here (cleanup is `shielded`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

from cislaves import TOOL, clouds, distros
from cislaves.ci import builds as store_mod
from cislaves.ci import execute, jobsettings, workspace
from cislaves.ci.execute import NodeFailure
from cislaves.ci.builds import Build, BuildStore
from cislaves.ci.settings import ci_settings, gerrit_settings, queue_path
from cislaves.errors import CislavesError, ConfigError
from cislaves.interrupts import shielded
from cislaves.records import (TAG_BUILD, TAG_RUN, Instance, LaunchSpec, isoformat, new_run_id,
                              standard_tags, utcnow)
from cislaves.state import State
from cislaves.waiting import Pending, wait_for
from cislaves import remote

log = logging.getLogger(__name__)
StopCheck = Callable[[], "tuple[str, bool] | None"]
SLOT_WAIT = 7 * 86400  # a build waits this long for a free instance slot at most


class _Stopped(Exception):
    def __init__(self, reason: str, rerun: bool):
        super().__init__(reason)
        self.reason, self.rerun = reason, rerun


def run_build(build: Build, config, should_stop: StopCheck = lambda: None,
              on_ready_taken: Callable[[str], None] | None = None) -> Build:
    """Run one build to its end and record the result; never raises for a build's own failure."""
    ci = ci_settings(config)
    store = BuildStore(store_mod.path_for(queue_path(config, ci)))
    try:
        return _Run(build, config, ci, store, should_stop, on_ready_taken).run()
    finally:
        store.close()


def log_dir_for(root: Path, build: Build) -> Path:
    """OpenStack's log path convention: <NN>/<change>/<patchset>/<trigger>/<job>/<build id>."""
    return root / f"{build.change % 100:02d}" / str(build.change) / str(build.patchset) / build.trigger / \
        build.name / build.id


def gerrit_env(build: Build) -> dict[str, str]:
    """Gerrit Trigger's variables for the build (values are data: passed quoted, never as shell text)."""
    event = build.event
    change = event.get("change") if isinstance(event.get("change"), dict) else {}
    owner = change.get("owner") if isinstance(change.get("owner"), dict) else {}
    values = {
        "GERRIT_PROJECT": build.project, "GERRIT_BRANCH": build.branch, "GERRIT_REFSPEC": build.ref,
        "GERRIT_CHANGE_NUMBER": build.change, "GERRIT_PATCHSET_NUMBER": build.patchset,
        "GERRIT_PATCHSET_REVISION": build.revision, "GERRIT_CHANGE_ID": change.get("id"),
        "GERRIT_CHANGE_URL": change.get("url"), "GERRIT_CHANGE_SUBJECT": change.get("subject"),
        "GERRIT_CHANGE_OWNER_EMAIL": owner.get("email"), "GERRIT_TOPIC": change.get("topic"),
        "GERRIT_EVENT_TYPE": build.event_type,
    }
    return {k: str(v).replace("\0", "") for k, v in values.items() if v is not None}


def destroy_slot(config, cloud, store: BuildStore, slot) -> list[str]:
    """Destroy a slot's instance (the recorded one and any carrying its run id), end its run, drop it."""
    found = {}
    if slot.instance:
        inst = Instance.from_dict(slot.instance)
        found[inst.id] = inst
    for inst in cloud.list_instances({TAG_RUN: slot.run_id}):
        found.setdefault(inst.id, inst)
    for inst in found.values():
        cloud.destroy(inst)
    _end_run(config, slot.run_id)
    store.release(slot)
    return [f"instance {i}" for i in found]


class _Run:
    """One build's run (the state of one call of run_build)."""

    def __init__(self, build: Build, config, ci, store: BuildStore, should_stop: StopCheck, on_ready_taken):
        self.build, self.config, self.ci, self.store = build, config, ci, store
        self.should_stop, self.on_ready_taken = should_stop, on_ready_taken
        self.durations: dict[str, float] = {}
        self.facts: dict[str, object] = {}
        self.dir = log_dir_for(jobsettings.logs_dir(config, ci), build)
        self.output = None

    # -- the whole build
    def run(self) -> Build:
        build = self.build
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store.start(build, self.dir)
        started = utcnow()
        result, detail, rerun = "ERROR", None, False
        with open(self.dir / "job-output.txt", "ab", buffering=0) as out:
            self.output = execute.Output(out)
            try:
                result, detail = self._attempts()
            except _Stopped as stop:
                result, detail, rerun = "ABORTED", stop.reason, stop.rerun
            except ConfigError as exc:
                result, detail = "ERROR", str(exc)
            except Exception as exc:  # a bug must end in a recorded result, not a silent thread
                log.exception("build %s: unexpected error", build.id)
                result, detail = "ERROR", f"{type(exc).__name__}: {exc}"
            self.output.note(f"result: {result}" + (f" ({detail})" if detail else ""))
        ended = utcnow()
        self._write_json(result, detail, started, ended)
        log.info("build %s (%s, change %d patch set %d): %s%s", build.id, build.name, build.change,
                 build.patchset, result, f" ({detail})" if detail else "")
        return self.store.finish(build, result, detail, rerun=rerun)

    def _attempts(self) -> tuple[str, str | None]:
        plan = self._plan()
        tries = self.ci.infra_retries + 1
        for attempt in range(1, tries + 1):
            self._check()
            self.store.update(self.build, node_attempts=attempt)
            try:
                return self._once(plan)
            except NodeFailure as exc:
                self.output.note(f"node failure (attempt {attempt} of {tries}): {exc}")
                log.warning("build %s: node failure (attempt %d of %d): %s", self.build.id, attempt, tries, exc)
                if attempt == tries:
                    return "NODE_FAILURE", str(exc)
        raise AssertionError("unreachable")

    def _plan(self) -> jobsettings.Plan:
        job = next((j for j in self.ci.jobs if j.name == self.build.name), None)
        if job is None:
            raise ConfigError(f"job {self.build.name!r} is no longer in ci.jobs")
        script = self.config.relative(job.run)
        if not script.is_file():
            raise ConfigError(f"ci.jobs ({job.name}): run: script {script} does not exist")
        cloud = clouds.check_name(job.cloud or self.config.defaults.cloud, f"ci.jobs ({job.name}): cloud")
        dist = distros.get(job.distribution or self.config.defaults.distribution, f"ci.jobs ({job.name}): distribution")
        workspace.check_project(self.build.project)
        return jobsettings.Plan(job, script, cloud, dist.name)

    def _check(self) -> None:
        stop = self.should_stop()
        if stop:
            raise _Stopped(*stop)

    # -- one attempt on one instance
    def _once(self, plan: jobsettings.Plan) -> tuple[str, str | None]:
        cloud = clouds.get(plan.cloud, self.config)
        instance, slot, run_id, state = None, None, None, State(self.config.data_dir)
        try:
            try:
                image = jobsettings.newest_image(self.config, cloud, plan, f"ci.jobs ({plan.name}): ")
            except ConfigError:
                raise
            except CislavesError as exc:  # the cloud did not answer: infrastructure, not configuration
                raise NodeFailure(f"listing the images of cloud {plan.cloud} failed: {exc}") from None
            self.facts.update(cloud=plan.cloud, image_id=image.id, distribution=plan.distribution,
                              instance_type=getattr(cloud.settings, "instance_type", None))
            self.store.update(self.build, cloud=plan.cloud, image_id=image.id)
            began = time.monotonic()
            slot = self.store.take_ready(plan.name, image.id, self.build.id)
            if slot is not None:
                instance = Instance.from_dict(slot.instance)
                run_id = slot.run_id
                self.output.note(f"using ready instance {instance.id} ({plan.cloud}, image {image.id})")
                if self.on_ready_taken:
                    self.on_ready_taken(plan.name)
            else:
                run_id = new_run_id()
                slot = self._wait_for_slot(plan.cloud, run_id)
                self.facts["waited_for_slot"] = round(time.monotonic() - began, 3)
                began = time.monotonic()  # boot time without the wait for a free instance
                self.output.note(f"booting {plan.distribution} image {image.id} on {plan.cloud}")
                instance = self._boot(cloud, plan, image, run_id, slot, state)
            self.facts["instance_id"] = instance.id
            self.facts["instance_type"] = self.facts["instance_type"] or instance.extra.get("instance_type")
            self.store.update(self.build, instance_id=instance.id)
            conn = self._ssh(cloud, instance)
            self.durations["boot"] = time.monotonic() - began
            try:
                return self._on_instance(plan, instance, conn)
            finally:
                conn.close()
        finally:
            with shielded():
                self._destroy(cloud, instance, slot, run_id, state)
                cloud.close()

    def _wait_for_slot(self, cloud_name: str, run_id: str):
        limit = self.ci.max_instances.get(cloud_name)

        def probe():
            self._check()
            slot = self.store.take_slot(cloud_name, limit, "build", build_id=self.build.id, run_id=run_id)
            if slot is None and self._evict(cloud_name):  # a waiting build beats an idle ready instance
                slot = self.store.take_slot(cloud_name, limit, "build", build_id=self.build.id, run_id=run_id)
            return slot or Pending(f"all {limit} instance(s) of cloud {cloud_name} in use (ci.max_instances)")

        return wait_for(probe, f"a free instance on cloud {cloud_name}", SLOT_WAIT, first_delay=0.05,
                        max_delay=0.5)

    def _evict(self, cloud_name: str) -> bool:
        """Destroy one idle ready instance on the cloud (of any job) to free its slot for this build."""
        for slot in self.store.slots(cloud_name):
            if slot.purpose == "ready" and slot.state == "ready" and self.store.retire(slot):
                cloud = clouds.get(cloud_name, self.config)
                try:
                    with shielded():
                        destroy_slot(self.config, cloud, self.store, slot)
                finally:
                    cloud.close()
                self.output.note(f"destroyed a ready instance of {slot.job} to free an instance slot")
                return True
        return False

    def _boot(self, cloud, plan, image, run_id: str, slot, state: State) -> Instance:
        dist = distros.get(plan.distribution)
        name = f"{self.config.top.image_name_prefix}-job-{self.build.id}"
        hours = (plan.job.timeout + 3600) / 3600  # a leaked job instance expires soon after its timeout
        tags = standard_tags(run_id, dist.name, "job", name=name, ttl_hours=hours, owner=state.owner_id(),
                             extra={TAG_BUILD: self.build.id})
        spec = LaunchSpec(distribution=dist, image=image, run_id=run_id, name=name, tags=tags,
                          key_dir=self.config.data_dir / "keys" / run_id, role="job")
        state.start_run(run_id, plan.cloud, dist.name, "job")  # `fab cleanup` leaves a live build alone
        try:
            instance = cloud.launch(spec)
        except CislavesError as exc:
            raise NodeFailure(f"boot failed: {exc}") from None
        self.store.set_slot(slot, instance=instance.to_dict(), image_id=image.id, state="busy")
        return instance

    def _ssh(self, cloud, instance: Instance):
        timeout = getattr(cloud.settings, "ssh_timeout", None) or self.config.timeouts.ssh
        try:
            return remote.wait_for_ssh(instance, self.config.data_dir, timeout)
        except CislavesError as exc:
            raise NodeFailure(f"SSH to {instance.ssh_target} failed: {exc}") from None

    def _destroy(self, cloud, instance: Instance | None, slot, run_id: str | None, state: State) -> None:
        began = time.monotonic()
        gone = {}
        if instance is not None:
            gone[instance.id] = instance
        try:
            if run_id:
                for found in cloud.list_instances({TAG_RUN: run_id}):
                    gone.setdefault(found.id, found)
            for inst in gone.values():
                cloud.destroy(inst)
                self.output.note(f"instance {inst.id} destroyed")
            if run_id:
                _end_run(self.config, run_id)
            if slot is not None:
                self.store.release(slot)
        except Exception as exc:  # left counted: the next start (or `fab cleanup`) removes it
            log.error("build %s: could not destroy %s: %s (the next `fab listen` or `fab cleanup:cloud=%s` "
                      "removes it)", self.build.id, ", ".join(gone) or "its instance", exc, cloud.name)
        if gone:
            self.durations["destroy"] = time.monotonic() - began

    # -- on the instance
    def _on_instance(self, plan, instance: Instance, conn) -> tuple[str, str | None]:
        transport = conn.client.get_transport()
        user = self.config.ci_user.name
        run_as = [] if instance.user == user else ["sudo", "-n", "-H", "-u", user, "--"]
        as_root = [] if instance.user == "root" else ["sudo", "-n", "-H", "--"]
        ws = f"workspace/{self.build.project}"
        began = time.monotonic()
        self._check()
        try:
            gerrit = gerrit_settings(self.config, need_connection=False)
            url = workspace.git_url(gerrit.git_url, gerrit, self.build.project)
            env = workspace.git_env(gerrit)
            mirrors = self.config.data_dir / "ci" / "git"
            revision = workspace.fetch(mirrors, url, self.build.project, self.build.ref, self.build.change,
                                       self.build.patchset, env)
            if self.build.revision and revision != self.build.revision:
                self.output.note(f"note: {self.build.ref} is {revision}, the event said {self.build.revision}")
            with workspace.checkout(mirrors, self.build.project, revision, url, env) as tree:
                sent = workspace.upload(transport, tree, plan.script, ws, run_as, timeout=600)
        except workspace.WorkspaceError as exc:
            raise NodeFailure(str(exc)) from None
        self.durations["workspace"] = time.monotonic() - began
        self.output.note(f"workspace ~{user}/{ws} at {revision[:12]} ({sent} bytes)")
        self._check()
        env_vars = {**gerrit_env(self.build), "BUILD_ID": self.build.id, "JOB_NAME": plan.name, **plan.job.env}
        began = time.monotonic()
        try:
            result, detail = execute.run_script(transport, run_as, ws, env_vars, plan.job.timeout, self.output,
                                                self.should_stop, lambda: execute.kill_user(transport, as_root, user))
        finally:
            self.durations["script"] = time.monotonic() - began
        if result == "ABORTED":
            execute.kill_user(transport, as_root, user)
            raise _Stopped(*detail)
        began = time.monotonic()
        execute.collect(transport, as_root, user, ws, plan.job.artifacts, self.dir, self.output)
        self.durations["collect"] = time.monotonic() - began
        return result, detail

    def _write_json(self, result, detail, started, ended) -> None:
        from cislaves.util import write_json

        b = self.build
        write_json(self.dir / "build.json", {
            "build_id": b.id, "job": b.name, "buildset": b.job_id, "change": b.change, "patchset": b.patchset,
            "project": b.project, "branch": b.branch, "ref": b.ref, "revision": b.revision, "trigger": b.trigger,
            "event_type": b.event_type, "voting": b.voting, "result": result, "detail": detail,
            "start": isoformat(started), "end": isoformat(ended),
            "duration": round((ended - started).total_seconds(), 3),
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
            "cloud": self.facts.get("cloud"), "image_id": self.facts.get("image_id"),
            "distribution": self.facts.get("distribution"), "instance_type": self.facts.get("instance_type"),
            "instance_id": self.facts.get("instance_id"), "node_attempts": self.build.node_attempts,
            "waited_for_slot": self.facts.get("waited_for_slot", 0.0),
            "tool": TOOL,
        }, mode=0o644)


def _end_run(config, run_id: str) -> None:
    """The run is over: forget it in the state and remove its (now empty) key folder."""
    State(config.data_dir).end_run(run_id)
    with contextlib.suppress(OSError):
        (config.data_dir / "keys" / run_id).rmdir()
