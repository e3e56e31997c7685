"""moto's EC2 server for the tests and the benchmark: one per session, with a small AMI catalog.

The catalog (given to moto through MOTO_AMIS_PATH, in moto's own amis.json format) holds base images
under the real owners of cislaves' distribution selectors, plus decoys the selectors must not pick
(another owner, another architecture). moto 5.2.1 cannot load catalog creation dates (its second
region backend fails to re-parse them), so tests that care about "newest" give dates through the
proxy (EC2Proxy.creation_dates), which rewrites DescribeImages answers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

CENTOS_OWNER = "125523088429"
UBUNTU_OWNER = "099720109477"
DEBIAN_OWNER = "136693071363"

# id, owner, name, architecture
CATALOG = [
    ("ami-0c7e000000000701", CENTOS_OWNER, "CentOS 7.8.2003 x86_64", "x86_64"),
    ("ami-0c7e000000000702", CENTOS_OWNER, "CentOS 7.9.2009 x86_64", "x86_64"),
    ("ami-0c7e000000000703", CENTOS_OWNER, "CentOS 7.9.2009 aarch64", "arm64"),
    ("ami-0c7e000000000799", "111122223333", "CentOS 7.9.2009 x86_64 (not the CentOS project)", "x86_64"),
    ("ami-0b14000000001401", UBUNTU_OWNER, "ubuntu/images/hvm-ssd/ubuntu-trusty-14.04-amd64-server-20190514", "x86_64"),
    ("ami-0b14000000001402", UBUNTU_OWNER, "ubuntu/images/hvm-ssd/ubuntu-trusty-14.04-amd64-server-20191107", "x86_64"),
    ("ami-0deb000000001201", DEBIAN_OWNER, "debian-12-amd64-20240102-1614", "x86_64"),
    ("ami-0deb000000001202", DEBIAN_OWNER, "debian-12-amd64-20250210-2019", "x86_64"),
]
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
# Variables that would point boto3 elsewhere (a developer's profile, a real endpoint).
FOREIGN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_EC2", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_KEY_PAIR", "AWS_KEY_FILENAME",
           "AWS_INSTANCE_TYPE")


def write_catalog(path: Path) -> Path:
    entries = [{"ami_id": ami, "state": "available", "public": True, "owner_id": owner,
                "image_location": f"{owner}/{name}", "sriov": "simple", "root_device_type": "ebs",
                "root_device_name": "/dev/xvda" if owner == DEBIAN_OWNER else "/dev/sda1",
                "description": name, "image_type": "machine", "platform": None, "architecture": arch,
                "name": name, "virtualization_type": "hvm", "hypervisor": "xen"}
               for ami, owner, name, arch in CATALOG]
    path.write_text(json.dumps(entries))
    return path


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """Run moto's EC2 server on 127.0.0.1 (a free port) with the catalog and test credentials in the
    environment (restored afterwards); yield its URL."""
    catalog = write_catalog(Path(workdir) / "amis.json")
    loaded = sys.modules.get("moto.ec2.models.amis")
    if loaded is not None and os.environ.get("MOTO_AMIS_PATH") != str(catalog):
        raise RuntimeError("moto's EC2 models were imported before the test catalog was set")
    saved = {k: os.environ.get(k) for k in (*FOREIGN, *TEST_CREDENTIALS, "MOTO_AMIS_PATH",
                                            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
    for key in FOREIGN:
        os.environ.pop(key, None)
    os.environ.update(TEST_CREDENTIALS, MOTO_AMIS_PATH=str(catalog),
                      AWS_CONFIG_FILE=str(Path(workdir) / "no-aws-config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(Path(workdir) / "no-aws-credentials"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def leftovers(url: str, run_id: str, regions: tuple[str, ...] = ("us-west-2",)) -> list[str]:
    """What of a run is still alive in moto: instances not terminated, key pairs, security groups,
    volumes, images and snapshots tagged with the run id."""
    import boto3

    run = [{"Name": "tag:cislaves:run-id", "Values": [run_id]}]
    found: list[str] = []
    for region in regions:
        ec2 = boto3.client("ec2", region_name=region, endpoint_url=url)
        for r in ec2.describe_instances(Filters=run)["Reservations"]:
            found += [f"{region} instance {i['InstanceId']} {i['State']['Name']}" for i in r["Instances"]
                      if i["State"]["Name"] != "terminated"]
        found += [f"{region} key pair {k['KeyName']}" for k in ec2.describe_key_pairs(Filters=run)["KeyPairs"]]
        found += [f"{region} security group {g['GroupId']}"
                  for g in ec2.describe_security_groups(Filters=run)["SecurityGroups"]]
        found += [f"{region} volume {v['VolumeId']}" for v in ec2.describe_volumes(Filters=run)["Volumes"]]
        found += [f"{region} image {i['ImageId']}" for i in ec2.describe_images(Owners=["self"], Filters=run)["Images"]]
        found += [f"{region} snapshot {s['SnapshotId']}"
                  for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=run)["Snapshots"]]
    return found


def image_of_new_instance(cloud, distribution, key_dir: Path, name: str, before_image=None):
    """Launch an instance, make an image of it (calling before_image() first, e.g. to arm the proxy),
    and destroy the instance whatever happens; return (spec, image)."""
    from cislaves.clouds.base import standard_tags
    from tests.contract import make_spec

    spec = make_spec(cloud, distribution, key_dir)
    instance = cloud.launch(spec)
    try:
        if before_image is not None:
            before_image()
        return spec, cloud.create_image(instance, name, standard_tags(spec.run_id, distribution.name, "image"))
    finally:
        cloud.destroy(instance)


def unfinished_image(proxy, cloud, instance, spec, name):
    """An AMI whose wait timed out and whose removal failed (as if the process died meanwhile); the
    cloud must have max_attempts=1 (no retry of the failed DeregisterImage) and a short image_timeout."""
    from cislaves.clouds.base import TAG_OWNER, standard_tags
    from cislaves.errors import WaitTimeout

    proxy.hold_pending()
    proxy.fail("DeregisterImage", 1, code="InternalError", status=500)
    try:
        cloud.create_image(instance, name, standard_tags(spec.run_id, instance.distribution, "image",
                                                         owner=spec.tags[TAG_OWNER]))
    except WaitTimeout:
        pass
    else:
        raise AssertionError("the image wait did not time out")
    finally:
        proxy.release()
    return name
