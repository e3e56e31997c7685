"""Processes for the coord tests: `fab listen` and `fab worker` with a ZooKeeper config, their logs
under the test's folder, stopped (SIGTERM, then SIGKILL) at the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import yaml
from kazoo.exceptions import NoNodeError

from tests.cli import REPO

FAB = str(REPO / ".venv" / "bin" / "fab")


def zk_config(config, zookeeper, folder: Path, name: str, root: str, **ci) -> Path:
    """`config` (a make_config result) with the zookeeper section and ci.backend: zookeeper, written
    as <folder>/<name>.yaml (its own ci.queue, so that listeners on one host do not share one)."""
    data = json.loads(json.dumps(config.raw, default=str))
    data["zookeeper"] = {"hosts": zookeeper.hosts, "root": root, "session_timeout": 3}
    data["ci"].update({"backend": "zookeeper", "queue": str(folder / name / "queue.sqlite"), **ci})
    for job in data["ci"]["jobs"]:
        job["run"] = str(config.relative(job["run"]))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Processes:
    def __init__(self, folder: Path):
        self.folder, self.running = folder, []

    def start(self, name: str, config: Path, *task: str) -> subprocess.Popen:
        out = open(self.folder / f"{name}.log", "ab")
        proc = subprocess.Popen([FAB, *task], cwd=REPO, env={**os.environ, "CISLAVES_CONFIG": str(config)},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        proc.name = name
        self.running.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def children(zk, path: str) -> list[str]:
    try:
        return zk.get_children(path)
    except NoNodeError:
        return []


def values(zk, path: str) -> list[dict]:
    out = []
    for name in children(zk, path):
        try:
            out.append(json.loads(zk.get(f"{path}/{name}")[0]))
        except NoNodeError:
            pass
    return out
