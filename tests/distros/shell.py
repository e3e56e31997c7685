"""Run functions of the provisioning scripts in bash, with stub commands first on PATH."""
import os
import subprocess
from pathlib import Path

from cislaves.distros import SCRIPTS_DIR

DATA = Path(__file__).resolve().parent / "data"


def stub(folder: Path, name: str, body: str) -> Path:
    """Write an executable bash stub `name` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)
    return path


def recording_stub(folder: Path, name: str, log: Path, body: str = "exit 0") -> Path:
    """A stub that appends its argv to `log`, then runs `body`."""
    return stub(folder, name, f'echo "{name} $*" >> {log}\n{body}')


def source_and_run(script: str, snippet: str, stubs: Path | None = None, env: dict | None = None):
    """Source scripts/<script> (which only defines when sourced) and run `snippet` in bash."""
    environ = dict(os.environ)
    if stubs is not None:
        environ["PATH"] = f"{stubs}:{environ['PATH']}"
    environ.update(env or {})
    return subprocess.run(["bash", "-c", f'. "$1"; {snippet}', "bash", str(SCRIPTS_DIR / script)],
                          capture_output=True, text=True, env=environ, timeout=60)
