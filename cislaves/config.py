"""Configuration: segredos/cislaves.yaml (or $CISLAVES_CONFIG) plus environment variables.

This is the one place that reads the environment. Every section is validated with a pydantic model;
an error names the file (or environment variable), the key and what was expected, in one line.
Drivers and the CI service declare their own section models and environment names; they ask this
module for their validated section (`Config.cloud_settings`, `Config.section`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cislaves.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "segredos" / "cislaves.yaml"
SYSTEM_DATA_DIR = Path("/var/lib/cislaves")  # root's; anyone else's is under XDG_DATA_HOME
NOISY_LOGGERS = ("paramiko", "botocore", "boto3", "urllib3", "keystoneauth", "novaclient", "googleapiclient",
                 "asyncssh", "invoke", "fabric")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class Defaults(Strict):
    cloud: str = "local"
    distribution: str = "debian12"


class CIUser(Strict):
    name: str = Field("jenkins", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    # The public key the CI master uses to log in as this user: inline, from a file, or from a YAML file
    # at a key path (the seed's segredos/ci-platform/all/all.yaml).
    authorized_key: str | None = None
    authorized_key_file: Path | None = None
    authorized_key_yaml: Path | None = None
    authorized_key_yaml_path: str = "env.default.jenkins.clouds.jclouds_plugin[0].publicKey[0]"


class Provision(Strict):
    package_set: Literal["full", "minimal"] = "full"
    extra_packages: dict[str, list[str]] = Field(default_factory=dict)  # distribution -> packages
    extra_scripts: dict[str, list[Path]] = Field(default_factory=dict)  # distribution -> scripts
    reboots: int = Field(3, ge=0, le=10)  # reboots a script may ask for before it is an error


class Timeouts(Strict):
    launch: float = Field(900, gt=0)
    ssh: float = Field(300, gt=0)
    provision: float = Field(3600, gt=0)
    image: float = Field(3600, gt=0)
    destroy: float = Field(600, gt=0)


class TopLevel(Strict):
    defaults: Defaults = Field(default_factory=Defaults)
    data_dir: Path | None = None
    manifest: Path | None = None
    image_name_prefix: str = Field("cislaves", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    keep_on_error: bool = False
    ci_user: CIUser = Field(default_factory=CIUser)
    provision: Provision = Field(default_factory=Provision)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    clouds: dict[str, dict[str, Any]] = Field(default_factory=dict)
    gerrit: dict[str, Any] = Field(default_factory=dict)
    ci: dict[str, Any] = Field(default_factory=dict)
    rebake: dict[str, Any] = Field(default_factory=dict)  # cislaves.lifecycle.settings validates it
    zookeeper: dict[str, Any] = Field(default_factory=dict)  # cislaves.coord.settings validates it


def describe_validation(error: ValidationError, where: str, prefix: str = "") -> str:
    """One line from a pydantic error: where, the dotted key, what was expected."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(first["loc"]))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(error.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {key or '(top level)'}: {msg}{tail}"


class Config:
    """The loaded configuration. Attributes mirror TopLevel; sections are validated on demand."""

    def __init__(self, data: Mapping[str, Any], path: Path | None, environ: Mapping[str, str]):
        self.path = path
        self.where = str(path) if path else "configuration"
        self.environ = dict(environ)
        self.raw = dict(data)
        try:
            self.top = TopLevel.model_validate(self.raw)
        except ValidationError as exc:
            raise ConfigError(describe_validation(exc, self.where)) from None
        data_dir = environ.get("CISLAVES_DATA_DIR") or self.top.data_dir or default_data_dir(environ)
        self.data_dir = Path(data_dir).expanduser()
        manifest = environ.get("CISLAVES_MANIFEST") or self.top.manifest or (self.data_dir / "manifest.json")
        self.manifest = Path(manifest).expanduser()

    def check_data_dir(self, create: bool = False) -> Path:
        """The data directory, if it is (or can be made) a writable folder; else a ConfigError in one
        line naming it and how to choose another. Creates it only with `create` (`validate` does not)."""
        path = self.data_dir
        where = "CISLAVES_DATA_DIR" if self.environ.get("CISLAVES_DATA_DIR") else (
            f"{self.where}: data_dir" if self.top.data_dir else "the default data directory")
        hint = "set CISLAVES_DATA_DIR or data_dir in the configuration to a writable folder"
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise ConfigError(f"{where}: {path}: cannot create it ({exc.strerror}); {hint}") from None
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe == path and not path.is_dir():
            raise ConfigError(f"{where}: {path} is not a directory; {hint}")
        if not os.access(probe, os.W_OK | os.X_OK):
            what = "is not writable" if probe == path else f"cannot be created ({probe} is not writable)"
            raise ConfigError(f"{where}: {path} {what}; {hint}")
        return path

    # -- top-level shortcuts
    @property
    def defaults(self) -> Defaults:
        return self.top.defaults

    @property
    def timeouts(self) -> Timeouts:
        return self.top.timeouts

    @property
    def provision(self) -> Provision:
        return self.top.provision

    @property
    def ci_user(self) -> CIUser:
        return self.top.ci_user

    def env(self, name: str, default: str | None = None) -> str | None:
        value = self.environ.get(name)
        return value if value not in (None, "") else default

    def relative(self, path: Path | str) -> Path:
        """A path from the config file, relative to the file's folder."""
        path = Path(path).expanduser()
        if not path.is_absolute() and self.path is not None:
            path = self.path.parent / path
        return path

    def section(self, dotted: str, model: type[BaseModel] | None = None,
                env: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None) -> Any:
        """The validated section at `dotted` (e.g. "gerrit", "clouds.ec2").

        `env` maps a field name to an environment variable; a set variable overrides the file.
        `defaults` fill keys the file leaves out. A model's DEPRECATED map (old key -> new key) renames
        old keys with a one-line warning. With no model, returns the raw dict merged with the environment.
        """
        node: Any = self.raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
            if node is None:
                break
        if node is None:
            node = {}
        if not isinstance(node, Mapping):
            raise ConfigError(f"{self.where}: {dotted}: expected a mapping, got {type(node).__name__}")
        values = dict(node)
        for old, new in getattr(model, "DEPRECATED", {}).items():
            if old in values:
                log.warning("%s: %s.%s is deprecated: use %s.%s", self.where, dotted, old, dotted, new)
                value = values.pop(old)
                values.setdefault(new, value)
        for key, value in (defaults or {}).items():
            values.setdefault(key, value)
        from_env: dict[str, str] = {}
        for field_name, var in (env or {}).items():
            value = self.env(var)
            if value is not None:
                values[field_name] = value
                from_env[field_name] = var
        if model is None:
            return values
        try:  # validators may resolve paths against the config file's folder: info.context["config"].relative
            return model.model_validate(values, context={"config": self, "from_env": set(from_env)})
        except ValidationError as exc:
            first = exc.errors()[0]
            top = str(first["loc"][0]) if first["loc"] else ""
            if top in from_env:
                raise ConfigError(f"environment {from_env[top]}: {first['msg']}") from None
            raise ConfigError(describe_validation(exc, self.where, dotted)) from None

    def cloud_settings(self, cloud: str, model: type[BaseModel] | None = None,
                       env: Mapping[str, str] | None = None) -> Any:
        """A cloud's section. The top-level `timeouts` are the defaults of every cloud's
        launch_timeout, image_timeout, destroy_timeout and ssh_timeout (a cloud's own value wins)."""
        defaults = {}
        fields = getattr(model, "model_fields", {})
        for key in ("launch", "image", "destroy", "ssh"):
            if f"{key}_timeout" in fields and key in self.raw.get("timeouts", {}):
                defaults[f"{key}_timeout"] = getattr(self.timeouts, key)
        return self.section(f"clouds.{cloud}", model, env, defaults)


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """/var/lib/cislaves for root; $XDG_DATA_HOME/cislaves (default ~/.local/share/cislaves) for anyone
    else, so a user baking on EC2 only needs no root."""
    environ = os.environ if environ is None else environ
    if os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    base = environ.get("XDG_DATA_HOME") or ""
    if not os.path.isabs(base):  # the XDG spec: a relative value is invalid and ignored
        base = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cislaves"


def setup_logging(verbosity: int = 0, environ: Mapping[str, str] | None = None) -> None:
    """Log lines with date and level on stderr: -1 (--quiet) warnings and errors, 0 info, 1 (--verbose,
    or CISLAVES_DEBUG set) debug. The SDKs' own loggers stay at warnings (their debug output can hold
    request bodies). Called once per command; later calls only change the level."""
    environ = os.environ if environ is None else environ
    if environ.get("CISLAVES_DEBUG") not in (None, "", "0"):
        verbosity = max(verbosity, 1)
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    root = logging.getLogger()
    if not getattr(setup_logging, "done", False):
        import sys

        logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
        setup_logging.done = True
    root.setLevel(level)


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration. No file at the default place is fine (all defaults); a named file that
    does not exist, is not YAML or is not a mapping is a ConfigError naming it."""
    environ = os.environ if environ is None else environ
    explicit = path or environ.get("CISLAVES_CONFIG")
    cfg_path = Path(explicit).expanduser() if explicit else DEFAULT_CONFIG
    if not cfg_path.exists():
        if explicit:
            raise ConfigError(f"{cfg_path}: configuration file not found (from "
                              f"{'CISLAVES_CONFIG' if not path else 'argument'})")
        return Config({}, None, environ)
    try:
        text = cfg_path.read_text()
    except OSError as exc:
        raise ConfigError(f"{cfg_path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{cfg_path}{line}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_path}: expected a mapping at the top level, got {type(data).__name__}")
    return Config(data, cfg_path.resolve(), environ)
