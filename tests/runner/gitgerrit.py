"""The fake Gerrit of tests/ci, plus what the runner needs from a real one: git-upload-pack over its
SSH serving real repositories, and patch sets that are real commits under refs/changes/NN/C/P.

A subclass, so tests/ci/fake_gerrit.py stays as its owner keeps it."""
from __future__ import annotations

import asyncio
import shlex
import subprocess
from pathlib import Path

from tests.ci.fake_gerrit import FakeGerrit


class GitGerrit(FakeGerrit):
    def __init__(self, authorized_key: str, repos: Path, **kwargs):
        super().__init__(authorized_key, **kwargs)
        self.repos = Path(repos)
        self.fetches: list[str] = []

    # -- repositories and patch sets
    def repository(self, project: str, files: dict[str, str] | None = None) -> Path:
        """A real repository for `project` with one commit on master (made on first use)."""
        path = self.repos / project
        if not (path / ".git").exists():
            path.mkdir(parents=True)
            git(path, "init", "-q", "-b", "master")
            for name, text in (files or {"README": "base\n"}).items():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_text(text)
            git(path, "add", "-A")
            git(path, "commit", "-q", "-m", "base")
        return path

    def upload_commit(self, number: int, files: dict[str, str], *, project: str = "openstack/nova",
                      subject: str | None = None, topic: str | None = None, branch: str = "master",
                      publish: bool = True, **kwargs) -> dict:
        """A patch set that is a real commit on top of master (files added or changed), its ref
        refs/changes/NN/NUMBER/PS; publishes patchset-created with the commit as revision."""
        repo = self.repository(project)
        event = self.upload(number, project=project, branch=branch, publish=False, **kwargs)
        patchset = event["patchSet"]["number"]
        git(repo, "checkout", "-q", "--detach", "master")
        for name, text in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", f"change {number} patch set {patchset}")
        revision = git(repo, "rev-parse", "HEAD").strip()
        git(repo, "update-ref", event["patchSet"]["ref"], revision)
        git(repo, "checkout", "-q", "master")
        with self._lock:
            change = self.changes[number]
            change["patchSets"][-1]["revision"] = revision
            if subject is not None:
                change["subject"] = subject
            if topic is not None:
                change["topic"] = topic
            event["patchSet"]["revision"] = revision
            event["change"].update({k: v for k, v in (("subject", subject), ("topic", topic)) if v is not None})
        if publish:
            self.publish(event)
        return event

    # -- the SSH side
    async def _process(self, process) -> None:
        command = process.command or ""
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = []
        if len(argv) == 2 and argv[0] in ("git-upload-pack", "git upload-pack"):
            with self._lock:
                self.commands.append(command)
                self.fetches.append(argv[1])
            path = (self.repos / argv[1].strip("/")).resolve()
            if self.repos.resolve() not in path.parents or not path.is_dir():
                process.stderr.write(f"fatal: '{argv[1]}' does not appear to be a git repository\n".encode())
                process.exit(128)
                return
            proc = await asyncio.create_subprocess_exec("git-upload-pack", str(path),
                                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                        stderr=subprocess.PIPE)
            await process.redirect(stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr)
            status = await proc.wait()
            await process.stdout.drain()
            process.exit(status)
            await process.wait_closed()  # runs asyncssh's cleanup of the redirection
            return
        await super()._process(process)


def git(repo: Path, *argv: str) -> str:
    env = {"GIT_AUTHOR_NAME": "Alice", "GIT_AUTHOR_EMAIL": "alice@example.org", "GIT_COMMITTER_NAME": "Alice",
           "GIT_COMMITTER_EMAIL": "alice@example.org", "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True, text=True,
                          env=env).stdout
