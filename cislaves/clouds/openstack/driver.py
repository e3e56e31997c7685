"""OpenStack: Nova through python-novaclient (nova.py), Glance and Neutron as JSON (api.py), all on one
keystoneauth1 session in one region.

Rackspace is a subclass (rackspace.py) that changes class attributes only: its defaults, its image
names, its login user and the catalog names of its services. Servers carry the run's tags as
metadata, snapshots as Glance properties; key pairs carry them in their name and floating IPs in
their description (tagging.py). That is how `cleanup(policy)` finds what it may remove.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from novaclient import api_versions

from cislaves import TOOL, distros
from cislaves.clouds.base import (TAG_DISTRIBUTION, TAG_RUN, TAG_TOOL, Capabilities, CleanupPolicy, Cloud, Image,
                                  Instance, LaunchSpec, Pending, wait_for)
from cislaves.clouds.openstack import auth, nova, tagging
from cislaves.clouds.openstack.api import Api, NotFound
from cislaves.clouds.openstack.images import ImageMethods, metadata
from cislaves.clouds.openstack.network import Network
from cislaves.clouds.openstack.settings import ENV, Settings, resolve
from cislaves.clouds.ssh import apply_ssh, login_key
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

STATES = {"ACTIVE": "running", "SHUTOFF": "stopped", "STOPPED": "stopped", "BUILD": "pending",
          "REBUILD": "pending", "REBOOT": "pending", "HARD_REBOOT": "pending", "ERROR": "error",
          "DELETED": "terminated", "SOFT_DELETED": "terminated", "PAUSED": "stopped", "SUSPENDED": "stopped"}


class OpenStackCloud(ImageMethods, Cloud):
    """Bakes on OpenStack: Nova servers, Glance snapshots, optional Neutron floating IPs."""

    name = "openstack"
    capabilities = Capabilities(regions=True)  # regions are separate runs (OS_REGION_NAME)
    Settings = Settings
    ENV = ENV
    # what a cloud built on OpenStack changes (see rackspace.py)
    DEFAULTS: ClassVar[dict[str, Any]] = {"flavor": "m1.small"}
    IMAGES: ClassVar[dict[str, str]] = {}  # distribution -> the cloud's own image name pattern
    SERVICE_NAMES: ClassVar[dict[str, str]] = {}  # service type -> preferred catalog name
    DEFAULT_USER: ClassVar[str | None] = None  # None: the distribution's user on this cloud

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        super().__init__(settings, data_dir, name=name)
        self.cfg = resolve(settings, self.name, self.DEFAULTS)
        self._api: Api | None = None
        self._net: Network | None = None
        self._nova = None

    # -- clients ----------------------------------------------------------------------------
    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(auth.session(self.cfg, self.name), self.name, self.cfg.region_name, self.cfg.interface,
                            self.cfg.api_deadline, service_names=self.SERVICE_NAMES)
        return self._api

    @property
    def nova(self):
        """The novaclient Client at compute_api_version (checked against novaclient, then the cloud)."""
        if self._nova is None:
            self._nova = nova.connect(self.api, self.cfg.compute_api_version,
                                      f"clouds.{self.name}.compute_api_version (OS_COMPUTE_API_VERSION)")
        return self._nova

    @property
    def net(self) -> Network:
        if self._net is None:
            self._net = Network(self.api, self.name)
        return self._net

    def close(self) -> None:
        if self._api is not None:
            self._api.session.session.close()
        self._api = self._net = self._nova = None

    def describe(self) -> dict[str, Any]:
        region = self._api.region if self._api is not None else self.cfg.region_name
        return {"auth_url": self.cfg.auth_url, "region": region, "flavor": self.cfg.flavor,
                "project": self.cfg.project_name or self.cfg.tenant_name or self.cfg.project_id}

    def image_lines(self, images: list[Image]) -> list[str]:
        """The line the seed's procedure greps for."""
        return [f"finished image: {image.id}" for image in images]

    # -- servers ----------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Boot a server with the run's tags as metadata, wait until ACTIVE, give it an SSH address.

        On any failure (ERROR, timeout, Ctrl-C) the server, key pair and floating IP made so far are removed.
        """
        flavor = self._flavor()
        nics = self._nics()
        key_name = tagging.key_pair_name(spec.tags)
        key = login_key(self.cfg, Path(spec.key_dir), key_name, cloud=self.name)
        made: dict[str, Any] = {"key_pair": None, "server": None, "fip": None}
        try:
            if key.key_pair and not key.temporary:
                self._check_key_pair(key.key_pair)
            else:  # a new key, or the user's key file without a key pair: upload it for this run
                made["key_pair"] = key_name
                self._upload_key_pair(key_name, key.public_key)
            server = self._create_server(spec, flavor["id"], made["key_pair"] or key.key_pair, nics)
            made["server"] = server["id"]
            server = self._wait_active(server["id"], spec.name)
            fip = None
            if self.cfg.floating_network:
                fip = self.net.attach_floating_ip(server["id"], self.cfg, tagging.fip_description(spec.tags))
                made["fip"] = fip["id"]
            instance = self._instance(server, spec.distribution, spec.run_id, image_id=spec.image.id,
                                      key_file=str(key.private_key_file),
                                      fip_address=fip["floating_ip_address"] if fip else None)
            instance.extra.update(key_pair=made["key_pair"] or key.key_pair,
                                  temporary_key_pair=bool(made["key_pair"]), floating_ip_id=made["fip"],
                                  generated_key_file=str(key.private_key_file) if key.temporary else None)
            log.info("%s: server %s (%s) is ACTIVE at %s", self.name, server["id"], spec.name, instance.address)
            return instance
        except BaseException:
            try:
                if made["server"] is None:  # interrupted while the create was in flight: find it by its tags
                    made["server"] = (self._find_server(spec) or {}).get("id")
                fips = [made["fip"]] if made["fip"] else []
                if self.cfg.floating_network and made["server"] and not fips:  # the allocation's answer never came
                    fips = [f["id"] for f in self.net.floating_ips_of(made["server"])
                            if (tagging.fip_tags(f.get("description")) or {}).get(TAG_RUN) == spec.run_id]
                self._teardown(made["server"], made["key_pair"], fips,
                               str(key.private_key_file) if key.temporary else None, spec.name)
            except CloudError as exc:  # the launch's own error is the one to report
                log.error("%s: cleaning up after the failed launch of %s: %s", self.name, spec.name, exc)
            raise

    def refresh(self, instance: Instance) -> Instance:
        try:
            server = self._server(instance.id)
        except NotFound:
            return dataclasses.replace(instance, state="terminated")
        fresh = dataclasses.replace(instance, state=STATES.get(server["status"], "unknown"),
                                    extra={**instance.extra, "status": server["status"]})
        try:
            self._apply_ssh(fresh, server, self._fip_address(instance), fresh.user)
        except CloudError:  # no address right now (e.g. stopped): keep the one we knew
            fresh.address = instance.address
        return fresh

    def stop(self, instance: Instance) -> Instance:
        return self._power(instance, "SHUTOFF", "stop", "stopping")

    def start(self, instance: Instance) -> Instance:
        return self._power(instance, "ACTIVE", "start", "starting")

    def destroy(self, instance: Instance) -> None:
        """Delete the server and wait until it is gone; release its floating IPs and temporary key pair.

        An instance read from a listing knows these from the server itself (key_name, ports)."""
        extra = instance.extra or {}
        key_pair = extra.get("key_pair") if extra.get("temporary_key_pair") else None
        fips = [extra["floating_ip_id"]] if extra.get("floating_ip_id") else []
        if not extra.get("key_pair"):
            try:
                server = self._server(instance.id)
            except NotFound:
                server = None
            if server and tagging.key_pair_tags(server.get("key_name") or ""):
                key_pair = server["key_name"]
            if server:
                fips += [f["id"] for f in self.net.floating_ips_of(instance.id) if f["id"] not in fips]
        self._teardown(instance.id, key_pair, fips, extra.get("generated_key_file"), instance.name)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        """Servers this tool tagged whose metadata matches every filter."""
        filters = filters or {}
        out = []
        for server in self._tool_servers():
            meta = server.get("metadata") or {}
            if all(meta.get(k) == str(v) for k, v in filters.items()):
                out.append(self._instance(server, None, meta.get(TAG_RUN, ""), strict=False))
        return out

    def cleanup(self, policy: CleanupPolicy) -> list[str]:
        """Remove what `policy` allows: servers (metadata), floating IPs (description), key pairs (name)
        and images that never became active (Glance properties); one line per removed resource."""
        removed: list[str] = []
        doomed = [(s, policy.reason(s.get("metadata"))) for s in self._tool_servers()]
        doomed = [(s, why) for s, why in doomed if why]
        fips = self.net.floating_ips()
        for server, _ in doomed:
            self._delete_server(server["id"])
        for server, why in doomed:
            self._wait_gone(server["id"], server["name"])
            removed.append(f"instance {server['id']} ({server['name']}, run "
                           f"{server['metadata'].get(TAG_RUN)}, {why})")
        for fip in fips:
            why = policy.reason(tagging.fip_tags(fip.get("description")))
            if why and self.net.release(fip["id"]):
                removed.append(f"floating IP {fip.get('floating_ip_address')} ({fip['id']}, {why})")
        for name in self._key_pair_names():
            why = policy.reason(tagging.key_pair_tags(name))
            if why:
                self._delete_key_pair(name)
                removed.append(f"key pair {name} ({why})")
        for data in self.api.glance_images():
            why = policy.reason(data) if data.get("status") != "active" else None
            if why and self.api.delete("image", f"images/{data['id']}", f"deleting image {data['id']}"):
                removed.append(f"image {data['id']} ({data.get('name')}, {data.get('status')}, {why})")
        for line in removed:
            log.info("%s: cleanup removed %s", self.name, line)
        return removed

    # -- helpers: launch --------------------------------------------------------------------
    def _flavor(self) -> dict:
        wanted = self.cfg.flavor
        if not wanted:
            raise ConfigError(f"clouds.{self.name}.flavor: not set (a flavor name or id)")
        flavors = [f.to_dict() for f in self.api.call("listing flavors", nova.every_page, self.nova.flavors.list)]
        for flavor in flavors:
            if wanted in (flavor["id"], flavor["name"]):
                return flavor
        names = ", ".join(sorted(f["name"] for f in flavors))
        raise ConfigError(f"clouds.{self.name}.flavor: no flavor named or with id {wanted!r} "
                          f"in {self.api.label}; available: {names}")

    def _nics(self) -> Any:
        """The server's networks (novaclient's nics): the configured ones, else Nova's choice ("auto" from 2.37)."""
        if self.cfg.networks:
            return [{"net-id": self.net.network_id(n, "networks")} for n in self.cfg.networks]
        return "auto" if self.nova.api_version >= api_versions.APIVersion("2.37") else None

    def _check_key_pair(self, name: str) -> None:
        try:
            self.api.call(f"reading key pair {name}", self.nova.keypairs.get, quote(name, safe=""))
        except NotFound:
            raise ConfigError(f"clouds.{self.name}.ssh_key_pair (RACKSPACE_KEY_PAIR): no key pair named "
                              f"{name!r} in {self.api.label}") from None

    def _upload_key_pair(self, name: str, public_key: str) -> None:
        try:
            self.api.call(f"uploading key pair {name}", self.nova.keypairs.create, name, public_key=public_key)
        except BaseException:
            self._delete_key_pair(name)  # a 5xx after the server stored it, or Ctrl-C
            raise

    def _create_server(self, spec: LaunchSpec, flavor_id: str, key_name: str | None, nics: Any) -> dict:
        attempts = [0]

        def create() -> dict:
            attempts[0] += 1
            earlier = self._find_server(spec) if attempts[0] > 1 else None  # a failed attempt may have made it
            if earlier:
                return earlier
            return self.nova.servers.create(
                spec.name, spec.image.id, flavor_id, meta=metadata(spec.tags), key_name=key_name, nics=nics,
                security_groups=self.cfg.security_groups or None,
                availability_zone=self.cfg.availability_zone).to_dict()

        try:
            server = self.api.call(f"creating server {spec.name}", create)
        except CloudError as exc:
            if exc.status == 409 and not self.cfg.networks:
                seen = ", ".join(self.net.attachable_names()) or "none listed"
                raise CloudError(f"{str(exc).rstrip('.')}; set clouds.{self.name}.networks to the network(s) to "
                                 f"boot on (the project has: {seen})", cloud=self.name, operation="launch",
                                 code=exc.code, status=409) from None
            raise
        log.info("%s: server %s (%s) created from image %s", self.name, server["id"], spec.name, spec.image.id)
        return server

    def _find_server(self, spec: LaunchSpec) -> dict | None:
        found = [s for s in self._tool_servers()
                 if s["name"] == spec.name and (s.get("metadata") or {}).get(TAG_RUN) == spec.run_id]
        return found[0] if found else None

    def _wait_active(self, server_id: str, name: str) -> dict:
        def probe():
            try:
                server = self._server(server_id)
            except NotFound:
                raise CloudError(f"{self.api.label}: server {server_id} ({name}) vanished while booting",
                                 cloud=self.name, operation="launch", code="ServerGone", status=404) from None
            if server["status"] == "ERROR":
                fault = server.get("fault") or {}
                message = " ".join(str(fault.get("message") or "").split())
                raise CloudError(f"{self.api.label}: server {server_id} ({name}) went to ERROR: "
                                 f"{message or 'no fault message'}", cloud=self.name, operation="launch",
                                 code=str(fault.get("code") or "ERROR"))
            if server["status"] == "ACTIVE":
                return server
            return Pending(f"{server['status']} {server.get('OS-EXT-STS:task_state') or ''}".strip())

        return wait_for(probe, f"server {server_id} ({name}) to become ACTIVE", self.cfg.launch_timeout,
                        max_delay=5)

    # -- helpers: records -------------------------------------------------------------------
    def _instance(self, server: dict, distribution, run_id: str, image_id: str | None = None,
                  key_file: str | None = None, fip_address: str | None = None, strict: bool = True) -> Instance:
        meta = dict(server.get("metadata") or {})
        if distribution is None and meta.get(TAG_DISTRIBUTION) in distros.DISTRIBUTIONS:
            distribution = distros.get(meta[TAG_DISTRIBUTION])
        dist_name = distribution.name if distribution is not None else meta.get(TAG_DISTRIBUTION, "")
        user = self.DEFAULT_USER or (distribution.user_for(self.name, "root") if distribution is not None else "root")
        image = server.get("image")
        instance = Instance(
            id=server["id"], cloud=self.name, name=server["name"], distribution=dist_name, run_id=run_id,
            state=STATES.get(server["status"], "unknown"), key_file=key_file, region=self.api.region,
            image_id=image_id or (image.get("id") if isinstance(image, dict) else None),
            created=server.get("created"), tags=meta, extra={"status": server["status"]})
        try:
            return self._apply_ssh(instance, server, fip_address, user)
        except CloudError:
            if strict:
                raise
            return instance  # a listing still lists a server without an address

    def _apply_ssh(self, instance: Instance, server: dict, fip_address: str | None, user: str) -> Instance:
        """SSH fields from the settings and the server's addresses (see _addresses for the order)."""
        addresses = _addresses(server, fip_address)
        default = "public" if addresses["public"] else "private"
        if self.cfg.address_network and not self.cfg.ssh_host:
            found = _network_address(server, self.cfg.address_network)
            if not found:
                has = ", ".join(sorted(server.get("addresses") or {})) or "none"
                raise CloudError(f"{self.api.label}: server {server['id']} has no IPv4 address on network "
                                 f"{self.cfg.address_network!r} (clouds.{self.name}.address_network); its networks: "
                                 f"{has}", cloud=self.name, operation="launch", code="NoAddress")
            addresses, default = {**addresses, "network": found}, "network"
        apply_ssh(instance, self.cfg, addresses, default_interface=default, default_user=user)  # expands %h/%p
        return instance

    # -- helpers: servers and teardown ----------------------------------------------------------
    def _server(self, server_id: str) -> dict:
        return self.api.call(f"reading server {server_id}", self.nova.servers.get, quote(server_id, safe="")).to_dict()

    def _tool_servers(self) -> list[dict]:
        """Every server of the project this tool tagged, over all of Nova's pages (limit=-1: novaclient
        asks again after the last server until a page is empty)."""
        servers = [s.to_dict() for s in self.api.call("listing servers", self.nova.servers.list, limit=-1)]
        return [s for s in servers if (s.get("metadata") or {}).get(TAG_TOOL) == TOOL]

    def _key_pair_names(self) -> list[str]:
        """Every key pair's name; from 2.35 Nova pages them (novaclient reads one page per call)."""
        keypairs = self.nova.keypairs
        if self.nova.api_version >= api_versions.APIVersion("2.35"):
            pairs = self.api.call("listing key pairs", nova.every_page, keypairs.list)
        else:
            pairs = self.api.call("listing key pairs", keypairs.list)
        return [pair.name for pair in pairs]

    def _fip_address(self, instance: Instance) -> str | None:
        fip_id = (instance.extra or {}).get("floating_ip_id")
        return self.net.floating_ip_address(fip_id) if fip_id and not self.cfg.ssh_host else None

    def _power(self, instance: Instance, target: str, action: str, verb: str) -> Instance:
        if self._server(instance.id)["status"] != target:
            try:
                self.api.call(f"{verb} server {instance.id}", getattr(self.nova.servers, action),
                              quote(instance.id, safe=""))
            except CloudError as exc:
                if exc.status != 409:  # 409: already on its way there
                    raise

            def probe():
                status = self._server(instance.id)["status"]
                if status == "ERROR":
                    raise CloudError(f"{self.api.label}: server {instance.id} went to ERROR while {verb}",
                                     cloud=self.name, operation=verb, code="ERROR")
                return True if status == target else Pending(status)

            wait_for(probe, f"server {instance.id} to reach {target}", self.cfg.launch_timeout, max_delay=5)
        return self.refresh(instance)

    def _teardown(self, server_id, key_name, fips, generated, name) -> None:
        """Remove what a launch made; each step runs even if an earlier one failed."""
        errors: list[str] = []
        fips = [fips] if isinstance(fips, str) else list(fips or [])
        for step in ([lambda f=f: self.net.release(f) for f in fips] +
                     [lambda: server_id and (self._delete_server(server_id), self._wait_gone(server_id, name)),
                      lambda: key_name and self._delete_key_pair(key_name),
                      lambda: _remove_files(generated)]):
            try:
                step()
            except CloudError as exc:
                errors.append(str(exc))
        if errors:
            raise CloudError(errors[0] + (f" (and {len(errors) - 1} more cleanup errors)" if len(errors) > 1 else ""),
                             cloud=self.name, operation="destroy")

    def _delete_server(self, server_id: str) -> None:
        try:
            self.api.call(f"deleting server {server_id}", self.nova.servers.delete, quote(server_id, safe=""))
        except NotFound:
            pass

    def _wait_gone(self, server_id: str, name: str) -> None:
        def probe():
            try:
                status = self._server(server_id)["status"]
            except NotFound:
                return True
            return True if status == "DELETED" else Pending(status)

        wait_for(probe, f"server {server_id} ({name}) to be deleted", self.cfg.destroy_timeout, max_delay=5)

    def _delete_key_pair(self, name: str) -> None:
        try:
            self.api.call(f"deleting key pair {name}", self.nova.keypairs.delete, quote(name, safe=""))
        except NotFound:
            pass



def _addresses(server: dict, fip_address: str | None) -> dict[str, str | None]:
    """public: the floating IP this run attached, else accessIPv4, else a floating address, else one on a
    network named "public"; private: the first fixed IPv4 address on any other network."""
    v4 = [(net, a) for net, items in (server.get("addresses") or {}).items() for a in items
          if a.get("version") == 4]
    public = fip_address or server.get("accessIPv4") or \
        next((a["addr"] for _, a in v4 if a.get("OS-EXT-IPS:type") == "floating"), None) or \
        next((a["addr"] for net, a in v4 if net == "public"), None)
    private = next((a["addr"] for net, a in v4 if net != "public" and a.get("OS-EXT-IPS:type") != "floating"
                    and a["addr"] != public), None)
    return {"public": public or None, "private": private}


def _network_address(server: dict, network: str) -> str | None:
    items = (server.get("addresses") or {}).get(network, [])
    return next((a["addr"] for a in items if a.get("version") == 4 and a.get("OS-EXT-IPS:type") != "floating"),
                None) or next((a["addr"] for a in items if a.get("version") == 4), None)


def _remove_files(key_file: str | None) -> None:
    if key_file:
        for path in (Path(key_file), Path(f"{key_file}.pub")):
            path.unlink(missing_ok=True)
