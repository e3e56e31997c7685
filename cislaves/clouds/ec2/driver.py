"""Amazon EC2 behind the cloud interface, with boto3.

A bake launches one instance from the newest base AMI (owner + name pattern, as Packer's
source_ami_filter with most_recent), logging in with the shared SSH settings (an existing key pair,
or a temporary one imported under the run's name), with a temporary security group unless the user
gives theirs, tags everything with the run id and owner, snapshots it into a timestamped AMI (images.py),
copies that to the configured regions, and deletes everything temporary. Every wait is bounded
(cislaves' wait_for); throttling is absorbed by boto3's adaptive retry mode.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any, Callable

from cislaves import TOOL
from cislaves.clouds.base import (Capabilities, TAG_RUN, CleanupPolicy, Cloud, Instance, LaunchSpec, Pending,
                                  utcnow, wait_for)
from cislaves.clouds.ec2 import cleanup as sweep
from cislaves.clouds.ec2.api import LIVE_STATES, Clients, call, pages, tag_dict, tag_filters, tag_spec
from cislaves.clouds.ec2 import regions
from cislaves.clouds.ec2.images import ImagesMixin
from cislaves.clouds.ec2.settings import ENV, Settings
from cislaves.clouds.ssh import LoginKey, apply_ssh, login_key
from cislaves.errors import CloudError

log = logging.getLogger(__name__)
# Instance.extra key -> instance tag naming a temporary resource of the run
TEMPORARY_TAGS = {"temporary_key_pair": "cislaves:key-pair", "temporary_security_group": "cislaves:security-group"}
GONE_STATES = ("terminated", "shutting-down")


class EC2Cloud(ImagesMixin, Cloud):
    """Amazon EC2 (or anything speaking its API at AWS_ENDPOINT_URL_EC2, such as moto)."""

    name = "ec2"
    capabilities = Capabilities(copy_image=True, regions=True)
    Settings = Settings
    ENV = ENV

    def __init__(self, settings: Any, data_dir: Path, name: str | None = None):
        if not isinstance(settings, Settings):
            settings = Settings.model_validate(settings or {})
        super().__init__(settings, data_dir, name=name)
        self.region = settings.region
        self.clients = Clients(settings, self.data_dir / "botocore")  # the trimmed EC2 model (model.py)

    # -- region names, checked against the cloud once, before the first step that creates anything
    def check_regions(self) -> None:
        if not getattr(self, "_regions_checked", False):
            regions.check(self.clients, self.region, self.copy_regions())
            self._regions_checked = True

    def base_image(self, distribution):
        self.check_regions()
        return super().base_image(distribution)

    def get_image(self, image_id: str):
        self.check_regions()
        return super().get_image(image_id)

    def copy_image(self, image, regions: list[str]):
        self.check_regions()
        return super().copy_image(image, regions)

    # -- instances ----------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Run one instance (temporary key pair and security group unless configured) and wait until
        it runs and has an address. On any failure or Ctrl-C, everything made so far is removed."""
        self.check_regions()
        tags = {**self.settings.tags, **spec.tags}  # the run's own tags win over extra ones
        undo: list[Callable[[], None]] = []
        extra: dict[str, Any] = {"temporary_key_pair": None, "temporary_security_group": None,
                                 "temporary_key_file": False}
        try:
            key = login_key(self.settings, spec.key_dir, spec.name, cloud=self.name)
            key_name = self._key_pair(spec, key, tags, extra, undo)
            groups = self._security_groups(spec, tags, extra, undo)
            # the instance names its temporaries, so destroying it from a listing removes them too
            instance_tags = {**tags, **{tag: extra[key] for key, tag in TEMPORARY_TAGS.items() if extra[key]}}
            params = self._run_params(spec, instance_tags, key_name, groups)
            mine = {TAG_RUN: spec.run_id, **({"Name": tags["Name"]} if tags.get("Name") else {})}
            undo.append(lambda: self._terminate_tagged(mine))  # by tag: also if Ctrl-C cut the call short
            reply = call(self.clients, "run_instances", **params)
            instance_id = reply["Instances"][0]["InstanceId"]
            log.info("ec2: launched %s from %s in %s", instance_id, spec.image.id, self.region)
            instance = Instance(id=instance_id, cloud=self.name, name=spec.name,
                                distribution=spec.distribution.name, run_id=spec.run_id, state="pending",
                                user=self.settings.ssh_user or spec.distribution.user_for("ec2", "ec2-user"),
                                key_file=str(key.private_key_file), region=self.region, image_id=spec.image.id,
                                created=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), tags=instance_tags,
                                extra=extra)
            return self._wait_state(instance, "running", self.settings.launch_timeout, new=True)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception as exc:  # keep undoing; say what could not be removed
                    log.error("ec2: cleanup after a failed launch: %s (`fab cleanup:cloud=ec2` finds it by "
                              "its tags)", exc)
            raise

    def refresh(self, instance: Instance) -> Instance:
        found = self._describe_instance(instance.id, instance.region)
        if found is None:
            return dataclasses.replace(instance, state="terminated")
        return self._updated(instance, found)

    def start(self, instance: Instance) -> Instance:
        call(self.clients, "start_instances", instance.region, InstanceIds=[instance.id])
        return self._wait_state(instance, "running", self.settings.launch_timeout)

    def stop(self, instance: Instance) -> Instance:
        call(self.clients, "stop_instances", instance.region, InstanceIds=[instance.id])
        return self._wait_state(instance, "stopped", self.settings.launch_timeout)

    def destroy(self, instance: Instance) -> None:
        """Terminate, wait until terminated, then delete the run's temporary key pair, key file and group."""
        region = instance.region or self.region
        self._terminate_and_wait(instance.id, region)
        extra = instance.extra or {}
        if extra.get("temporary_key_pair"):
            self.delete_key_pair(extra["temporary_key_pair"], region)
        if extra.get("temporary_key_file") and instance.key_file:
            for path in (Path(instance.key_file), Path(f"{instance.key_file}.pub")):
                path.unlink(missing_ok=True)
        if extra.get("temporary_security_group"):
            self.delete_group(extra["temporary_security_group"], region)
        log.info("ec2: destroyed %s", instance.id)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        return [self._instance_of(i) for i in self.live_instances(filters)]

    def cleanup(self, policy: CleanupPolicy) -> list[str]:
        """Remove what `policy` allows of the tool's instances, key pairs, security groups, detached
        volumes, unfinished AMIs and orphaned snapshots; one line per removed resource."""
        return sweep.cleanup(self, policy)

    def describe(self) -> dict[str, Any]:
        return {"region": self.region, "endpoint": self.clients.endpoint(),
                "instance_type": self.settings.instance_type, "copy_regions": self.copy_regions()}

    def close(self) -> None:
        self.clients.close()

    # -- used by cleanup too ----------------------------------------------------------------
    def live_instances(self, filters: dict[str, str] | None, tool_only: bool = True) -> list[dict]:
        """Instances not terminated: the tool's with these tags (or every one, for what is in use)."""
        wanted = (tag_filters(filters) if tool_only else []) + \
            [{"Name": "instance-state-name", "Values": LIVE_STATES}]
        return [i for r in pages(self.clients, "describe_instances", "Reservations", Filters=wanted)
                for i in r.get("Instances", [])]

    def terminate_and_wait(self, instance_ids: list[str], region: str) -> None:
        for instance_id in instance_ids:  # one call each: a gone one must not spare the others
            call(self.clients, "terminate_instances", region, ignore_missing=True, InstanceIds=[instance_id])
        for instance_id in instance_ids:
            self._wait_gone(instance_id, region)

    def delete_key_pair(self, key_name: str, region: str) -> None:
        call(self.clients, "delete_key_pair", region, ignore_missing=True, KeyName=key_name)

    def delete_group(self, group_id: str, region: str) -> None:
        """Delete a security group, retrying while AWS still sees a terminated instance using it."""
        def attempt():
            try:
                call(self.clients, "delete_security_group", region, ignore_missing=True, GroupId=group_id)
                return True
            except CloudError as exc:
                if exc.code == "DependencyViolation":
                    return Pending(f"still in use ({exc.code})")
                raise

        wait_for(attempt, f"security group {group_id} to be deletable", self.settings.destroy_timeout,
                 first_delay=0.2, max_delay=self.settings.poll_max_delay)

    # -- helpers: launch --------------------------------------------------------------------
    def _key_pair(self, spec: LaunchSpec, key: LoginKey, tags, extra, undo) -> str:
        """The key pair to launch with: the configured one as is, else the login key's public half
        imported under the run's name (removed with the instance)."""
        if key.temporary:
            extra["temporary_key_file"] = True
            undo.append(lambda: [p.unlink(missing_ok=True)
                                 for p in (key.private_key_file, Path(f"{key.private_key_file}.pub"))])
        if key.key_pair and not key.temporary:
            return key.key_pair
        name = key.key_pair or spec.name
        undo.append(lambda: self.delete_key_pair(name, self.region))  # even if interrupted mid-call
        call(self.clients, "import_key_pair", KeyName=name, PublicKeyMaterial=key.public_key.encode(),
             TagSpecifications=tag_spec("key-pair", tags))
        extra["temporary_key_pair"] = name
        return name

    def _security_groups(self, spec: LaunchSpec, tags, extra, undo) -> list[str]:
        if self.settings.security_group_ids:
            return list(self.settings.security_group_ids)
        params: dict[str, Any] = {}
        if self.settings.subnet_id:
            subnets = call(self.clients, "describe_subnets", SubnetIds=[self.settings.subnet_id])
            params["VpcId"] = subnets["Subnets"][0]["VpcId"]
        name = f"{spec.name}-{uuid.uuid4().hex[:6]}"
        group_id = call(self.clients, "create_security_group", GroupName=name,
                        Description=f"{TOOL} temporary SSH access for run {spec.run_id}",
                        TagSpecifications=tag_spec("security-group", tags), **params)["GroupId"]
        undo.append(lambda: self.delete_group(group_id, self.region))
        extra["temporary_security_group"] = group_id
        ranges = [{"CidrIp": c} for c in self.settings.ssh_cidrs if ":" not in c]
        ranges6 = [{"CidrIpv6": c} for c in self.settings.ssh_cidrs if ":" in c]
        call(self.clients, "authorize_security_group_ingress", GroupId=group_id,
             IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": ranges,
                             "Ipv6Ranges": ranges6}])
        return [group_id]

    def _run_params(self, spec: LaunchSpec, tags, key_name: str, groups: list[str]) -> dict[str, Any]:
        s = self.settings
        root = (spec.image.extra or {}).get("root_device_name") or \
            self.get_image(spec.image.id).extra["root_device_name"] or "/dev/sda1"
        params: dict[str, Any] = {
            "ImageId": spec.image.id, "MinCount": 1, "MaxCount": 1, "InstanceType": s.instance_type,
            "KeyName": key_name, "ClientToken": f"{spec.run_id}-{spec.name}"[-64:],
            "BlockDeviceMappings": [{"DeviceName": root, "Ebs": {
                "VolumeSize": s.root_volume_size, "VolumeType": s.root_volume_type,
                "DeleteOnTermination": True}}],
            "TagSpecifications": tag_spec("instance", tags) + tag_spec("volume", tags),
        }
        if s.subnet_id and s.associate_public_ip is not None:
            params["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": s.subnet_id, "Groups": groups,
                                            "AssociatePublicIpAddress": s.associate_public_ip}]
        else:
            params["SecurityGroupIds"] = groups
            if s.subnet_id:
                params["SubnetId"] = s.subnet_id
        if s.spot:
            options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if s.spot_max_price:
                options["MaxPrice"] = s.spot_max_price
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        if s.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": s.iam_instance_profile}
        return params

    # -- helpers: instance state ------------------------------------------------------------
    def _describe_instance(self, instance_id: str, region: str | None) -> dict | None:
        found = call(self.clients, "describe_instances", region, ignore_missing=True, InstanceIds=[instance_id])
        for reservation in found.get("Reservations", []):
            for item in reservation.get("Instances", []):
                return item
        return None

    def _wait_state(self, instance: Instance, state: str, timeout: float, new: bool = False) -> Instance:
        """Wait for the instance's state. A `new` instance may be invisible at first (EC2's eventual
        consistency answers InvalidInstanceID.NotFound right after RunInstances)."""
        def probe():
            found = self._describe_instance(instance.id, instance.region)
            if found is None and new:
                return Pending("not visible yet")
            now = found["State"]["Name"] if found else "gone"
            if now == "gone" or now in GONE_STATES:
                reason = (found or {}).get("StateReason", {}).get("Message", "no reason given")
                raise CloudError(f"ec2: instance {instance.id} went away while waiting for {state}: {reason}",
                                 cloud=self.name, operation=f"wait for {state}",
                                 code=(found or {}).get("StateReason", {}).get("Code") or "InstanceGone")
            if now != state:
                return Pending(now)
            return self._updated(instance, found, need_address=state == "running")

        return wait_for(probe, f"instance {instance.id} to be {state}", timeout, first_delay=0.1,
                        max_delay=self.settings.poll_max_delay)

    def _wait_gone(self, instance_id: str, region: str) -> None:
        def probe():
            found = self._describe_instance(instance_id, region)
            now = found["State"]["Name"] if found else "terminated"
            return True if now == "terminated" else Pending(now)

        wait_for(probe, f"instance {instance_id} to terminate", self.settings.destroy_timeout,
                 first_delay=0.1, max_delay=self.settings.poll_max_delay)

    def _updated(self, instance: Instance, found: dict, need_address: bool = False) -> Instance:
        """The instance with EC2's view of its state, tags and address (from the SSH settings)."""
        updated = dataclasses.replace(instance, state=found["State"]["Name"],
                                      tags=tag_dict(found.get("Tags")) or instance.tags)
        public, private = found.get("PublicIpAddress"), found.get("PrivateIpAddress")
        addresses = {"public_ip": public, "private_ip": private, "public": public, "private": private,
                     "public_dns": found.get("PublicDnsName") or None,
                     "private_dns": found.get("PrivateDnsName") or None}
        try:
            apply_ssh(updated, self.settings, addresses, default_interface="public_ip", default_user=instance.user)
        except CloudError as exc:
            if need_address or exc.code != "NoAddress":
                raise
            updated.address = None  # a stopped instance has no public address: that is no error
        return updated

    def _instance_of(self, found: dict) -> Instance:
        tags = tag_dict(found.get("Tags"))
        bare = Instance(id=found["InstanceId"], cloud=self.name, name=tags.get("Name", ""),
                        distribution=tags.get("cislaves:distribution", ""), run_id=tags.get(TAG_RUN, ""),
                        region=self.region, image_id=found.get("ImageId"), tags=tags,
                        created=str(found.get("LaunchTime") or ""),
                        extra={key: tags.get(tag) for key, tag in TEMPORARY_TAGS.items()})
        return self._updated(bare, found)

    def _terminate_tagged(self, tags: dict[str, str]) -> None:
        """Terminate (and wait for) the live instances carrying these tags."""
        found = [i["InstanceId"] for i in self.live_instances(tags)]
        if found:
            self.terminate_and_wait(found, self.region)

    def _terminate_and_wait(self, instance_id: str, region: str) -> None:
        self.terminate_and_wait([instance_id], region)
