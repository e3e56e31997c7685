"""OpenStack and Rackspace through python-novaclient on a keystoneauth1 session.

One driver serves both names: `rackspace` is OpenStack with Rackspace's defaults (identity URL,
region DFW, root login, Rackspace image names). Servers carry the run's tags as metadata; a key
pair the driver uploads is named `cislaves-<run id>-<hex>`; a floating IP it allocates has the
description `cislaves run <run id>`. That is how cleanup finds leftovers. Images are read and
deleted through Glance v2 (novaclient cannot), floating IPs through Neutron.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from novaclient import client as nova_client

from cislaves import TOOL, distros
from cislaves.clouds.openstack import auth as openstack_auth
from cislaves.clouds.base import (Capabilities, TAG_DISTRIBUTION, TAG_RUN, TAG_TOOL, Cloud, Image, Instance, LaunchSpec,
                                  generate_keypair, public_key_of, wait_for)
from cislaves.clouds.openstack.api import Api, NotFound
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

# Rackspace's own image names for the distributions the seed baked there (exact, newest active wins).
RACKSPACE_IMAGES = {
    "ubuntu14.04": r"^Ubuntu 14\.04 LTS \(Trusty Tahr\) \(PVHVM\)$",
    "centos7": r"^CentOS 7 \(PVHVM\)$",
}
RACKSPACE_USER = "root"  # Rackspace images log in as root
STATES = {"ACTIVE": "running", "SHUTOFF": "stopped", "STOPPED": "stopped", "BUILD": "pending",
          "REBUILD": "pending", "REBOOT": "pending", "HARD_REBOOT": "pending", "ERROR": "error",
          "DELETED": "terminated", "SOFT_DELETED": "terminated", "PAUSED": "stopped", "SUSPENDED": "stopped"}
IMAGE_STATES = {"active": "available", "queued": "pending", "saving": "pending", "uploading": "pending",
                "importing": "pending", "killed": "failed", "deleted": "deleted", "pending_delete": "deleted",
                "deactivated": "failed"}
IMAGE_FAILED = ("killed", "deleted", "pending_delete", "deactivated")
KEY_PREFIX = f"{TOOL}-"
KEY_NAME = re.compile(rf"^{TOOL}-(.+)-[0-9a-f]{{6}}$")
FIP_PREFIX = f"{TOOL} run "


class OpenStackCloud(Cloud):
    """Bakes on OpenStack (or Rackspace): Nova servers, Glance snapshots, optional floating IPs."""

    name = "openstack"
    capabilities = Capabilities(regions=True)  # regions are separate runs (OS_REGION_NAME)
    Settings = openstack_auth.Settings
    ENV = openstack_auth.ENV

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        super().__init__(settings, data_dir, name=name)
        self.cfg = openstack_auth.resolve(settings, self.name)
        self._api: Api | None = None
        self._nova = None

    # -- clients ----------------------------------------------------------------------------
    @property
    def api(self) -> Api:
        if self._api is None:
            label = f"{self.name} {self.cfg.region_name or ''}".strip()
            self._api = Api(openstack_auth.session(self.cfg, self.name), label, self.cfg.region_name,
                            self.cfg.interface, self.cfg.api_deadline)
        return self._api

    @property
    def nova(self):
        if self._nova is None:
            self._nova = nova_client.Client(self.cfg.compute_api_version, session=self.api.session,
                                            region_name=self.cfg.region_name, endpoint_type=self.cfg.interface)
        return self._nova

    def close(self) -> None:
        if self._api is not None:
            self._api.session.session.close()
        self._api = self._nova = None

    def describe(self) -> dict[str, Any]:
        return {"auth_url": self.cfg.auth_url, "region": self.cfg.region_name, "flavor": self.cfg.flavor,
                "project": self.cfg.project_name or self.cfg.tenant_name or self.cfg.project_id}

    def image_lines(self, images: list[Image]) -> list[str]:
        """The line the seed's procedure greps for."""
        return [f"finished image: {image.id}" for image in images]

    # -- images -----------------------------------------------------------------------------
    def base_image(self, distribution) -> Image:
        """The configured image (exact name or id), else the newest active image matching the pattern."""
        if self.cfg.image:
            return self._image_by_name_or_id(self.cfg.image, distribution)
        pattern = self.cfg.image_pattern or (RACKSPACE_IMAGES.get(distribution.name) if self.name == "rackspace"
                                             else None) or distribution.selector(self.name)["name"]
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"clouds.{self.name}.image_pattern: not a valid regular expression: {exc}") from None
        found = [i for i in self.api.glance_images(status="active") if regex.search(i.get("name") or "")]
        if not found:
            raise CloudError(f"{self.api.label}: no active image matches {pattern!r} for {distribution.name}; "
                             f"set clouds.{self.name}.image or image_pattern")
        newest = max(found, key=lambda i: (i.get("created_at") or "", i["id"]))
        return self._image(newest, distribution.name)

    def get_image(self, image_id: str) -> Image:
        try:
            data = self.api.get("image", f"/v2/images/{quote(image_id, safe='')}", f"reading image {image_id}")
        except NotFound:
            raise CloudError(f"{self.api.label}: no image with id {image_id!r}") from None
        return self._image(data)

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        """Images whose properties match every filter (tags are image properties)."""
        filters = filters or {}
        return [self._image(i) for i in self.api.glance_images()
                if all(str(i.get(k)) == str(v) for k, v in filters.items())]

    def delete_image(self, image: Image) -> None:
        if self.api.delete("image", f"/v2/images/{image.id}", f"deleting image {image.id}"):
            log.info("%s: deleted image %s (%s)", self.name, image.id, image.name)

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        """Snapshot the server (createImage), then poll Glance until the image is active."""
        meta = _metadata(tags)
        image_id = str(self.api.call(f"creating image {name!r} of server {instance.id}",
                                     self.nova.servers.create_image, instance.id, name, meta))
        log.info("%s: image %s (%s) requested from server %s", self.name, image_id, name, instance.id)
        last = ["no answer yet"]

        def probe():
            try:
                data = self.api.get("image", f"/v2/images/{image_id}", f"reading image {image_id}")
            except NotFound:
                raise CloudError(f"{self.api.label}: image {image_id} ({name}) was deleted while it was "
                                 f"being saved from server {instance.id}") from None
            last[0] = data.get("status", "?")
            if data.get("status") in IMAGE_FAILED:
                raise CloudError(f"{self.api.label}: image {image_id} ({name}) ended '{data['status']}' "
                                 f"while being saved from server {instance.id}")
            return data if data.get("status") == "active" else None

        try:
            data = wait_for(probe, f"image {image_id} ({name}) to become active", self.cfg.image_timeout,
                            max_delay=10, describe=lambda: last[0])
        except BaseException:
            self._forget_image(image_id)
            raise
        return self._image(data, tags.get(TAG_DISTRIBUTION))

    # -- servers ----------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Boot a server with the run's tags as metadata, wait until ACTIVE, give it an SSH address.

        On any failure (ERROR, timeout, Ctrl-C) the server, key pair and floating IP made so far are removed.
        """
        flavor = self._flavor()
        key_name, key_file, temporary, generated = self._key_pair(spec)
        made: dict[str, Any] = {"key_pair": key_name if temporary else None, "server": None, "fip": None}
        try:
            server = self._create_server(spec, flavor, key_name)
            made["server"] = server.id
            server = self._wait_active(server.id, spec.name)
            address = None
            if self.cfg.floating_network:
                fip = self._floating_ip(server.id, spec.run_id)
                made["fip"] = fip["id"]
                address = fip["floating_ip_address"]
            instance = self._instance(server, spec.distribution, spec.run_id, image_id=spec.image.id,
                                      key_file=key_file, address=address)
            if not instance.address:
                raise CloudError(f"{self.api.label}: server {server.id} ({spec.name}) has no IPv4 address; set "
                                 f"clouds.{self.name}.address_network, floating_network or ssh_host")
            instance.extra.update(key_pair=key_name, temporary_key_pair=temporary, floating_ip_id=made["fip"],
                                  generated_key_file=generated)
            log.info("%s: server %s (%s) is ACTIVE at %s", self.name, server.id, spec.name, instance.address)
            return instance
        except BaseException:
            try:
                if made["server"] is None:  # interrupted while the create was in flight: find it by its tags
                    made["server"] = getattr(self._find_server(spec), "id", None)
                self._teardown(made["server"], made["key_pair"], made["fip"], generated, spec.name)
            except CloudError as exc:  # the launch's own error is the one to report
                log.error("%s: cleaning up after the failed launch of %s: %s", self.name, spec.name, exc)
            raise

    def refresh(self, instance: Instance) -> Instance:
        try:
            server = self.api.call(f"reading server {instance.id}", self.nova.servers.get, instance.id)
        except NotFound:
            return dataclasses.replace(instance, state="terminated")
        fresh = self._instance(server, None, instance.run_id, image_id=instance.image_id,
                               key_file=instance.key_file, address=self._fip_address(instance))
        return dataclasses.replace(instance, state=fresh.state, address=fresh.address,
                                   extra={**instance.extra, "status": server.status})

    def stop(self, instance: Instance) -> Instance:
        return self._power(instance, "SHUTOFF", self.nova.servers.stop, "stopping")

    def start(self, instance: Instance) -> Instance:
        return self._power(instance, "ACTIVE", self.nova.servers.start, "starting")

    def destroy(self, instance: Instance) -> None:
        """Delete the server and wait until it is gone; release its floating IP and temporary key pair."""
        extra = instance.extra or {}
        self._teardown(instance.id, extra.get("key_pair") if extra.get("temporary_key_pair") else None,
                       extra.get("floating_ip_id"), extra.get("generated_key_file"), instance.name)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        """Servers this tool tagged whose metadata matches every filter."""
        filters = filters or {}
        out = []
        for server in self._tool_servers():
            meta = server.metadata or {}
            if all(meta.get(k) == str(v) for k, v in filters.items()):
                out.append(self._instance(server, None, meta.get(TAG_RUN, "")))
        return out

    def cleanup(self, keep_run_ids: set[str] = frozenset()) -> list[str]:
        """Delete tagged servers, key pairs and floating IPs of runs not in keep_run_ids."""
        removed: list[str] = []
        doomed = [s for s in self._tool_servers() if (s.metadata or {}).get(TAG_RUN) not in keep_run_ids]
        for server in doomed:
            self._delete_server(server.id)
        for server in doomed:
            self._wait_gone(server.id, server.name)
            removed.append(f"server {server.id} ({server.name}, run {server.metadata.get(TAG_RUN)})")
        for fip in self._floating_ips():
            run = (fip.get("description") or "")[len(FIP_PREFIX):]
            if (fip.get("description") or "").startswith(FIP_PREFIX) and run not in keep_run_ids:
                self.api.delete("network", f"/v2.0/floatingips/{fip['id']}", "releasing a floating IP")
                removed.append(f"floating IP {fip.get('floating_ip_address')} ({fip['id']}, run {run})")
        for keypair in self.api.call("listing key pairs", self.nova.keypairs.list):
            match = KEY_NAME.match(keypair.name)
            if match and match.group(1) not in keep_run_ids:
                self._delete_key_pair(keypair.name)
                removed.append(f"key pair {keypair.name} (run {match.group(1)})")
        for line in removed:
            log.info("%s: cleanup removed %s", self.name, line)
        return removed

    # -- helpers: launch --------------------------------------------------------------------
    def _flavor(self):
        wanted = self.cfg.flavor
        if not wanted:
            raise ConfigError(f"clouds.{self.name}.flavor: not set (a flavor name or id)")
        flavors = self.api.call("listing flavors", self.nova.flavors.list)
        for flavor in flavors:
            if wanted in (flavor.id, flavor.name):
                return flavor
        names = ", ".join(sorted(f.name for f in flavors))
        raise ConfigError(f"clouds.{self.name}.flavor: no flavor named or with id {wanted!r} "
                          f"in {self.api.label}; available: {names}")

    def _key_pair(self, spec: LaunchSpec) -> tuple[str, str, bool, str | None]:
        """(key pair name, private key file, temporary?, generated key file or None)."""
        if self.cfg.key_pair:
            if not self.cfg.key_filename:
                raise ConfigError(f"clouds.{self.name}.key_filename (RACKSPACE_KEY_FILENAME): not set, but "
                                  f"key_pair {self.cfg.key_pair!r} is; both are needed")
            if not Path(self.cfg.key_filename).expanduser().is_file():
                raise ConfigError(f"clouds.{self.name}.key_filename (RACKSPACE_KEY_FILENAME): "
                                  f"{self.cfg.key_filename} is not a file")
            try:
                self.api.call(f"reading key pair {self.cfg.key_pair}", self.nova.keypairs.get, self.cfg.key_pair)
            except NotFound:
                raise ConfigError(f"clouds.{self.name}.key_pair (RACKSPACE_KEY_PAIR): no key pair named "
                                  f"{self.cfg.key_pair!r} in {self.api.label}") from None
            return self.cfg.key_pair, str(Path(self.cfg.key_filename).expanduser()), False, None
        name = f"{KEY_PREFIX}{spec.run_id}-{uuid.uuid4().hex[:6]}"
        generated = None
        if self.cfg.key_filename:
            key_file = str(Path(self.cfg.key_filename).expanduser())
            try:
                public = public_key_of(Path(key_file))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"clouds.{self.name}.key_filename: cannot read a private key from "
                                  f"{key_file}: {exc}") from None
        else:
            key_file = generated = str(Path(spec.key_dir) / name)
            public = generate_keypair(Path(key_file))
        try:
            self.api.call(f"uploading key pair {name}", self.nova.keypairs.create, name, public_key=public)
        except BaseException:
            self._delete_key_pair(name)  # a 5xx after the server stored it, or Ctrl-C
            _remove_files(generated)
            raise
        return name, key_file, True, generated

    def _create_server(self, spec: LaunchSpec, flavor, key_name: str):
        meta = _metadata(spec.tags)
        nics: Any = [{"net-id": self._network_id(n)} for n in self.cfg.networks] or None
        if nics is None and tuple(int(p) for p in self.cfg.compute_api_version.split(".")) >= (2, 37):
            nics = "auto"
        attempts = [0]

        def create():
            attempts[0] += 1
            earlier = self._find_server(spec) if attempts[0] > 1 else None  # a failed attempt may have made it
            return earlier or self.nova.servers.create(
                spec.name, spec.image.id, flavor.id, meta=meta, key_name=key_name, nics=nics,
                security_groups=self.cfg.security_groups or None, availability_zone=self.cfg.availability_zone)

        server = self.api.call(f"creating server {spec.name}", create)
        log.info("%s: server %s (%s) created from image %s", self.name, server.id, spec.name, spec.image.id)
        return server

    def _find_server(self, spec: LaunchSpec):
        found = [s for s in self._tool_servers()
                 if s.name == spec.name and (s.metadata or {}).get(TAG_RUN) == spec.run_id]
        return found[0] if found else None

    def _wait_active(self, server_id: str, name: str):
        last = ["no answer yet"]

        def probe():
            try:
                server = self.api.call(f"reading server {server_id}", self.nova.servers.get, server_id)
            except NotFound:
                raise CloudError(f"{self.api.label}: server {server_id} ({name}) vanished while booting") from None
            last[0] = f"{server.status} {getattr(server, 'OS-EXT-STS:task_state', '') or ''}".strip()
            if server.status == "ERROR":
                fault = " ".join(str((getattr(server, "fault", None) or {}).get("message") or "").split())
                raise CloudError(f"{self.api.label}: server {server_id} ({name}) went to ERROR: "
                                 f"{fault or 'no fault message'}")
            return server if server.status == "ACTIVE" else None

        return wait_for(probe, f"server {server_id} ({name}) to become ACTIVE", self.cfg.launch_timeout,
                        max_delay=5, describe=lambda: last[0])

    def _network_id(self, wanted: str, key: str = "networks") -> str:
        nets = self.api.get("network", "/v2.0/networks", f"finding network {wanted}", id=wanted)["networks"] or \
            self.api.get("network", "/v2.0/networks", f"finding network {wanted}", name=wanted)["networks"]
        if len(nets) != 1:
            raise ConfigError(f"clouds.{self.name}.{key}: {'no' if not nets else 'more than one'} network "
                              f"named or with id {wanted!r} in {self.api.label}")
        return nets[0]["id"]

    def _floating_ip(self, server_id: str, run_id: str) -> dict:
        net = self._network_id(self.cfg.floating_network, "floating_network")
        ports = self.api.get("network", "/v2.0/ports", "finding the server's port", device_id=server_id)["ports"]
        if not ports:
            raise CloudError(f"{self.api.label}: server {server_id} has no port to attach a floating IP to")
        body = {"floatingip": {"floating_network_id": net, "port_id": ports[0]["id"],
                               "description": f"{FIP_PREFIX}{run_id}"}}
        return self.api.post("network", "/v2.0/floatingips", body, "allocating a floating IP")["floatingip"]

    def _floating_ips(self) -> list[dict]:
        """Every floating IP of the project; none where the cloud has no Neutron floating IPs (Rackspace)."""
        if not self.api.has_service("network"):
            return []
        try:
            return self.api.get("network", "/v2.0/floatingips", "listing floating IPs")["floatingips"]
        except NotFound:
            return []

    def _fip_address(self, instance: Instance) -> str | None:
        fip_id = (instance.extra or {}).get("floating_ip_id")
        if not fip_id or self.cfg.ssh_host:
            return None
        try:
            return self.api.get("network", f"/v2.0/floatingips/{fip_id}", "reading a floating IP")[
                "floatingip"]["floating_ip_address"]
        except NotFound:
            return None

    # -- helpers: records -------------------------------------------------------------------
    def _instance(self, server, distribution, run_id: str, image_id: str | None = None,
                  key_file: str | None = None, address: str | None = None) -> Instance:
        meta = dict(server.metadata or {})
        if distribution is None and meta.get(TAG_DISTRIBUTION) in distros.DISTRIBUTIONS:
            distribution = distros.get(meta[TAG_DISTRIBUTION])
        dist_name = distribution.name if distribution is not None else meta.get(TAG_DISTRIBUTION, "")
        if self.cfg.ssh_username:
            user = self.cfg.ssh_username
        elif self.name == "rackspace":
            user = RACKSPACE_USER
        else:
            user = distribution.user_for(self.name, "root") if distribution is not None else "root"
        return Instance(
            id=server.id, cloud=self.name, name=server.name, distribution=dist_name, run_id=run_id,
            state=STATES.get(server.status, "unknown"),
            address=self.cfg.ssh_host or address or _server_address(server, self.cfg.address_network),
            port=self.cfg.ssh_port, user=user, key_file=key_file, region=self.cfg.region_name,
            image_id=image_id or (server.image.get("id") if isinstance(server.image, dict) else None),
            created=getattr(server, "created", None), tags=meta, extra={"status": server.status})

    def _image(self, data: dict, distribution: str | None = None) -> Image:
        tags = {k: v for k, v in data.items() if isinstance(v, str) and (k.startswith(f"{TOOL}:") or k == "Name")}
        return Image(id=data["id"], cloud=self.name, name=data.get("name") or "",
                     distribution=data.get(TAG_DISTRIBUTION) or distribution, region=self.cfg.region_name,
                     created=data.get("created_at"), source_image=data.get("base_image_ref"),
                     run_id=data.get(TAG_RUN), state=IMAGE_STATES.get(data.get("status"), "unknown"), tags=tags,
                     extra={"status": data.get("status")})

    def _image_by_name_or_id(self, wanted: str, distribution) -> Image:
        if re.fullmatch(r"[0-9a-fA-F-]{32,36}", wanted):
            try:
                return self._image(self.api.get("image", f"/v2/images/{wanted}", f"reading image {wanted}"),
                                   distribution.name)
            except NotFound:
                pass
        found = list(self.api.glance_images(name=wanted, status="active"))
        if not found:
            raise CloudError(f"{self.api.label}: no active image named or with id {wanted!r} "
                             f"(clouds.{self.name}.image)")
        return self._image(max(found, key=lambda i: (i.get("created_at") or "", i["id"])), distribution.name)

    # -- helpers: teardown ------------------------------------------------------------------
    def _tool_servers(self) -> list:
        servers = self.api.call("listing servers", self.nova.servers.list, detailed=True)
        return [s for s in servers if (s.metadata or {}).get(TAG_TOOL) == TOOL]

    def _power(self, instance: Instance, target: str, action, verb: str) -> Instance:
        server = self.api.call(f"reading server {instance.id}", self.nova.servers.get, instance.id)
        if server.status != target:
            try:
                self.api.call(f"{verb} server {instance.id}", action, instance.id)
            except CloudError as exc:
                if "HTTP 409" not in str(exc):  # already on its way there
                    raise
            last = ["no answer yet"]

            def probe():
                current = self.api.call(f"reading server {instance.id}", self.nova.servers.get, instance.id)
                last[0] = current.status
                if current.status == "ERROR":
                    raise CloudError(f"{self.api.label}: server {instance.id} went to ERROR while {verb}")
                return current.status == target

            wait_for(probe, f"server {instance.id} to reach {target}", self.cfg.launch_timeout,
                     max_delay=5, describe=lambda: last[0])
        return self.refresh(instance)

    def _teardown(self, server_id, key_name, fip_id, generated, name) -> None:
        """Remove what a launch made; each step runs even if an earlier one failed."""
        errors: list[str] = []
        for step in (lambda: fip_id and self.api.delete("network", f"/v2.0/floatingips/{fip_id}",
                                                        "releasing a floating IP"),
                     lambda: server_id and (self._delete_server(server_id), self._wait_gone(server_id, name)),
                     lambda: key_name and self._delete_key_pair(key_name),
                     lambda: _remove_files(generated)):
            try:
                step()
            except CloudError as exc:
                errors.append(str(exc))
        if errors:
            raise CloudError(errors[0] + (f" (and {len(errors) - 1} more cleanup errors)" if len(errors) > 1 else ""))

    def _delete_server(self, server_id: str) -> None:
        try:
            self.api.call(f"deleting server {server_id}", self.nova.servers.delete, server_id)
        except NotFound:
            pass

    def _wait_gone(self, server_id: str, name: str) -> None:
        last = ["no answer yet"]

        def probe():
            try:
                server = self.api.call(f"reading server {server_id}", self.nova.servers.get, server_id)
            except NotFound:
                return True
            last[0] = server.status
            return server.status == "DELETED"

        wait_for(probe, f"server {server_id} ({name}) to be deleted", self.cfg.delete_timeout,
                 max_delay=5, describe=lambda: last[0])

    def _delete_key_pair(self, name: str) -> None:
        try:
            self.api.call(f"deleting key pair {name}", self.nova.keypairs.delete, name)
        except NotFound:
            pass

    def _forget_image(self, image_id: str) -> None:
        try:
            self.api.delete("image", f"/v2/images/{image_id}", f"deleting failed image {image_id}")
        except CloudError as exc:
            log.warning("%s", exc)


def _metadata(tags: dict[str, str]) -> dict[str, str]:
    """Nova metadata: string keys and values of at most 255 characters."""
    return {str(k)[:255]: str(v)[:255] for k, v in tags.items()}


def _server_address(server, network: str | None) -> str | None:
    """accessIPv4, else the IPv4 of `network`, else a public/floating IPv4, else any IPv4."""
    addresses = getattr(server, "addresses", None) or {}
    if network:
        return next((a["addr"] for a in addresses.get(network, []) if a.get("version") == 4), None)
    if getattr(server, "accessIPv4", None):
        return server.accessIPv4
    v4 = [(net, a) for net, items in addresses.items() for a in items if a.get("version") == 4]
    for net, entry in v4:
        if entry.get("OS-EXT-IPS:type") == "floating":
            return entry["addr"]
    for net, entry in v4:
        if net == "public":
            return entry["addr"]
    return v4[0][1]["addr"] if v4 else None


def _remove_files(key_file: str | None) -> None:
    if key_file:
        for path in (Path(key_file), Path(f"{key_file}.pub")):
            path.unlink(missing_ok=True)
