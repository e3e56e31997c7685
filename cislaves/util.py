"""Small helpers several modules share: atomic JSON files, process identity, plain text tables."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any, *, mode: int = 0o600, sort_keys: bool = True, indent: int = 2) -> None:
    """Write `data` as JSON to `path` atomically: a unique temp file in the same folder, fsync, rename.
    Readers see the old file or the new one, never a part; concurrent writers never share a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=indent, sort_keys=sort_keys)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def start_time(pid: int) -> int | None:
    """The kernel start time of a process (field 22 of /proc/PID/stat), None if it is gone or a zombie.
    With the pid it identifies a process even when pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    """Plain aligned columns, two spaces apart, no trailing blanks."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*[str(c) for c in r]).rstrip() for r in rows]
