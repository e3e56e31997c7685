"""The trimmed EC2 model (cislaves/clouds/ec2/model.py): it covers every operation the driver calls,
its shapes are the installed botocore's, a client on it answers every one of them against moto, and
an absent, damaged or incomplete copy falls back to botocore's full model."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from botocore import xform_name

from cislaves.clouds.ec2 import model
from cislaves.clouds.ec2.api import Clients, call, pages
from cislaves.clouds.ec2.settings import Settings
from cislaves.errors import CloudError
from cislaves.keys import generate_keypair

DRIVER = Path(model.__file__).parent
NAMED = re.compile(r'\b(?:call|pages)\(\s*[\w.]+,\s*"(\w+)"')


def clients(moto_url: str, cache_root: Path | None) -> Clients:
    settings = Settings.model_validate({"region": "us-west-2", "endpoint_url": moto_url, "max_attempts": 2})
    return Clients(settings, cache_root)


def trimmed_file(cache_root: Path) -> Path:
    return next(cache_root.glob("*/ec2/*/service-2.json"))


def test_operations_cover_every_call_of_the_driver():
    named = {name for path in DRIVER.glob("*.py") for name in NAMED.findall(path.read_text())}
    assert len(named) >= 20, named  # the pattern still finds the driver's calls
    assert named == {xform_name(op) for op in model.OPERATIONS}


def test_shapes_are_the_installed_botocores(moto_url, tmp_path):
    trimmed, full = clients(moto_url, tmp_path), clients(moto_url, None)
    try:
        small, big = trimmed().meta.service_model, full().meta.service_model
        assert sorted(small.operation_names) == sorted(model.OPERATIONS)
        assert len(big.operation_names) > 10 * len(model.OPERATIONS)
        for op in model.OPERATIONS:
            mine, theirs = small.operation_model(op), big.operation_model(op)
            assert tree(mine.input_shape) == tree(theirs.input_shape), op
            assert tree(mine.output_shape) == tree(theirs.output_shape), op
            assert mine.http == theirs.http, op
        assert small.metadata == big.metadata
        paginated = {op for op in model.OPERATIONS if full().can_paginate(xform_name(op))}
        assert paginated and {op for op in model.OPERATIONS if trimmed().can_paginate(xform_name(op))} == paginated
    finally:
        trimmed.close()
        full.close()


def test_endpoints_resolve_as_botocores_for_the_kept_services(tmp_path):
    """Every region of every partition: EC2's (and the credential providers' services') endpoint data,
    the partitions and region lists are what botocore's full endpoints.json gives."""
    from botocore.loaders import Loader
    from botocore.regions import EndpointResolver

    folder = model.data_path(tmp_path)
    full_data = Loader().load_data("endpoints")
    mine_data = json.loads((folder / "endpoints.json").read_text())
    assert len(json.dumps(mine_data)) < len(json.dumps(full_data)) / 10
    full, mine = EndpointResolver(full_data), EndpointResolver(mine_data)
    assert mine.get_available_partitions() == full.get_available_partitions()
    checked = 0
    for partition in full_data["partitions"]:
        name = partition["partition"]
        regions = sorted({*partition["regions"], *partition["services"]["ec2"].get("endpoints", {})})
        assert mine_data["partitions"][full.get_available_partitions().index(name)]["regions"] == partition["regions"]
        for service in model.ENDPOINTS:
            assert mine.get_available_endpoints(service, name) == full.get_available_endpoints(service, name)
            assert mine.get_available_endpoints(service, name, True) == full.get_available_endpoints(service, name, True)
            for region in regions:
                assert mine.construct_endpoint(service, region) == full.construct_endpoint(service, region), \
                    (service, region)
                checked += 1
    assert checked > 100


def test_trimmed_client_answers_every_operation_against_moto(moto_url, tmp_path):
    ec2 = clients(moto_url, tmp_path)
    try:
        assert len(ec2().meta.service_model.operation_names) == len(model.OPERATIONS)
        exercise(ec2, tmp_path.name, tmp_path / "keys")
        assert set(ec2.calls) == set(model.OPERATIONS)
    finally:
        ec2.close()


def test_generated_once_and_reused(moto_url, tmp_path):
    first = clients(moto_url, tmp_path)
    path = trimmed_file(tmp_path)
    written = path.stat().st_mtime_ns
    second = clients(moto_url, tmp_path)
    assert first.model_path == second.model_path and path.stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir()] == [first.model_path.name]  # no staging folder left


@pytest.mark.parametrize("damage", ["truncated", "not an object", "an operation missing", "endpoints truncated"])
def test_damaged_copy_falls_back_to_the_full_model(moto_url, tmp_path, caplog, damage):
    clients(moto_url, tmp_path).close()
    path = trimmed_file(tmp_path)
    text = path.read_text()
    if damage == "endpoints truncated":
        endpoints = path.parents[2] / "endpoints.json"
        endpoints.write_text(endpoints.read_text()[:1000])
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "not an object":
        path.write_text("[]")
    else:
        data = json.loads(text)
        del data["operations"]["CopyImage"]
        path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="cislaves.clouds.ec2.api"):
        ec2 = clients(moto_url, tmp_path)
        try:
            assert len(ec2().meta.service_model.operation_names) > 10 * len(model.OPERATIONS)
            exercise(ec2, f"{tmp_path.name}-{len(damage)}", tmp_path / "keys")
        finally:
            ec2.close()
    assert "unusable" in caplog.text and "full model" in caplog.text
    assert not path.exists()  # discarded: the next bake regenerates it
    again = clients(moto_url, tmp_path)
    assert len(again().meta.service_model.operation_names) == len(model.OPERATIONS)
    again.close()


def test_no_cache_or_an_unwritable_one_uses_the_full_model(moto_url, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for root in (None, blocker):
        ec2 = clients(moto_url, root)
        try:
            assert ec2.model_path is None
            assert len(ec2().meta.service_model.operation_names) > 10 * len(model.OPERATIONS)
            assert call(ec2, "describe_key_pairs")["KeyPairs"] is not None
        finally:
            ec2.close()
    assert "cannot write the trimmed botocore model" in caplog.text


def exercise(ec2: Clients, name: str, key_dir: Path) -> None:
    """Call every operation of model.OPERATIONS on moto, the way the driver does (call / pages)."""
    public = generate_keypair(key_dir / name)
    call(ec2, "import_key_pair", KeyName=name, PublicKeyMaterial=public.encode())
    assert [k["KeyName"] for k in call(ec2, "describe_key_pairs", KeyNames=[name])["KeyPairs"]] == [name]
    group = call(ec2, "create_security_group", GroupName=name, Description="trimmed model test")["GroupId"]
    call(ec2, "authorize_security_group_ingress", GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "127.0.0.1/32"}]}])
    assert [g["GroupId"] for g in pages(ec2, "describe_security_groups", "SecurityGroups", GroupIds=[group])] == [group]
    assert "eu-west-1" in {r["RegionName"] for r in call(ec2, "describe_regions", AllRegions=True)["Regions"]}
    subnet = call(ec2, "describe_subnets")["Subnets"][0]["SubnetId"]
    assert call(ec2, "describe_subnets", SubnetIds=[subnet])["Subnets"][0]["SubnetId"] == subnet
    image = call(ec2, "describe_images", Owners=["136693071363"])["Images"][0]["ImageId"]
    run = call(ec2, "run_instances", ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro",
               KeyName=name, SecurityGroupIds=[group],
               TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "test", "Value": name}]}])
    instance = run["Instances"][0]["InstanceId"]
    found = pages(ec2, "describe_instances", "Reservations", InstanceIds=[instance])
    assert found[0]["Instances"][0]["Tags"] == [{"Key": "test", "Value": name}]
    assert call(ec2, "stop_instances", InstanceIds=[instance])["StoppingInstances"][0]["InstanceId"] == instance
    assert call(ec2, "start_instances", InstanceIds=[instance])["StartingInstances"][0]["InstanceId"] == instance
    ami = call(ec2, "create_image", InstanceId=instance, Name=name)["ImageId"]
    call(ec2, "create_tags", Resources=[ami], Tags=[{"Key": "cislaves:unfinished", "Value": "1"}])
    call(ec2, "delete_tags", Resources=[ami], Tags=[{"Key": "cislaves:unfinished"}])
    mine = call(ec2, "describe_images", ImageIds=[ami])["Images"][0]
    assert mine["Name"] == name and "Tags" not in mine or mine["Tags"] == []
    copy = call(ec2, "copy_image", "eu-west-1", SourceImageId=ami, SourceRegion="us-west-2", Name=name)["ImageId"]
    call(ec2, "deregister_image", "eu-west-1", ImageId=copy)
    snapshots = [m["Ebs"]["SnapshotId"] for m in mine["BlockDeviceMappings"] if "Ebs" in m]
    assert snapshots and {s["SnapshotId"] for s in pages(ec2, "describe_snapshots", "Snapshots",
                                                         OwnerIds=["self"])} >= set(snapshots)
    call(ec2, "deregister_image", ImageId=ami)
    for snapshot in snapshots:
        call(ec2, "delete_snapshot", SnapshotId=snapshot)
    volumes = pages(ec2, "describe_volumes", "Volumes", Filters=[{"Name": "attachment.instance-id",
                                                                   "Values": [instance]}])
    assert volumes
    call(ec2, "terminate_instances", InstanceIds=[instance])
    assert call(ec2, "delete_volume", ignore_missing=True, VolumeId="vol-0000000000000000f") == {}
    with pytest.raises(CloudError) as missing:
        call(ec2, "delete_volume", VolumeId="vol-0000000000000000f")
    assert missing.value.code == "InvalidVolume.NotFound"
    call(ec2, "delete_security_group", GroupId=group)
    call(ec2, "delete_key_pair", KeyName=name)


def tree(shape, seen=None):
    """A shape as plain data (type, members, serialization), documentation aside; recursion-safe."""
    if shape is None:
        return None
    seen = set() if seen is None else seen
    if shape.name in seen:
        return shape.name
    seen = seen | {shape.name}
    node = {"name": shape.name, "type": shape.type_name, "serialization": shape.serialization,
            "metadata": {k: v for k, v in shape.metadata.items() if k != "documentation"}}
    if shape.type_name == "structure":
        node["members"] = {k: tree(v, seen) for k, v in shape.members.items()}
    elif shape.type_name == "list":
        node["member"] = tree(shape.member, seen)
    elif shape.type_name == "map":
        node["key"], node["value"] = tree(shape.key, seen), tree(shape.value, seen)
    return node
