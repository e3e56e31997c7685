"""Google Compute Engine: instances, boot disks and images through the compute v1 API.

Auth is a service account JSON key (GOOGLE_APPLICATION_CREDENTIALS or clouds.gce.credentials_file) or
Application Default Credentials. The SSH login (OS_USERNAME, default "cislaves") and its key pair
(GCE_PRIVATE_KEY_FILENAME / GCE_PUBLIC_KEY_FILENAME, or a fresh key per instance) are written into the
instance's `ssh-keys` metadata. Instances, their boot disks and images carry the run's tags as labels.

A bake images the boot disk of the stopped instance BEFORE the instance is deleted (the original tool
deleted first and lost the disk); the boot disk is created with autoDelete, and destroy removes any
disk of the instance that is still there. Every operation is awaited with a deadline.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from cislaves import TOOL
from cislaves.clouds.gce import api as gce_api, records as gce_records
from cislaves.clouds.base import Capabilities, TAG_DISTRIBUTION, TAG_RUN, TAG_TOOL, Cloud, Image, Instance, LaunchSpec, wait_for
from cislaves.clouds.gce.api import Conflict, NotFound, basename
from cislaves.clouds.gce.labels import label_filter, label_key, label_value, labels_from_tags, resource_name
from cislaves.clouds.gce.labels import tags_from_labels
from cislaves.config import Strict
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://compute.googleapis.com/compute/v1/"


class GCESettings(Strict):
    """clouds.gce in the configuration file; environment variables in GCECloud.ENV override it."""

    project: str | None = Field(None, pattern=r"^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    zone: str = Field("us-central1-a", pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    machine_type: str = Field("e2-standard-2", pattern=r"^[a-z][-a-z0-9]{0,62}$")
    credentials_file: Path | None = None  # a service account JSON key; None: application default
    api_endpoint: str | None = Field(None, pattern=r"^https?://")  # base URL ending in /compute/v1/
    username: str = Field("cislaves", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")  # written into ssh-keys
    private_key_file: Path | None = None
    public_key_file: Path | None = None  # default: derived from the private key
    image: str | None = None  # explicit base image: NAME, projects/P/global/images/NAME or .../family/F
    image_family: str = "cislaves-{distribution}"  # family of the baked images
    network: str = "global/networks/default"
    subnetwork: str | None = None
    external_ip: bool = True  # an ephemeral public address; SSH goes to it (else to the internal one)
    disk_size_gb: int | None = Field(None, ge=10, le=65536)  # default: the image's size
    disk_type: str = Field("pd-balanced", pattern=r"^[a-z][-a-z0-9]{0,62}$")
    ssh_host: str | None = None  # connect here instead of the instance's address (tunnels, tests)
    ssh_port: int = Field(22, ge=1, le=65535)
    operation_timeout: float = Field(600, gt=0)  # each instance/disk operation
    image_timeout: float = Field(3600, gt=0)  # creating one image
    poll_max_delay: float = Field(5, gt=0)
    request_timeout: float = Field(60, gt=0)
    api_retries: int = Field(2, ge=0, le=10)

    @field_validator("image_family")
    @classmethod
    def _family_template(cls, value: str) -> str:
        try:
            value.format(distribution="debian12")
        except (KeyError, IndexError, ValueError):
            raise ValueError("expected a family name; the only placeholder is {distribution}") from None
        return value


class GCECloud(Cloud):
    """Instances, disks and images on Google Compute Engine."""

    name = "gce"
    capabilities = Capabilities()  # images are global: no copies
    Settings = GCESettings
    ENV = {"project": "GCE_PROJECT", "zone": "GCE_ZONE", "credentials_file": "GOOGLE_APPLICATION_CREDENTIALS",
           "api_endpoint": "GCE_API_ENDPOINT", "username": "OS_USERNAME",
           "private_key_file": "GCE_PRIVATE_KEY_FILENAME", "public_key_file": "GCE_PUBLIC_KEY_FILENAME"}

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        if settings is None or isinstance(settings, dict):
            settings = GCESettings.model_validate(settings or {})
        super().__init__(settings, data_dir, name=name)
        self._compute = None
        self._project = settings.project

    # -- images ---------------------------------------------------------------------------
    def base_image(self, distribution) -> Image:
        """The newest image of the distribution's family in its public project (or settings.image)."""
        if self.settings.image:
            return self.get_image(self.settings.image)
        selector = distribution.selector("gce")
        project, family = selector["project"], selector["family"]
        try:
            data = self._call(self._api().images().getFromFamily(project=project, family=family),
                              f"finding the newest image of family {family} in project {project}")
        except NotFound:
            raise CloudError(f"gce: no image of family {family!r} in project {project!r} "
                             f"(distribution {distribution.name}); set clouds.gce.image") from None
        return gce_records.image_record(self.name, self.project, data)

    def get_image(self, image_id: str) -> Image:
        project, family, name = gce_records.image_ref(image_id, self.project)
        images = self._api().images()
        if family:
            request = images.getFromFamily(project=project, family=name)
        else:
            request = images.get(project=project, image=name)
        return gce_records.image_record(self.name, self.project, self._call(request, f"reading image {image_id}"))

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        """Stop the instance, image its boot disk (with a family), and wait until the image is READY."""
        data = self._instance_data(instance)
        if data is None:
            raise CloudError(f"gce: cannot image instance {instance.name}: it no longer exists")
        source = next((d["source"] for d in data.get("disks", []) if d.get("boot")), None)
        if not source:
            raise CloudError(f"gce: instance {instance.name} has no boot disk to image")
        self.stop(instance)
        distribution = tags.get(TAG_DISTRIBUTION) or instance.distribution
        image_name = resource_name(name)
        family = resource_name(self.settings.image_family.format(distribution=distribution))
        body = {"name": image_name, "sourceDisk": source, "family": family,
                "labels": labels_from_tags({TAG_RUN: instance.run_id, **tags}),
                "description": f"Baked by cislaves ({distribution}, run {instance.run_id}) "
                               f"from image {instance.image_id}"}
        what = f"creating image {image_name} from disk {basename(source)}"
        log.info("gce: %s (family %s)", what, family)
        images = self._api().images()
        try:
            operation = self._call(images.insert(project=self.project, body=body), what)
            self._wait(operation, what, self.settings.image_timeout)
            ready = self._poll(lambda: self._image_status(image_name), f"image {image_name} to be READY",
                               self.settings.image_timeout)
        except Conflict:
            raise
        except BaseException:
            self._discard_image(image_name)
            raise
        image = gce_records.image_record(self.name, self.project, ready)
        image.source_image = instance.image_id
        return image

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        """This tool's images in the project, narrowed by tag filters."""
        found = gce_api.list_all(self._api().images(), "listing images", project=self.project,
                                 filter=self._filter(filters))
        return [gce_records.image_record(self.name, self.project, data) for data in found]

    def delete_image(self, image: Image) -> None:
        project, family, name = gce_records.image_ref(image.id, self.project)
        if family:
            raise CloudError(f"gce: refusing to delete {image.id}: name an image, not a family")
        what = f"deleting image {name}"
        try:
            operation = self._call(self._api().images().delete(project=project, image=name), what)
        except NotFound:
            return
        self._wait(operation, what, self.settings.operation_timeout)

    # -- instances ------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Create the instance (boot disk with autoDelete, labels, ssh-keys) and wait until RUNNING."""
        project, zone, name = self.project, self.settings.zone, resource_name(spec.name)  # credentials first
        user = spec.distribution.user_for(self.name, self.settings.username)
        key_file, public_key, generated = gce_records.ssh_key_pair(self.settings, f"clouds.{self.name}",
                                                                       spec.key_dir, name)
        tags = {**spec.tags, TAG_RUN: spec.run_id}
        instance = Instance(id=name, cloud=self.name, name=name, distribution=spec.distribution.name,
                            run_id=spec.run_id, state="pending", user=user, key_file=str(key_file),
                            region=zone, image_id=spec.image.id, tags=tags,
                            extra={"project": project, "zone": zone, "generated_key": generated})
        body = gce_records.instance_body(self.settings, name, gce_records.image_path(spec.image.id, project),
                                         labels_from_tags(tags), f"{user}:{public_key} {user}")
        what = f"creating instance {name} in {zone}"
        log.info("gce: %s from %s (%s)", what, spec.image.id, self.settings.machine_type)
        try:
            operation = self._call(self._api().instances().insert(project=project, zone=zone, body=body), what)
            self._wait(operation, what, self.settings.operation_timeout)
            return self._until(instance, {"RUNNING"}, "RUNNING")
        except Conflict:
            self._forget_key(instance)
            raise
        except BaseException:
            self._discard(instance)
            raise

    def refresh(self, instance: Instance) -> Instance:
        data = self._instance_data(instance)
        if data is None:
            return dataclasses.replace(instance, state="terminated", address=None)
        return gce_records.merge(self.settings, instance, data)

    def stop(self, instance: Instance) -> Instance:
        current = self.refresh(instance)
        if current.state == "terminated":
            raise CloudError(f"gce: cannot stop instance {instance.name}: it no longer exists")
        if current.state != "stopped":
            if current.state != "stopping":
                self._instance_op(instance, "stop", f"stopping instance {instance.name}")
            current = self._until(instance, {"TERMINATED", "STOPPED"}, "stopped (TERMINATED)")
        return current

    def start(self, instance: Instance) -> Instance:
        current = self.refresh(instance)
        if current.state == "terminated":
            raise CloudError(f"gce: cannot start instance {instance.name}: it no longer exists")
        if current.state == "running":
            return current
        if current.state == "stopping":
            self._until(instance, {"TERMINATED", "STOPPED"}, "stopped (TERMINATED)")
        self._instance_op(instance, "start", f"starting instance {instance.name}")
        return self._until(instance, {"RUNNING"}, "RUNNING")

    def destroy(self, instance: Instance) -> None:
        """Delete the instance and wait; then delete its boot disk if autoDelete left it. Safe twice."""
        project, zone = self._where(instance)
        disks = [instance.extra.get("boot_disk") or instance.name]
        data = self._instance_data(instance)
        if data is not None:
            disks = [basename(d["source"]) for d in data.get("disks", []) if d.get("boot") and d.get("source")] \
                or disks
            try:
                self._instance_op(instance, "delete", f"deleting instance {instance.name}")
            except NotFound:
                pass
        for disk in disks:
            self._delete_disk(project, zone, disk)
        self._forget_key(instance)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        """This tool's instances in every zone of the project, narrowed by tag filters."""
        found = gce_api.aggregated(self._api().instances(), "listing instances", "instances",
                                   project=self.project, filter=self._filter(filters))
        return [gce_records.instance_record(self.name, self.project, self.settings, data) for data in found]

    def cleanup(self, keep_run_ids: set[str] = frozenset()) -> list[str]:
        """Delete this tool's instances and disks (every zone) whose run id is not kept."""
        removed, failed = [], []
        for instance in self.list_instances():
            if instance.run_id in keep_run_ids:
                continue
            try:
                self.destroy(instance)
                removed.append(f"instance {instance.id} (zone {instance.region}, run {instance.run_id})")
            except CloudError as exc:
                failed.append(str(exc))
        disks = gce_api.aggregated(self._api().disks(), "listing disks", "disks", project=self.project,
                                   filter=self._filter(None))
        for disk in list(disks):
            run = tags_from_labels(disk.get("labels")).get(TAG_RUN)
            if run in keep_run_ids or disk.get("users"):
                continue
            try:
                self._delete_disk(self.project, basename(disk["zone"]), disk["name"])
                removed.append(f"disk {disk['name']} (zone {basename(disk['zone'])}, run {run})")
            except CloudError as exc:
                failed.append(str(exc))
        for line in removed:
            log.info("gce: cleanup removed %s", line)
        if failed:
            raise CloudError(f"gce: cleanup removed {len(removed)} resource(s) but {len(failed)} "
                             f"failed; first: {failed[0]}")
        return removed

    # -- hooks ----------------------------------------------------------------------------
    def image_lines(self, images: list[Image]) -> list[str]:
        return [f"GCE image: projects/{i.extra.get('project', self.project)}/global/images/{i.name}"
                f" (family {i.extra.get('family')})" for i in images]

    def describe(self) -> dict[str, Any]:
        return {"project": self._project or "(from the credentials)", "zone": self.settings.zone,
                "machine_type": self.settings.machine_type,
                "api_endpoint": self.settings.api_endpoint or DEFAULT_ENDPOINT}

    def close(self) -> None:
        if self._compute is not None:
            self._compute.close()
            self._compute = None

    # -- helpers --------------------------------------------------------------------------
    @property
    def project(self) -> str:
        self._api()
        return self._project

    def _api(self):
        """The compute client, built on first use (credentials are read then, not at construction)."""
        if self._compute is None:
            where = f"clouds.{self.name}.credentials_file (or GOOGLE_APPLICATION_CREDENTIALS)"
            credentials, project = gce_api.load_credentials(self.settings.credentials_file, where)
            self._project = self._project or project
            if not self._project:
                raise ConfigError(f"clouds.{self.name}.project (or GCE_PROJECT): not set, and the "
                                  f"credentials name no project")
            self._compute = gce_api.build_client(credentials, self.settings.api_endpoint,
                                                 self.settings.request_timeout)
        return self._compute

    def _call(self, request, what: str) -> dict[str, Any]:
        return gce_api.execute(request, what, retries=self.settings.api_retries)

    def _wait(self, operation: dict[str, Any], what: str, timeout: float) -> dict[str, Any]:
        return gce_api.wait_operation(self._api(), self.project, operation, what, timeout,
                                      max_delay=self.settings.poll_max_delay)

    def _poll(self, probe, what: str, timeout: float):
        last = ["nothing yet"]

        def step():
            result, seen = probe()
            last[0] = seen
            return result

        return wait_for(step, what, timeout, max_delay=self.settings.poll_max_delay, describe=lambda: last[0])

    def _where(self, instance: Instance) -> tuple[str, str]:
        return instance.extra.get("project") or self.project, instance.extra.get("zone") or instance.region \
            or self.settings.zone

    def _instance_data(self, instance: Instance) -> dict[str, Any] | None:
        project, zone = self._where(instance)
        try:
            return self._call(self._api().instances().get(project=project, zone=zone, instance=instance.name),
                              f"reading instance {instance.name}")
        except NotFound:
            return None

    def _instance_op(self, instance: Instance, verb: str, what: str) -> None:
        project, zone = self._where(instance)
        method = getattr(self._api().instances(), verb)
        operation = self._call(method(project=project, zone=zone, instance=instance.name), what)
        self._wait(operation, what, self.settings.operation_timeout)

    def _until(self, instance: Instance, statuses: set[str], wanted: str) -> Instance:
        """Poll the instance until its GCE status is in `statuses`; the updated record."""
        def probe():
            data = self._instance_data(instance)
            if data is None:
                raise CloudError(f"gce: instance {instance.name} disappeared while waiting for {wanted}")
            return (data if data.get("status") in statuses else None), f"status {data.get('status')}"

        data = self._poll(probe, f"instance {instance.name} to be {wanted}", self.settings.operation_timeout)
        return gce_records.merge(self.settings, instance, data)

    def _image_status(self, name: str):
        data = self._call(self._api().images().get(project=self.project, image=name), f"reading image {name}")
        if data.get("status") == "FAILED":
            raise CloudError(f"gce: image {name} failed: {data.get('statusMessage') or 'status FAILED'}")
        return (data if data.get("status") == "READY" else None), f"status {data.get('status')}"

    def _delete_disk(self, project: str, zone: str, disk: str) -> None:
        """Delete a disk once no instance uses it (autoDelete may be removing it already); safe if gone."""
        disks = self._api().disks()

        def probe():
            try:
                data = self._call(disks.get(project=project, zone=zone, disk=disk), f"reading disk {disk}")
            except NotFound:
                return "gone", "gone"
            users = data.get("users") or []
            return (None, f"used by {', '.join(map(basename, users))}") if users else ("detached", "detached")

        if self._poll(probe, f"disk {disk} to be detached", self.settings.operation_timeout) == "gone":
            return
        what = f"deleting disk {disk}"
        try:
            operation = self._call(disks.delete(project=project, zone=zone, disk=disk), what)
        except NotFound:
            return
        self._wait(operation, what, self.settings.operation_timeout)

    def _discard(self, instance: Instance) -> None:
        """Best effort after a failed launch: remove the instance, its disk and its key; log, never raise."""
        try:
            self.destroy(instance)
        except Exception as exc:  # the launch error is the one to report
            log.error("gce: could not remove instance %s after the failed launch: %s; run cleanup",
                      instance.name, exc)

    def _discard_image(self, name: str) -> None:
        try:
            self.delete_image(Image(id=name, cloud=self.name, name=name))
        except Exception as exc:  # the creation error is the one to report
            log.error("gce: could not remove image %s after the failed creation: %s", name, exc)

    def _forget_key(self, instance: Instance) -> None:
        if instance.extra.get("generated_key") and instance.key_file:
            for path in (Path(instance.key_file), Path(instance.key_file + ".pub")):
                path.unlink(missing_ok=True)

    def _filter(self, filters: dict[str, str] | None) -> str:
        labels = {label_key(TAG_TOOL): label_value(TOOL)}
        labels.update({label_key(k): label_value(v) for k, v in (filters or {}).items()})
        return label_filter(labels)

