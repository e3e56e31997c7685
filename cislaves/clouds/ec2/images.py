"""EC2's image half of the cloud interface (a mixin of EC2Cloud): base AMIs, AMIs made from instances,
region copies, deleting AMIs with their snapshots.

An AMI being made carries `cislaves:unfinished` and an expiry no later than the end of its wait
(image_timeout): if the process dies before it is done, cleanup finds it by tag, and once that time
has passed it is anyone's to remove. When it is available, it gets its final tags (and so do its
snapshots) and loses the marker.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re

from cislaves import TOOL
from cislaves.clouds.base import (TAG_EXPIRES, TAG_OWNER, TAG_RUN, Image, Instance, Pending, isoformat,
                                  parse_time, utcnow, wait_for)
from cislaves.clouds.ec2.api import aws_tags, call, tag_dict, tag_filters, tag_spec
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)
TAG_UNFINISHED = "cislaves:unfinished"  # on an AMI (or copy) until it is available and tagged for good
FAILED_STATES = ("failed", "invalid", "error", "deregistered")
# AMI names: 3-128 characters of letters, digits and ()[] ./-'@_
AMI_NAME_BAD = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]")
# tags an image inherits from the instance it is made from when the caller does not give them
INHERITED = (TAG_OWNER, TAG_RUN)


class ImagesMixin:
    """The image operations of EC2Cloud (which provides name, region, settings and clients)."""

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
            raise CloudError(f"ec2: image {image_id} not found in {self.region}", cloud=self.name,
                             operation="get_image", code="InvalidAMIID.NotFound")
        return self._image(found, self.region)

    def create_image(self, instance: Instance, name: str, tags: dict[str, str]) -> Image:
        """Snapshot the instance into a uniquely named AMI and wait until it is available.

        If anything (including Ctrl-C) interrupts the wait, the half-made AMI and its snapshots are
        deleted before the error propagates."""
        region = instance.region or self.region
        inherited = {k: instance.tags[k] for k in INHERITED if instance.tags.get(k)}
        final = {**self.settings.tags, **inherited, **tags}
        name = ami_name(name, utcnow().strftime("%Y%m%dT%H%M%SZ"))
        description = f"{TOOL} {instance.distribution} from {instance.image_id or '?'} run {instance.run_id}"
        try:
            image_id = call(self.clients, "create_image", region, InstanceId=instance.id, Name=name,
                            Description=description,
                            TagSpecifications=tag_spec("image", self._making(final)))["ImageId"]
            log.info("ec2: creating image %s (%s) from %s", image_id, name, instance.id)
            found = self._wait_image(image_id, region)
            self._finish(found, region, final)
        except BaseException:
            self._delete_images_named(name, region)  # by name: also if Ctrl-C cut the call short
            raise
        image = self._image(found, region, instance.distribution)
        image.tags, image.source_image = final, instance.image_id
        return image

    def copy_image(self, image: Image, regions: list[str]) -> list[Image]:
        """Copy the AMI (with its tags) to each region and wait for every copy; on failure or Ctrl-C the
        copies made so far are deleted."""
        source_region = image.region or self.region
        final = {k: v for k, v in image.tags.items() if k != TAG_UNFINISHED}
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
                               TagSpecifications=tag_spec("image", self._making(final)))["ImageId"]
                copies.append((copy_id, region))
                # CopyImage's TagSpecifications are not honoured everywhere (moto): tag it at once
                call(self.clients, "create_tags", region, Resources=[copy_id], Tags=aws_tags(self._making(final)))
                log.info("ec2: copying %s to %s as %s", image.id, region, copy_id)
            result = []
            for copy_id, region in copies:
                found = self._wait_image(copy_id, region)
                self._finish(found, region, final)
                copied = self._image(found, region, image.distribution)
                copied.tags, copied.source_image = dict(final), image.id
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

    # -- helpers ------------------------------------------------------------------------------
    def _making(self, final: dict[str, str]) -> dict[str, str]:
        """The tags of an image still being made: the marker, and an expiry at the end of its wait."""
        limit = utcnow() + _dt.timedelta(seconds=self.settings.image_timeout)
        wanted = parse_time(final.get(TAG_EXPIRES))
        expires = isoformat(min(limit, wanted) if wanted else limit)
        return {**final, TAG_UNFINISHED: "true", TAG_EXPIRES: expires}

    def _finish(self, found: dict, region: str, final: dict[str, str]) -> None:
        """The image is available: final tags on it and its snapshots, the marker off."""
        call(self.clients, "create_tags", region, Resources=[found["ImageId"], *snapshots_of(found)],
             Tags=aws_tags(final))
        call(self.clients, "delete_tags", region, Resources=[found["ImageId"]], Tags=[{"Key": TAG_UNFINISHED}])

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
                             f"{distribution.name}.name (a pattern) or .ami", cloud=self.name,
                             operation="base_image", code="NoMatchingImage")
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
            if found is None:
                return Pending("not visible yet")
            if found.get("State") in FAILED_STATES:
                reason = (found.get("StateReason") or {}).get("Message", "no reason given")
                raise CloudError(f"ec2: image {image_id} in {region} became {found['State']}: {reason}",
                                 cloud=self.name, operation="create_image",
                                 code=(found.get("StateReason") or {}).get("Code") or f"Image.{found['State']}")
            return found if found.get("State") == "available" else Pending(found.get("State", "?"))

        return wait_for(probe, f"image {image_id} in {region} to become available", self.settings.image_timeout,
                        first_delay=0.1, max_delay=self.settings.poll_max_delay)

    def _delete_images_named(self, name: str, region: str) -> None:
        """Delete our AMIs of this (unique) name in the region: an unfinished image or copy."""
        try:
            found = call(self.clients, "describe_images", region, Owners=["self"],
                         Filters=[{"Name": "name", "Values": [name]}]).get("Images", [])
            for item in found:
                self.delete_image(Image(id=item["ImageId"], cloud=self.name, name=name, region=region))
        except Exception as exc:  # the original error matters more; `fab cleanup` finds it by its tags
            log.error("ec2: could not delete the unfinished image %r in %s: %s (it is tagged %s; "
                      "`fab cleanup:cloud=ec2` removes it)", name, region, exc, TAG_UNFINISHED)


def snapshots_of(found: dict) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in found.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]


def ami_name(name: str, stamp: str) -> str:
    """A valid, unique AMI name: EC2's characters only, with a UTC timestamp unless one is there."""
    name = AMI_NAME_BAD.sub("-", name).strip() or TOOL
    if not re.search(r"\d{8}[T-]?\d{6}", name):
        name = f"{name}-{stamp}"
    return name[-128:] if len(name) > 128 else name
