"""Shared set-up for the CI benchmarks: a fake Gerrit, settings for it, real-format event lines."""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cislaves.ci.settings import CISettings, GerritSettings  # noqa: E402
from cislaves.clouds.base import generate_keypair  # noqa: E402

MATCHING_PROJECT = "openstack/nova"


class FakeProcess:
    """bench/ci_fake_server.py in a child process, driven over its stdin/stdout."""

    def __init__(self, public_key: Path, known_hosts: Path):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "ci_fake_server.py"), str(public_key),
                                      str(known_hosts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        self.port = int(self.proc.stdout.readline())

    def command(self, line: str, answer: str | None = None) -> str | None:
        """Send a command; with `answer`, read the reply, check its first word and return the rest."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        if answer is not None:
            got = self.proc.stdout.readline().strip()
            if got.split(" ", 1)[0] != answer:
                raise RuntimeError(f"fake Gerrit answered {got!r} to {line!r}")
            return got.partition(" ")[2]
        return None

    def stop(self) -> None:
        try:
            self.command("quit")
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def setup(workers: int = 2):
    """A fake Gerrit in a child process and (gerrit settings, ci settings, queue path) for a listener."""
    logging.basicConfig(level=logging.WARNING)
    workdir = scratch()
    key = workdir / "id_ed25519"
    (workdir / "id_ed25519.pub").write_text(generate_keypair(key))
    fake = FakeProcess(workdir / "id_ed25519.pub", workdir / "known_hosts")
    gerrit = GerritSettings(host="127.0.0.1", port=fake.port, user="acme-ci", key_file=key,
                            known_hosts=workdir / "known_hosts")
    ci = CISettings(name="acme-ci", workers=workers,
                    triggers=[{"name": "check", "projects": [MATCHING_PROJECT], "branches": ["master"]}])
    return fake, gerrit, ci, workdir / "queue.sqlite"


def scratch() -> Path:
    """A temporary folder removed when the benchmark exits."""
    workdir = Path(tempfile.mkdtemp(prefix="cislaves-bench-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    return workdir


COMMIT_MESSAGE = ("Reverts handoff partitions first on full disks\n\n"
                  "Change-Id: I5b1c0e0d2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c\n")


def templates(fake) -> tuple[dict, dict]:
    """Two events in Gerrit 3.x's shape (commit message in the change, the full approvals list):
    a patch set on the watched project (matches) and a review comment on another project (does not)."""
    upload = fake.upload(1, project=MATCHING_PROJECT, publish=False)
    fake.upload(2, project="openstack/swift", publish=False)
    comment = fake.comment(2, 1, "Looks good to me, a few nits inline: see the handoff loop.",
                           votes={"Code-Review": 1}, publish=False)
    for event in (upload, comment):
        event["change"]["commitMessage"] = COMMIT_MESSAGE
    fake.changes.clear()
    return upload, comment


def lines(count: int, first_change: int = 100, match_every: int = 10, stamp=None):
    """`count` event lines (bytes), one in `match_every` matching; `stamp()` (if given) is stored in
    each event as `benchSent`."""
    from tests.ci.fake_gerrit import FakeGerrit  # only where events are made: not in the listener's process
    fake = FakeGerrit("unused")
    try:
        upload, comment = templates(fake)
    finally:
        fake._loop.close()
    for i in range(count):
        change = first_change + i
        event = upload if i % match_every == 0 else comment
        event["change"]["number"] = change
        event["patchSet"]["ref"] = f"refs/changes/{change % 100:02d}/{change}/1"
        if stamp is not None:
            event["benchSent"] = stamp()
        yield json.dumps(event).encode() + b"\n"


def peak_rss_mib() -> float:
    """The most resident memory this process has had at any point (the kernel's high-water mark)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for row in fh:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    return 0.0
