"""The `ci.email` and `ci.metrics` settings (CI part 3), kept light: cislaves.ci.settings imports them
when any config is read, before anything talks SMTP or serves metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from cislaves.config import Strict

ADDRESS = r"^[^\s<>\"',;@]+@[^\s<>\"',;@]+$"


class EmailSettings(Strict):
    """ci.email: one message per reported buildset (on failure, or always) over SMTP."""

    host: str = Field(pattern=r"^[A-Za-z0-9_.:\[\]-]+$")
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    user: str | None = None
    password: SecretStr | None = None  # a secret: never printed or logged
    sender: str = Field(alias="from", pattern=ADDRESS)
    to: list[str] = Field(min_length=1)
    when: Literal["failure", "always"] = "failure"
    timeout: float = Field(30, gt=0)
    ca_file: Path | None = None  # certificates trusted for STARTTLS besides the system's (a private CA)

    @field_validator("to")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        import re

        for value in values:
            if not re.match(ADDRESS, value):
                raise ValueError(f"{value!r} is not an e-mail address")
        return values


class MetricsSettings(Strict):
    """ci.metrics: the Prometheus endpoint (/metrics) and the health check (/healthz)."""

    listen: str = Field("127.0.0.1:9464", pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]*):\d{1,5}$")
    stream_down_after: float = Field(300, gt=0)  # /healthz fails once the stream has been down this long

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)
