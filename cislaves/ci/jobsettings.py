"""The `ci.jobs`, `ci.max_instances`, `ci.ready`, `ci.infra_retries` and `ci.logs` settings, and the
checks that need more than one key (a script file next to the config, a trigger name, a cloud, an image
the tool baked): all run before the listener starts anything, each failing with one line.

The models are used by cislaves.ci.settings.CISettings (so an unknown key is an error like anywhere
else); `check(config, ci)` does the cross-key checks and resolves each job into a `Plan` the runner
uses. Images are resolved again at every build (a newer bake is picked up without a restart).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cislaves import TOOL
from cislaves.config import Strict
from cislaves.errors import CislavesError, ConfigError
from cislaves.records import TAG_DISTRIBUTION, TAG_TOOL, Image

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = ("GERRIT_", "BUILD_ID", "JOB_NAME", "WORKSPACE", "LOG_DIR")
URL = r"^https?://[^\s\"'<>\\]+$"
RSYNC_TARGET = re.compile(r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.:\[\]-]+:/[^\n\x00]*$")
S3_SHAPES = {"bucket": (r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", "an S3 bucket name (3-63 of a-z 0-9 . -)"),
             "prefix": (r"^[A-Za-z0-9_./-]*$", "letters, digits, _ . - and /"),
             "region": (r"^[a-z0-9-]+$", "a region name such as us-east-1"),
             "endpoint_url": (URL, "an http:// or https:// URL")}


class JobSettings(Strict):
    """One entry of ci.jobs: what runs, where, for which triggers."""

    name: str = Field(pattern=NAME)
    triggers: list[str] | None = None  # trigger names that run it; None: every trigger
    cloud: str | None = None  # default: defaults.cloud
    distribution: str | None = None  # default: defaults.distribution
    image: str | None = None  # an explicit image id (then distribution only labels it)
    run: Path  # the script, relative to the config file
    timeout: float = Field(7200, gt=0)  # seconds of the script; then TIMED_OUT
    artifacts: list[str] = Field(default_factory=list)  # globs, relative to the workspace, or absolute
    env: dict[str, str] = Field(default_factory=dict)
    voting: bool = True

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if key.startswith(RESERVED_ENV[0]) or key in RESERVED_ENV[1:]:
                raise ValueError(f"{key!r} is set by the runner (GERRIT_*, BUILD_ID, JOB_NAME, WORKSPACE, LOG_DIR)")
        return {k: str(v) for k, v in env.items()}

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern or "\0" in pattern or ".." in Path(pattern).parts:
                raise ValueError(f"artifact pattern {pattern!r}: expected a glob without '..'")
        return patterns


class RsyncSettings(Strict):
    """ci.logs.rsync: a log host reached with rsync over SSH (sos-ci's way)."""

    target: str  # user@host:/absolute/path
    key_file: Path | None = None  # relative to the config file
    port: int = Field(22, ge=1, le=65535)
    known_hosts: Path = Path("~/.ssh/known_hosts")
    accept_first_host_key: bool = False  # pin an unknown host key instead of refusing

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not RSYNC_TARGET.match(value):
            raise ValueError(f"{value!r}: expected user@host:/absolute/path")
        return value


class S3Settings(Strict):
    """ci.logs.s3: a bucket (credentials from boto3's usual chain: environment, profile, instance role)."""

    bucket: str
    prefix: str = ""  # letters, digits, _ . - /
    region: str = "us-east-1"
    endpoint_url: str | None = None  # an S3-compatible service (http(s)://host:port)

    @field_validator("bucket", "prefix", "region", "endpoint_url")
    @classmethod
    def _shape(cls, value: str | None, info) -> str | None:
        pattern, expected = S3_SHAPES[info.field_name]
        if value is not None and not re.match(pattern, value):
            raise ValueError(f"{value!r}: expected {expected}")
        return value


class LogsSettings(Strict):
    """ci.logs: where the builds' directories are kept, and where they are published (cislaves.ci.publish)."""

    dir: Path | None = None  # default: <data_dir>/ci/logs
    url: str | None = None  # public base URL of the logs (in comments and pages)
    publish: Literal["local", "rsync", "s3"] = "local"
    rsync: RsyncSettings | None = None
    s3: S3Settings | None = None
    keep_days: float = Field(30, ge=0)  # builds older than this are removed from the target; 0: never
    publish_timeout: float = Field(600, gt=0)  # seconds a publish is retried (with backoff) before it fails

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(URL, value):
            raise ValueError(f"{value!r}: expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _target_given(self) -> "LogsSettings":
        if self.publish == "rsync" and self.rsync is None:
            raise ValueError("publish: rsync needs ci.logs.rsync: {target: user@host:/path, key_file: ...}")
        if self.publish == "s3" and self.s3 is None:
            raise ValueError("publish: s3 needs ci.logs.s3: {bucket: NAME, prefix: ..., region: ...}")
        return self


@dataclass
class Plan:
    """A job resolved against the configuration: absolute script path, cloud and distribution names."""

    job: JobSettings
    script: Path
    cloud: str
    distribution: str

    @property
    def name(self) -> str:
        return self.job.name


def check(config, ci) -> dict[str, Plan]:
    """Validate what one key alone cannot say; return the jobs by name. Raises ConfigError (one line).

    Also asks each job's cloud for its image (no side effect), so a distribution never baked there is
    reported now, with the command that bakes it."""
    from cislaves import clouds, distros

    from cislaves.ci.settings import gerrit_settings
    from cislaves.ci.workspace import git_url

    where = config.where
    plans: dict[str, Plan] = {}
    if ci.jobs:
        gerrit = gerrit_settings(config, need_connection=False)
        try:
            git_url(gerrit.git_url, gerrit, "project")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    triggers = {t.name for t in ci.triggers}
    drivers: dict[str, Any] = {}
    try:
        for i, job in enumerate(ci.jobs):
            key = f"{where}: ci.jobs[{i}] ({job.name})"
            if job.name in plans:
                raise ConfigError(f"{key}: name: another job is already called {job.name!r}")
            for name in job.triggers or []:
                if name not in triggers:
                    raise ConfigError(f"{key}: triggers: unknown trigger {name!r}; ci.triggers has: "
                                      f"{', '.join(sorted(triggers))}")
            script = config.relative(job.run)
            if not script.is_file():
                raise ConfigError(f"{key}: run: script {script} does not exist (paths are relative to the "
                                  f"config file)")
            cloud = clouds.check_name(job.cloud or config.defaults.cloud, f"{key}: cloud")
            distribution = distros.get(job.distribution or config.defaults.distribution,
                                       f"{key}: distribution").name
            plan = Plan(job, script, cloud, distribution)
            if cloud not in drivers:
                drivers[cloud] = clouds.get(cloud, config)
            newest_image(config, drivers[cloud], plan, f"{key}: ")
            plans[job.name] = plan
        for cloud, limit in ci.max_instances.items():
            clouds.check_name(cloud, f"{where}: ci.max_instances")
        for name in ci.ready:
            if name not in plans:
                raise ConfigError(f"{where}: ci.ready: unknown job {name!r}; ci.jobs has: "
                                  f"{', '.join(sorted(plans)) or '(none)'}")
    finally:
        for driver in drivers.values():
            driver.close()
    return plans


def newest_image(config, cloud, plan: Plan, where: str = "") -> Image:
    """The job's image: the explicit one, or the newest image of its distribution the tool baked on its
    cloud that both the manifest and the cloud's own listing know. ConfigError when there is none."""
    from cislaves import images as manifest

    if plan.job.image:
        try:
            return cloud.get_image(plan.job.image)
        except CislavesError as exc:
            raise ConfigError(f"{where}image: {plan.job.image!r} not found on cloud {plan.cloud}: {exc}") from None
    builds = [b for b in manifest.records(config.manifest)
              if b.get("cloud") == plan.cloud and b.get("distribution") == plan.distribution]
    listed = {}
    if builds:
        listed = {i.id: i for i in cloud.list_images({TAG_TOOL: TOOL, TAG_DISTRIBUTION: plan.distribution})
                  if i.state == "available"}
    for build in sorted(builds, key=lambda b: b.get("build_time") or 0, reverse=True):
        if build.get("artifact_id") in listed:
            return listed[build["artifact_id"]]
    gone = " (the manifest's images are gone from the cloud)" if builds else ""
    raise ConfigError(f"{where}distribution {plan.distribution!r} was never baked on cloud {plan.cloud}{gone}; "
                      f"bake it with `fab it:cloud={plan.cloud},distribution={plan.distribution}` "
                      f"(or give the job an image id)")


def logs_dir(config, ci) -> Path:
    """ci.logs.dir, else <data_dir>/ci/logs."""
    return config.relative(ci.logs.dir) if ci.logs.dir else config.data_dir / "ci" / "logs"


def jobs_for(jobs: list[JobSettings], trigger: str, only: list[str] | None = None) -> list[JobSettings]:
    """The jobs a queued job of `trigger` runs: those listing the trigger (or every trigger); a manual
    run (`fab enqueue`) runs every job, or only the named ones."""
    if only:
        return [j for j in jobs if j.name in only]
    if trigger == "manual":
        return list(jobs)
    return [j for j in jobs if j.triggers is None or trigger in j.triggers]
