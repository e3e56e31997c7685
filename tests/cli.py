"""Run the real `fab` (or `cislaves`) command in a subprocess, from the repository root."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fab(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
        **kwargs) -> subprocess.CompletedProcess:
    """`fab ARGS...` with the environment plus `env`; returns the completed process (text output)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(["fab", *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def cislaves(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
             **kwargs) -> subprocess.CompletedProcess:
    """`cislaves ARGS...` (the console script of this venv, setup.sh's editable install), like fab()."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(["cislaves", *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone (`... | head -1` after head left): every
    write to it fails with EPIPE. The caller closes it."""
    read, write = os.pipe()
    os.close(read)
    return write
