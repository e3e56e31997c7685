"""Machine trees of the local cloud: the debootstrap base image, the host's Debian mirror, and the
per-instance files written into a tree before it boots (login key, host key, identity, DNS).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from cislaves import TOOL
from cislaves.clouds.local.host import file_lock, mounts_under, remove_tree, unmount
from cislaves.errors import CloudError

log = logging.getLogger(__name__)

DEBOOTSTRAP_INCLUDE = "openssh-server,python3,sudo,systemd,systemd-sysv,dbus,iproute2"
SSHD_DROPIN = ("# written by cislaves: key-only root login, one host key per instance\n"
               "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
               "HostKey /etc/ssh/ssh_host_ed25519_key\n")
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
                "e2scrub_reap.service", "getty@tty1.service")




def build_base(final: Path, suite: str, script: str, mirror: str, meta: dict[str, Any],
               timeout: float) -> None:
    """Build a base image with debootstrap into a temporary folder and rename it to `final`
    (final/rootfs, final/meta.json). A lock file makes concurrent builders wait for one build; a
    failed or interrupted build leaves nothing (and a killed one is removed by the next build)."""
    with file_lock(final.parent / f".{final.name}.lock"):
        if (final / "meta.json").exists():
            return
        for stale in final.parent.glob(f".build-{final.name}-*"):
            log.info("removing an interrupted build %s", stale)
            discard(stale)
        check_mirror(mirror)
        tmp = final.parent / f".build-{final.name}-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            started = time.monotonic()
            debootstrap(tmp, suite, script, mirror, timeout)
            prepare_base(tmp / "rootfs")
            meta = dict(meta, build_seconds=round(time.monotonic() - started, 1))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            os.rename(tmp, final)
        except BaseException:
            discard(tmp)
            raise


def debootstrap(tmp: Path, suite: str, script: str, mirror: str, timeout: float) -> None:
    log_path = tmp / "debootstrap.log"
    argv = ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_INCLUDE}", suite,
            str(tmp / "rootfs"), mirror]
    if script and script != suite:
        argv.append(f"/usr/share/debootstrap/scripts/{script}")
    log.info("building the local base image for %s with debootstrap (about a minute)", suite)
    with open(log_path, "wb") as out:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CloudError(f"local: debootstrap of {suite} from {mirror} took over {timeout:g}s") from None
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise CloudError(f"local: debootstrap of {suite} from {mirror} failed "
                         f"({done.returncode}): {' / '.join(tail)}")


def discard(build: Path) -> None:
    """Remove a build folder, first unmounting what debootstrap may have left mounted in it."""
    for point in sorted(mounts_under(build), key=len, reverse=True):
        unmount(Path(point))
    remove_tree(build)


def prepare_base(rootfs: Path) -> None:
    """Make a debootstrap tree a reusable image: no shared host keys, sshd key-only, quiet timers."""
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    put_file(rootfs, "etc/ssh/sshd_config.d/cislaves.conf", SSHD_DROPIN)
    for unit in MASKED_UNITS:
        link = safe_path(rootfs, f"etc/systemd/system/{unit}")
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    put_file(rootfs, "etc/machine-id", "")
    for stale in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        stale.unlink()


def check_mirror(mirror: str, timeout: float = 5.0) -> None:
    """CloudError unless the mirror's host accepts a TCP connection (fail fast, not after minutes)."""
    from urllib.parse import urlsplit

    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CloudError(f"local: mirror {mirror!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise CloudError(f"local: mirror {mirror} is not reachable from this host ({exc}); set "
                         "clouds.local.mirror (or CISLAVES_LOCAL_MIRROR) to a reachable one") from None


def host_mirror(suite: str, sources: Path = Path("/etc/apt")) -> str | None:
    """The Debian mirror the host's apt uses for `suite` (sources.list or deb822 *.sources)."""
    candidates: list[tuple[str, list[str]]] = []
    with contextlib.suppress(OSError):
        for line in (sources / "sources.list").read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.split()
                if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"])[0] != "no":
                    for uri in fields.get("uris", []):
                        candidates.append((uri, fields.get("suites", [])))
    for uri, suites in candidates:
        if suite in suites and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return None


def personalize(root: Path, meta: dict[str, Any], folder: Path) -> None:
    """Write the per-instance files into the mounted tree: login key, host key, identity, DNS."""
    public = Path(meta["key_file"] + ".pub").read_text().strip()
    ssh_dir = safe_path(root, "root/.ssh")
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    put_file(root, "root/.ssh/authorized_keys", public + "\n", 0o600)
    put_file(root, "etc/ssh/ssh_host_ed25519_key", (folder / "hostkey").read_bytes(), 0o600)
    put_file(root, "etc/ssh/ssh_host_ed25519_key.pub", (folder / "hostkey.pub").read_bytes(), 0o644)
    machine_id = meta["extra"].setdefault("machine_id", secrets.token_hex(16))
    put_file(root, "etc/machine-id", machine_id + "\n", 0o444)
    put_file(root, "etc/hostname", meta["id"] + "\n")
    put_file(root, "etc/hosts", hosts_file(meta["id"]))  # sudo and friends resolve the machine's name
    put_file(root, "etc/resolv.conf", resolv_conf())


def hosts_file(name: str) -> str:
    """Debian's /etc/hosts for a machine called `name` (its name on 127.0.1.1, as the installer writes)."""
    return (f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


def resolv_conf() -> str:
    """The host's nameservers. Loopback ones cannot be reached from a machine: behind a local stub
    (systemd-resolved's 127.0.0.53) the upstream servers are in /run/systemd/resolve/resolv.conf."""
    source = Path("/etc/resolv.conf")
    with contextlib.suppress(OSError):
        if all(n.startswith(("127.", "::1")) for n in nameservers(source.read_text())) \
                and nameservers(Path("/run/systemd/resolve/resolv.conf").read_text()):
            source = Path("/run/systemd/resolve/resolv.conf")
    lines = []
    with contextlib.suppress(OSError):
        for line in source.read_text().splitlines():
            words = line.split()
            if words[:1] == ["nameserver"] and len(words) > 1 and not words[1].startswith(("127.", "::1")):
                lines.append(line)
            elif words[:1] in (["search"], ["options"]):
                lines.append(line)
    if not any(line.startswith("nameserver") for line in lines):
        log.warning("local: the host has no non-loopback nameserver in %s; machines will have no DNS", source)
    return "\n".join(lines) + "\n"


def nameservers(text: str) -> list[str]:
    return [w[1] for w in (line.split() for line in text.splitlines()) if w[:1] == ["nameserver"] and len(w) > 1]


def scrub_layer(layer: Path, instance_id: str) -> None:
    """Take the per-instance files out of a layer becoming an image (each instance writes its own)."""
    for rel in ("etc/machine-id", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/ssh/ssh_host_ed25519_key",
                "etc/ssh/ssh_host_ed25519_key.pub"):
        path = layer / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
    keys = layer / "root/.ssh/authorized_keys"
    if keys.is_file() and not keys.is_symlink():
        mine = f"{TOOL}-local-{instance_id}"
        kept = [line for line in keys.read_text().splitlines() if not line.endswith(mine)]
        if kept:
            keys.write_text("\n".join(kept) + "\n")
        else:
            keys.unlink()


# -- files inside a machine tree ------------------------------------------------------------
def put_file(root: Path, rel: str, content: str | bytes, mode: int = 0o644) -> None:
    """Write root/rel without following symlinks out of the tree (an absolute symlink in an image
    would otherwise point at the host)."""
    target = safe_path(root, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(target, mode)


def safe_path(root: Path, rel: str) -> Path:
    current = Path(root)
    for part in Path(rel).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise CloudError(f"local: {current} is a symlink; refusing to write through it")
    return current / Path(rel).name


