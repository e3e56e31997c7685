"""The distributions cislaves bakes: base-image selectors per cloud, login users, package family,
provisioning script and checks.

Selectors, per cloud key:
- "ec2":        {"owner": account id or alias, "name": AMI name pattern (EC2 wildcards * ?)}; newest wins
- "gce":        {"project": public image project, "family": image family}
- "openstack":  {"name": regex on image name}; newest active wins
- "rackspace":  {"name": regex on image name}
- "local":      {"suite": debootstrap suite, "mirror": URL, "script": debootstrap script name}

The provisioning scripts live in scripts/ (<name>.sh with the shared lib.sh and apt.sh/el.sh); the
`bootstrap` step is cislaves.distros.provision.provision, the `tests` step
cislaves.distros.checks.run_checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cislaves.errors import ConfigError

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"


@dataclass(frozen=True)
class Distribution:
    name: str
    family: str  # "apt", "yum" or "dnf"
    images: dict[str, dict[str, str]]
    users: dict[str, str]  # cloud -> SSH login user ("gce" means: the configured user)
    local_unavailable: str | None = None  # why the local cloud cannot build this one, if it cannot
    eol: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def script(self) -> Path:
        return SCRIPTS_DIR / f"{self.name}.sh"

    def selector(self, cloud: str) -> dict[str, str]:
        key = "openstack" if cloud not in self.images and cloud == "rackspace" else cloud
        if key not in self.images:
            raise ConfigError(f"distribution {self.name!r} has no base image for cloud {cloud!r}")
        return dict(self.images[key])

    def user_for(self, cloud: str, default: str = "root") -> str:
        return self.users.get(cloud, default)


_DISTRIBUTIONS = [
    Distribution(
        name="centos7", family="yum", eol=True,
        images={
            "ec2": {"owner": "125523088429", "name": "CentOS 7*x86_64*"},
            "gce": {"project": "centos-cloud", "family": "centos-7"},
            "openstack": {"name": r"^CentOS 7"},
            "rackspace": {"name": r"^CentOS 7"},
        },
        users={"ec2": "centos", "rackspace": "root", "openstack": "centos"},
        local_unavailable="debootstrap builds only Debian-family trees and CentOS mirrors are not "
                          "reachable from this host",
    ),
    Distribution(
        name="ubuntu14.04", family="apt", eol=True,
        images={
            "ec2": {"owner": "099720109477", "name": "ubuntu/images/hvm-ssd/ubuntu-trusty-14.04-amd64-server-*"},
            "gce": {"project": "ubuntu-os-cloud", "family": "ubuntu-1404-lts"},
            "openstack": {"name": r"^Ubuntu 14\.04"},
            "rackspace": {"name": r"^Ubuntu 14\.04"},
            "local": {"suite": "trusty", "mirror": UBUNTU_MIRROR, "script": "trusty"},
        },
        users={"ec2": "ubuntu", "rackspace": "root", "openstack": "ubuntu"},
        local_unavailable="trusty has systemd too old for systemd-nspawn --boot (upstart) and the "
                          "Ubuntu archive is not reachable from this host",
    ),
    Distribution(
        name="ubuntu22.04", family="apt",
        images={
            "ec2": {"owner": "099720109477", "name": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"},
            "gce": {"project": "ubuntu-os-cloud", "family": "ubuntu-2204-lts"},
            "openstack": {"name": r"^Ubuntu 22\.04"},
            "rackspace": {"name": r"^Ubuntu 22\.04"},
            "local": {"suite": "jammy", "mirror": UBUNTU_MIRROR, "script": "jammy"},
        },
        users={"ec2": "ubuntu", "rackspace": "root", "openstack": "ubuntu"},
    ),
    Distribution(
        name="ubuntu24.04", family="apt",
        images={
            "ec2": {"owner": "099720109477", "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"},
            "gce": {"project": "ubuntu-os-cloud", "family": "ubuntu-2404-lts-amd64"},
            "openstack": {"name": r"^Ubuntu 24\.04"},
            "rackspace": {"name": r"^Ubuntu 24\.04"},
            "local": {"suite": "noble", "mirror": UBUNTU_MIRROR, "script": "noble"},
        },
        users={"ec2": "ubuntu", "rackspace": "root", "openstack": "ubuntu"},
    ),
    Distribution(
        name="debian12", family="apt",
        images={
            "ec2": {"owner": "136693071363", "name": "debian-12-amd64-*"},
            "gce": {"project": "debian-cloud", "family": "debian-12"},
            "openstack": {"name": r"^Debian 12"},
            "rackspace": {"name": r"^Debian 12"},
            "local": {"suite": "bookworm", "mirror": DEBIAN_MIRROR, "script": "bookworm"},
        },
        users={"ec2": "admin", "rackspace": "root", "openstack": "debian", "local": "root"},
    ),
    Distribution(
        name="rocky9", family="dnf",
        images={
            "ec2": {"owner": "792107900819", "name": "Rocky-9-EC2-Base-9.*x86_64*"},
            "gce": {"project": "rocky-linux-cloud", "family": "rocky-linux-9"},
            "openstack": {"name": r"^Rocky( Linux)? 9"},
            "rackspace": {"name": r"^Rocky( Linux)? 9"},
        },
        users={"ec2": "rocky", "rackspace": "root", "openstack": "rocky"},
        local_unavailable="debootstrap builds only Debian-family trees and Rocky mirrors are not "
                          "reachable from this host",
    ),
]

DISTRIBUTIONS: dict[str, Distribution] = {d.name: d for d in _DISTRIBUTIONS}


def names() -> list[str]:
    return sorted(DISTRIBUTIONS)


def get(name: str, where: str = "argument 'distribution'") -> Distribution:
    try:
        return DISTRIBUTIONS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown distribution {name!r}; expected one of: "
                          f"{', '.join(names())}") from None
