"""`fab rebake` with ci.backend: zookeeper: each target becomes an item of <root>/rebake's queue
(cislaves.coord.builds, the same locks and results), baked and validated by a `fab worker` that
drives its cloud (matrix.bake_one on the worker's host); the rebake waits for the results, then
publishes, prunes and reports as before. The images are in the baking host's manifest: workers and
the rebaking host share the data dir (or its manifest) for the publish and prune steps to see them."""
from __future__ import annotations

import logging
import threading
import time

from kazoo.exceptions import KazooException

from cislaves.coord.builds import BuildQueue
from cislaves.coord.settings import connect, zookeeper_settings
from cislaves.records import Image

log = logging.getLogger(__name__)


def queue_for(zk, settings) -> BuildQueue:
    return BuildQueue(zk, f"{settings.root}/rebake")


class Remote:
    """matrix.run_targets' `bake`: submit a target, wait for a worker's result."""

    def __init__(self, config, rebake_id: str):
        self.settings = zookeeper_settings(config)
        self.rebake_id = rebake_id
        self.zk = connect(self.settings)
        self.queue = queue_for(self.zk, self.settings)

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()

    def __call__(self, result, config, settings, say, stop: threading.Event) -> None:
        target = result.target
        key = f"{self.rebake_id}:{target.key}"
        began = time.monotonic()
        self.queue.submit(key, "rebake", {"kind": "rebake", "cloud": target.cloud, "target": target.key})
        say(f"[{target.key}] submitted to the workers (ZooKeeper {self.settings.hosts})")
        changed = threading.Event()
        while not stop.is_set():
            try:
                done = self.queue.result(key, "rebake")
                if done is None:
                    changed.clear()
                    self.zk.exists(f"{self.queue.root}/results/{_name(key)}", watch=lambda e: changed.set())
                    if self.queue.result(key, "rebake") is None:
                        changed.wait(1.0)
                    continue
            except KazooException:
                changed.wait(1.0)
                continue
            fill(result, done)
            say(f"[{target.key}] {result.status} on {done.get('host')} (worker {done.get('worker')})")
            return
        result.status, result.step, result.error = "interrupted", "waiting for a worker", "interrupted"
        result.seconds = time.monotonic() - began


def _name(key: str) -> str:
    from cislaves.coord.builds import item_name

    return item_name(key, "rebake")


def run(config, item_data: dict, stop: threading.Event) -> dict:
    """On a worker: bake and validate the target named by the item; its Result as a dict."""
    from cislaves.lifecycle import matrix, settings as settings_mod

    rebake = settings_mod.load(config)
    target = next((t for t in rebake.targets if t.key == item_data["target"]), None)
    if target is None:
        return {"result": "failed", "step": "settings", "error": f"rebake.targets has no {item_data['target']}"}
    result = matrix.Result(target)
    matrix.bake_one(result, target.session_config(config), rebake, lambda line: log.info("%s", line), stop)
    return {"result": result.status, "step": result.step, "error": result.error, "seconds": result.seconds,
            "images": [i.to_dict() for i in result.images], "packages_changed": result.packages_changed,
            "previous": result.previous, "rerun": result.status == "interrupted"}


def fill(result, done: dict) -> None:
    result.status = done.get("result") or "failed"
    result.step, result.error = done.get("step") or "", done.get("error") or ""
    result.seconds = float(done.get("seconds") or 0)
    result.images = [Image.from_dict(i) for i in done.get("images") or []]
    result.packages_changed, result.previous = done.get("packages_changed"), done.get("previous")
