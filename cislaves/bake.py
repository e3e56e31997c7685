"""The bake pipeline: up, bootstrap, tests, create_image, destroy, and `it` (all five) with a cleanup stack.

Every step logs its start and end with the elapsed time, prefixed with cloud/distribution. On any
error, Ctrl-C or SIGTERM, whatever the run created is removed (unless keep_on_error). Runs and
instances are recorded in the state before anything is created, so the next run (or `fab cleanup`)
finds what a killed run left behind.
"""
from __future__ import annotations

import contextlib
import logging
import shlex
import time
import traceback
from typing import Callable, Iterator

from cislaves import TOOL, clouds, distros, images as manifest, remote
from cislaves.clouds.base import CleanupPolicy
from cislaves.config import Config
from cislaves.errors import CislavesError, CloudError, ConfigError, Interrupted, StateError
from cislaves.interrupts import shielded
from cislaves.records import TAG_RUN, TAG_TOOL, Image, Instance, LaunchSpec, new_run_id, standard_tags, utcnow
from cislaves.state import State, alive
from cislaves.util import table

log = logging.getLogger(__name__)


class Session:
    """One command acting on one cloud: configuration, driver, state and output."""

    def __init__(self, config: Config, cloud: str | None = None, distribution: str | None = None,
                 out: Callable[[str], None] = print):
        self.config = config
        self.state = State(config.data_dir)
        self.out = out
        self.cloud_name = clouds.check_name(cloud or self.state.only_cloud() or config.defaults.cloud,
                                            "argument 'cloud'" if cloud else
                                            f"{config.where}: defaults.cloud")
        self.distribution_arg = distribution
        self.distribution = distros.get(distribution or config.defaults.distribution,
                                        "argument 'distribution'" if distribution else
                                        f"{config.where}: defaults.distribution")
        # a bad cloud section is one line before anything is written (validated once: one deprecation warning)
        self._settings = clouds.settings(self.cloud_name, config)
        self._cloud = None
        self.owner = self.state.owner_id()

    @property
    def cloud(self):
        if self._cloud is None:
            driver = clouds.driver_class(self.cloud_name)
            self._cloud = driver(self._settings, self.config.data_dir, name=self.cloud_name)
        return self._cloud

    def label(self, distribution: str | None = None) -> str:
        return f"[{self.cloud_name}/{distribution or self.distribution.name}]"

    def for_instance(self, instance: Instance) -> None:
        """Act as the instance's distribution (its record says which) unless one was given."""
        if not self.distribution_arg and instance.distribution in distros.DISTRIBUTIONS:
            self.distribution = distros.get(instance.distribution)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        label = self.label()
        log.info("%s %s: started", label, name)
        started = time.monotonic()
        try:
            yield
        except CislavesError as exc:
            log.info("%s %s: failed after %.2fs", label, name, time.monotonic() - started)
            if not str(exc).startswith("["):
                exc.args = (f"{label} {name} failed: {exc}",)
            raise
        except (KeyboardInterrupt, Interrupted):
            log.info("%s %s: interrupted after %.2fs", label, name, time.monotonic() - started)
            raise Interrupted(f"{label} interrupted during {name}") from None
        except Exception as exc:  # a bug or an SDK error no driver translated: one line, details in the log
            log.debug("%s %s: unexpected error\n%s", label, name, traceback.format_exc())
            log.info("%s %s: failed after %.2fs", label, name, time.monotonic() - started)
            raise CloudError(f"{label} {name} failed: {type(exc).__name__}: {exc}") from None
        log.info("%s %s: done in %.2fs", label, name, time.monotonic() - started)

    def close(self) -> None:
        if self._cloud is not None:
            self._cloud.close()


# -- the steps ------------------------------------------------------------------------------------
def up(s: Session, image: str | None = None, new: bool = False, role: str = "instance",
       run_id: str | None = None) -> Instance:
    """Boot a new instance (or start the stopped one the state knows; say so if one is running)."""
    if image is not None:
        check_image_argument(image)
    reap(s)
    if not image and not new and role == "instance":
        known = s.state.entries(s.cloud_name)
        if len(known) == 1:
            instance = known[0].instance
            s.for_instance(instance)
            with s.step("up"):
                instance = s.cloud.refresh(instance)
                if instance.state == "stopped":
                    instance = s.cloud.start(instance)
                    s.state.put(instance, "instance")
                    s.out(f"Started {instance.id} at {instance.ssh_target}")
                    return instance
                if instance.state == "running":
                    s.out(f"Already up: {instance.id} at {instance.ssh_target}")
                    return instance
                if instance.state != "terminated":  # never forget something that may still exist
                    raise StateError(f"instance {instance.id} is {instance.state}; wait for it, or remove it "
                                     f"with `fab destroy:cloud={s.cloud_name},instance={instance.id}`")
                s.state.remove(instance)  # gone: forget it and boot a new one
    run_id = run_id or new_run_id()
    s.state.start_run(run_id, s.cloud_name, s.distribution.name, role)
    launched: list[Instance] = []
    launching = False  # before launch() nothing exists: a failure there has nothing to clean up
    try:
        with s.step("up"):
            base = s.cloud.get_image(image) if image else s.cloud.base_image(s.distribution)
            name = f"{s.config.top.image_name_prefix}-{s.distribution.name}-{run_id}".lower()
            spec = LaunchSpec(distribution=s.distribution, image=base, run_id=run_id, name=name,
                              tags=standard_tags(run_id, s.distribution.name, role, name=name, owner=s.owner),
                              key_dir=s.config.data_dir / "keys" / run_id, role=role)
            launching = True
            instance = s.cloud.launch(spec)
            launched.append(instance)
            s.state.put(instance, role)
            s.out(f"Instance: {instance.id} at {instance.ssh_target}")
    except BaseException:
        with shielded():
            if launching:
                _remove_run(s, run_id, launched)
            else:
                s.state.end_run(run_id)
        raise
    if role == "instance":
        s.state.end_run(run_id)
    return instance


def check_image_argument(image: str) -> None:
    """An image id or name as the user typed it: no path (a local-cloud id is a folder name), no
    whitespace or control characters. Checked before the state records a run."""
    if (not image or image.startswith(("/", "-")) or ".." in image.split("/")
            or any(c.isspace() or not c.isprintable() for c in image)):
        raise ConfigError(f"argument 'image': {image!r} is not an image id or name (`fab images` lists them)")


def bootstrap(s: Session, instance_id: str | None = None, instance: Instance | None = None) -> None:
    """Provision the current instance with its distribution's script (and the configured extras)."""
    instance = instance or s.state.current(s.cloud_name, instance_id)
    s.for_instance(instance)
    with s.step("bootstrap"):
        from cislaves.distros import provision

        provision.provision(instance, s.distribution, s.config, s.cloud, out=s.out)


def tests(s: Session, instance_id: str | None = None, instance: Instance | None = None) -> None:
    """Run the distribution's checks against the current instance."""
    instance = instance or s.state.current(s.cloud_name, instance_id)
    s.for_instance(instance)
    with s.step("tests"):
        from cislaves.distros import checks

        checks.run_checks(instance, s.distribution, s.config, s.cloud, out=s.out)


def create_image(s: Session, instance_id: str | None = None, instance: Instance | None = None,
                 run_id: str | None = None) -> list[Image]:
    """Snapshot the instance into an image (and its region copies); print and record the ids."""
    instance = instance or s.state.current(s.cloud_name, instance_id)
    s.for_instance(instance)
    run_id = run_id or instance.run_id
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    # the run id's random part makes names unique across parallel bakes (AMI names must be unique)
    name = f"{s.config.top.image_name_prefix}-{s.distribution.name}-{stamp}-{run_id.rsplit('-', 1)[-1]}".lower()
    tags = standard_tags(run_id, s.distribution.name, "image", name=name, ttl_hours=24 * 365 * 100,
                         owner=s.owner, extra={manifest.TAG_SOURCE: instance.image_id or ""})
    manifest.check(s.config.manifest)  # before the image exists: a bad manifest would orphan it
    made: list[Image] = []
    recorded = False
    try:
        with s.step("create_image"):
            made.append(s.cloud.create_image(instance, name, tags))
            regions = s.cloud.copy_regions()
            if regions:  # an image without its region copies is not what was asked for
                made += s.cloud.copy_image(made[0], regions)
            # From here an interrupt waits: the images reach the manifest and the output together.
            with shielded():
                manifest.record(s.config.manifest, made, distribution=s.distribution.name, run_id=run_id,
                                name=name, source_image=instance.image_id)
                recorded = True
                s.out(f"Image: {made[0].id}")
                for line in s.cloud.image_lines(made):
                    s.out(line)
    except BaseException as exc:
        if not recorded:  # an image the manifest does not name would be nobody's: delete it
            with shielded():
                gone = _delete_unrecorded(s, made, run_id, name)
            if isinstance(exc, manifest.ManifestError):  # checked valid before: a failure (exit 1), not config
                raise CislavesError(f"{exc}; deleted the new image{'s' if len(gone) > 1 else ''} "
                                    f"{', '.join(gone) or '(none found)'}") from None
        raise
    return made


def _delete_unrecorded(s: Session, made: list[Image], run_id: str, name: str) -> list[str]:
    """Delete the images of this create_image (those returned, and any the cloud lists under the run
    and name: an interrupt can land between the driver's return and our bookkeeping)."""
    images = {i.id: i for i in made}
    try:
        for image in s.cloud.list_images({TAG_RUN: run_id}):
            if image.name == name:
                images.setdefault(image.id, image)
    except Exception as exc:  # still delete the ones we know
        log.warning("%s could not list the images of run %s: %s", s.label(), run_id, exc)
    gone = []
    for image in images.values():
        try:
            s.cloud.delete_image(image)
            gone.append(image.id)
            log.info("%s deleted image %s (not recorded in the manifest)", s.label(), image.id)
        except Exception as exc:
            log.error("%s could not delete image %s: %s (run `fab delete_image:%s,cloud=%s`)", s.label(),
                      image.id, exc, image.id, s.cloud_name)
    return gone


def forget_files(s: Session, instance: Instance) -> None:
    """Remove what a gone instance leaves in the data dir: its known_hosts pin and the run's key folder
    (once the driver has removed the key in it)."""
    pin = s.config.data_dir / "known_hosts" / f"{instance.cloud}-{instance.id}".replace("/", "_")
    pin.unlink(missing_ok=True)
    if instance.run_id:
        with contextlib.suppress(OSError):  # not empty (a key still in use) or already gone
            (s.config.data_dir / "keys" / instance.run_id).rmdir()


def destroy(s: Session, instance_id: str | None = None, instance: Instance | None = None) -> None:
    """Delete the instance and its temporary resources; forget it."""
    reap(s)
    instance = instance or s.state.current(s.cloud_name, instance_id)
    s.for_instance(instance)
    with shielded(), s.step("destroy"):
        s.cloud.destroy(instance)
        s.state.remove(instance)
        forget_files(s, instance)
    s.out(f"Destroyed {instance.id}")


def down(s: Session, instance_id: str | None = None) -> None:
    """Halt the instance, keeping its disk."""
    instance = s.state.current(s.cloud_name, instance_id)
    s.for_instance(instance)
    with s.step("down"):
        instance = s.cloud.stop(instance)
        s.state.put(instance, "instance")
    s.out(f"Stopped {instance.id}")


def it(s: Session, keep_on_error: bool = False) -> list[Image]:
    """The whole bake: up, bootstrap, tests, create_image, destroy. Nothing of the run survives it,
    unless keep_on_error and a step failed (then the output says how to reach and remove it)."""
    return _it(s, keep_on_error)


def _it(s: Session, keep_on_error: bool) -> list[Image]:
    run_id = new_run_id()
    started = time.monotonic()
    manifest.check(s.config.manifest)  # a bad manifest is one line now, not an orphaned image later
    instance = up(s, new=True, role="bake", run_id=run_id)
    try:
        bootstrap(s, instance=instance)
        tests(s, instance=instance)
        from cislaves.lifecycle import packages

        with s.step("packages"):
            installed = packages.collect(instance, s.distribution, s.config)
        made = create_image(s, instance=instance, run_id=run_id)
        packages.save(s.config.data_dir, made, installed)
    except BaseException as exc:
        if keep_on_error and not isinstance(exc, (KeyboardInterrupt, Interrupted)):
            s.state.put(instance, "instance")
            s.state.end_run(run_id)
            where = f"cloud={s.cloud_name},instance={instance.id}"
            s.out(f"Kept instance {instance.id} at {instance.ssh_target} "
                  f"(key {instance.key_file}); reach it with `fab ssh:{where}`, remove it with "
                  f"`fab destroy:{where}`")
        else:
            with shielded():
                _remove_run(s, run_id, [instance])
        raise
    with shielded(), s.step("destroy"):
        s.cloud.destroy(instance)
        s.state.remove(instance, end_run=run_id)
        forget_files(s, instance)
    log.info("%s it: done in %.2fs", s.label(), time.monotonic() - started)
    return made


# -- status, ssh, cleanup --------------------------------------------------------------------------
def status(s: Session, all_clouds: bool = False) -> list[str]:
    entries = s.state.entries(None if all_clouds else s.cloud_name)
    if not entries:
        return [f"No instances on cloud {s.cloud_name!r} in {s.state.path}"]
    rows = []
    drivers = {}  # one driver per cloud, however many of its instances the state lists
    for entry in entries:
        inst = entry.instance
        try:
            if inst.cloud not in drivers:
                drivers[inst.cloud] = s.cloud if inst.cloud == s.cloud_name else clouds.get(inst.cloud, s.config)
            inst = drivers[inst.cloud].refresh(inst)
        except CislavesError as exc:
            inst.state = f"unknown ({exc})"
        rows.append([inst.id, inst.cloud, inst.distribution, inst.state,
                     inst.ssh_target, inst.created or "", entry.role])
    return table(rows, ["ID", "CLOUD", "DISTRIBUTION", "STATE", "SSH", "CREATED", "ROLE"])


def ssh_argv(s: Session, instance: Instance, command: list[str]) -> list[str]:
    """The OpenSSH command line for an interactive session (or one command, each word quoted)."""
    argv = ["ssh", "-p", str(instance.port), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={remote.known_hosts_file(s.config.data_dir, instance)}",
            "-o", "StrictHostKeyChecking=accept-new"]
    if instance.key_file:
        argv += ["-i", str(instance.key_file)]
    if instance.proxy_command:
        argv += ["-o", f"ProxyCommand={instance.proxy_command}"]
    elif instance.jump_host:
        argv += ["-J", instance.jump_host]
    argv += ["--", f"{instance.user}@{instance.address}"]  # `--`: nothing after it is an ssh option
    if command:
        argv.append(shlex.join(command))  # each word quoted: the remote shell sees the same argv
    return argv


def images(s: Session) -> list[str]:
    """Images this tool made on the cloud (from the cloud itself), oldest first."""
    with s.step("images"):
        found = s.cloud.list_images({TAG_TOOL: TOOL})
    found = [i for i in found if i.run_id or i.tags.get(TAG_RUN)]
    found.sort(key=lambda i: i.created or "")
    rows = [[i.id, i.cloud, i.distribution or "", i.created or "",
             i.source_image or i.tags.get(manifest.TAG_SOURCE) or "", i.region or ""] for i in found]
    if not rows:
        return [f"No images made by cislaves on cloud {s.cloud_name!r}"]
    return table(rows, ["ID", "CLOUD", "DISTRIBUTION", "CREATED", "SOURCE", "REGION"])


def reap(s: Session) -> list[str]:
    """Remove what runs whose process died left behind on this cloud (found by their run tag)."""
    removed: list[str] = []
    runs = s.state.runs()
    dead = [rid for rid, run in runs.items() if run.get("cloud") == s.cloud_name and not alive(run.get("owner"))]
    for entry in s.state.entries(s.cloud_name):
        if entry.role == "bake" and not alive(entry.owner) and entry.instance.run_id not in dead:
            dead.append(entry.instance.run_id)
    if not dead:
        return removed
    built = {b.get("artifact_id") for b in manifest.records(s.config.manifest)}
    with shielded():
        for run_id in dead:
            log.info("%s removing leftovers of interrupted run %s", s.label(), run_id)
            known = [e.instance for e in s.state.entries(s.cloud_name) if e.instance.run_id == run_id]
            removed += _remove_run(s, run_id, known)
            try:
                for image in s.cloud.list_images({TAG_RUN: run_id}):
                    if image.id not in built:
                        s.cloud.delete_image(image)
                        removed.append(f"image {image.id}")
            except CislavesError as exc:
                log.warning("%s could not list images of run %s: %s", s.label(), run_id, exc)
    for line in removed:
        s.out(f"Removed leftover {line}")
    return removed


def cleanup(s: Session, all_owners: bool = False) -> list[str]:
    """Reap dead runs, then ask the cloud to remove the tool's resources that are this owner's and whose
    run the state does not know as live (a run in progress, or an instance kept by `up`), and any
    tool resource whose cislaves:expires time has passed. all_owners: every owner's dead runs too."""
    removed = reap(s)
    keep = {e.instance.run_id for e in s.state.entries()} | set(s.state.runs())
    policy = CleanupPolicy(owner=s.owner, keep_run_ids=keep, all_owners=all_owners)
    with shielded(), s.step("cleanup"):
        removed += s.cloud.cleanup(policy)
    return removed


def _remove_run(s: Session, run_id: str, known: list[Instance]) -> list[str]:
    """Destroy the run's instances (those we know and those the cloud lists by the run's tag)."""
    removed: list[str] = []
    instances = {i.id: i for i in known}
    ok = True  # the run ends in the state only when its cleanup is known complete
    try:
        for inst in s.cloud.list_instances({TAG_RUN: run_id}):
            instances.setdefault(inst.id, inst)
    except Exception as exc:  # still destroy the ones we know; the next run (or cleanup) tries again
        ok = False
        log.warning("%s could not list instances of run %s: %s (the next run or `fab cleanup:cloud=%s` "
                    "will look again)", s.label(), run_id, exc, s.cloud_name)
    for inst in instances.values():
        try:
            log.info("%s destroying %s", s.label(), inst.id)
            s.cloud.destroy(inst)
            s.state.remove(inst)
            forget_files(s, inst)
            removed.append(f"instance {inst.id}")
        except Exception as exc:  # keep going: the rest must still be removed
            ok = False
            log.error("%s could not destroy %s: %s (run `fab cleanup:cloud=%s`)", s.label(), inst.id,
                      exc, s.cloud_name)
    if ok:
        s.state.end_run(run_id)
    return removed

