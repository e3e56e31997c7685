"""A real ZooKeeper (Debian's `zookeeper` package) on 127.0.0.1, on a free port, with its own data
directory and config; start() waits for `ruok` -> `imok` and a session, restart() keeps the data."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from cislaves.waiting import Pending
from tests.servers import held_port, wait_answering

JARS = "/usr/share/java/zookeeper.jar"


def available() -> str | None:
    """Why a ZooKeeper cannot run here, or None."""
    if not shutil.which("java"):
        return "no java (apt-get install default-jre-headless)"
    if not glob.glob(JARS):
        return "no ZooKeeper jar (apt-get install zookeeper)"
    return None


class ZooKeeperServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self._held = held_port()  # the port stays ours until ZooKeeper listens on it (and across restarts)
        self.port = self._held.getsockname()[1]
        self.data = folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.cfg = folder / "zoo.cfg"
        self.cfg.write_text(f"tickTime=200\ninitLimit=10\nsyncLimit=5\ndataDir={self.data}\n"
                            f"clientPort={self.port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                            "4lw.commands.whitelist=ruok,srvr\nminSessionTimeout=400\nmaxSessionTimeout=60000\n"
                            "snapCount=100000\n")
        self.proc: subprocess.Popen | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ZooKeeperServer":
        log = open(self.folder / "zookeeper.log", "ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", JARS,
             f"-Dzookeeper.log.dir={self.folder}", "org.apache.zookeeper.server.quorum.QuorumPeerMain",
             str(self.cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            wait_answering(self.proc, self.folder / "zookeeper.log", self._ruok,
                           f"ZooKeeper on {self.hosts} to answer ruok", 60, first_delay=0.05, max_delay=0.2)
        finally:
            self._release()
        return self

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def _ruok(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"ruok")
                answer = s.recv(16)
        except OSError as exc:
            return Pending(str(exc))
        return True if answer == b"imok" else Pending(repr(answer))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None
        self._release()

    def restart(self) -> None:
        self.stop()
        self._held = held_port(self.port)  # else the clients' reconnects could take it as a source port
        self.start()
