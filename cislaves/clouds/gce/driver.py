"""Google Compute Engine: instances, boot disks and images through the compute v1 API.

Auth is a service account JSON key (GOOGLE_APPLICATION_CREDENTIALS or clouds.gce.credentials_file) or
Application Default Credentials. SSH uses the shared settings block (clouds/ssh.py): the login
(ssh_user, or OS_USERNAME; default "cislaves") and its key (ssh_private_key_file / GCE_PRIVATE_KEY_FILENAME,
with GCE_PUBLIC_KEY_FILENAME, or a temporary key per instance) are written into the instance's
`ssh-keys` metadata; ssh_interface public/private picks the external or internal IP; bastion and
ProxyCommand work as on every cloud. Instances, their boot disks and images carry the run's tags
(with the owner) as labels, and cleanup acts on those labels only.

A bake images the boot disk of the stopped instance BEFORE the instance is deleted; the boot disk is
created with autoDelete, and destroy removes any disk of the instance that is still there. Every
mutation carries a requestId (so a retried insert whose first answer was lost is not a 409), and every
operation is awaited with a deadline.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any

from cislaves import TOOL
from cislaves.clouds.base import (TAG_DISTRIBUTION, TAG_RUN, TAG_TOOL, Capabilities, CleanupPolicy, Cloud, Image,
                                  Instance, LaunchSpec, Pending, wait_for)
from cislaves.clouds.gce import api as gce_api, records as gce_records
from cislaves.clouds.gce.api import Conflict, NotFound, basename
from cislaves.clouds.gce.labels import label_filter, label_key, label_value, labels_from_tags, resource_name
from cislaves.clouds.gce.labels import tags_from_labels
from cislaves.clouds.gce.settings import GCESettings
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://compute.googleapis.com/compute/v1/"
STOPPED = {"TERMINATED", "STOPPED"}


class GCECloud(Cloud):
    """Instances, disks and images on Google Compute Engine."""

    name = "gce"
    capabilities = Capabilities()  # images are global: no copies
    Settings = GCESettings
    ENV = {"project": "GCE_PROJECT", "zone": "GCE_ZONE", "credentials_file": "GOOGLE_APPLICATION_CREDENTIALS",
           "api_endpoint": "GCE_API_ENDPOINT", "ssh_user": "OS_USERNAME",
           "ssh_private_key_file": "GCE_PRIVATE_KEY_FILENAME", "ssh_public_key_file": "GCE_PUBLIC_KEY_FILENAME"}

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        if settings is None or isinstance(settings, dict):
            settings = GCESettings.model_validate(settings or {})
        super().__init__(settings, data_dir, name=name)
        self._compute = None
        self._project = settings.project
        self._retry = gce_api.Retry(settings.api_retries, settings.api_retry_delay)

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
        if self.stop(instance).extra.get("status") == "SUSPENDED":
            # a suspended instance still holds its disk: stop it (dropping the saved memory) to image the disk
            self._instance_op(instance, "stop", f"stopping suspended instance {instance.name}")
            self._until(instance, STOPPED, "stopped (TERMINATED)")
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
            operation = self._call(images.insert(project=self.project, body=body, requestId=_request_id()), what)
            self._wait(operation, what, self.settings.image_timeout)
            ready = wait_for(lambda: self._image_ready(image_name), f"image {image_name} to be READY",
                             self.settings.image_timeout, max_delay=self.settings.poll_max_delay)
        except Conflict:
            raise  # an image of that name that this run did not make: never delete it
        except BaseException:
            self._discard_image(image_name, instance.run_id)
            raise
        image = gce_records.image_record(self.name, self.project, ready)
        image.source_image = instance.image_id
        return image

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        """This tool's images in the project, narrowed by tag filters."""
        found = gce_api.list_all(self._api().images(), "listing images", self._retry, project=self.project,
                                 filter=self._filter(filters))
        return [gce_records.image_record(self.name, self.project, data) for data in found]

    def delete_image(self, image: Image) -> None:
        project, family, name = gce_records.image_ref(image.id, self.project)
        if family:
            raise CloudError(f"gce: refusing to delete {image.id}: name an image, not a family")
        what = f"deleting image {name}"
        try:
            operation = self._call(self._api().images().delete(project=project, image=name,
                                                               requestId=_request_id()), what)
        except NotFound:
            return
        self._wait(operation, what, self.settings.destroy_timeout)

    # -- instances ------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Create the instance (boot disk with autoDelete, labels, ssh-keys) and wait until RUNNING."""
        project, zone, name = self.project, self.settings.zone, resource_name(spec.name)  # credentials first
        self._check_image(spec.image)
        user = self.settings.ssh_user or spec.distribution.user_for(self.name, gce_records.DEFAULT_USER)
        key, public_key = gce_records.login(self.settings, self.name, spec.key_dir, name)
        tags = {**spec.tags, TAG_RUN: spec.run_id}
        instance = Instance(id=name, cloud=self.name, name=name, distribution=spec.distribution.name,
                            run_id=spec.run_id, state="pending", user=user, key_file=str(key.private_key_file),
                            region=zone, image_id=spec.image.id, tags=tags,
                            extra={"project": project, "zone": zone, "generated_key": key.temporary})
        body = gce_records.instance_body(self.settings, name, gce_records.image_path(spec.image.id, project),
                                         labels_from_tags(tags), f"{user}:{public_key} {user}")
        what = f"creating instance {name} in {zone}"
        log.info("gce: %s from %s (%s)", what, spec.image.id, self.settings.machine_type)
        try:
            operation = self._call(self._api().instances().insert(project=project, zone=zone, body=body,
                                                                  requestId=_request_id()), what)
            self._wait(operation, what, self.settings.launch_timeout)
            return self._until(instance, {"RUNNING"}, "RUNNING", need_address=True)
        except Conflict:
            self._forget_key(instance)  # the instance of that name is not ours: leave it alone
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
            current = self._until(instance, STOPPED | {"SUSPENDED"}, "stopped (TERMINATED)")
        return current

    def start(self, instance: Instance) -> Instance:
        """Start a stopped (TERMINATED) instance, or resume a SUSPENDED one; wait until RUNNING."""
        data = self._instance_data(instance)
        if data is None:
            raise CloudError(f"gce: cannot start instance {instance.name}: it no longer exists")
        status = data.get("status")
        if status == "RUNNING":
            return gce_records.merge(self.settings, instance, data, need_address=True)
        if status in ("STOPPING", "SUSPENDING"):
            status = self._until(instance, STOPPED | {"SUSPENDED"}, "stopped or suspended").extra["status"]
        if status == "SUSPENDED":  # start refuses a suspended instance: it needs resume
            self._instance_op(instance, "resume", f"resuming instance {instance.name}")
        else:
            self._instance_op(instance, "start", f"starting instance {instance.name}")
        return self._until(instance, {"RUNNING"}, "RUNNING", need_address=True)

    def destroy(self, instance: Instance) -> None:
        """Delete the instance and wait; then delete its boot disk if autoDelete left it. Safe twice."""
        project, zone = self._where(instance)
        disks = [instance.extra.get("boot_disk") or instance.name]
        data = self._instance_data(instance)
        if data is not None:
            disks = [basename(d["source"]) for d in data.get("disks", []) if d.get("boot") and d.get("source")] \
                or disks
            try:
                self._instance_op(instance, "delete", f"deleting instance {instance.name}",
                                  self.settings.destroy_timeout)
            except NotFound:
                pass
        for disk in disks:
            self._delete_disk(project, zone, disk)
        self._forget_key(instance)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        """This tool's instances in every zone of the project, narrowed by tag filters."""
        found = gce_api.aggregated(self._api().instances(), "listing instances", "instances", self._retry,
                                   project=self.project, filter=self._filter(filters))
        return [gce_records.instance_record(self.name, self.project, self.settings, data) for data in found]

    def cleanup(self, policy: CleanupPolicy) -> list[str]:
        """Remove the tool-labelled instances, detached disks and unfinished (PENDING/FAILED) images that
        `policy` allows, in every zone; one line per removed resource. Labels are compared in label form."""
        policy = CleanupPolicy(owner=label_value(policy.owner) if policy.owner else None,
                               keep_run_ids={label_value(r) for r in policy.keep_run_ids},
                               all_owners=policy.all_owners)
        removed, failed = [], []

        def remove(line: str, action) -> None:
            try:
                action()
                removed.append(line)
            except CloudError as exc:
                failed.append(str(exc))

        for instance in self.list_instances():
            why = policy.reason(instance.tags)
            if why:
                remove(f"instance {instance.id} (zone {instance.region}, run {instance.run_id}, {why})",
                       lambda i=instance: self.destroy(i))
        disks = gce_api.aggregated(self._api().disks(), "listing disks", "disks", self._retry,
                                   project=self.project, filter=self._filter(None))
        for disk in list(disks):
            tags = tags_from_labels(disk.get("labels"))
            why = None if disk.get("users") else policy.reason(tags)
            if why:
                zone = basename(disk["zone"])
                remove(f"disk {disk['name']} (zone {zone}, run {tags.get(TAG_RUN)}, {why})",
                       lambda z=zone, d=disk["name"]: self._delete_disk(self.project, z, d))
        for image in self.list_images():
            why = policy.reason(image.tags) if image.extra.get("status") in ("PENDING", "FAILED") else None
            if why:
                remove(f"unfinished image {image.id} (status {image.extra.get('status')}, run {image.run_id}, "
                       f"{why})", lambda i=image: self.delete_image(i))
        for line in removed:
            log.info("gce: cleanup removed %s", line)
        if failed:
            raise CloudError(f"gce: cleanup removed {len(removed)} resource(s) but {len(failed)} "
                             f"failed; first: {failed[0]}", cloud=self.name, operation="cleanup")
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
        return gce_api.execute(request, what, self._retry)

    def _wait(self, operation: dict[str, Any], what: str, timeout: float) -> dict[str, Any]:
        return gce_api.wait_operation(self._api(), self.project, operation, what, timeout,
                                      max_delay=self.settings.poll_max_delay, retry=self._retry)

    def _check_image(self, image: Image) -> None:
        """An explicit image Google has deprecated: warn (DEPRECATED) or refuse (OBSOLETE, DELETED)."""
        state = image.extra.get("deprecated")
        replacement = image.extra.get("replacement")
        hint = f"; its suggested replacement is {gce_api.resource_path(replacement)}" if replacement else ""
        if state in ("OBSOLETE", "DELETED"):
            raise CloudError(f"gce: image {image.id} is {state}: refusing to boot from it{hint} "
                             f"(set clouds.gce.image to another image, or leave it unset for the newest of the "
                             f"family)", cloud=self.name, operation="launch", code=state)
        if state == "DEPRECATED":
            log.warning("gce: image %s is DEPRECATED%s", image.id, hint)

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

    def _instance_op(self, instance: Instance, verb: str, what: str, timeout: float | None = None) -> None:
        project, zone = self._where(instance)
        method = getattr(self._api().instances(), verb)
        operation = self._call(method(project=project, zone=zone, instance=instance.name,
                                      requestId=_request_id()), what)
        self._wait(operation, what, timeout or self.settings.launch_timeout)

    def _until(self, instance: Instance, statuses: set[str], wanted: str, need_address: bool = False) -> Instance:
        """Poll the instance until its GCE status is in `statuses`; the updated record."""
        def probe():
            data = self._instance_data(instance)
            if data is None:
                raise CloudError(f"gce: instance {instance.name} disappeared while waiting for {wanted}")
            return data if data.get("status") in statuses else Pending(f"status {data.get('status')}")

        data = wait_for(probe, f"instance {instance.name} to be {wanted}", self.settings.launch_timeout,
                        max_delay=self.settings.poll_max_delay)
        return gce_records.merge(self.settings, instance, data, need_address=need_address)

    def _image_ready(self, name: str):
        data = self._call(self._api().images().get(project=self.project, image=name), f"reading image {name}")
        if data.get("status") == "FAILED":
            raise CloudError(f"gce: image {name} failed: {data.get('statusMessage') or 'status FAILED'}",
                             cloud=self.name, operation="create_image", code="FAILED")
        return data if data.get("status") == "READY" else Pending(f"status {data.get('status')}")

    def _delete_disk(self, project: str, zone: str, disk: str, run_id: str | None = None) -> None:
        """Delete a disk once no instance uses it (autoDelete may be removing it already); safe if gone.
        With run_id, only a disk labelled with that run is deleted (launch's cleanup: never another's)."""
        disks = self._api().disks()

        def probe():
            try:
                data = self._call(disks.get(project=project, zone=zone, disk=disk), f"reading disk {disk}")
            except NotFound:
                return "gone"
            users = data.get("users") or []
            if run_id is not None and not _ours(data.get("labels"), run_id):
                return "not ours"
            return Pending(f"used by {', '.join(map(basename, users))}") if users else "detached"

        found = wait_for(probe, f"disk {disk} to be detached", self.settings.destroy_timeout,
                         max_delay=self.settings.poll_max_delay)
        if found == "not ours":
            log.warning("gce: disk %s is not labelled with run %s: left alone", disk, run_id)
        if found != "detached":
            return
        what = f"deleting disk {disk}"
        try:
            operation = self._call(disks.delete(project=project, zone=zone, disk=disk, requestId=_request_id()),
                                   what)
        except NotFound:
            return
        self._wait(operation, what, self.settings.destroy_timeout)

    def _discard(self, instance: Instance) -> None:
        """After a failed launch: remove the instance and its disk if they carry this run's label (never a
        resource of that name someone else made), and the key; log, never raise."""
        project, zone = self._where(instance)
        try:
            data = self._instance_data(instance)
            if data is not None and not _ours(data.get("labels"), instance.run_id):
                log.warning("gce: instance %s is not labelled with run %s: left alone", instance.name,
                            instance.run_id)
            elif data is not None:
                self.destroy(instance)
            else:
                self._delete_disk(project, zone, instance.name, run_id=instance.run_id)
        except Exception as exc:  # the launch error is the one to report
            log.error("gce: could not remove instance %s after the failed launch: %s; run cleanup",
                      instance.name, exc)
        self._forget_key(instance)

    def _discard_image(self, name: str, run_id: str) -> None:
        try:
            data = self._call(self._api().images().get(project=self.project, image=name), f"reading image {name}")
        except NotFound:
            return
        except Exception as exc:  # the creation error is the one to report
            log.error("gce: could not check image %s after the failed creation: %s; run cleanup", name, exc)
            return
        if not _ours(data.get("labels"), run_id):
            log.warning("gce: image %s is not labelled with run %s: left alone", name, run_id)
            return
        try:
            self.delete_image(Image(id=name, cloud=self.name, name=name))
        except Exception as exc:  # the creation error is the one to report
            log.error("gce: could not remove image %s after the failed creation: %s; run cleanup", name, exc)

    def _forget_key(self, instance: Instance) -> None:
        if instance.extra.get("generated_key") and instance.key_file:
            for path in (Path(instance.key_file), Path(instance.key_file + ".pub")):
                path.unlink(missing_ok=True)

    def _filter(self, filters: dict[str, str] | None) -> str:
        labels = {label_key(TAG_TOOL): label_value(TOOL)}
        labels.update({label_key(k): label_value(v) for k, v in (filters or {}).items()})
        return label_filter(labels)


def _request_id() -> str:
    """A new requestId (a UUID): retries of the same request carry the same one, so Google answers a retried
    mutation with the first attempt's operation."""
    return str(uuid.uuid4())


def _ours(labels: dict[str, str] | None, run_id: str) -> bool:
    """Whether a resource carries the tool's label and this run's id."""
    labels = labels or {}
    return labels.get(label_key(TAG_TOOL)) == label_value(TOOL) and \
        labels.get(label_key(TAG_RUN)) == label_value(run_id)
