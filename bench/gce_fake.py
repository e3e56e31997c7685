"""Benchmark of the GCE driver's own overhead, against the fake compute v1 server of tests/gce.

Run: python3 bench/gce_fake.py [--runs 5] [--step 0.0]
Prints: building the compute client offline (static discovery), the first call (token + request), and
per run the time and API calls of launch, create_image and destroy; then a launch whose insert answer
is lost (503 after the work: one retry with the same requestId, api_retry_delay 0.01 s), and a cleanup
of 20 instances read in pages of 5. With --step 0 operations finish at
once, so the figures are the driver's and the HTTP client's cost, not GCE's (which takes minutes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cislaves import distros  # noqa: E402
from cislaves.clouds.gce import api as gce_api  # noqa: E402
from cislaves.clouds.base import CleanupPolicy, standard_tags  # noqa: E402
from cislaves.clouds.gce import GCECloud  # noqa: E402
from tests.contract import OWNER, make_spec  # noqa: E402
from tests.gce.conftest import PROJECT, seed_public_images  # noqa: E402
from tests.gce.fake_gce_http import FakeGCEServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--step", type=float, default=0.0, help="seconds per operation phase in the fake")
    args = parser.parse_args()
    debian = distros.get("debian12")
    with tempfile.TemporaryDirectory() as tmp, FakeGCEServer(step=args.step) as server:
        seed_public_images(server.fake)
        key = Path(tmp) / "sa.json"
        key.write_text(json.dumps(server.service_account_info(PROJECT)))
        started = time.perf_counter()
        credentials, _ = gce_api.load_credentials(key, "bench")
        gce_api.build_client(credentials, server.endpoint, 30)
        print(f"client build (offline, static discovery): {time.perf_counter() - started:.3f} s")
        cloud = GCECloud({"project": PROJECT, "credentials_file": str(key), "api_endpoint": server.endpoint,
                          "poll_max_delay": 0.2}, Path(tmp))
        started = time.perf_counter()
        base = cloud.base_image(debian)
        print(f"first call (client, token, getFromFamily): {time.perf_counter() - started:.3f} s -> {base.id}")
        figures: dict[str, list[float]] = {"launch": [], "create_image": [], "destroy": []}
        calls: dict[str, int] = {}

        def timed(name, action):
            before, started = len(server.fake.calls), time.perf_counter()
            result = action()
            figures[name].append(time.perf_counter() - started)
            calls[name] = len(server.fake.calls) - before
            return result

        for run in range(args.runs):
            spec = make_spec(cloud, debian, Path(tmp) / f"keys{run}")
            instance = timed("launch", lambda: cloud.launch(spec))
            tags = standard_tags(spec.run_id, "debian12", "image")
            timed("create_image", lambda: cloud.create_image(instance, f"bench-{spec.run_id}", tags))
            timed("destroy", lambda: cloud.destroy(instance))
        figures.update({"launch, lost insert answer": [], "cleanup of 20 (pages of 5)": []})
        for run in range(args.runs):
            server.fake.lose_answer("instances.insert")
            lossy = GCECloud({"project": PROJECT, "credentials_file": str(key), "api_endpoint": server.endpoint,
                              "poll_max_delay": 0.2, "api_retry_delay": 0.01}, Path(tmp))
            spec = make_spec(lossy, debian, Path(tmp) / f"lost{run}")
            instance = timed("launch, lost insert answer", lambda: lossy.launch(spec))
            lossy.destroy(instance)
            lossy.close()
        server.fake.page_size = 5
        for run in range(args.runs):
            for n in range(20):
                cloud.launch(make_spec(cloud, debian, Path(tmp) / f"many{run}-{n}"))
            removed = timed("cleanup of 20 (pages of 5)", lambda: cloud.cleanup(CleanupPolicy(owner=OWNER)))
            assert len(removed) == 20, removed
        for name, values in figures.items():
            print(f"{name}: median {statistics.median(values):.3f} s, max {max(values):.3f} s over {args.runs} "
                  f"runs, {calls[name]} API calls")
        cloud.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
