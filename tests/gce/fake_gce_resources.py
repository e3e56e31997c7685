"""The fake's instances, disks and images: validation as GCE does it, and their status over time."""
from __future__ import annotations

import copy
import re

from tests.gce.fake_gce import ApiError, FakeCompute, _stamp, check_labels, check_name


class FakeGCE(FakeCompute):
    """FakeCompute with the compute v1 methods the driver uses (ids as in the API: "instances.insert")."""

    # -- instances -------------------------------------------------------------------------
    def insert_instance(self, project: str, zone: str, body: dict) -> dict:
        name = body.get("name")
        check_name(name, "resource.name")
        check_labels(body.get("labels", {}), "resource.labels")
        if (project, zone, name) in self.instances:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists")
        machine = self.resolve(body.get("machineType", ""), project)
        if not re.match(rf"^projects/{re.escape(project)}/zones/{re.escape(zone)}/machineTypes/[a-z][-a-z0-9]*$",
                        machine):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.machineType': "
                                           f"'{body.get('machineType')}'.")
        nics = body.get("networkInterfaces") or []
        if not nics or not nics[0].get("network"):
            raise ApiError(400, "invalid", "Invalid value for field 'resource.networkInterfaces': at least one "
                                           "network interface with a network is required")
        boots = [d for d in body.get("disks", []) if d.get("boot")]
        if len(boots) != 1 or "initializeParams" not in boots[0]:
            raise ApiError(400, "invalid", "Invalid value for field 'resource.disks': exactly one boot disk "
                                           "with initializeParams is required")
        params = boots[0]["initializeParams"]
        image = self.find_image(params.get("sourceImage", ""), project)
        disk_name = params.get("diskName") or name
        check_name(disk_name, "resource.disks[0].initializeParams.diskName")
        check_labels(params.get("labels", {}), "resource.disks[0].initializeParams.labels")
        if (project, zone, disk_name) in self.disks:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{project}/zones/{zone}/disks/{disk_name}' already exists")
        state = image.get("deprecated", {}).get("state", "ACTIVE")
        if state in ("OBSOLETE", "DELETED"):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.disks[0].initializeParams."
                                           f"sourceImage': '{image['selfLink']}'. The image is {state.lower()}.")
        warnings = []
        if state == "DEPRECATED":
            replacement = image["deprecated"].get("replacement")
            text = f"The resource '{self.resolve(image['selfLink'], project)}' is deprecated."
            if replacement:
                text += f" A suggested replacement is '{self.resolve(replacement, project)}'."
            warnings.append(("DEPRECATED_RESOURCE_USED", text))
        fault = self.fault_for("instances.insert")
        link = self._link(project, f"zones/{zone}/instances", name)
        if fault and fault.conflict:
            return self._lose_race(project, zone, name, link, fault)
        disk = {"kind": "compute#disk", "id": self._id(), "name": disk_name, "status": "CREATING",
                "zone": self._link(project, "zones", zone), "sizeGb": params.get("diskSizeGb", image["diskSizeGb"]),
                "sourceImage": image["selfLink"], "sourceImageId": image["id"], "labels": params.get("labels", {}),
                "type": self.resolve(params.get("diskType", f"zones/{zone}/diskTypes/pd-standard"), project),
                "users": [link], "creationTimestamp": _stamp(),
                "selfLink": self._link(project, f"zones/{zone}/disks", disk_name)}
        instance = {"kind": "compute#instance", "id": self._id(), "name": name, "status": "PROVISIONING",
                    "zone": disk["zone"], "machineType": self.base + machine, "labels": body.get("labels", {}),
                    "metadata": {"kind": "compute#metadata", "fingerprint": "f1", "items": copy.deepcopy(
                        (body.get("metadata") or {}).get("items", []))},
                    "disks": [{"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                               "source": disk["selfLink"], "deviceName": boots[0].get("deviceName", disk_name),
                               "index": 0, "boot": True, "autoDelete": bool(boots[0].get("autoDelete"))}],
                    "networkInterfaces": [{"kind": "compute#networkInterface", "name": "nic0",
                                           "network": self.resolve(nics[0]["network"], project),
                                           "accessConfigs": [] if fault and fault.no_external_ip else
                                           copy.deepcopy(nics[0].get("accessConfigs", []))}],
                    "creationTimestamp": _stamp(), "selfLink": link}
        key = (project, zone, name)
        self.instances[key] = instance
        self.inserted.append(copy.deepcopy(instance))
        self.disks[(project, zone, disk_name)] = disk

        def running():
            disk["status"] = "READY"
            self._boot(instance)

        def failed():
            self.instances.pop(key, None)
            self.disks.pop((project, zone, disk_name), None)

        return self.operation(project, zone, "insert", instance, fault, _status(instance, "STAGING"), running,
                              failed, warnings=warnings)

    def _lose_race(self, project: str, zone: str, name: str, link: str, fault) -> dict:
        """Another client creates an instance of that name while our insert runs: ours ends DONE with
        RESOURCE_ALREADY_EXISTS (as the API reports a lost race), theirs stays."""
        theirs = {"kind": "compute#instance", "id": self._id(), "name": name, "status": "RUNNING",
                  "zone": self._link(project, "zones", zone), "labels": {"team": "someone-else"},
                  "machineType": self._link(project, f"zones/{zone}/machineTypes", "e2-small"),
                  "metadata": {"kind": "compute#metadata", "items": []}, "disks": [],
                  "networkInterfaces": [{"kind": "compute#networkInterface", "name": "nic0",
                                         "networkIP": "10.128.0.250",
                                         "network": self._link(project, "global/networks", "default")}],
                  "creationTimestamp": _stamp(), "selfLink": link}
        fault.error = ("RESOURCE_ALREADY_EXISTS", f"The resource 'projects/{project}/zones/{zone}/instances/{name}'"
                                                  f" already exists")
        return self.operation(project, zone, "insert", theirs, fault,
                              lambda: self.instances.setdefault((project, zone, name), theirs))

    def instance_action(self, project: str, zone: str, name: str, verb: str) -> dict:
        instance = self.get_instance(project, zone, name, copy_it=False)
        fault = self.fault_for(f"instances.{verb}")
        if verb == "stop":
            def stopping():
                if instance["status"] == "RUNNING":
                    instance["status"] = "STOPPING"

            def stopped():
                instance["status"] = "TERMINATED"
                for config in instance["networkInterfaces"][0]["accessConfigs"]:
                    config.pop("natIP", None)  # an ephemeral address is released on stop

            return self.operation(project, zone, "stop", instance, fault, stopping, stopped)
        if verb == "suspend":
            if instance["status"] != "RUNNING":
                raise ApiError(400, "resourceNotReady", f"The resource '{instance['selfLink']}' is not ready")
            return self.operation(project, zone, "suspend", instance, fault, _status(instance, "SUSPENDING"),
                                  _status(instance, "SUSPENDED"))
        if verb == "resume":
            if instance["status"] != "SUSPENDED":
                raise ApiError(400, "resourceNotReady", f"The resource '{instance['selfLink']}' is not ready")
            return self.operation(project, zone, "resume", instance, fault, _status(instance, "STAGING"),
                                  lambda: self._boot(instance))
        if instance["status"] not in ("TERMINATED", "RUNNING"):  # a SUSPENDED instance needs resume
            raise ApiError(400, "resourceNotReady", f"The resource '{instance['selfLink']}' is not ready")
        return self.operation(project, zone, "start", instance, fault, _status(instance, "STAGING"),
                              lambda: self._boot(instance))

    def delete_instance(self, project: str, zone: str, name: str) -> dict:
        instance = self.get_instance(project, zone, name, copy_it=False)
        fault = self.fault_for("instances.delete")

        def gone():
            self.instances.pop((project, zone, name), None)
            for attached in instance["disks"]:
                disk_key = (project, zone, attached["source"].rsplit("/", 1)[1])
                if attached.get("autoDelete"):
                    self.disks.pop(disk_key, None)
                elif disk_key in self.disks:
                    self.disks[disk_key]["users"] = []

        return self.operation(project, zone, "delete", instance, fault, _status(instance, "STOPPING"), gone)

    def get_instance(self, project: str, zone: str, name: str, copy_it: bool = True) -> dict:
        return _find(self.instances, (project, zone, name), f"projects/{project}/zones/{zone}/instances/{name}",
                     copy_it)

    def _boot(self, instance: dict) -> None:
        number = int(instance["id"]) % 250 + 2
        instance["status"] = "RUNNING"
        instance["networkInterfaces"][0]["networkIP"] = f"10.128.0.{number}"
        for config in instance["networkInterfaces"][0]["accessConfigs"]:
            config.update(kind="compute#accessConfig", natIP=f"203.0.113.{next(self._seq) % 250 + 2}")

    # -- disks -----------------------------------------------------------------------------
    def get_disk(self, project: str, zone: str, name: str, copy_it: bool = True) -> dict:
        return _find(self.disks, (project, zone, name), f"projects/{project}/zones/{zone}/disks/{name}", copy_it)

    def delete_disk(self, project: str, zone: str, name: str) -> dict:
        disk = self.get_disk(project, zone, name, copy_it=False)
        if disk["users"]:
            raise ApiError(400, "resourceInUseByAnotherResource",
                           f"The disk resource '{disk['selfLink']}' is already being used by '{disk['users'][0]}'")
        fault = self.fault_for("disks.delete")
        return self.operation(project, zone, "delete", disk, fault, _status(disk, "DELETING"),
                              lambda: self.disks.pop((project, zone, name), None))

    # -- images ----------------------------------------------------------------------------
    def insert_image(self, project: str, body: dict, force: bool = False) -> dict:
        name = body.get("name")
        check_name(name, "resource.name")
        check_labels(body.get("labels", {}), "resource.labels")
        if body.get("family") is not None:
            check_name(body["family"], "resource.family")
        if (project, name) in self.images:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/global/images/{name}' "
                                                 f"already exists")
        source = self.resolve(body.get("sourceDisk", ""), project)
        match = re.match(r"^projects/([^/]+)/zones/([^/]+)/disks/([^/]+)$", source)
        if not match:
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.sourceDisk': "
                                           f"'{body.get('sourceDisk')}'.")
        disk = self.get_disk(match[1], match[2], match[3], copy_it=False)
        running = [u for u in disk["users"] if self.instances.get(
            (match[1], match[2], u.rsplit("/", 1)[1]), {}).get("status") != "TERMINATED"]
        if running and not force:
            raise ApiError(400, "resourceInUseByAnotherResource",
                           f"The disk resource '{disk['selfLink']}' is already being used by '{running[0]}'")
        fault = self.fault_for("images.insert")
        image = {"kind": "compute#image", "id": self._id(), "name": name, "status": "PENDING",
                 "family": body.get("family"), "labels": body.get("labels", {}), "description": body.get(
                     "description", ""), "sourceDisk": disk["selfLink"], "sourceDiskId": disk["id"],
                 "sourceType": "RAW", "diskSizeGb": disk["sizeGb"], "creationTimestamp": _stamp(),
                 "selfLink": self._link(project, "global/images", name)}
        self.images[(project, name)] = image

        def failed():
            if fault.keep:
                image["status"] = "FAILED"
            else:
                self.images.pop((project, name), None)

        return self.operation(project, None, "insert", image, fault, None, _status(image, "READY"), failed)

    def get_image(self, project: str, name: str) -> dict:
        return copy.deepcopy(self.find_image(f"projects/{project}/global/images/{name}", project))

    def delete_image(self, project: str, name: str) -> dict:
        image = self.find_image(f"projects/{project}/global/images/{name}", project)
        fault = self.fault_for("images.delete")
        return self.operation(project, None, "delete", image, fault, _status(image, "DELETING"),
                              lambda: self.images.pop((project, name), None))


def _status(resource: dict, status: str):
    """A change that sets the resource's status."""
    return lambda: resource.update(status=status)


def _find(store: dict, key: tuple, path: str, copy_it: bool) -> dict:
    resource = store.get(key)
    if resource is None:
        raise ApiError(404, "notFound", f"The resource '{path}' was not found")
    return copy.deepcopy(resource) if copy_it else resource
