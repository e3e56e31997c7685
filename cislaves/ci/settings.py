"""The `gerrit:` and `ci:` configuration sections, validated (one-line errors name the file and key)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from cislaves.ci.jobsettings import JobSettings, LogsSettings
from cislaves.ci.reportsettings import EmailSettings, MetricsSettings
from cislaves.config import Config, Strict
from cislaves.errors import ConfigError

GERRIT_ENV = {
    "host": "CISLAVES_GERRIT_HOST",
    "port": "CISLAVES_GERRIT_PORT",
    "user": "CISLAVES_GERRIT_USER",
    "key_file": "CISLAVES_GERRIT_KEY_FILE",
    "known_hosts": "CISLAVES_GERRIT_KNOWN_HOSTS",
}
EventType = Literal["patchset-created", "comment-added", "change-merged", "change-restored",
                    "wip-state-changed", "private-state-changed"]
PatchSetKind = Literal["REWORK", "TRIVIAL_REBASE", "MERGE_FIRST_PARENT_UPDATE", "NO_CODE_CHANGE", "NO_CHANGE"]


class GerritSettings(Strict):
    """How to reach Gerrit's SSH port."""

    host: str | None = None
    port: int = Field(29418, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path = Path("~/.ssh/known_hosts")
    accept_first_host_key: bool = False  # pin an unknown host key into known_hosts instead of refusing
    keepalive: float = Field(15, gt=0)  # seconds between SSH keepalives
    connect_timeout: float = Field(30, gt=0)
    backoff_first: float = Field(1, gt=0)  # reconnect delay after the first failure, doubled each time
    backoff_max: float = Field(8, gt=0, le=60)  # cap of the reconnect delay (jitter in its upper half)
    max_line_bytes: int = Field(1 << 20, ge=1024)  # longer stream lines are skipped and counted
    catchup_margin: float = Field(300, ge=0)  # seconds subtracted from the last event seen when catching up
    query_limit: int = Field(500, ge=1, le=10000)  # changes per catch-up query page (--start pages on)
    idle_probe: float = Field(30, gt=0)  # seconds of stream silence before asking `gerrit version`
    probe_timeout: float = Field(20, gt=0)  # seconds the answer may take before the stream counts as stalled
    max_clock_skew: float = Field(60, ge=0)  # event times further ahead than now + this do not move the position
    git_url: str = "ssh://{user}@{host}:{port}/{project}"  # where the runner fetches changes (a template)
    # REST reporting (ci.report: rest); the password is a secret: never printed or logged
    http_url: str | None = Field(None, pattern=r"^https?://[^\s\"'<>]+$")
    http_user: str | None = None
    http_password: SecretStr | None = None


class Approval(Strict):
    """A vote that triggers a job, e.g. Verified +1 given by the upstream CI account."""

    label: str = "Verified"
    value: int = 1
    by: str | None = None  # username or e-mail; None: anybody


class Trigger(Strict):
    """One rule: which projects/branches/events become jobs. Patterns starting with `re:` are regexes."""

    name: str = Field("check", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    projects: list[str] = Field(default_factory=lambda: ["re:.*"])
    branches: list[str] = Field(default_factory=lambda: ["re:.*"])
    events: list[EventType] = Field(default_factory=lambda: ["patchset-created", "comment-added",
                                                             "wip-state-changed", "private-state-changed",
                                                             "change-restored"])
    skip_kinds: list[PatchSetKind] = Field(default_factory=lambda: ["NO_CODE_CHANGE", "TRIVIAL_REBASE",
                                                                     "MERGE_FIRST_PARENT_UPDATE", "NO_CHANGE"])
    comments: list[str] | None = None  # regexes on the comment body; None: recheck / recheck <ci name>
    approvals: list[Approval] = Field(default_factory=list)
    include_wip: bool = False
    include_private: bool = False

    @field_validator("projects", "branches")
    @classmethod
    def _patterns_compile(cls, values: list[str]) -> list[str]:
        for value in values:
            _compile(value[3:] if value.startswith("re:") else re.escape(value))
        return values

    @field_validator("comments")
    @classmethod
    def _comments_compile(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            _compile(value)
        return values


class CISettings(Strict):
    """The CI service: its name (as in `recheck <name>`), triggers and worker threads."""

    name: str = Field("cislaves", pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    workers: int = Field(2, ge=1, le=256)
    backend: Literal["local", "zookeeper"] = "local"  # zookeeper: builds run by `fab worker` (cislaves.coord)
    triggers: list[Trigger] = Field(default_factory=lambda: [Trigger()])
    stop_grace: float = Field(10, ge=0)  # seconds `listen` waits for running jobs on SIGINT/SIGTERM
    queue: Path | None = None  # default: <data_dir>/ci/queue.sqlite
    # the job runner (CI part 2); cross-key checks in cislaves.ci.jobsettings.check
    jobs: list[JobSettings] = Field(default_factory=list)
    max_instances: dict[str, Annotated[int, Field(ge=1, le=10000)]] = Field(default_factory=dict)  # per cloud; builds wait beyond it
    ready: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(default_factory=dict)  # job name -> instances booted ahead
    infra_retries: int = Field(2, ge=0, le=10)  # NODE_FAILURE retries on a fresh instance
    logs: LogsSettings = Field(default_factory=LogsSettings)
    # reports (CI part 3, cislaves.ci.report): ssh | rest | false (silent: run and publish, never comment)
    report: Literal["ssh", "rest", False] = "ssh"
    vote: Literal["none", "plus", "both"] = "none"  # plus: only +1 on success; both: +1 / -1
    label: str = Field("Verified", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
    wiki_url: str | None = Field(None, pattern=r"^https?://[^\s\"'<>]+$")
    email: EmailSettings | None = None
    metrics: MetricsSettings | None = None
    report_backoff_first: float = Field(5, gt=0)  # seconds before retrying a failed report, doubled each time
    report_backoff_max: float = Field(600, gt=0)  # cap of that delay

    @model_validator(mode="after")
    def _unique_names(self) -> "CISettings":
        names = [t.name for t in self.triggers]
        if len(names) != len(set(names)):
            raise ValueError(f"trigger names must be unique, got {names}")
        return self


def gerrit_settings(config: Config, need_connection: bool = True) -> GerritSettings:
    """The validated `gerrit:` section; with need_connection, host and user must be set."""
    settings = config.section("gerrit", GerritSettings, env=GERRIT_ENV)
    if need_connection:
        for key in ("host", "user"):
            if not getattr(settings, key):
                raise ConfigError(f"{config.where}: gerrit.{key}: required to talk to Gerrit "
                                  f"(or set {GERRIT_ENV[key]})")
    settings.known_hosts = config.relative(settings.known_hosts)
    if settings.key_file is not None:
        settings.key_file = config.relative(settings.key_file)
        if not settings.key_file.is_file():
            raise ConfigError(f"{config.where}: gerrit.key_file: {settings.key_file} is not a readable file")
    return settings


def ci_settings(config: Config) -> CISettings:
    """The validated `ci:` section."""
    return config.section("ci", CISettings)


def uses_zookeeper(config: Config, ci: CISettings | None = None) -> bool:
    """True for `ci.backend: zookeeper` (which needs the zookeeper section); cislaves.coord is imported
    only then."""
    ci = ci or ci_settings(config)
    if ci.backend != "zookeeper":
        return False
    from cislaves.coord.settings import zookeeper_settings

    if zookeeper_settings(config) is None:
        raise ConfigError(f"{config.where}: ci.backend: zookeeper needs a zookeeper section (hosts)")
    return True


def queue_path(config: Config, settings: CISettings) -> Path:
    """Where the job queue lives: ci.queue, else <data_dir>/ci/queue.sqlite."""
    return config.relative(settings.queue) if settings.queue else config.data_dir / "ci" / "queue.sqlite"


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression {pattern!r}: {exc}") from None
