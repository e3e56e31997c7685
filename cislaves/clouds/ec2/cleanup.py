"""`fab cleanup` on EC2: remove the tool's resources that the cleanup policy allows, and say what went.

One pass over each kind the driver makes, in the order that lets the next one go: instances (all
terminated first, then waited for), key pairs, security groups, detached volumes, unfinished AMIs
(region and copy regions) and snapshots no AMI uses any more. Which ones is CleanupPolicy's rule
alone (this owner's ended runs, anything expired, every owner with all_owners); on top of it, a key
pair or group that an instance we leave running still uses is left for later, never forced.
"""
from __future__ import annotations

import logging

from cislaves.clouds.base import TAG_RUN, CleanupPolicy, Image
from cislaves.clouds.ec2.api import call, pages, tag_dict, tag_filters
from cislaves.clouds.ec2.images import TAG_UNFINISHED, snapshots_of
from cislaves.errors import CloudError

log = logging.getLogger(__name__)


def cleanup(cloud, policy: CleanupPolicy) -> list[str]:
    """Remove and list (one line each: "instance i-1 (run R: expired)") what `policy` allows."""
    removed: list[str] = []
    region = cloud.region
    doomed, spared = [], []
    for found in cloud.live_instances(None):
        (doomed if policy.removable(tag_dict(found.get("Tags"))) else spared).append(found)
    cloud.terminate_and_wait([i["InstanceId"] for i in doomed], region)
    removed += [line("instance", i["InstanceId"], i, policy) for i in doomed]
    # what instances we leave alone still use (ours or not) is not ours to take from them
    others = [i for i in cloud.live_instances(None, tool_only=False)
              if i["InstanceId"] not in {d["InstanceId"] for d in doomed}]
    used_keys = {i.get("KeyName") for i in others}
    used_groups = {g["GroupId"] for i in others for g in i.get("SecurityGroups", [])}

    for pair in call(cloud.clients, "describe_key_pairs", region, Filters=tag_filters(None)).get("KeyPairs", []):
        if policy.removable(tag_dict(pair.get("Tags"))):
            if pair["KeyName"] in used_keys:
                log.info("ec2 cleanup: key pair %s is still used by a running instance; left", pair["KeyName"])
                continue
            cloud.delete_key_pair(pair["KeyName"], region)
            removed.append(line("key pair", pair["KeyName"], pair, policy))
    for group in pages(cloud.clients, "describe_security_groups", "SecurityGroups", region,
                       Filters=tag_filters(None)):
        if policy.removable(tag_dict(group.get("Tags"))):
            if group["GroupId"] in used_groups:
                log.info("ec2 cleanup: security group %s is still used by a running instance; left",
                         group["GroupId"])
                continue
            cloud.delete_group(group["GroupId"], region)
            removed.append(line("security group", group["GroupId"], group, policy))
    for volume in pages(cloud.clients, "describe_volumes", "Volumes", region,
                        Filters=tag_filters(None) + [{"Name": "status", "Values": ["available"]}]):
        if policy.removable(tag_dict(volume.get("Tags"))):
            call(cloud.clients, "delete_volume", region, ignore_missing=True, VolumeId=volume["VolumeId"])
            removed.append(line("volume", volume["VolumeId"], volume, policy))
    for image_region in [region, *cloud.copy_regions()]:
        removed += _images(cloud, policy, image_region)
    return removed


def line(kind: str, ident: str, resource: dict, policy: CleanupPolicy) -> str:
    tags = tag_dict(resource.get("Tags"))
    return f"{kind} {ident} (run {tags.get(TAG_RUN, '?')}: {policy.reason(tags)})"


def _images(cloud, policy: CleanupPolicy, region: str) -> list[str]:
    """Unfinished AMIs (never a finished one: those are results, kept by the manifest's retention), then
    tool-tagged snapshots that no AMI of this account uses (a deletion cut short)."""
    removed = []
    unfinished = call(cloud.clients, "describe_images", region, Owners=["self"],
                      Filters=tag_filters(None) + [{"Name": "tag-key", "Values": [TAG_UNFINISHED]}])
    for found in unfinished.get("Images", []):
        if policy.removable(tag_dict(found.get("Tags"))):
            cloud.delete_image(Image(id=found["ImageId"], cloud=cloud.name, name=found.get("Name", ""),
                                     region=region))
            removed.append(line("image", found["ImageId"], found, policy) + ("" if region == cloud.region
                                                                            else f" in {region}"))
    snapshots = pages(cloud.clients, "describe_snapshots", "Snapshots", region, OwnerIds=["self"],
                      Filters=tag_filters(None))
    if snapshots:
        images = call(cloud.clients, "describe_images", region, Owners=["self"]).get("Images", [])
        used = {s for image in images for s in snapshots_of(image)}
        for snapshot in snapshots:
            if snapshot["SnapshotId"] not in used and policy.removable(tag_dict(snapshot.get("Tags"))):
                try:
                    call(cloud.clients, "delete_snapshot", region, ignore_missing=True,
                         SnapshotId=snapshot["SnapshotId"])
                except CloudError as exc:
                    if exc.code != "InvalidSnapshot.InUse":  # an AMI registered meanwhile: it stays
                        raise
                    continue
                removed.append(line("snapshot", snapshot["SnapshotId"], snapshot, policy)
                               + ("" if region == cloud.region else f" in {region}"))
    return removed
