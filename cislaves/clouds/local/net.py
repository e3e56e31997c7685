"""Networking of local machines: host-global subnet allocation, network namespace, veth pair, NAT.

Every instance gets a small subnet (/30: host end .1, machine .2) from the configured pool, its own
network namespace `cis-<token>` holding the veth end `eth0`, the host end `cis-<token>` and
iptables rules (MASQUERADE, FORWARD accept) carrying the comment `cislaves <token> <instance id>`.

Allocations are host-global (several data dirs share one host): one JSON record per allocation in
/run/cislaves/local/<token>.json, written under a lock file BEFORE any resource is created and
removed only AFTER all of them are gone, so a resource with no record is an orphan.
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterator

from cislaves import util
from cislaves.errors import CloudError

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/cislaves/local")
NETNS_DIR = Path("/run/netns")
PREFIX = "cis-"  # netns and host veth names: cis-<8 hex> (12 chars, under the 15-char limit)
COMMENT = "cislaves"  # first word of every iptables comment the tool adds
RESERVED = ipaddress.ip_network("10.255.0.0/16")  # the host's resolver lives there
TABLES = ("nat", "filter")


def allocate(pool: str, data_dir: Path, instance_id: str, instance_dir: Path) -> dict[str, Any]:
    """Reserve a free /30 of `pool` for an instance (or return the one it already holds)."""
    network = ipaddress.ip_network(pool)
    with lock():
        records = list_records()
        for record in records:
            if record["instance_dir"] == str(instance_dir):
                return record
        used = [ipaddress.ip_network(r["subnet"]) for r in records] + host_routes() + [RESERVED]
        for subnet in network.subnets(new_prefix=30):
            if not any(subnet.overlaps(u) for u in used):
                break
        else:
            raise CloudError(f"local: no free /30 left in subnet pool {pool} "
                             f"({len(records)} allocations in {RUN_DIR}); run `fab cleanup` or widen "
                             "clouds.local.subnet")
        token = secrets.token_hex(4)
        hosts = list(subnet.hosts())
        record = {
            "token": token, "subnet": str(subnet), "host_ip": str(hosts[0]), "guest_ip": str(hosts[1]),
            "netns": PREFIX + token, "veth": PREFIX + token, "data_dir": str(data_dir),
            "instance_id": instance_id, "instance_dir": str(instance_dir),
        }
        write_record(record)
        return record


def setup(record: dict[str, Any], isolate: bool = True) -> None:
    """Create (or complete) the namespace, veth pair, addresses, routes and firewall rules; idempotent.
    With isolate, the machine cannot open connections to the host or to other machines (replies to
    the host's connections, and connections out to the world, still pass)."""
    ns, veth = record["netns"], record["veth"]
    host_cidr = f"{record['host_ip']}/30"
    if not (NETNS_DIR / ns).exists():
        ip("netns", "add", ns)
    if not link_exists(veth):
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("addr", "replace", host_cidr, "dev", veth)
    ip("link", "set", veth, "up")
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "addr", "replace", f"{record['guest_ip']}/30", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "route", "replace", "default", "via", record["host_ip"])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    wanted = rules(record, isolate)
    if any(run(["iptables", "-w", "-t", table, "-C", chain, *rule], check=False).returncode != 0
           for table, chain, rule in wanted):
        delete_rules(record["token"])  # (re)insert the whole set, so their order is the intended one
        for table, chain, rule in reversed(wanted):
            run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule])


def teardown(record: dict[str, Any]) -> list[str]:
    """Remove the firewall rules, veth and namespace of an allocation; return what was removed."""
    removed = delete_rules(record["token"])
    if link_exists(record["veth"]):
        run(["ip", "link", "del", record["veth"]], check=False)
        removed.append(f"veth {record['veth']}")
    if (NETNS_DIR / record["netns"]).exists():
        run(["ip", "netns", "del", record["netns"]], check=False)
        removed.append(f"netns {record['netns']}")
    return removed


def release(token: str) -> bool:
    """Forget an allocation record (after teardown)."""
    with lock():
        path = RUN_DIR / f"{token}.json"
        if path.exists():
            path.unlink()
            return True
        return False


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """The host-global lock for allocations (and for the orphan sweep)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(RUN_DIR / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def list_records() -> list[dict[str, Any]]:
    """Every allocation record on this host (any data dir)."""
    records = []
    if RUN_DIR.is_dir():
        for path in sorted(RUN_DIR.glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable allocation record %s: %s", path, exc)
    return records


def find_record(instance_dir: Path) -> dict[str, Any] | None:
    for record in list_records():
        if record.get("instance_dir") == str(instance_dir):
            return record
    return None


def write_record(record: dict[str, Any]) -> None:
    util.write_json(RUN_DIR / f"{record['token']}.json", record, mode=0o644, indent=1)


def rules(record: dict[str, Any], isolate: bool = True) -> list[tuple[str, str, list[str]]]:
    """The iptables rules of an allocation, in order: (table, chain, rule arguments)."""
    subnet, veth = record["subnet"], record["veth"]
    tag = ["-m", "comment", "--comment", f"{COMMENT} {record['token']} {record['instance_id']}"]
    replies = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
    nat = [("nat", "POSTROUTING", ["-s", subnet, "!", "-d", subnet, *tag, "-j", "MASQUERADE"])]
    if not isolate:
        return nat + [("filter", "FORWARD", ["-i", veth, *tag, "-j", "ACCEPT"]),
                      ("filter", "FORWARD", ["-o", veth, *tag, "-j", "ACCEPT"])]
    return nat + [
        ("filter", "FORWARD", ["-o", veth, *replies, *tag, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["-o", veth, *tag, "-j", "DROP"]),  # nothing new into the machine
        ("filter", "FORWARD", ["-i", veth, *tag, "-j", "ACCEPT"]),  # the machine out to the world
        ("filter", "INPUT", ["-i", veth, *replies, *tag, "-j", "ACCEPT"]),
        ("filter", "INPUT", ["-i", veth, *tag, "-j", "DROP"]),  # nothing new from it to the host
    ]


def tool_rules() -> list[tuple[str, str]]:
    """Every iptables rule (table, -A line) carrying the tool's comment."""
    found = []
    for table in TABLES:
        out = run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
        for line in out.splitlines():
            if line.startswith("-A ") and f'--comment "{COMMENT} ' in line:
                found.append((table, line))
    return found


def rule_token(line: str) -> str | None:
    """The allocation token named in a tool rule's comment."""
    marker = f'--comment "{COMMENT} '
    if marker not in line:
        return None
    return line.split(marker, 1)[1].split()[0].strip('"')


def delete_rules(token: str | None = None, keep: set[str] | None = None) -> list[str]:
    """Delete the tool's iptables rules: those of allocation `token`, or (with `keep`) those of every
    allocation not in keep."""
    removed = []
    for table, line in tool_rules():
        owner = rule_token(line)
        if (token is not None and owner != token) or (keep is not None and owner in keep):
            continue
        argv = ["iptables", "-w", "-t", table, "-D", *shlex.split(line)[1:]]
        if run(argv, check=False).returncode == 0:
            removed.append(f"iptables -t {table} {line}")
    return removed


def tool_netns() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))


def tool_links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                names.append(name)
    return sorted(names)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def host_routes() -> list[ipaddress.IPv4Network]:
    """Networks routed on the host (so an allocation never shadows one of them)."""
    out = run(["ip", "-4", "route", "show"], check=False).stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first and first != "default":
            try:
                nets.append(ipaddress.ip_network(first, strict=False))
            except ValueError:
                continue
    return nets


def ip(*args: str) -> None:
    run(["ip", *args])


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a host command (argv list); a failure with check=True is a CloudError with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise CloudError(f"local: `{shlex.join(argv)}` failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()}")
    return result
