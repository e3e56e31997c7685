"""The EC2 requests of one `fab it:cloud=ec2` bake, sent by botocore alone: a floor for bench/ec2_vs_packer.py.

No cislaves code runs here: this process imports botocore, makes a session with the trimmed EC2
model folder cislaves generated (argv[1]; the cheapest way to make botocore's EC2 client that we
know, see cislaves/clouds/ec2/model.py) and sends the same 18 requests a bake sends, in its order and
with its waits answered at the first poll (moto answers `running` and `available` at once):
DescribeRegions, DescribeImages (the base filter), CreateSecurityGroup, AuthorizeSecurityGroupIngress,
RunInstances, DescribeInstances, CreateImage, DescribeImages, CreateTags, DeleteTags, CopyImage,
CreateTags, DescribeImages, CreateTags, DeleteTags, TerminateInstances, DescribeInstances,
DeleteSecurityGroup. Its wall time is what the bake's SDK and the cloud's answers cost at the least,
whatever the tool around them does.

Run by bench/ec2_vs_packer.py:  python bench/ec2_floor.py MODEL_FOLDER REGION COPY_REGION KEY_PAIR
(AWS_ENDPOINT_URL_EC2 and the credentials from the environment.)
"""
import sys
import time

import botocore.session

FILTER = {"owner": "136693071363", "name": "debian-12-amd64-*"}  # debian12's, as cislaves.distros says


def main() -> int:
    model, region, copy_region, key_pair = sys.argv[1:5]
    session = botocore.session.Session()
    session.get_component("data_loader").search_paths.insert(0, model)
    ec2 = session.create_client("ec2", region_name=region)
    run = f"floor-{time.time_ns()}"
    tags = [{"Key": "Name", "Value": run}]

    ec2.describe_regions(AllRegions=True)
    images = ec2.describe_images(Owners=[FILTER["owner"]], Filters=[{"Name": "name", "Values": [FILTER["name"]]},
                                                                    {"Name": "state", "Values": ["available"]}])
    base = max(images["Images"], key=lambda i: i["CreationDate"])
    group = ec2.create_security_group(GroupName=run, Description="floor",
                                      TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    instance = ec2.run_instances(ImageId=base["ImageId"], MinCount=1, MaxCount=1, InstanceType="t2.medium",
                                 KeyName=key_pair, SecurityGroupIds=[group],
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": tags}]
                                 )["Instances"][0]["InstanceId"]
    ec2.describe_instances(InstanceIds=[instance])
    image = ec2.create_image(InstanceId=instance, Name=run, NoReboot=True,
                             TagSpecifications=[{"ResourceType": "image", "Tags": tags}])["ImageId"]
    found = ec2.describe_images(ImageIds=[image])["Images"][0]
    snapshots = [m["Ebs"]["SnapshotId"] for m in found.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
    ec2.create_tags(Resources=[image, *snapshots], Tags=tags)
    ec2.delete_tags(Resources=[image], Tags=[{"Key": "unfinished"}])
    copier = session.create_client("ec2", region_name=copy_region)
    copy = copier.copy_image(SourceImageId=image, SourceRegion=region, Name=run)["ImageId"]
    copier.create_tags(Resources=[copy], Tags=tags)
    copier.describe_images(ImageIds=[copy])
    copier.create_tags(Resources=[copy], Tags=tags)
    copier.delete_tags(Resources=[copy], Tags=[{"Key": "unfinished"}])
    ec2.terminate_instances(InstanceIds=[instance])
    ec2.describe_instances(InstanceIds=[instance])
    ec2.delete_security_group(GroupId=group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
