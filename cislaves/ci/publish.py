"""Publishing builds' logs where anyone can browse them (ci.logs.publish: local | rsync | s3).

The runner writes each build's directory under ci.logs.dir at OpenStack's log path
`<NN>/<change>/<patchset>/<trigger>/<job>/<build id>/`. `Publisher.publish_build(dir)` writes its
index.html, copies the directory to the target and returns the build's public URL (ci.logs.url + that
path), which the report then puts in its comment: the report waits for the publish. The local files are
never moved or removed by a publish, so a failed one loses nothing; it is retried with backoff until
ci.logs.publish_timeout, then raises PublishError.

  local  the directory already is the target (a web server serves ci.logs.dir): only the pages.
  rsync  `rsync -a` over SSH to a log host (argv lists; the key file and known_hosts as options).
  s3     boto3 put_object per file, with the Content-Type a browser shows as text (text/plain;
         charset=utf-8 for logs, application/json, text/html), index.html last.

`publish_status(builds)` renders the status page (index.html at the logs' root) and copies it to the
target; `expire(keep_days)` removes builds older than keep_days from the target (and their local
copies), returning their relative paths. Both are called from the listener (cislaves.ci.pool).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import logging
import mimetypes
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from cislaves.ci import pages
from cislaves.errors import CislavesError, ConfigError
from cislaves.waiting import Pending, wait_for

log = logging.getLogger(__name__)
# <NN>/<change>/<patchset>/<trigger>/<job>/<build id>: what the runner writes (runner.log_dir_for)
BUILD_PATH = re.compile(r"^\d\d/\d+/\d+/[A-Za-z0-9_.-]+/[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9]+$")
DEPTH = 6
CONTROL_PERSIST = 60  # seconds an idle shared SSH connection to the log host stays open
STATUS_TIMEOUT = 60.0  # a status page is retried this long at most: the next change of state sends it again
TEXT_SUFFIXES = {".txt", ".log", ".out", ".err", ".conf", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".py",
                 ".diff", ".patch", ".csv", ".md", ".rst", ".subunit.txt"}
TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".gz": "application/gzip", ".png": "image/png",
         ".svg": "image/svg+xml", ".xml": "text/xml; charset=utf-8"}
TEXT = "text/plain; charset=utf-8"


class PublishError(CislavesError):
    """Publishing to the log target kept failing until ci.logs.publish_timeout (the local files are kept)."""


def content_type(path: Path) -> str:
    """The Content-Type a browser shows: logs and other text as text/plain (never a download)."""
    suffix = path.suffix.lower()
    if suffix in TYPES:
        return TYPES[suffix]
    if suffix in TEXT_SUFFIXES:
        return TEXT
    guessed = mimetypes.guess_type(path.name)[0]
    if guessed and not guessed.startswith("text/"):
        return guessed
    try:  # an extension-less artifact such as syslog: text if it looks like text
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return "application/octet-stream"
    if b"\0" in head:
        return "application/octet-stream"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at the end of the sample is still text
        if len(head) < 8192 or exc.start < len(head) - 3:
            return "application/octet-stream"
    return TEXT


class Publisher:
    """Publishes builds, the status page and retention to one target (chosen by ci.logs.publish)."""

    def __init__(self, logs, root: Path, *, gerrit_url: str | None = None, key_file: Path | None = None,
                 known_hosts: Path | None = None, title: str = "CI"):
        self.logs, self.root = logs, Path(root)
        self.url = (logs.url or self.root.resolve().as_uri()).rstrip("/") + "/"
        self.gerrit_url = (gerrit_url or "").rstrip("/") or None
        self.title = title
        self.timeout = logs.publish_timeout
        if logs.publish == "rsync":
            self.target = _Rsync(logs.rsync, key_file, known_hosts, Path("~/.ssh/cislaves").expanduser())
        elif logs.publish == "s3":
            self.target = _S3(logs.s3)
        else:
            self.target = _Local()

    @classmethod
    def from_config(cls, config) -> "Publisher":
        """From ci.logs (and gerrit.http_url for links to changes). ConfigError (one line) before any side
        effect: a missing key file, no rsync/ssh binary, no boto3."""
        from cislaves.ci import jobsettings
        from cislaves.ci.settings import ci_settings

        ci = ci_settings(config)
        logs = ci.logs
        root = jobsettings.logs_dir(config, ci)
        key_file = known_hosts = None
        if logs.publish == "rsync":
            for binary in ("rsync", "ssh"):
                if shutil.which(binary) is None:
                    raise ConfigError(f"{config.where}: ci.logs.publish: rsync needs the {binary} command "
                                      f"(apt-get install {'rsync' if binary == 'rsync' else 'openssh-client'})")
            if logs.rsync.key_file is not None:
                key_file = config.relative(logs.rsync.key_file)
                if not key_file.is_file():
                    raise ConfigError(f"{config.where}: ci.logs.rsync.key_file: {key_file} is not a readable file")
            known_hosts = config.relative(Path(logs.rsync.known_hosts).expanduser())
            if not known_hosts.is_file() and not logs.rsync.accept_first_host_key:
                host = logs.rsync.target.partition("@")[2].rpartition(":")[0]
                raise ConfigError(f"{config.where}: ci.logs.rsync.known_hosts: {known_hosts} does not exist; add "
                                  f"the log host's key (ssh-keyscan -p {logs.rsync.port} {host} >> {known_hosts}) "
                                  f"or set accept_first_host_key: true")
        if logs.publish == "s3" and importlib.util.find_spec("boto3") is None:
            raise ConfigError(f"{config.where}: ci.logs.publish: s3 needs boto3 (pip install 'cislaves[ec2]')")
        gerrit = config.raw.get("gerrit") if isinstance(config.raw.get("gerrit"), dict) else {}
        http_url = gerrit.get("http_url") if isinstance(gerrit.get("http_url"), str) else None
        return cls(logs, root, gerrit_url=pages.safe_url(http_url), key_file=key_file, known_hosts=known_hosts,
                   title=f"{ci.name} CI")

    # -- the interface the runner's pool and the reports use
    def relative(self, build_dir: Path) -> str:
        """The build's path below the logs' root (`<NN>/<change>/<patchset>/<trigger>/<job>/<build id>`)."""
        try:
            rel = Path(build_dir).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise PublishError(f"build directory {build_dir} is not under ci.logs.dir {self.root}") from None
        if not BUILD_PATH.match(rel):
            raise PublishError(f"build directory {build_dir}: expected <NN>/<change>/<patchset>/<trigger>/<job>/"
                               f"<build id> below {self.root}")
        return rel

    def url_for(self, rel: str) -> str:
        return f"{self.url}{rel}/"

    def publish_build(self, build_dir: Path) -> str:
        """Write the build's index.html, copy its directory to the target (retried with backoff until
        ci.logs.publish_timeout) and return its public URL. The local directory is left as it is."""
        build_dir = Path(build_dir)
        rel = self.relative(build_dir)
        facts = _read_json(build_dir / "build.json")
        title = f"{facts.get('job') or rel.split('/')[4]} build {rel.split('/')[5]}"
        pages.write_build_index(build_dir, title, facts)
        _stamp(build_dir, facts)
        self._retry(lambda: self.target.put_build(build_dir, rel), f"publishing build {rel} to {self.target}")
        log.info("published build %s: %s", rel, self.url_for(rel))
        return self.url_for(rel)

    def publish_status(self, rows: Iterable) -> None:
        """Render the status page from build records (cislaves.ci.builds.Build: running, queued, recent)
        into <logs dir>/index.html and copy it to the target (retried for STATUS_TIMEOUT at most, since
        the next change of state publishes it again; then PublishError)."""
        self.root.mkdir(parents=True, exist_ok=True)
        html = pages.status_page(rows, self.title, self._log_href, self._change_href)
        path = self.root / pages.INDEX
        pages.write_atomic(path, html)
        self._retry(lambda: self.target.put_file(path, pages.INDEX), f"publishing the status page to {self.target}",
                    min(self.timeout, STATUS_TIMEOUT))

    def expire(self, keep_days: float | None = None) -> list[str]:
        """Remove builds older than keep_days (default ci.logs.keep_days; 0: keep all) from the target, and
        their local copies; return their relative paths. A build's age is its end (build.json), else the
        newest change to its files."""
        keep_days = self.logs.keep_days if keep_days is None else keep_days
        if keep_days <= 0:
            return []
        cutoff = time.time() - keep_days * 86400
        removed = self._retry(lambda: self.target.expire(cutoff, self.root) or [],
                              f"removing old builds from {self.target}")
        if not isinstance(self.target, _Local):
            removed = sorted(set(removed) | set(_Local().expire(cutoff, self.root)))
        for rel in removed:
            log.info("expired build %s (older than %g days)", rel, keep_days)
        return removed

    def close(self) -> None:
        """End the shared SSH connection to the log host now (else it ends after CONTROL_PERSIST idle)."""
        self.target.close()

    # -- helpers
    def _retry(self, action: Callable[[], object], what: str, timeout: float | None = None):
        done = []

        def attempt():
            try:
                done.append(action())
                return True
            except (OSError, subprocess.SubprocessError, _TargetError) as exc:
                log.warning("%s failed (retrying): %s", what, exc)
                return Pending(str(exc))
            except Exception as exc:  # botocore's errors (ClientError, EndpointConnectionError...)
                if type(exc).__module__.startswith(("botocore", "boto3", "urllib3")):
                    log.warning("%s failed (retrying): %s", what, exc)
                    return Pending(f"{type(exc).__name__}: {exc}")
                raise

        try:
            wait_for(attempt, what, timeout or self.timeout, first_delay=0.2, max_delay=30)
        except CislavesError as exc:
            raise PublishError(f"{what}: {exc}; the local files are kept in {self.root}") from None
        return done[-1]

    def _log_href(self, row) -> str | None:
        if not row.log_dir or row.state == "queued":
            return None
        if row.state == "running" and not isinstance(self.target, _Local):
            return None  # only the local directory has a running build's output so far
        try:
            return self.relative(Path(row.log_dir)) + "/"
        except PublishError:
            return None

    def _change_href(self, row) -> str | None:
        change = row.event.get("change") if isinstance(getattr(row, "event", None), dict) else None
        url = pages.safe_url(change.get("url")) if isinstance(change, dict) else None
        if url:
            return url
        return f"{self.gerrit_url}/c/{int(row.change)}" if self.gerrit_url else None


class _TargetError(CislavesError):
    """One attempt at the target failed (retried)."""


class _Local:
    """ci.logs.dir is served as it is: nothing to copy."""

    def __str__(self) -> str:
        return "the local logs directory"

    def put_build(self, build_dir: Path, rel: str) -> None:
        return None

    def put_file(self, path: Path, rel: str) -> None:
        return None

    def close(self) -> None:
        return None

    def expire(self, cutoff: float, root: Path) -> list[str]:
        removed = []
        for build_dir in sorted(root.glob("/".join(["*"] * DEPTH))):
            rel = build_dir.relative_to(root).as_posix()
            if not build_dir.is_dir() or not BUILD_PATH.match(rel) or _age_mark(build_dir) >= cutoff:
                continue
            shutil.rmtree(build_dir)
            removed.append(rel)
            parent = build_dir.parent
            while parent != root and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        return removed


class _Rsync:
    """A log host over SSH: rsync -a into <target>/<path>, ssh for retention."""

    def __init__(self, settings, key_file: Path | None, known_hosts: Path | None, control_dir: Path | None = None):
        self.settings = settings
        self.login, _, self.path = settings.target.partition(":")
        self.path = self.path.rstrip("/") or "/"
        ssh = ["ssh", "-p", str(settings.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
               "-o", "ServerAliveInterval=15"]
        if key_file is not None:
            ssh += ["-i", str(key_file), "-o", "IdentitiesOnly=yes"]
        if known_hosts is not None:
            ssh += ["-o", f"UserKnownHostsFile={known_hosts}"]
        ssh += ["-o", f"StrictHostKeyChecking={'accept-new' if settings.accept_first_host_key else 'yes'}"]
        if control_dir is not None:  # one SSH connection for a build's passes and the next builds
            control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # the socket's name also hashes the options: another key or known_hosts never reuses it
            options = hashlib.sha256("\0".join(ssh).encode()).hexdigest()[:10]
            if len(str(control_dir)) + 53 < 100:  # a unix socket's path limit (%C is 40 characters)
                ssh += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/{options}-%C",
                        "-o", f"ControlPersist={CONTROL_PERSIST}"]
        self.ssh = ssh

    def __str__(self) -> str:
        return f"rsync target {self.settings.target}"

    def put_build(self, build_dir: Path, rel: str) -> None:
        # index.html last (the page never links to a file not yet there); the second pass sends only
        # it and leaves the directory's mtime at the build's end (retention reads it)
        dest = f"{self.login}:{self.path}/{rel}/"
        self._rsync(["--exclude", f"/{pages.INDEX}", f"{build_dir}/", dest])
        self._rsync([f"{build_dir}/", dest])

    def put_file(self, path: Path, rel: str) -> None:
        self._rsync([str(path), f"{self.login}:{self.path}/{rel}"])

    def expire(self, cutoff: float, root: Path) -> list[str]:
        minutes = max(1, int((time.time() - cutoff) / 60))
        quoted = shlex.quote(self.path)
        listing = self._ssh(f"cd {quoted} && find . -mindepth {DEPTH} -maxdepth {DEPTH} -type d -mmin +{minutes}")
        found = [line[2:] for line in listing.splitlines() if line.startswith("./") and BUILD_PATH.match(line[2:])]
        if found:
            paths = " ".join(shlex.quote(f"{self.path}/{rel}") for rel in found)
            self._ssh(f"rm -rf -- {paths} && find {quoted} -mindepth 1 -maxdepth {DEPTH - 1} -type d -empty -delete")
        return found

    def close(self) -> None:
        if "ControlMaster=auto" in self.ssh:
            subprocess.run([*self.ssh, "-O", "exit", self.login], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)

    def _rsync(self, args: list[str]) -> None:
        # -e is split by rsync itself, which honours quotes: each part quoted (a key path with spaces)
        argv = ["rsync", "-a", "--protect-args", "--mkpath", "--chmod=D755,F644", "--timeout=60",
                "-e", " ".join(shlex.quote(a) for a in self.ssh), *args]
        self._run(argv)

    def _ssh(self, command: str) -> str:
        return self._run([*self.ssh, self.login, command])

    def _run(self, argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise _TargetError(f"{argv[0]} exited with {proc.returncode}: {tail}")
        return proc.stdout


class _S3:
    """A bucket: one object per file under <prefix>/<path>/, with a Content-Type browsers show as text."""

    def __init__(self, settings):
        import boto3
        from botocore.config import Config as BotoConfig

        self.settings = settings
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self.client = boto3.client("s3", region_name=settings.region, endpoint_url=settings.endpoint_url,
                                   config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"},
                                                     connect_timeout=30, read_timeout=120))

    def __str__(self) -> str:
        return f"s3://{self.settings.bucket}/{self.prefix}"

    def close(self) -> None:
        self.client.close()

    def put_build(self, build_dir: Path, rel: str) -> None:
        files = sorted((p for p in build_dir.rglob("*") if p.is_file() and not p.is_symlink()),
                       key=lambda p: p.name == pages.INDEX and p.parent == build_dir)
        for path in files:
            self.put_file(path, f"{rel}/{path.relative_to(build_dir).as_posix()}")

    def put_file(self, path: Path, rel: str) -> None:
        with open(path, "rb") as body:
            self.client.put_object(Bucket=self.settings.bucket, Key=self.prefix + rel, Body=body,
                                   ContentType=content_type(path))

    def expire(self, cutoff: float, root: Path) -> list[str]:
        builds: dict[str, list[dict]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket,
                                                                          Prefix=self.prefix):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(self.prefix):].split("/")
                rel = "/".join(parts[:DEPTH])
                if len(parts) > DEPTH and BUILD_PATH.match(rel):
                    builds.setdefault(rel, []).append(obj)
        removed = []
        for rel, objects in sorted(builds.items()):
            if self._age_mark(rel, objects) >= cutoff:
                continue
            keys = [o["Key"] for o in objects]
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.settings.bucket,
                                           Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            removed.append(rel)
        return removed

    def _age_mark(self, rel: str, objects: list[dict]) -> float:
        key = f"{self.prefix}{rel}/build.json"
        if any(o["Key"] == key for o in objects):
            body = self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
            end = _end_of(_parse_json(body))
            if end is not None:
                return end
        return max(o["LastModified"].timestamp() for o in objects)


def _read_json(path: Path) -> dict:
    try:
        return _parse_json(path.read_bytes())
    except OSError:
        return {}


def _parse_json(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _end_of(facts: dict) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(facts["end"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def _stamp(build_dir: Path, facts: dict) -> None:
    """The directory's mtime is the build's end, so a log host's `find -mmin` sees its age (rsync -a
    carries it)."""
    end = _end_of(facts)
    if end is not None:
        os.utime(build_dir, (end, end))


def _age_mark(build_dir: Path) -> float:
    """When a local build last changed: its end, or the newest mtime of its directory and top files."""
    end = _end_of(_read_json(build_dir / "build.json"))
    if end is not None:
        return end
    return max([build_dir.stat().st_mtime] + [p.stat().st_mtime for p in build_dir.iterdir() if p.is_file()])
