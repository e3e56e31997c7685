"""Amazon EC2 behind the cloud interface, with boto3.

A bake launches one instance from the newest base AMI (owner + name pattern, as Packer's
source_ami_filter with most_recent), with a temporary key pair and security group unless the user
gives theirs, tags everything with the run id, snapshots it into a timestamped AMI, copies that to
the configured regions, and deletes everything temporary. Every wait is bounded (cislaves' wait_for);
throttling is absorbed by boto3's adaptive retry mode.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any, Callable

from cislaves import TOOL
from cislaves.clouds.base import (Capabilities, TAG_RUN, Cloud, Image, Instance, LaunchSpec, generate_keypair,
                                  utcnow, wait_for)
from cislaves.clouds.ec2.api import (ENV, LIVE_STATES, Clients, Settings, ami_name, aws_tags, call,
                                     error_code, expand_proxy, run_of, tag_dict, tag_filters, tag_spec)
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)
# Instance.extra key -> instance tag naming a temporary resource of the run
TEMPORARY_TAGS = {"temporary_key_pair": "cislaves:key-pair", "temporary_security_group": "cislaves:security-group"}


class EC2Cloud(Cloud):
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
        self.clients = Clients(settings)

    # -- images -------------------------------------------------------------------------
    def base_image(self, distribution) -> Image:
        """The configured AMI of the distribution (which must still exist), else the newest match."""
        conf = self.settings.base_images.get(distribution.name)
        if conf is not None and conf.ami:
            found = self._describe_image(conf.ami)
            if found is None or found.get("State") != "available":
                raise ConfigError(self._stale_message(distribution, conf.ami, found))
            return self._image(found, self.region, distribution.name)
        return self._newest(distribution)

    def get_image(self, image_id: str) -> Image:
        found = self._describe_image(image_id)
        if found is None:
            raise CloudError(f"ec2: image {image_id} not found in {self.region}")
        return self._image(found, self.region)

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        """Snapshot the instance into a uniquely named AMI and wait until it is available.

        If anything (including Ctrl-C) interrupts the wait, the half-made AMI and its snapshots are
        deleted before the error propagates."""
        region = instance.region or self.region
        tags = {**self.settings.tags, **tags}
        name = ami_name(name, utcnow().strftime("%Y%m%dT%H%M%SZ"))
        description = f"{TOOL} {instance.distribution} from {instance.image_id or '?'} run {instance.run_id}"
        try:
            image_id = call(self.clients, "create_image", region, InstanceId=instance.id, Name=name,
                            Description=description, TagSpecifications=tag_spec("image", tags))["ImageId"]
            log.info("ec2: creating image %s (%s) from %s", image_id, name, instance.id)
            found = self._wait_image(image_id, region)
            self._tag_snapshots(found, region, tags)
        except BaseException:
            self._delete_images_named(name, region)  # by name: also if Ctrl-C cut the call short
            raise
        image = self._image(found, region, instance.distribution)
        image.source_image = instance.image_id
        return image

    def copy_image(self, image: Image, regions: list[str]) -> list[Image]:
        """Copy the AMI (with its tags) to each region and wait for every copy; on failure or Ctrl-C the
        copies made so far are deleted."""
        source_region = image.region or self.region
        tags = dict(image.tags)
        copies: list[tuple[str, str]] = []
        started: list[str] = []
        try:
            for region in regions:
                if region == source_region:
                    continue
                started.append(region)
                copy_id = call(self.clients, "copy_image", region, SourceImageId=image.id,
                               SourceRegion=source_region, Name=image.name,
                               Description=f"{TOOL} copy of {image.id} from {source_region}",
                               TagSpecifications=tag_spec("image", tags))["ImageId"]
                copies.append((copy_id, region))
                call(self.clients, "create_tags", region, Resources=[copy_id], Tags=aws_tags(tags))
                log.info("ec2: copying %s to %s as %s", image.id, region, copy_id)
            result = []
            for copy_id, region in copies:
                found = self._wait_image(copy_id, region)
                self._tag_snapshots(found, region, tags)
                copied = self._image(found, region, image.distribution)
                copied.source_image = image.id
                result.append(copied)
            return result
        except BaseException:
            for region in started:
                self._delete_images_named(image.name, region)
            raise

    def list_images(self, filters: dict[str, str] | None = None) -> list[Image]:
        """Images this tool made, in the region and the copy regions (so leftovers of a run are found)."""
        images = []
        for region in [self.region, *self.copy_regions()]:
            found = call(self.clients, "describe_images", region, Owners=["self"], Filters=tag_filters(filters))
            images += [self._image(i, region) for i in found.get("Images", [])]
        return images

    def delete_image(self, image: Image) -> None:
        """Deregister the AMI and delete its snapshots (nothing to do if it is gone)."""
        region = image.region or self.region
        found = self._describe_image(image.id, region)
        if found is None:
            return
        call(self.clients, "deregister_image", region, ignore_missing=True, ImageId=image.id)
        for snapshot in snapshots_of(found):
            call(self.clients, "delete_snapshot", region, ignore_missing=True, SnapshotId=snapshot)
        log.info("ec2: deleted image %s in %s", image.id, region)

    def copy_regions(self) -> list[str]:
        return [r for r in self.settings.copy_regions if r != self.region]

    def image_lines(self, images: list[Image]) -> list[str]:
        """`Image:<ami-id> <region>` per region: the Jenkins update procedure greps these."""
        return [f"Image:{image.id} {image.region or self.region}" for image in images]

    # -- instances ----------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Instance:
        """Run one instance (temporary key pair and security group unless configured) and wait until
        it runs and has an address. On any failure or Ctrl-C, everything made so far is removed."""
        tags = {**self.settings.tags, **spec.tags}  # the run's own tags win over extra ones
        undo: list[Callable[[], None]] = []
        extra: dict[str, Any] = {"temporary_key_pair": None, "temporary_security_group": None}
        try:
            key_name, key_file = self._key_pair(spec, tags, extra, undo)
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
                                key_file=str(key_file), region=self.region, image_id=spec.image.id,
                                created=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), tags=instance_tags,
                                extra=extra)
            return self._wait_state(instance, "running", self.settings.launch_timeout, new=True)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception as exc:  # keep undoing; say what could not be removed
                    log.error("ec2: cleanup after a failed launch: %s", exc)
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
        """Terminate, wait until terminated, then delete the run's temporary key pair and group."""
        region = instance.region or self.region
        self._terminate_and_wait(instance.id, region)
        extra = instance.extra or {}
        if extra.get("temporary_key_pair"):
            self._delete_key_pair(extra["temporary_key_pair"], region)
            for path in (Path(instance.key_file or ""), Path(f"{instance.key_file}.pub")):
                if instance.key_file and path.exists():
                    path.unlink()
        if extra.get("temporary_security_group"):
            self._delete_group(extra["temporary_security_group"], region)
        log.info("ec2: destroyed %s", instance.id)

    def list_instances(self, filters: dict[str, str] | None = None) -> list[Instance]:
        return [self._instance_of(i) for i in self._live_instances(filters)]

    def cleanup(self, keep_run_ids: set[str] = frozenset()) -> list[str]:
        """Terminate instances and delete key pairs and security groups tagged by this tool whose run
        is not kept (leftovers of crashed runs)."""
        removed: list[str] = []
        doomed = [i for i in self._live_instances(None) if run_of(i) not in keep_run_ids]
        for found in doomed:
            call(self.clients, "terminate_instances", ignore_missing=True, InstanceIds=[found["InstanceId"]])
            removed.append(f"ec2 instance {found['InstanceId']} (run {run_of(found)})")
        for found in doomed:
            self._terminate_and_wait(found["InstanceId"], self.region)
        pairs = call(self.clients, "describe_key_pairs", Filters=tag_filters(None)).get("KeyPairs", [])
        for pair in pairs:
            if run_of(pair) not in keep_run_ids:
                self._delete_key_pair(pair["KeyName"], self.region)
                removed.append(f"ec2 key pair {pair['KeyName']} (run {run_of(pair)})")
        groups = call(self.clients, "describe_security_groups", Filters=tag_filters(None))
        for group in groups.get("SecurityGroups", []):
            if run_of(group) not in keep_run_ids:
                self._delete_group(group["GroupId"], self.region)
                removed.append(f"ec2 security group {group['GroupId']} (run {run_of(group)})")
        return removed

    def describe(self) -> dict[str, Any]:
        return {"region": self.region, "endpoint": self.clients.endpoint(),
                "instance_type": self.settings.instance_type, "copy_regions": self.copy_regions()}

    def close(self) -> None:
        self.clients.close()

    # -- helpers: base images -------------------------------------------------------------
    def _selector(self, distribution) -> dict[str, str]:
        selector = distribution.selector("ec2")
        conf = self.settings.base_images.get(distribution.name)
        if conf is not None:
            selector.update({k: v for k, v in (("owner", conf.owner), ("name", conf.name)) if v})
        return selector

    def _newest(self, distribution) -> Image:
        selector = self._selector(distribution)
        found = call(self.clients, "describe_images", Owners=[selector["owner"]],
                     Filters=[{"Name": "name", "Values": [selector["name"]]},
                              {"Name": "state", "Values": ["available"]}]).get("Images", [])
        if not found:
            raise CloudError(f"ec2: no available AMI of owner {selector['owner']} matches "
                             f"{selector['name']!r} in {self.region}; set clouds.ec2.base_images."
                             f"{distribution.name}.name (a pattern) or .ami")
        newest = max(found, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))
        return self._image(newest, self.region, distribution.name)

    def _stale_message(self, distribution, ami: str, found: dict | None) -> str:
        what = "no longer exists" if found is None else f"is {found.get('State')}, not available"
        try:
            pick = self._newest(distribution)
            instead = f"the filter would pick {pick.id} ({pick.name}, {pick.created})"
        except CloudError:
            selector = self._selector(distribution)
            instead = f"the filter (owner {selector['owner']}, name {selector['name']!r}) matches nothing either"
        return (f"clouds.ec2.base_images.{distribution.name}.ami: {ami} {what} in {self.region}; "
                f"{instead}; remove the ami setting to use the filter")

    def _describe_image(self, image_id: str, region: str | None = None) -> dict | None:
        found = call(self.clients, "describe_images", region, ignore_missing=True, ImageIds=[image_id])
        images = found.get("Images", [])
        return images[0] if images else None

    def _image(self, found: dict, region: str, distribution: str | None = None) -> Image:
        tags = tag_dict(found.get("Tags"))
        return Image(id=found["ImageId"], cloud=self.name, name=found.get("Name", ""),
                     distribution=distribution or tags.get("cislaves:distribution"), region=region,
                     created=found.get("CreationDate"), run_id=tags.get(TAG_RUN),
                     state=found.get("State", "unknown"), tags=tags,
                     extra={"owner": found.get("OwnerId"), "root_device_name": found.get("RootDeviceName")})

    def _wait_image(self, image_id: str, region: str) -> dict:
        def probe():
            found = self._describe_image(image_id, region)
            last[0] = found.get("State", "?") if found else "not visible yet"
            if found and found.get("State") in ("failed", "invalid", "error", "deregistered"):
                reason = (found.get("StateReason") or {}).get("Message", "no reason given")
                raise CloudError(f"ec2: image {image_id} in {region} became {found['State']}: {reason}")
            return found if found and found.get("State") == "available" else None

        last = ["no answer yet"]
        return wait_for(probe, f"image {image_id} in {region} to become available", self.settings.image_timeout,
                        first_delay=0.1, max_delay=self.settings.poll_max_delay, describe=lambda: last[0])

    def _tag_snapshots(self, found: dict, region: str, tags: dict[str, str]) -> None:
        snapshots = snapshots_of(found)
        if snapshots:
            call(self.clients, "create_tags", region, Resources=snapshots, Tags=aws_tags(tags))

    def _delete_images_named(self, name: str, region: str) -> None:
        """Delete our AMIs of this (unique) name in the region: an unfinished image or copy."""
        try:
            found = call(self.clients, "describe_images", region, Owners=["self"],
                         Filters=[{"Name": "name", "Values": [name]}]).get("Images", [])
            for item in found:
                self.delete_image(Image(id=item["ImageId"], cloud=self.name, name=name, region=region))
        except Exception as exc:  # the original error matters more; cleanup by tag can finish this
            log.error("ec2: could not delete the unfinished image %r in %s: %s", name, region, exc)

    # -- helpers: launch --------------------------------------------------------------------
    def _key_pair(self, spec: LaunchSpec, tags, extra, undo) -> tuple[str, Path]:
        if self.settings.key_pair:
            key_file = Path(self.settings.key_filename).expanduser()
            if not key_file.is_file():
                raise ConfigError(f"AWS_KEY_FILENAME (clouds.ec2.key_filename): {key_file} is not a file; "
                                  f"expected the private key of key pair {self.settings.key_pair!r}")
            return self.settings.key_pair, key_file
        key_name = f"{spec.name}-{uuid.uuid4().hex[:6]}"
        key_file = Path(spec.key_dir) / key_name
        public = generate_keypair(key_file, comment=key_name)
        undo.append(lambda: [p.unlink() for p in (key_file, Path(f"{key_file}.pub")) if p.exists()])
        undo.append(lambda: self._delete_key_pair(key_name, self.region))  # even if interrupted mid-call
        call(self.clients, "import_key_pair", KeyName=key_name, PublicKeyMaterial=public.encode(),
             TagSpecifications=tag_spec("key-pair", tags))
        extra["temporary_key_pair"] = key_name
        return key_name, key_file

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
        undo.append(lambda: self._delete_group(group_id, self.region))
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

    def _live_instances(self, filters: dict[str, str] | None) -> list[dict]:
        wanted = tag_filters(filters) + [{"Name": "instance-state-name", "Values": LIVE_STATES}]
        pages = self.clients().get_paginator("describe_instances").paginate(Filters=wanted)
        try:
            return [i for page in pages for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        except Exception as exc:
            raise CloudError(f"ec2 describe_instances in {self.region} failed: {error_code(exc) or exc}") from None

    def _wait_state(self, instance: Instance, state: str, timeout: float, new: bool = False) -> Instance:
        """Wait for the instance's state. A `new` instance may be invisible at first (EC2's eventual
        consistency answers InvalidInstanceID.NotFound right after RunInstances)."""
        last = ["no answer yet"]

        def probe():
            found = self._describe_instance(instance.id, instance.region)
            last[0] = found["State"]["Name"] if found else ("not visible yet" if new else "gone")
            if found is None and new:
                return None
            if found is None or last[0] in ("terminated", "shutting-down"):
                reason = (found or {}).get("StateReason", {}).get("Message", "no reason given")
                raise CloudError(f"ec2: instance {instance.id} went away while waiting for {state}: {reason}")
            if last[0] != state:
                return None
            updated = self._updated(instance, found)
            return updated if state != "running" or updated.address else None

        return wait_for(probe, f"instance {instance.id} to be {state}", timeout, first_delay=0.1,
                        max_delay=self.settings.poll_max_delay, describe=lambda: last[0])

    def _updated(self, instance: Instance, found: dict) -> Instance:
        s = self.settings
        address = {"public_ip": found.get("PublicIpAddress"), "private_ip": found.get("PrivateIpAddress"),
                   "public_dns": found.get("PublicDnsName"),
                   "private_dns": found.get("PrivateDnsName")}[s.ssh_interface] or None
        port = instance.port
        if s.ssh_host:
            address, port = s.ssh_host, s.ssh_port
        proxy = expand_proxy(s.ssh_proxy_command, address or "", port) if s.ssh_proxy_command else None
        return dataclasses.replace(instance, state=found["State"]["Name"], address=address, port=port,
                                   proxy_command=proxy, jump_host=s.ssh_bastion or None,
                                   tags=tag_dict(found.get("Tags")) or instance.tags)

    def _instance_of(self, found: dict) -> Instance:
        tags = tag_dict(found.get("Tags"))
        bare = Instance(id=found["InstanceId"], cloud=self.name, name=tags.get("Name", ""),
                        distribution=tags.get("cislaves:distribution", ""), run_id=tags.get(TAG_RUN, ""),
                        region=self.region, image_id=found.get("ImageId"), tags=tags,
                        created=str(found.get("LaunchTime") or ""),
                        extra={key: tags.get(tag) for key, tag in TEMPORARY_TAGS.items()})
        return self._updated(bare, found)

    # -- helpers: deleting ------------------------------------------------------------------
    def _terminate_and_wait(self, instance_id: str, region: str) -> None:
        call(self.clients, "terminate_instances", region, ignore_missing=True, InstanceIds=[instance_id])

        def gone():
            found = self._describe_instance(instance_id, region)
            return found is None or found["State"]["Name"] == "terminated"

        wait_for(gone, f"instance {instance_id} to terminate", self.settings.destroy_timeout,
                 first_delay=0.1, max_delay=self.settings.poll_max_delay)

    def _terminate_tagged(self, tags: dict[str, str]) -> None:
        """Terminate (and wait for) the live instances carrying these tags."""
        for found in self._live_instances(tags):
            self._terminate_and_wait(found["InstanceId"], self.region)

    def _delete_key_pair(self, key_name: str, region: str) -> None:
        call(self.clients, "delete_key_pair", region, ignore_missing=True, KeyName=key_name)

    def _delete_group(self, group_id: str, region: str) -> None:
        """Delete a security group, retrying while AWS still sees a terminated instance using it."""
        def attempt():
            try:
                call(self.clients, "delete_security_group", region, ignore_missing=True, GroupId=group_id)
                return True
            except CloudError as exc:
                if "DependencyViolation" in str(exc):
                    last[0] = str(exc)
                    return None
                raise

        last = ["no attempt yet"]
        wait_for(attempt, f"security group {group_id} to be deletable", self.settings.destroy_timeout,
                 first_delay=0.2, max_delay=self.settings.poll_max_delay, describe=lambda: last[0])


def snapshots_of(found: dict) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in found.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]
