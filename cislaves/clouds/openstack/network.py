"""The few Neutron v2.0 calls of the OpenStack driver: networks by name or id, and floating IPs put on
the port whose network a router connects to the external network (Neutron refuses any other).

A cloud without Neutron floating IPs (Rackspace: no `router` extension) simply has none: that is read
from the extension list, never guessed from a 404.
"""
from __future__ import annotations

import logging

from cislaves.clouds.openstack.api import Api, NotFound
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)
ROUTER_PORTS = ("network:router_interface", "network:router_interface_distributed",
                "network:ha_router_replicated_interface")


class Network:
    def __init__(self, api: Api, cloud: str):
        self.api, self.cloud = api, cloud
        self._has_fips: bool | None = None

    # -- networks -----------------------------------------------------------------------------
    def network_id(self, wanted: str, key: str) -> str:
        """The id of the network named or with id `wanted`; ConfigError naming clouds.<cloud>.<key>."""
        nets = self.api.get("network", "networks", f"finding network {wanted}", id=wanted)["networks"] or \
            self.api.get("network", "networks", f"finding network {wanted}", name=wanted)["networks"]
        if len(nets) != 1:
            raise ConfigError(f"clouds.{self.cloud}.{key}: {'no' if not nets else 'more than one'} network "
                              f"named or with id {wanted!r} in {self.api.label}")
        return nets[0]["id"]

    def attachable_names(self) -> list[str]:
        """Names of the networks a server could be put on (for an error's hint)."""
        try:
            nets = self.api.get("network", "networks", "listing networks")["networks"]
        except CloudError:
            return []
        return sorted(n.get("name") or n["id"] for n in nets if not n.get("router:external"))

    # -- floating IPs ---------------------------------------------------------------------------
    def has_floating_ips(self) -> bool:
        if self._has_fips is None:
            self._has_fips = False
            if self.api.has_service("network"):
                aliases = {e.get("alias") for e in
                           self.api.get("network", "extensions", "listing network extensions").get("extensions", [])}
                self._has_fips = "router" in aliases
        return self._has_fips

    def floating_ips(self) -> list[dict]:
        """Every floating IP of the project; none where the cloud has no Neutron floating IPs."""
        if not self.has_floating_ips():
            return []
        return self.api.get("network", "floatingips", "listing floating IPs")["floatingips"]

    def floating_ips_of(self, server_id: str) -> list[dict]:
        """The floating IPs on the server's ports."""
        if not self.has_floating_ips():
            return []
        ports = {p["id"] for p in self._ports(device_id=server_id)}
        return [f for f in self.floating_ips() if f.get("port_id") in ports]

    def floating_ip_address(self, fip_id: str) -> str | None:
        try:
            return self.api.get("network", f"floatingips/{fip_id}", "reading a floating IP")[
                "floatingip"]["floating_ip_address"]
        except NotFound:
            return None

    def release(self, fip_id: str) -> bool:
        return self.api.delete("network", f"floatingips/{fip_id}", "releasing a floating IP")

    def attach_floating_ip(self, server_id: str, cfg, description: str) -> dict:
        """A new floating IP on `cfg.floating_network`, on the server's port in `cfg.nat_destination` or
        else on the port whose network a router links to the floating network."""
        external = self.network_id(cfg.floating_network, "floating_network")
        ports = self._ports(device_id=server_id)
        if not ports:
            raise CloudError(f"{self.api.label}: server {server_id} has no port to attach a floating IP to",
                             cloud=self.cloud, operation="launch", code="NoPort")
        if cfg.nat_destination:
            net = self.network_id(cfg.nat_destination, "nat_destination")
            chosen = [p for p in ports if p["network_id"] == net]
            if not chosen:
                raise CloudError(f"{self.api.label}: server {server_id} has no port on network "
                                 f"{cfg.nat_destination!r} (clouds.{self.cloud}.nat_destination)",
                                 cloud=self.cloud, operation="launch", code="NoPort")
        else:
            routed = self._routed_networks(external)
            chosen = [p for p in ports if p["network_id"] in routed] if routed is not None else ports
            if not chosen:
                raise CloudError(f"{self.api.label}: no network of server {server_id} has a router to "
                                 f"{cfg.floating_network!r}; set clouds.{self.cloud}.nat_destination or networks",
                                 cloud=self.cloud, operation="launch", code="NoRoute")
        body = {"floatingip": {"floating_network_id": external, "port_id": chosen[0]["id"],
                               "description": description}}
        return self.api.post("network", "floatingips", body, "allocating a floating IP").json()["floatingip"]

    def _ports(self, **filters) -> list[dict]:
        return self.api.get("network", "ports", "listing ports", **filters)["ports"]

    def _routed_networks(self, external: str) -> set[str] | None:
        """Networks with an interface on a router whose gateway is `external`; None if routers are hidden."""
        try:
            routers = self.api.get("network", "routers", "listing routers")["routers"]
        except CloudError as exc:
            log.debug("%s: cannot list routers (%s): the server's first port gets the floating IP", self.cloud, exc)
            return None
        nets: set[str] = set()
        for router in routers:
            if (router.get("external_gateway_info") or {}).get("network_id") != external:
                continue
            nets |= {p["network_id"] for p in self._ports(device_id=router["id"])
                     if p.get("device_owner") in ROUTER_PORTS}
        return nets
