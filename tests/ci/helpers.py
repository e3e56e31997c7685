"""Small helpers shared by the CI tests."""
from __future__ import annotations

import signal
import subprocess

from cislaves.ci.queue import Job, JobQueue
from cislaves.ci.settings import ci_settings, queue_path
from cislaves.config import Config


def job_rows(config: Config) -> list[Job]:
    """Every job in the configured queue, newest first (none if the queue does not exist yet)."""
    path = queue_path(config, ci_settings(config))
    if not path.exists():
        return []
    db = JobQueue(path)
    try:
        return db.jobs()
    finally:
        db.close()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Send `sig`, wait up to 30 s (then kill); return the exit status and stderr."""
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err or ""
