"""The GCE driver's translations: API resources to Instance/Image records (SSH fields through the shared
apply_ssh), settings to request bodies, image references, and the login key written into ssh-keys."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from pathlib import Path
from typing import Any

from cislaves.clouds.base import TAG_DISTRIBUTION, TAG_RUN, Image, Instance, isoformat
from cislaves.clouds.gce.api import basename
from cislaves.clouds.ssh import LoginKey, apply_ssh, login_key
from cislaves.clouds.gce.labels import tags_from_labels
from cislaves.errors import CloudError, ConfigError

# GCE instance status -> the interface's states (TERMINATED is GCE's word for a stopped instance).
STATES = {"PROVISIONING": "pending", "STAGING": "pending", "PENDING": "pending", "REPAIRING": "pending",
          "RUNNING": "running", "STOPPING": "stopping", "PENDING_STOP": "stopping", "SUSPENDING": "stopping",
          "STOPPED": "stopped", "TERMINATED": "stopped", "SUSPENDED": "stopped", "DEPROVISIONING": "stopping"}
DEFAULT_USER = "cislaves"  # the login written into ssh-keys when neither ssh_user nor the distribution names one
IMAGE_STATES = {"READY": "available", "PENDING": "pending", "FAILED": "error", "DELETING": "deleting"}
_IMAGE_PATH = re.compile(r"(?:^|/)projects/([^/]+)/global/images/(family/)?([^/]+)$")
_SOURCE = re.compile(r"from image (\S+)")


def image_ref(image_id: str, own_project: str) -> tuple[str, bool, str]:
    """(project, is a family, name) of NAME, projects/P/global/images/NAME[/family/F] or a selfLink."""
    match = _IMAGE_PATH.search(image_id)
    if match:
        return match[1], bool(match[2]), match[3]
    if "/" in image_id:
        raise CloudError(f"gce: {image_id!r} is not an image: expected NAME or "
                         f"projects/PROJECT/global/images/NAME (or .../images/family/FAMILY)")
    return own_project, False, image_id


def image_path(image_id: str, own_project: str) -> str:
    project, family, name = image_ref(image_id, own_project)
    return f"projects/{project}/global/images/{'family/' if family else ''}{name}"


def image_record(cloud: str, own_project: str, data: dict[str, Any]) -> Image:
    """An Image from an images resource; its id is NAME in our project, projects/P/global/images/NAME else."""
    project = project_of(data.get("selfLink", "")) or own_project
    name = data["name"]
    tags = tags_from_labels(data.get("labels"))
    source = _SOURCE.search(data.get("description") or "")
    return Image(id=name if project == own_project else f"projects/{project}/global/images/{name}",
                 cloud=cloud, name=name, distribution=tags.get(TAG_DISTRIBUTION),
                 created=utc(data.get("creationTimestamp")), run_id=tags.get(TAG_RUN),
                 source_image=source[1] if source else None,
                 state=IMAGE_STATES.get(data.get("status", ""), "unknown"), tags=tags,
                 extra={"project": project, "family": data.get("family"), "status": data.get("status"),
                        "deprecated": (data.get("deprecated") or {}).get("state"),
                        "replacement": (data.get("deprecated") or {}).get("replacement"),
                        "disk_size_gb": data.get("diskSizeGb"), "self_link": data.get("selfLink")})


def instance_record(cloud: str, own_project: str, settings, data: dict[str, Any]) -> Instance:
    """An Instance from an instances resource found by listing (no record of ours to start from)."""
    tags = tags_from_labels(data.get("labels"))
    items = {i.get("key"): i.get("value", "") for i in (data.get("metadata") or {}).get("items", [])}
    user = items.get("ssh-keys", "").split(":", 1)[0] or settings.ssh_user or DEFAULT_USER
    zone = basename(data.get("zone", settings.zone))
    instance = Instance(id=data["name"], cloud=cloud, name=data["name"], distribution=tags.get(TAG_DISTRIBUTION, ""),
                        run_id=tags.get(TAG_RUN, ""), user=user, region=zone,
                        extra={"project": project_of(data.get("selfLink", "")) or own_project, "zone": zone})
    return merge(settings, instance, data)


def merge(settings, instance: Instance, data: dict[str, Any], *, need_address: bool = False) -> Instance:
    """The instance record updated from the API's view: state, tags, boot disk, and the SSH fields from the
    shared settings (apply_ssh: public = the external IP, private = the internal one; ssh_host wins).

    need_address (a RUNNING instance SSH is about to reach): no address on the chosen interface is a
    CloudError with code NoAddress that says so; otherwise (stopped, listed) the address is just None.
    """
    nic = (data.get("networkInterfaces") or [{}])[0]
    public = next((c.get("natIP") for c in nic.get("accessConfigs") or [] if c.get("natIP")), None)
    boot = next((basename(d["source"]) for d in data.get("disks", []) if d.get("boot") and d.get("source")), None)
    extra = {**instance.extra, **({"boot_disk": boot} if boot else {}), "status": data.get("status")}  # GCE's own
    updated = dataclasses.replace(instance, state=STATES.get(data.get("status", ""), "unknown"), extra=extra,
                                  created=utc(data.get("creationTimestamp")) or instance.created,
                                  tags={**instance.tags, **tags_from_labels(data.get("labels"))})
    addresses = {"public": public, "private": nic.get("networkIP")}
    try:
        return apply_ssh(updated, settings, addresses, default_interface=settings.interface,
                         default_user=instance.user)
    except CloudError as exc:
        if need_address or exc.code != "NoAddress":
            if exc.code == "NoAddress" and not nic.get("accessConfigs") and settings.interface == "public":
                exc.args = (f"{exc} (the instance has no accessConfigs: no external IP was given to it)",)
            raise
    # not running (or only listed): no address yet; the other SSH fields still come from the settings
    filled = apply_ssh(updated, settings, {**addresses, settings.interface: "-"},
                       default_interface=settings.interface, default_user=instance.user)
    filled.address = None
    return filled


def instance_body(settings, name: str, source_image: str, labels: dict[str, str], ssh_key: str) -> dict[str, Any]:
    """The instances.insert body: boot disk with autoDelete (named like the instance), labels on both,
    one interface (with an ephemeral public address unless external_ip is off), the ssh-keys metadata."""
    zone = settings.zone
    params: dict[str, Any] = {"diskName": name, "sourceImage": source_image, "labels": labels,
                              "diskType": f"zones/{zone}/diskTypes/{settings.disk_type}"}
    if settings.disk_size_gb:
        params["diskSizeGb"] = str(settings.disk_size_gb)
    nic: dict[str, Any] = {"network": settings.network}
    if settings.subnetwork:
        nic["subnetwork"] = settings.subnetwork
    if settings.external_ip:  # (ssh_interface public needs it; private may still want outbound NAT)
        nic["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
    return {"name": name, "machineType": f"zones/{zone}/machineTypes/{settings.machine_type}",
            "labels": labels, "networkInterfaces": [nic],
            "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT", "mode": "READ_WRITE",
                       "deviceName": name, "initializeParams": params}],
            "metadata": {"items": [{"key": "ssh-keys", "value": ssh_key},
                                   {"key": "enable-oslogin", "value": "FALSE"}]}}


def login(settings, cloud: str, key_dir: Path, name: str) -> tuple[LoginKey, str]:
    """The login key (configured, or a temporary one: clouds.ssh.login_key) and the public key
    "TYPE BASE64" for ssh-keys: from ssh_public_key_file when given (GCE only), else the private key's."""
    key = login_key(settings, key_dir, name, cloud=cloud)
    public = key.public_key
    if settings.ssh_public_key_file is not None:
        path = Path(settings.ssh_public_key_file).expanduser()
        label = f"clouds.{cloud}.ssh_public_key_file (GCE_PUBLIC_KEY_FILENAME): {path}"
        try:
            public = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
        if len(public.split()) < 2 or not public.split()[0].startswith(("ssh-", "ecdsa-")):
            raise ConfigError(f"{label}: expected an OpenSSH public key line (ssh-ed25519 AAAA...)")
    return key, " ".join(public.split()[:2])


def project_of(self_link: str) -> str | None:
    match = re.search(r"/projects/([^/]+)/", self_link)
    return match[1] if match else None


def utc(timestamp: str | None) -> str | None:
    """An RFC 3339 timestamp from the API as ISO 8601 UTC ("...Z")."""
    if not timestamp:
        return None
    try:
        return isoformat(_dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")))
    except ValueError:
        return timestamp
