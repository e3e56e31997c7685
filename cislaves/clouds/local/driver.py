"""The local cloud: systemd-nspawn machines on this host (the embedded default).

Layout (data_dir is the tool's data directory, cache_dir holds base images shared by data dirs):
  cache_dir/<base id>/rootfs, meta.json        debootstrap tree, e.g. local-debian12-base-bookworm
  data_dir/local/images/<id>/layer, meta.json  a baked image: one overlay layer over its parent chain
  data_dir/local/instances/<id>/               meta.json (written first), upper/ work/ root/ (overlay),
                                               hostkey (per-instance SSH host key), nspawn.log
An instance is an overlay (its own upper layer over the image's layers) booted with
`systemd-nspawn --boot` in network namespace cis-<token>. Helpers: local_net (addresses, namespace,
veth, firewall), local_host (process, cgroups, mounts, orphan sweep), local_tree (base image build,
per-instance files), local_images (image metadata and garbage collection). create_image stops the
machine and turns its upper layer into the new image's layer (a rename, no copy); the instance then
continues, stopped, as an instance of the new image with an empty upper layer.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from cislaves import TOOL
from cislaves.clouds.local import host
from cislaves.clouds.local import net
from cislaves.clouds.local import tree
from cislaves.clouds.base import (Capabilities, TAG_DISTRIBUTION, TAG_ROLE, TAG_RUN, TAG_TOOL, CleanupPolicy, Cloud,
                                  Image, Instance, LaunchSpec, Pending, generate_keypair, isoformat, utcnow,
                                  wait_for)
from cislaves.clouds.local.images import ID, ImageStore, matches, slug, write_json
from cislaves.clouds.ssh import SSHSettings
from cislaves.errors import CloudError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0


# SSHSettings keys that have no meaning here: a machine is reached as root at its own address with a
# login key made for it (they are rejected, so a setting never silently does nothing).
UNUSED_SSH_KEYS = ("ssh_user", "ssh_port", "ssh_host", "ssh_interface", "ssh_bastion", "ssh_proxy_command",
                   "ssh_key_pair", "ssh_private_key_file")


class Settings(SSHSettings):
    """clouds.local. Of the shared SSH block it honours launch_timeout (boot until sshd answers, the
    old boot_timeout) and ssh_timeout (the sshd wait within it); image_timeout and destroy_timeout are
    accepted and unused (an image is a rename; poweroff waits STOP_TIMEOUT, then kills)."""

    DEPRECATED: ClassVar[dict[str, str]] = {"boot_timeout": "launch_timeout"}

    mirror: str | None = None  # default: the host's apt mirror for the suite, else the catalog's
    cache_dir: Path | None = None  # default: <data_dir>/local/cache
    subnet: str = "10.213.0.0/16"  # pool; every instance takes one /30 of it
    launch_timeout: float = Field(60, gt=0)  # a machine answers SSH in about a second
    ssh_timeout: float = Field(60, gt=0)
    build_timeout: float = Field(1800, gt=0)
    isolate: bool = True  # machines cannot open connections to the host or to each other

    @field_validator(*UNUSED_SSH_KEYS)
    @classmethod
    def _unused(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("not used by the local cloud: it logs in as root at each machine's own "
                             "address with a key made for that machine")
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        network = ipaddress.ip_network(value)  # ValueError -> pydantic error naming the key
        if network.version != 4 or network.prefixlen > 30:
            raise ValueError("expected an IPv4 network of at least /30, e.g. 10.213.0.0/16")
        if network.overlaps(net.RESERVED):
            raise ValueError(f"must not overlap {net.RESERVED} (the host's resolver lives there)")
        return str(network)


class LocalCloud(Cloud):
    """systemd-nspawn machines on overlayfs, each in its own network namespace with NAT."""

    name = "local"
    capabilities = Capabilities(docker_inside=False)  # nspawn on overlayfs
    Settings = Settings
    ENV = {"mirror": "CISLAVES_LOCAL_MIRROR", "cache_dir": "CISLAVES_LOCAL_CACHE_DIR",
           "subnet": "CISLAVES_LOCAL_SUBNET", "launch_timeout": "CISLAVES_LOCAL_BOOT_TIMEOUT",
           "isolate": "CISLAVES_LOCAL_ISOLATE"}

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        if not isinstance(settings, Settings):
            settings = Settings.model_validate(dict(settings or {}))
        super().__init__(settings, data_dir, name)
        self.root = self.data_dir.resolve() / "local"
        self.cache_dir = Path(settings.cache_dir or self.root / "cache").expanduser().resolve()
        self.images_dir = self.root / "images"
        self.instances_dir = self.root / "instances"
        self.store = ImageStore(self.name, self.images_dir, self.cache_dir, self.instances_dir)

    # -- images -------------------------------------------------------------------------------
    def base_image(self, distribution) -> Image:
        """The debootstrap image of `distribution`, built and cached on first use."""
        selector = self.buildable(distribution)
        image_id = f"local-{distribution.name}-base-{selector['suite']}"
        final = self.cache_dir / image_id
        if not (final / "meta.json").exists():
            mirror = self.mirror_for(selector)
            meta = {"id": image_id, "name": image_id, "distribution": distribution.name,
                    "created": isoformat(utcnow()), "suite": selector["suite"], "mirror": mirror,
                    "tags": {TAG_TOOL: TOOL, TAG_DISTRIBUTION: distribution.name, TAG_ROLE: "base"},
                    "layers": [image_id]}
            tree.build_base(final, selector["suite"], selector.get("script", ""), mirror, meta,
                            self.settings.build_timeout)
        return self.get_image(image_id)

    def buildable(self, distribution) -> dict[str, str]:
        """The distribution's local selector, or a CloudError saying what the local cloud can build."""
        from cislaves import distros

        reason = distribution.local_unavailable
        if "local" not in distribution.images:
            reason = reason or "the catalog has no local (debootstrap) entry for it"
        elif not reason:
            script = distribution.images["local"].get("script") or distribution.images["local"]["suite"]
            if not Path("/usr/share/debootstrap/scripts", script).exists():
                reason = f"this host's debootstrap has no script {script!r}"
        if reason:
            able = [d.name for d in distros.DISTRIBUTIONS.values()
                    if "local" in d.images and not d.local_unavailable]
            raise CloudError(f"local: cannot build distribution {distribution.name!r}: {reason}. "
                             f"The local cloud builds: {', '.join(able)} (debian12 is the one tested here)")
        return dict(distribution.images["local"])

    def mirror_for(self, selector: dict[str, str]) -> str:
        return (self.settings.mirror or tree.host_mirror(selector["suite"]) or selector["mirror"]).rstrip("/")

    def get_image(self, image_id: str) -> Image:
        return self.store.get(image_id)

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        return self.store.find(filters)

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        """Snapshot the machine: stop it, and make its upper layer the new image's layer (leaves the
        instance stopped, now on top of the new image)."""
        with self._locked(instance.id):
            meta = self._meta(instance.id)
            if meta is None:
                raise CloudError(f"local: cannot image instance {instance.id}: it does not exist")
            self._stop(meta)
            run_id = tags.get(TAG_RUN) or meta["run_id"]
            image_id = self.store.new_id(run_id)
            folder = self.images_dir / image_id
            layers = [image_id] + list(meta["extra"]["layers"])
            image_meta = {"id": image_id, "name": name, "distribution": meta["distribution"],
                          "created": isoformat(utcnow()), "source_image": meta.get("image_id"),
                          "run_id": run_id, "tags": dict(tags), "layers": layers,
                          "source_instance": instance.id, "state": "pending"}
            write_json(folder / "meta.json", image_meta)  # first: a crash leaves a findable pending image
            inst_dir = self._dir(instance.id)
            os.rename(inst_dir / "upper", folder / "layer")
            (inst_dir / "upper").mkdir()
            host.remove_tree(inst_dir / "work")
            (inst_dir / "work").mkdir()
            meta["extra"]["layers"] = layers
            self._save(meta)
            tree.scrub_layer(folder / "layer", instance.id)
            image_meta["state"] = "available"
            write_json(folder / "meta.json", image_meta)
            log.info("local: image %s made from instance %s", image_id, instance.id)
            return self.store.record(image_meta)

    def delete_image(self, image: Image) -> None:
        """Delete a baked image; one that others still build on is hidden now and removed when the
        last instance or image on top of it goes. Base images (the cache) are not deleted."""
        folder = self.images_dir / image.id
        if (self.cache_dir / image.id / "meta.json").exists() and not folder.exists():
            raise CloudError(f"local: {image.id} is a cached base image; delete {self.cache_dir / image.id} "
                             "by hand if you want it rebuilt")
        self.store.mark_deleted(image.id)
        self.store.collect_garbage()

    # -- instances ----------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Boot a machine from spec.image and wait until its sshd answers."""
        self.buildable(spec.distribution)
        image_meta = self.store.meta(spec.image.id)
        if image_meta is None:
            raise CloudError(f"local: cannot launch from image {spec.image.id!r}: no such image")
        instance_id = f"vm-{slug(spec.run_id)}-{secrets.token_hex(2)}"
        folder = self._dir(instance_id)
        folder.mkdir(parents=True)
        key_file = Path(spec.key_dir).resolve() / f"local-{instance_id}"
        instance = Instance(
            id=instance_id, cloud=self.name, name=spec.name, distribution=spec.distribution.name,
            run_id=spec.run_id, state="creating", user=spec.distribution.user_for("local", "root"),
            key_file=str(key_file), image_id=spec.image.id, created=isoformat(utcnow()),
            tags=dict(spec.tags), extra={"layers": list(image_meta["layers"]), "role": spec.role,
                                         "dir": str(folder)})
        meta = instance.to_dict()
        self._save(meta)  # before any host resource: a crash from here on is found by cleanup
        try:
            with self._locked(instance_id):
                generate_keypair(key_file, comment=f"{TOOL}-local-{instance_id}")
                generate_keypair(folder / "hostkey", comment=f"root@{instance_id}")
                for sub in ("upper", "work", "root"):
                    (folder / sub).mkdir()
                self._boot(meta)
        except BaseException:
            log.info("local: launch of %s failed; removing what it made", instance_id)
            try:
                self.destroy(Instance.from_dict(meta))
            except Exception as exc:  # the original error matters more; the leftovers stay findable
                log.error("local: could not remove what the failed launch of %s made: %s (its metadata "
                          "%s stays; run `fab cleanup:cloud=local`)", instance_id, exc, folder / "meta.json")
            raise
        return self.refresh(Instance.from_dict(meta))

    def refresh(self, instance: Instance) -> Instance:
        """The instance as it is now: running, pending (booting), stopped or terminated."""
        meta = self._meta(instance.id)
        if meta is None:
            return Instance.from_dict(dict(instance.to_dict(), state="terminated"))
        meta["state"] = self._state(meta)
        return Instance.from_dict(meta)

    def start(self, instance: Instance, timeout: float | None = None) -> Instance:
        """Boot a stopped machine again (same disk, address and key); wait for its sshd (up to
        `timeout`, default launch_timeout)."""
        with self._locked(instance.id):
            meta = self._meta(instance.id)
            if meta is None:
                raise CloudError(f"local: cannot start instance {instance.id}: it does not exist")
            if self._state(meta) != "running":
                self._boot(meta, timeout)
        return self.refresh(instance)

    def stop(self, instance: Instance) -> Instance:
        """Power the machine off cleanly, keeping its disk (upper layer) and network allocation."""
        with self._locked(instance.id):
            meta = self._meta(instance.id)
            if meta is None:
                raise CloudError(f"local: cannot stop instance {instance.id}: it does not exist")
            self._stop(meta)
        return self.refresh(instance)

    def reboot(self, instance: Instance, timeout: float) -> Instance:
        """Stop and start again, waiting for SSH."""
        self.stop(instance)
        return self.start(instance, timeout)

    def destroy(self, instance: Instance) -> None:
        """Remove the machine's process, mount, network, firewall rules, allocation and files."""
        with self._locked(instance.id):
            self._destroy(self._dir(instance.id), instance.id, instance.key_file)
        self.store.collect_garbage()

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        found = []
        if self.instances_dir.is_dir():
            for path in sorted(self.instances_dir.glob("*/meta.json")):
                meta = self._meta(path.parent.name)
                if meta is not None:
                    meta["state"] = self._state(meta)
                    found.append(Instance.from_dict(meta))
        return [i for i in found if matches(i, i.tags, filters)]

    def cleanup(self, policy: CleanupPolicy) -> list[str]:
        """Destroy this data dir's machines that `policy` allows (their tags, owner included, are in
        their metadata), and folders a crashed launch left without metadata; then every orphaned host
        resource of the tool (any data dir) whose instance directory no longer exists."""
        removed = []
        if self.instances_dir.is_dir():
            for folder in sorted(p for p in self.instances_dir.iterdir() if p.is_dir() and ID.fullmatch(p.name)):
                meta = self._meta(folder.name)
                if meta is None:  # meta.json is written right after mkdir: a launch died in between
                    instance, why = Instance(id=folder.name, cloud=self.name, name=folder.name,
                                             distribution="", run_id=""), "no metadata"
                else:
                    instance, why = Instance.from_dict(meta), policy.reason(meta.get("tags"))
                    if why is None:
                        continue
                    why = f"run {instance.run_id}: {why}"
                self.destroy(instance)
                removed.append(f"instance {folder.name} ({why})")
        removed += host.sweep_orphans()
        self.store.collect_garbage()
        return removed

    def describe(self) -> dict[str, Any]:
        return {"data_dir": str(self.root), "cache_dir": str(self.cache_dir), "subnet": self.settings.subnet,
                "mirror": self.settings.mirror or "(host apt mirror)"}

    # -- helpers ------------------------------------------------------------------------------
    def _dir(self, instance_id: str) -> Path:
        if not ID.fullmatch(instance_id or ""):
            raise CloudError(f"local: {instance_id!r} is not a local instance id")
        return self.instances_dir / instance_id

    def _meta(self, instance_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(instance_id) / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def _save(self, meta: dict[str, Any]) -> None:
        write_json(self._dir(meta["id"]) / "meta.json", meta)

    @contextlib.contextmanager
    def _locked(self, instance_id: str):
        with host.file_lock(self.root / "locks" / f"{instance_id}.lock"):
            yield

    def _state(self, meta: dict[str, Any]) -> str:
        extra = meta.get("extra", {})
        if host.alive(extra.get("proc"), extra.get("machine", meta["id"])):
            return "running" if meta.get("state") == "running" else "pending"
        return "pending" if meta.get("state") == "creating" else "stopped"

    def _boot(self, meta: dict[str, Any], timeout: float | None = None) -> None:
        """Network, overlay mount, per-instance files, nspawn; then wait for sshd."""
        folder = self._dir(meta["id"])
        extra = meta["extra"]
        record = net.allocate(self.settings.subnet, self.data_dir.resolve(), meta["id"], folder)
        extra.update(token=record["token"], netns=record["netns"], veth=record["veth"],
                     subnet=record["subnet"], host_ip=record["host_ip"], machine=meta["id"])
        meta["address"] = record["guest_ip"]
        self._save(meta)
        net.setup(record, self.settings.isolate)
        root = folder / "root"
        if str(root) not in [p for _, p, _ in host.mounts()]:
            host.mount_overlay(record["token"], self.store.layer_paths(extra["layers"]), folder / "upper",
                               folder / "work", root)
        tree.personalize(root, meta, folder)
        argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--boot", "-D", str(root),
                "-M", meta["id"], f"--network-namespace-path=/run/netns/{record['netns']}",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only"]
        host.remove_cgroups(record["token"])  # a previous boot's, if any
        extra["proc"] = host.spawn(argv, folder / "nspawn.log", host.make_cgroups(record["token"]))
        meta["state"] = "booting"
        self._save(meta)

        def ready():
            if not host.alive(extra["proc"], meta["id"]):
                text = host.console_text(folder / "nspawn.log")
                tail = text.strip().splitlines()[-5:]
                status = host.exit_status(extra["proc"]["pid"])
                hint = ("; the host ran out of inotify instances: raise them with `sysctl -w "
                        "fs.inotify.max_user_instances=1024`" if "Too many open files" in text else "")
                raise CloudError(f"local: machine {meta['id']} exited during boot (status {status}; "
                                 f"log {folder / 'nspawn.log'}): {' / '.join(tail) or 'no output'}{hint}")
            return host.ssh_banner(meta["address"], meta.get("port", 22)) or Pending("no SSH banner yet")

        timeout = timeout or self.settings.launch_timeout
        wait_for(ready, f"sshd of local machine {meta['id']} at {meta['address']}:22",
                 min(timeout, self.settings.ssh_timeout), first_delay=0.05, max_delay=0.25)
        meta["state"] = "running"
        self._save(meta)

    def _stop(self, meta: dict[str, Any]) -> None:
        extra = meta["extra"]
        host.terminate(extra.get("proc"), extra.get("machine", meta["id"]), STOP_TIMEOUT,
                       f"local machine {meta['id']}")
        host.unmount(self._dir(meta["id"]) / "root")
        if extra.get("token"):
            host.remove_cgroups(extra["token"], self.settings.destroy_timeout)
        if meta.get("state") != "creating":
            meta["state"] = "stopped"
        self._save(meta)

    def _destroy(self, folder: Path, instance_id: str, key_file: str | None) -> list[str]:
        meta = self._meta(instance_id) or {}
        extra = meta.get("extra", {})
        removed = []
        if host.kill(extra.get("proc"), extra.get("machine", instance_id), f"local machine {instance_id}"):
            removed.append(f"process of {instance_id}")
        if host.unmount(folder / "root"):
            removed.append(f"mount {folder / 'root'}")
        record = net.find_record(folder)
        if record:
            if host.remove_cgroups(record["token"], self.settings.destroy_timeout):
                removed.append(f"cgroup {host.CGROUP_PARENT}/{record['token']}")
            removed += net.teardown(record)
            net.release(record["token"])
        for key in {key_file, meta.get("key_file")} - {None}:
            for path in (Path(key), Path(str(key) + ".pub")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "known_hosts" / f"{self.name}-{instance_id}").unlink()
        host.remove_tree(folder)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "locks" / f"{instance_id}.lock").unlink()
        return removed
