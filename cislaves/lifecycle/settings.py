"""The `rebake:` section of segredos/cislaves.yaml (its key names are the interface: keep them).

A target is {cloud, distribution, region}; `region` reaches the driver's own region setting when the
cloud has regions (Capabilities.regions) and is only a label (the publish path's `{region}`) when it
has none. Two optional keys the issue left open: `name` (the target's label, default
cloud/distribution[/region]) and `config` (a mapping merged over the configuration for this target
only, e.g. a region's subnet: `{clouds: {ec2: {subnet_id: subnet-1}}}`).
"""
from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from cislaves import clouds, distros
from cislaves.config import Config, Strict
from cislaves.errors import ConfigError

REGION_FIELDS = ("region", "region_name", "zone")  # the driver setting a target's region overlays


class Target(Strict):
    cloud: str
    distribution: str
    region: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9._/@-]{1,100}$")
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self):
        if self.cloud not in clouds.DRIVERS:
            raise ValueError(f"unknown cloud {self.cloud!r}; expected one of: {', '.join(clouds.names())}")
        if self.distribution not in distros.DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; expected one of: "
                             f"{', '.join(distros.names())}")
        return self

    @property
    def key(self) -> str:
        return self.name or "/".join(p for p in (self.cloud, self.distribution, self.region) if p)

    @property
    def cloud_key(self) -> str:
        """The publish path's {cloud_key}: `aws` for ec2 (the seed's YAML), else the cloud's name."""
        return "aws" if self.cloud == "ec2" else self.cloud

    def matches(self, selector: str) -> bool:
        """`only=` selectors: cloud, cloud/distribution, cloud/distribution/region, or the name."""
        if selector == self.key:
            return True
        parts = selector.split("/")
        mine = [self.cloud, self.distribution, self.region or ""]
        return all(p == m for p, m in zip(parts, mine)) and len(parts) <= 3

    def session_config(self, config: Config) -> Config:
        """A copy of the configuration for this target: its `config` overlay, then its region in the
        cloud's own region setting."""
        raw = merge(copy.deepcopy(config.raw), self.config)
        raw.pop("rebake", None)
        environ = dict(config.environ)
        field = region_field(self.cloud)
        if self.region and field:
            raw.setdefault("clouds", {}).setdefault(self.cloud, {})[field] = self.region
            # the target's region wins over the cloud's region variable (AWS_REGION, OS_REGION_NAME)
            environ.pop(getattr(clouds.driver_class(self.cloud), "ENV", {}).get(field, ""), None)
        return Config(raw, config.path, environ)


class Git(Strict):
    branch: str = "images-{date}"
    commit: bool = True
    push: bool = False
    remote: str = "origin"


class Publish(Strict):
    file: str
    path: str = "jenkins.clouds.images.{cloud_key}.{region}.{distribution}"
    git: Git | None = None


class Smtp(Strict):
    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    sender: str = "cislaves@localhost"
    starttls: bool = False
    username: str | None = None
    password_env: str = "CISLAVES_SMTP_PASSWORD"  # the password comes from the environment, never the file
    timeout: float = Field(30, gt=0)


class Notify(Strict):
    email: str | list[str] | None = None
    webhook: str | None = Field(None, pattern=r"^https?://")
    when: Literal["failure", "always"] = "failure"
    smtp: Smtp = Field(default_factory=Smtp)
    timeout: float = Field(30, gt=0)

    @property
    def recipients(self) -> list[str]:
        if not self.email:
            return []
        return [self.email] if isinstance(self.email, str) else list(self.email)


class Rebake(Strict):
    targets: list[Target] = Field(default_factory=list)
    parallel: int = Field(4, ge=1, le=64)
    per_cloud: dict[str, int] = Field(default_factory=dict)
    validate_: bool = Field(True, alias="validate")
    keep: int = Field(3, ge=1)
    publish: Publish | None = None
    notify: Notify | None = None
    log_dir: str | None = None  # default <data_dir>/rebakes

    @model_validator(mode="after")
    def _unique(self):
        seen: set[str] = set()
        for target in self.targets:
            if target.key in seen:
                raise ValueError(f"target {target.key!r} is listed twice (give one a `name` or a region)")
            seen.add(target.key)
        for cloud, limit in self.per_cloud.items():
            if cloud not in clouds.DRIVERS:
                raise ValueError(f"per_cloud: unknown cloud {cloud!r}")
            if limit < 1:
                raise ValueError(f"per_cloud.{cloud}: expected at least 1")
        return self


def load(config: Config) -> Rebake:
    settings = config.section("rebake", Rebake)
    if not settings.targets:
        raise ConfigError(f"{config.where}: rebake.targets: expected at least one "
                          "{cloud: ..., distribution: ..., region: ...}")
    return settings


def select(settings: Rebake, only: str | None, where: str = "argument 'only'") -> list[Target]:
    if not only:
        return list(settings.targets)
    selectors = [s.strip() for s in re.split(r"[,+\s]+", only) if s.strip()]
    chosen = [t for t in settings.targets if any(t.matches(s) for s in selectors)]
    unmatched = [s for s in selectors if not any(t.matches(s) for t in settings.targets)]
    if unmatched:
        raise ConfigError(f"{where}: {', '.join(unmatched)} matches no rebake target; targets: "
                          f"{', '.join(t.key for t in settings.targets)}")
    return chosen


def region_field(cloud: str) -> str | None:
    """The driver's region setting, from its declared settings model (None: no regions)."""
    cls = clouds.driver_class(cloud)
    if not getattr(cls, "capabilities", None) or not cls.capabilities.regions:
        return None
    fields = getattr(getattr(cls, "Settings", None), "model_fields", {})
    return next((f for f in REGION_FIELDS if f in fields), None)


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
