"""`fab rebake`: bake every target of the matrix in parallel, validate, publish, prune, notify.

One unattended command for what the seed's users did by hand after a cron bake. Order:
1. checks before any side effect: the rebake section, each target's configuration (its overlay and
   region), the manifest, the publish file and its git repository; then the lock (a second rebake
   exits at once, code 75);
2. the bakes, each a full `it` in a thread with its own Session, within `parallel` and `per_cloud`;
   one failing target never stops the others; then, with `validate`, a fresh instance of the new
   image runs the checks (a failing image is deleted);
3. the validated ids go into the YAML (dry_run: the diff only), on a git branch with a commit;
4. retention for the targets' groups when every target succeeded; a summary table, a JSON report
   and a log file per rebake; notifications.
A Ctrl-C or SIGTERM stops each worker at its next step or output line (never inside a cleanup; a
remote script that is running finishes first) and the rebake ends with what finished; every bake
removes what it made.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cislaves import bake, images as manifest, interrupts, remote
from cislaves.errors import CislavesError, Interrupted, Locked
from cislaves.lifecycle import notify, packages, publish, retention, settings as settings_mod
from cislaves.lifecycle.validate import validate as validate_image
from cislaves.records import Image, new_run_id
from cislaves.util import table, write_json

log = logging.getLogger(__name__)
_current = threading.local()  # the target a worker thread bakes (for the log prefix)


@dataclass
class Result:
    target: Any  # settings.Target
    status: str = "pending"  # ok, failed, interrupted
    images: list[Image] = field(default_factory=list)
    step: str = ""  # the step that failed
    error: str = ""
    seconds: float = 0.0
    packages_changed: int | None = None
    previous: str | None = None

    def row(self) -> list[str]:
        image = self.images[0].id if self.images else "-"
        changed = "-" if self.packages_changed is None else str(self.packages_changed)
        return [self.target.key, self.status, image, f"{self.seconds:.1f}s", self.step or "-", changed]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.key, "cloud": self.target.cloud, "distribution": self.target.distribution,
                "region": self.target.region, "result": self.status, "step": self.step or None,
                "error": self.error or None, "seconds": round(self.seconds, 2),
                "images": [{"id": i.id, "region": i.region} for i in self.images],
                "packages_changed": self.packages_changed, "previous_image": self.previous}


def rebake(config, only: str | None = None, dry_run: bool = False,
           out: Callable[[str], None] = print) -> int:
    """Run the rebake; return the exit code (0 only when every target succeeded)."""
    settings = settings_mod.load(config)
    targets = settings_mod.select(settings, only)
    sessions = {t.key: t.session_config(config) for t in targets}  # each overlay validated now
    drivers: dict[str, Any] = {}
    try:
        for target in targets:  # each driver's settings, before anything is created
            drivers[target.key] = bake.Session(sessions[target.key], target.cloud, target.distribution).cloud
        return _rebake(config, settings, targets, sessions, drivers, dry_run, out)
    finally:
        for driver in drivers.values():
            driver.close()


def _rebake(config, settings, targets, sessions, drivers, dry_run: bool, out) -> int:
    """The rebake after the targets' drivers are built: each target's driver serves its bake, its
    validation and the prune (a new driver is a new botocore session: about 60 ms of CPU each, and the
    prune made two per region after the bakes, one after the other: 1.3 s for eight regions)."""
    manifest.check(config.manifest)
    publish_file = config.relative(settings.publish.file) if settings.publish else None
    if publish_file is not None:
        if not publish_file.is_file():
            raise settings_mod.ConfigError(f"{config.where}: rebake.publish.file: {publish_file} does not exist")
        publish.render(publish_file.read_text(), [], str(publish_file))  # parses, or one line
        git = settings.publish.git
        if git and git.commit and not dry_run:
            publish.check_git(publish_file, _branch(git.branch))
    rebake_id = new_run_id()
    log_dir = config.relative(settings.log_dir) if settings.log_dir else config.data_dir / "rebakes"
    with _rebake_lock(config), _log_file(log_dir / f"{rebake_id}.log") as log_path:
        started = time.monotonic()
        say = _teller(out, log_path)
        say(f"rebake {rebake_id}: {len(targets)} target{'s' if len(targets) != 1 else ''} "
            f"({', '.join(t.key for t in targets)}), parallel {settings.parallel}"
            + (", dry run" if dry_run else ""))
        remote = _remote(config, rebake_id)  # ci.backend zookeeper: the workers bake the targets
        def local(result, cfg, rebake_settings, say, stop):
            bake_one(result, cfg, rebake_settings, say, stop, cloud=drivers[result.target.key])

        try:
            results = run_targets(targets, sessions, settings, say, bake=remote or local)
        finally:
            if remote is not None:
                remote.close()
        ok = [r for r in results if r.status == "ok"]
        summary = summary_lines(results)
        for line in summary:
            say(line)
        lines: list[str] = []
        interrupted = any(r.status == "interrupted" for r in results)
        if interrupted:
            lines.append("publish and prune: skipped (interrupted); the finished images are in the manifest")
        elif publish_file is not None and ok:
            lines += _publish(config, settings, publish_file, ok, dry_run, say)
        if ok and len(ok) == len(results):
            published = retention.published_ids(publish_file)
            decisions = retention.prune(config, [r.target for r in ok], settings.keep, published=published,
                                        dry_run=dry_run, out=lambda line: say(f"prune: {line}"),
                                        drivers={retention.group_key(r.target): drivers[r.target.key] for r in ok})
            lines.append(f"prune: {sum(d.action == 'delete' for d in decisions)} image(s) "
                         f"{'would go' if dry_run else 'deleted'}")
        report = _report(rebake_id, results, time.monotonic() - started, log_path, dry_run, lines)
        report_path = log_dir / f"{rebake_id}.json"
        report["report"] = str(report_path)
        for line in lines:
            say(line)
        write_json(report_path, report, mode=0o644)
        for line in notify.send(settings.notify, report, summary, config.environ):
            say(f"notify: {line}")
        say(f"report: {report_path}")
        say(f"log: {log_path}")
    if interrupted:
        raise Interrupted(f"rebake {rebake_id} interrupted; finished targets are in {report_path}")
    return 0 if len(ok) == len(results) else 1


def run_targets(targets, sessions, settings, say, bake=None) -> list[Result]:
    """Bake the targets in threads, at most `parallel` at once and `per_cloud[cloud]` per cloud
    (`bake`: bake_one, or cislaves.coord.rebakes.Remote handing each target to a worker)."""
    bake = bake or bake_one
    results = [Result(t) for t in targets]
    pending = list(results)
    running: dict[str, int] = {}
    done = threading.Condition()
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def worker(result: Result):
        try:
            bake(result, sessions[result.target.key], settings, say, stop)
        finally:
            with done:
                running[result.target.cloud] -= 1
                done.notify_all()

    try:
        with done:
            while pending or sum(running.values()):
                for result in list(pending):
                    cloud = result.target.cloud
                    if sum(running.values()) >= settings.parallel:
                        break
                    if running.get(cloud, 0) >= settings.per_cloud.get(cloud, settings.parallel):
                        continue
                    pending.remove(result)
                    running[cloud] = running.get(cloud, 0) + 1
                    thread = threading.Thread(target=worker, args=(result,), name=f"rebake {result.target.key}",
                                              daemon=True)
                    threads.append(thread)
                    thread.start()
                done.wait(timeout=1.0)
    except KeyboardInterrupt:
        stop.set()  # workers stop at their next line, outside cleanups; the rest never start
        say("interrupted: stopping the running bakes (each removes what it made)")
        with interrupts.shielded():
            for result in pending:
                result.status, result.step = "interrupted", "not started"
            for thread in threads:
                thread.join()
    return results


def bake_one(result: Result, config, settings, say, stop: threading.Event, cloud=None) -> None:
    """One target: a full bake, then validation; fills `result`, never raises (`cloud`: a driver
    built already for the target, used from this thread only until it returns; the caller closes it)."""
    target = result.target
    _current.target = target.key
    started = time.monotonic()

    worker = threading.get_ident()

    def out(line: str) -> None:
        say(f"[{target.key}] {line}")
        # only in the worker itself (not an SSH reader thread), never inside a cleanup
        if stop.is_set() and threading.get_ident() == worker and not interrupts.is_shielded():
            raise Interrupted(f"[{target.key}] interrupted")

    s = TargetSession(target, config, out, stop, cloud=cloud)
    try:
        # the steps share SSH connections (the command's own block does not reach a new thread: its
        # contextvars start empty); without it each step paid a new connection's handshake
        with remote.kept_connections():
            made = bake.it(s)
            result.images = made
            if settings.validate_:
                try:
                    s.validating = True
                    validate_image(s, made[0])
                except BaseException:
                    with interrupts.shielded():
                        _delete(s, made, out, "it failed validation")
                    result.images = []
                    raise
        manifest.mark(config.manifest, [i.id for i in made], validated=True)
        result.previous, result.packages_changed = _package_changes(config, target, made)
        result.status = "ok"
    except (KeyboardInterrupt, Interrupted) as exc:
        result.status, result.step, result.error = "interrupted", s.current, str(exc)
    except CislavesError as exc:
        result.status, result.step, result.error = "failed", s.current, str(exc)
        out(f"FAILED in {s.current}: {exc}")
    except Exception as exc:  # a bug: the other targets go on; details in the log
        log.debug("[%s] unexpected error\n%s", target.key, traceback.format_exc())
        result.status, result.step, result.error = "failed", s.current, f"{type(exc).__name__}: {exc}"
        out(f"FAILED in {s.current}: {type(exc).__name__}: {exc}")
    finally:
        result.seconds = time.monotonic() - started
        s.close()
        _current.target = None


class TargetSession(bake.Session):
    """A Session labelled with its target (cloud/distribution/region) that remembers its current step."""

    def __init__(self, target, config, out, stop: threading.Event | None = None, cloud=None):
        super().__init__(config, target.cloud, target.distribution, out=out)
        self._cloud = cloud
        self._own_cloud = cloud is None  # a driver given is closed by whoever built it
        self.target = target
        self.stop = stop or threading.Event()
        self.current = "up"
        self.validating = False  # steps of the validation show as validate/up, validate/tests

    def label(self, distribution: str | None = None) -> str:
        return f"[{self.target.key}]"

    def close(self) -> None:
        if self._own_cloud:
            super().close()

    def step(self, name: str):
        if not name.endswith("destroy"):
            if self.stop.is_set() and not interrupts.is_shielded():
                raise Interrupted(f"[{self.target.key}] interrupted before {name}")  # a rebake stops between steps
            self.current = f"validate/{name}" if self.validating else name
        return super().step(name)


def summary_lines(results: list[Result]) -> list[str]:
    rows = [r.row() for r in results]
    lines = table(rows, ["TARGET", "RESULT", "IMAGE", "DURATION", "FAILED STEP", "PACKAGES CHANGED"])
    failed = [r.target.key for r in results if r.status != "ok"]
    lines.append(f"{len(results) - len(failed)} of {len(results)} targets succeeded"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
    return lines


# -- helpers -------------------------------------------------------------------------------------
def _publish(config, settings, path: Path, ok: list[Result], dry_run: bool, say) -> list[str]:
    pub = settings.publish
    changes, rows = [], []
    for result in ok:
        t = result.target
        for image in result.images:
            region = image.region or t.region or "default"
            keys = publish.key_path(pub.path, cloud_key=t.cloud_key, cloud=t.cloud, region=region,
                                    distribution=t.distribution, target=t.key)
            changes.append((keys, image.id))
            rows.append((t.key, region, image.id))
    old = path.read_text()
    new = publish.render(old, changes, str(path))
    name = str(path.name)
    if dry_run:
        text = publish.diff(old, new, name)
        for line in (text or "(no change)\n").splitlines():
            say(f"publish (dry run): {line}")
        return [f"publish: dry run, {path} unchanged"]
    if new == old:
        return [f"publish: {path} already names these ids"]
    git = pub.git
    if git and git.commit:
        head = publish.commit(path, new, _branch(git.branch), publish.message(rows), git.push, git.remote)
        where = f"committed {head[:12]} on a new branch" + (" and pushed" if git.push else "")
    else:
        publish.write_atomic(path, new)
        where = "written"
    manifest.mark(config.manifest, [image_id for _, _, image_id in rows], published=str(path))
    return [f"publish: {len(rows)} id(s) into {path}, {where}"]


def _branch(template: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return template.format(date=now.strftime("%Y%m%d"), time=now.strftime("%H%M%S"))


def _delete(s, made: list[Image], out, why: str) -> None:
    for image in made:
        try:
            s.cloud.delete_image(image)
            out(f"Deleted image {image.id} ({why})")
        except Exception as exc:
            out(f"could not delete image {image.id}: {exc} (delete it with `fab delete_image:{image.id},"
                f"cloud={s.cloud_name}`)")
    manifest.forget(s.config.manifest, [i.id for i in made])
    for image in made:
        packages.remove(s.config.data_dir, image.id)


def _package_changes(config, target, made: list[Image]) -> tuple[str | None, int | None]:
    """How many packages changed against the previous validated image of the target's group."""
    new = packages.load(config.data_dir, made[0].id)
    ids = {i.id for i in made}
    for build in reversed(manifest.records(config.manifest)):
        if (build.get("cloud"), build.get("distribution")) != (target.cloud, target.distribution) or \
                build.get("artifact_id") in ids or not build.get("validated") or build.get("copy_of"):
            continue
        if made[0].region and build.get("region") != made[0].region:
            continue
        old = packages.load(config.data_dir, build["artifact_id"])
        if old is not None and new is not None:
            return build["artifact_id"], packages.count(packages.diff(old, new))
    return None, None


def _report(rebake_id, results, seconds, log_path, dry_run, lines) -> dict[str, Any]:
    ok = sum(r.status == "ok" for r in results)
    return {"id": rebake_id, "dry_run": dry_run, "seconds": round(seconds, 2), "succeeded": ok,
            "failed": len(results) - ok, "targets": [r.to_dict() for r in results], "notes": lines,
            "log": str(log_path), "host": os.uname().nodename}


@contextlib.contextmanager
def _lock(data_dir: Path):
    """One rebake per data dir: the second exits at once (Locked: exit code 75)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "rebake.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise Locked(f"another rebake is running ({holder}; lock {path}); this one exits") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)


def _remote(config, rebake_id: str):
    if not config.raw.get("zookeeper"):
        return None
    from cislaves.ci.settings import uses_zookeeper

    if not uses_zookeeper(config):
        return None
    from cislaves.coord import rebakes

    return rebakes.Remote(config, rebake_id)


def _rebake_lock(config):
    """With a zookeeper section, one rebake across every host (a ZooKeeper lock); else per data dir."""
    if config.raw.get("zookeeper"):
        from cislaves.coord import locks

        return locks.held(config, "rebake")
    return _lock(config.data_dir)


@contextlib.contextmanager
def _log_file(path: Path):
    """Every log record of the rebake (all threads) also goes to its own file, prefixed by target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    prefix = _TargetPrefix()
    root = logging.getLogger()
    handler.addFilter(prefix)
    root.addHandler(handler)
    others = [h for h in root.handlers if h is not handler]
    for h in others:
        h.addFilter(prefix)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        for h in others:
            h.removeFilter(prefix)
        handler.close()


class _TargetPrefix(logging.Filter):
    """Prefix a worker thread's log lines with its target, unless the line names it already."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(_current, "target", None)
        if key and not getattr(record, "_cislaves_prefixed", False):
            message = record.getMessage()
            if not message.startswith(f"[{key}]"):
                record.msg, record.args = f"[{key}] {message}", None
            record._cislaves_prefixed = True
        return True


def _teller(out: Callable[[str], None], log_path: Path):
    """Output lines go to `out` and to the log file, whole lines, from any thread."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            out(line)
            with open(log_path, "a") as fh:
                fh.write(line + "\n")

    return say
