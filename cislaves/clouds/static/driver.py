"""The static cloud: machines that already exist (storage arrays, GPU boxes), reached over SSH.

nodepool's static driver and Packer's null builder in one: nothing is booted or deleted. `launch`
leases a free host (see leases.py), `destroy` ends the lease, and the pipeline's bootstrap and tests
run on it as on any cloud. A static host cannot be imaged, stopped or started; the capabilities say so
and those methods raise NotSupported with the reason.

This is the smallest driver and THE template for a new cloud (docs/development.md "Adding a cloud"): a package
with settings.py (a pydantic model inheriting SSHSettings), driver.py (a Cloud subclass declaring
its capabilities and implementing every method of clouds/base.py, even if only to refuse), and the
helpers that talk to the provider (here leases.py); one line in cislaves/clouds/__init__.py; and
the contract suite tests/contract.py passing against a real stand-in (tests/static/).

"Images" of this cloud are host pools: `any` (every host), a label, or one host's name, so
`fab up:cloud=static,image=fc-array` takes a free host labelled fc-array.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import paramiko

from cislaves import remote
from cislaves.clouds.base import Capabilities, CleanupPolicy, Cloud, Image, Instance, LaunchSpec, Pending, wait_for
from cislaves.clouds.ssh import apply_ssh
from cislaves.clouds.static.leases import Leases, holder_text, stale
from cislaves.clouds.static.settings import Host, Settings
from cislaves.errors import CloudError, ConfigError, NotSupported
from cislaves.interrupts import shielded
from cislaves.keys import public_key_of
from cislaves.records import isoformat, utcnow

log = logging.getLogger(__name__)

ANY = "any"  # the image id meaning "any free host"


class StaticCloud(Cloud):
    """Existing hosts over SSH, one run per host at a time."""

    name = "static"
    capabilities = Capabilities(stop_start=False, images=False, copy_image=False, docker_inside=True,
                                regions=False)
    Settings = Settings
    ENV: dict[str, str] = {}  # settings field -> environment variable (none: hosts live in the file)

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        if not isinstance(settings, Settings):
            settings = Settings.model_validate(dict(settings or {}))
        super().__init__(settings, data_dir, name)
        self.hosts = {host.name: host for host in settings.hosts}
        self.leases = Leases(settings.lease_dir or self.data_dir / "static" / "leases")

    # -- images: pools of hosts -----------------------------------------------------------------
    def base_image(self, distribution) -> Image:
        """Any free host (the hosts run whatever they run: the distribution is the user's word)."""
        return self._pool(ANY, distribution.name)

    def get_image(self, image_id: str) -> Image:
        """A pool: `any`, a label, or a host's name."""
        if image_id != ANY and not self._members(image_id):
            labels = sorted({label for host in self.hosts.values() for label in host.labels})
            raise CloudError(f"static: no host or label {image_id!r}; expected {ANY!r}, a label "
                             f"({', '.join(labels) or 'none'}) or a host ({', '.join(self.hosts) or 'none'})",
                             cloud=self.name, operation="get_image", code="NotFound")
        return self._pool(image_id, None)

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        raise NotSupported(self.name, "create_image", f"a static host cannot be imaged: {instance.id} is an "
                           "existing machine, provisioned in place; bake images on a cloud that boots them")

    def copy_image(self, image: Image, regions: list[str]) -> list[Image]:
        raise NotSupported(self.name, "copy_image", "a static cloud has no images")

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        return []  # no image is ever made here

    def delete_image(self, image: Image) -> None:
        raise NotSupported(self.name, "delete_image", "a static cloud has no images")

    # -- instances: leases of hosts -------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Lease a free host of the pool spec.image names and wait until its sshd lets us in."""
        members = self._members(spec.image.id) if spec.image.id != ANY else list(self.hosts.values())
        if not members:
            raise CloudError("static: no hosts configured (clouds.static.hosts)", cloud=self.name,
                             operation="launch", code="NoHosts")
        with self.leases.locked():
            host = self._free(members, spec.image.id)
            instance = self._instance(host, spec)  # checks the key: bad input before the first side effect
            self.leases.put(instance, "taking")
        log.info("static: leased %s (%s) to run %s", host.name, instance.ssh_target, spec.run_id)
        try:
            self._wait_for_ssh(instance, self.settings.ssh_for(host).ssh_timeout)
            with self.leases.locked():
                record = self.leases.get(host.name)
                if record is None or record["instance"].get("run_id") != spec.run_id:
                    raise CloudError(f"static: the lease of {host.name} was released (`fab cleanup`?) while "
                                     "waiting for its SSH", cloud=self.name, operation="launch", code="LeaseLost")
                self.leases.put(instance, "leased")
        except BaseException:
            with shielded():  # a local file: nothing on the host to undo
                self.leases.release(host.name, spec.run_id)
            raise
        return self.refresh(instance)

    def refresh(self, instance: Instance) -> Instance:
        """Running while this run holds the host's lease ("pending" while it is being taken), else terminated."""
        record = self.leases.get(instance.id)
        if record is None or record["instance"].get("run_id") != instance.run_id:
            return Instance.from_dict(dict(instance.to_dict(), state="terminated"))
        return self._from_record(record)

    def start(self, instance: Instance) -> Instance:
        raise NotSupported(self.name, "start", "a static host is always on; `fab up` leases one")

    def stop(self, instance: Instance) -> Instance:
        raise NotSupported(self.name, "stop", "a static host is not ours to power off; `fab destroy` "
                           "releases it")

    def destroy(self, instance: Instance) -> None:
        """Release the host (nothing on it is deleted). A lease another run holds now is left alone."""
        if self.leases.release(instance.id, instance.run_id):
            log.info("static: released %s (run %s)", instance.id, instance.run_id)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        found = [self._from_record(record) for record in self.leases.all()]
        return [i for i in found if all(i.tags.get(k, getattr(i, k, None)) == v for k, v in (filters or {}).items())]

    def cleanup(self, policy: CleanupPolicy) -> list[str]:
        """Release the leases `policy` allows and those whose holder is gone (see leases.stale)."""
        removed = []
        for record in self.leases.all():
            instance = self._from_record(record)
            why = policy.reason(instance.tags) or stale(record)
            if why and self.leases.release(instance.id, instance.run_id):
                removed.append(f"instance {instance.id} (lease released; run {instance.run_id}: {why})")
        return removed

    def describe(self) -> dict[str, Any]:
        leased = {record["instance"]["id"] for record in self.leases.all()}
        return {"hosts": len(self.hosts), "free": len(set(self.hosts) - leased), "lease_dir": str(self.leases.folder)}

    # -- helpers ------------------------------------------------------------------------------
    def _pool(self, image_id: str, distribution: str | None) -> Image:
        return Image(id=image_id, cloud=self.name, name=f"static hosts: {image_id}", distribution=distribution)

    def _members(self, pool: str) -> list[Host]:
        return [h for h in self.hosts.values() if pool == h.name or pool in h.labels]

    def _free(self, members: list[Host], pool: str) -> Host:
        """The first member nobody holds (or whose lease is stale); CloudError naming the holders."""
        held = []
        for host in members:
            record = self.leases.get(host.name)
            if record is None:
                return host
            why = stale(record)
            if why:
                log.warning("static: taking over %s from %s: %s", host.name, holder_text(record), why)
                return host
            held.append(f"{host.name} by {holder_text(record)}")
        raise CloudError(f"static: no free host in {pool!r} ({len(members)} host{'s' if len(members) > 1 else ''}: "
                         f"{'; '.join(held)}); `fab destroy` one, or wait for a run to end",
                         cloud=self.name, operation="launch", code="NoFreeHost")

    def _instance(self, host: Host, spec: LaunchSpec) -> Instance:
        ssh = self.settings.ssh_for(host)
        key = Path(ssh.ssh_private_key_file)
        try:
            public_key_of(key)
        except (OSError, ValueError, TypeError) as exc:
            why = "does not exist" if isinstance(exc, FileNotFoundError) else \
                f"is not a readable unencrypted private key ({type(exc).__name__})"
            raise ConfigError(f"clouds.static.hosts[{host.name}].ssh_private_key_file: {key} {why}") from None
        instance = Instance(id=host.name, cloud=self.name, name=spec.name, distribution=spec.distribution.name,
                            run_id=spec.run_id, state="pending", key_file=str(key), image_id=spec.image.id,
                            created=isoformat(utcnow()), tags=dict(spec.tags),
                            extra={"role": spec.role, "labels": list(host.labels)})
        return apply_ssh(instance, ssh, {"ssh_host": host.ssh_host}, default_interface="ssh_host",
                         default_user=spec.distribution.user_for(self.name, "root"))

    def _from_record(self, record: dict[str, Any]) -> Instance:
        instance = Instance.from_dict(record["instance"])
        instance.state = "running" if record.get("state") == "leased" else "pending"
        return instance

    def _wait_for_ssh(self, instance: Instance, timeout: float) -> None:
        """Until the host's sshd accepts our key. A refused key or a changed host key fails at once."""
        def probe():
            conn = remote.connection(instance, self.data_dir)
            try:
                conn.open()
                return True
            except paramiko.BadHostKeyException:
                raise CloudError(f"static: host key of {instance.id} ({instance.address}) changed since first "
                                 f"contact; if the host was reinstalled, remove "
                                 f"{remote.known_hosts_file(self.data_dir, instance)}",
                                 cloud=self.name, operation="launch", code="HostKeyChanged") from None
            except paramiko.AuthenticationException:
                raise CloudError(f"static: {instance.ssh_target} ({instance.id}) refused the key "
                                 f"{instance.key_file}", cloud=self.name, operation="launch",
                                 code="AuthenticationFailed") from None
            except remote.RETRYABLE as exc:
                return Pending(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()

        wait_for(probe, f"SSH on static host {instance.id} ({instance.ssh_target})", timeout,
                 first_delay=0.1, max_delay=2.0)
