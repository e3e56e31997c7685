"""botocore's EC2 model cut down to the operations the driver calls, generated from the installed botocore.

Why: botocore's EC2 model (service-2.json.gz, about 0.5 MB compressed, several MB of dicts once
parsed) describes some 700 operations; a bake calls 23. Parsing the whole of it and keeping it in
memory was about a sixth of a bake's own time and 19 MiB of its peak (bench/ec2_vs_packer.py).

How: at first use, the installed botocore's own model (service-2, paginators-1, waiters-2 of the
newest EC2 API version) is filtered to OPERATIONS and the shapes they reach, without documentation,
and written under `<cache_root>/<botocore version>-<digest of OPERATIONS>/ec2/<api version>/`; a
botocore upgrade or a change of OPERATIONS makes a new folder, so a stale copy is never read. Its
endpoints.json is botocore's with each partition's service table cut to ENDPOINTS (1.2 MB, 24 ms
and 6.7 MiB parsed, read at every client creation whatever the service). The folder goes first on
the session's data loader search path (botocore's documented way to add models, what AWS_DATA_PATH
does); every other file (endpoint rules, partitions, retry rules) still comes from botocore's own data. Generated rather than shipped: it is always exactly the installed
botocore's shapes, whatever version pip installed. Nothing of botocore is patched.

Any trouble (no cache root, an unwritable one, a file that does not parse or lacks an operation)
falls back to botocore's full model with one warning: slower, never wrong (api.Clients).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVICE = "ec2"
# Every EC2 operation the driver (driver.py, images.py, cleanup.py) calls through api.call / api.pages.
# tests/ec2/test_model.py fails when the driver names one that is missing here.
OPERATIONS = (
    "AuthorizeSecurityGroupIngress", "CopyImage", "CreateImage", "CreateSecurityGroup", "CreateTags",
    "DeleteKeyPair", "DeleteSecurityGroup", "DeleteSnapshot", "DeleteTags", "DeleteVolume",
    "DeregisterImage", "DescribeImages", "DescribeInstances", "DescribeKeyPairs",
    "DescribeRegions", "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSubnets", "DescribeVolumes",
    "ImportKeyPair", "RunInstances", "StartInstances", "StopInstances", "TerminateInstances",
)
# endpoints.json entries kept (by endpoint prefix): EC2's, and those of the services botocore's
# credential and token providers create clients for on the same session (assume-role and web identity:
# sts; SSO: portal.sso, sso, oidc; console login: signin), so such profiles resolve as before.
ENDPOINTS = ("ec2", "sts", "portal.sso", "sso", "oidc", "signin")
FORMAT = 2  # bump when the generated files change shape
_REFS = ("member", "key", "value")


def data_path(cache_root: Path | None) -> Path | None:
    """The folder to put first on botocore's loader search path (generated on first use), or None
    when there is no usable one (botocore's full model is then used)."""
    if cache_root is None:
        return None
    import botocore

    folder = Path(cache_root) / f"{botocore.__version__}-{_digest()}"
    if (folder / SERVICE).is_dir():
        return folder
    try:
        _generate(folder)
    except Exception as exc:  # a read-only or full disk, an unexpected model: the full model still works
        log.warning("ec2: cannot write the trimmed botocore model under %s (%s); using botocore's full model",
                    cache_root, exc)
        return None
    return folder


def discard(folder: Path) -> None:
    """Remove a cached trimmed model that botocore could not use (the next run regenerates it)."""
    shutil.rmtree(folder, ignore_errors=True)


def trimmed(model: dict[str, Any], operations: tuple[str, ...] = OPERATIONS) -> dict[str, Any]:
    """A service-2 model holding only `operations` and the shapes they reach, without documentation.
    The input is not modified."""
    ops = {name: _undocumented(model["operations"][name]) for name in operations}
    shapes: dict[str, Any] = {}
    todo = [ref["shape"] for op in ops.values()
            for ref in [op.get("input"), op.get("output"), *op.get("errors", [])] if ref]
    while todo:
        name = todo.pop()
        if name in shapes:
            continue
        shape = _undocumented(model["shapes"][name])
        if "members" in shape:
            shape["members"] = {k: _undocumented(v) for k, v in shape["members"].items()}
        for key in _REFS:
            if key in shape:
                shape[key] = _undocumented(shape[key])
        shapes[name] = shape
        todo += [ref["shape"] for ref in [*(shape.get(k) for k in _REFS), *shape.get("members", {}).values()]
                 if ref]
    return {**{k: v for k, v in model.items() if k not in ("operations", "shapes", "documentation")},
            "operations": ops, "shapes": shapes}


def trimmed_endpoints(endpoints: dict[str, Any], services: tuple[str, ...] = ENDPOINTS) -> dict[str, Any]:
    """botocore's endpoints data with each partition's services cut to `services` (everything else
    of a partition, its regions and defaults, as it was). The input is not modified."""
    return {**endpoints, "partitions": [
        {**partition, "services": {k: v for k, v in partition["services"].items() if k in services}}
        for partition in endpoints["partitions"]]}


def _generate(folder: Path) -> None:
    """Write the trimmed files into a temporary sibling, then rename it into place (a concurrent
    bake sees no folder or a whole one; if it won the race, its folder is kept)."""
    import botocore.session

    loader = botocore.session.Session().get_component("data_loader")
    version = loader.determine_latest_version(SERVICE, "service-2")
    service = trimmed(loader.load_service_model(SERVICE, "service-2", version))
    paginators = loader.load_service_model(SERVICE, "paginators-1", version)["pagination"]
    waiters = loader.load_service_model(SERVICE, "waiters-2", version)
    kept_waiters = {name: w for name, w in waiters["waiters"].items() if w.get("operation") in OPERATIONS}
    endpoints = trimmed_endpoints(loader.load_data("endpoints"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        target = staging / SERVICE / version
        target.mkdir(parents=True)
        _write(target / "service-2.json", service)
        _write(target / "paginators-1.json", {"pagination": {k: v for k, v in paginators.items() if k in OPERATIONS}})
        _write(target / "waiters-2.json", {**waiters, "waiters": kept_waiters})
        _write(staging / "endpoints.json", endpoints)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / SERVICE).is_dir():
                raise
        else:
            log.debug("ec2: trimmed botocore model of %d operations written to %s", len(OPERATIONS), folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, separators=(",", ":"))


def _undocumented(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "documentation"}


def _digest() -> str:
    return hashlib.sha256(repr((FORMAT, OPERATIONS)).encode()).hexdigest()[:12]
