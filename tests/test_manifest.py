"""The manifest as a Packer manifest reader sees it, and the conversion of the earlier shape.

Packer's post-processor/manifest types a manifest as ManifestFile{Builds []Artifact `builds`,
LastRunUUID string `last_run_uuid`} with Artifact{name, builder_type string; build_time int64;
files []ArtifactFile{name string, size int64} (null when none); artifact_id, packer_run_uuid string;
custom_data map[string]string}. The reader here checks exactly those types (what Go's json.Unmarshal
into those structs would refuse), and reads artifact_id the way Packer users do with jq."""
from __future__ import annotations

import json
import subprocess

import pytest

from cislaves import images
from cislaves.records import Image

RUN = "20261202-101500-ab12cd"


def packer_reader(path):
    """What a tool reading Packer's manifest structs gets; raises where Go's Unmarshal would fail."""
    data = json.loads(path.read_text())
    assert set(data) <= {"builds", "last_run_uuid"} and isinstance(data["last_run_uuid"], str)
    for build in data["builds"]:
        assert isinstance(build["name"], str) and isinstance(build["builder_type"], str)
        assert isinstance(build["build_time"], int)
        assert build["files"] is None or all(isinstance(f["name"], str) and isinstance(f["size"], int)
                                             for f in build["files"])
        assert isinstance(build["artifact_id"], str) and isinstance(build["packer_run_uuid"], str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in build["custom_data"].items())
    return data


def ec2_bake(path, run_id=RUN):
    made = [Image(id="ami-1", cloud="ec2", name="cislaves-debian12-x", region="us-east-1",
                  created="2026-12-02T10:20:00Z"),
            Image(id="ami-2", cloud="ec2", name="cislaves-debian12-x", region="us-west-2",
                  created="2026-12-02T10:25:00Z", extra={"copy_of": "ami-1"})]
    images.record(path, made, distribution="debian12", run_id=run_id, name="cislaves-debian12-x",
                  source_image="ami-base")
    return made


def test_a_bake_is_one_packer_build_with_its_region_copies_in_artifact_id(tmp_path):
    path = tmp_path / "manifest.json"
    ec2_bake(path)
    images.record(path, [Image(id="local-img-1", cloud="local", name="n")], distribution="debian12",
                  run_id="r2", name="n", source_image=None)
    data = packer_reader(path)
    first, second = data["builds"]
    assert first["artifact_id"] == "us-east-1:ami-1,us-west-2:ami-2"  # as amazon-ebs writes it
    assert first["builder_type"] == "cislaves-ec2" and first["packer_run_uuid"] == RUN
    assert first["custom_data"]["cloud"] == "ec2" and first["custom_data"]["run_id"] == RUN
    assert first["custom_data"]["source_image"] == "ami-base"
    assert second["artifact_id"] == "local-img-1" and data["last_run_uuid"] == "r2"
    # the jq line Packer's users run to get the AMI of a region
    jq = subprocess.run(["jq", "-r", '.builds[].artifact_id | split(",")[] | select(startswith("us-west-2:")) | split(":")[1]',
                         str(path)], capture_output=True, text=True, check=True)
    assert jq.stdout.split() == ["ami-2"]
    newest = subprocess.run(["jq", "-r", '.builds[-1].artifact_id | split(",")[0] | split(":")[-1]', str(path)],
                            capture_output=True, text=True, check=True)  # docs/bakes.md's line
    assert newest.stdout.strip() == "local-img-1"


def test_records_give_one_flat_record_per_image_and_marks_are_strings_in_custom_data(tmp_path):
    path = tmp_path / "manifest.json"
    ec2_bake(path)
    images.mark(path, ["ami-2"], validated=True, published="/x/all.yaml")  # any id of the build marks it
    assert packer_reader(path)["builds"][0]["custom_data"]["validated"] == "true"
    one, two = images.records(path)
    assert (one["artifact_id"], one["region"], one["copy_of"], one["created"]) == \
        ("ami-1", "us-east-1", None, "2026-12-02T10:20:00Z")
    assert (two["artifact_id"], two["region"], two["copy_of"], two["created"]) == \
        ("ami-2", "us-west-2", "ami-1", "2026-12-02T10:25:00Z")
    assert all(r["validated"] is True and r["published"] == "/x/all.yaml" and r["cloud"] == "ec2"
               and r["distribution"] == "debian12" and r["run_id"] == RUN for r in (one, two))
    images.forget(path, ["ami-1"])  # retention deleted one region: the copy stays a copy
    (left,) = images.records(path)
    assert (left["artifact_id"], left["copy_of"]) == ("ami-2", "ami-1")
    assert packer_reader(path)["builds"][0]["artifact_id"] == "us-west-2:ami-2"
    images.forget(path, ["ami-2"])
    assert packer_reader(path)["builds"] == []


OLD = {"builds": [
    {"name": "cislaves-debian12-a", "cloud": "ec2", "region": "us-east-1", "distribution": "debian12",
     "artifact_id": "ami-1", "build_time": 1764670000, "created": "2026-12-02T10:20:00Z", "run_id": "r1",
     "source_image": "ami-base", "copy_of": None, "validated": True, "published": "/p/all.yaml"},
    {"name": "cislaves-debian12-a", "cloud": "ec2", "region": "eu-west-1", "distribution": "debian12",
     "artifact_id": "ami-3", "build_time": 1764670000, "created": "2026-12-02T10:30:00Z", "run_id": "r1",
     "source_image": "ami-base", "copy_of": "ami-1", "validated": True, "published": "/p/all.yaml"},
    {"name": "cislaves-debian12-b", "cloud": "local", "region": None, "distribution": "debian12",
     "artifact_id": "local-7", "build_time": 1764680000, "created": "2026-12-02T13:00:00Z", "run_id": "r2",
     "source_image": "local-debian12-base-bookworm", "copy_of": None},
    {"name": "cislaves-debian12-c", "cloud": "ec2", "region": "us-west-2", "distribution": "debian12",
     "artifact_id": "ami-9", "build_time": 1764690000, "created": "2026-12-02T14:00:00Z", "run_id": "r3",
     "source_image": "ami-base", "copy_of": "ami-8"},  # its baked image was forgotten by retention
], "last_run_uuid": "r3"}


def test_an_old_manifest_reads_as_before_and_is_written_back_in_packer_shape(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(OLD))
    expected = [dict(b) for b in OLD["builds"]]
    assert images.records(path) == expected  # every reader sees what it saw before
    assert json.loads(path.read_text()) == OLD  # reading changes nothing on disk
    images.mark(path, ["local-7"], validated=True)  # the next write converts
    data = packer_reader(path)
    assert [b["artifact_id"] for b in data["builds"]] == ["us-east-1:ami-1,eu-west-1:ami-3", "local-7",
                                                          "us-west-2:ami-9"]
    assert data["last_run_uuid"] == "r3" and data["builds"][0]["build_time"] == 1764670000
    expected[2]["validated"] = True
    assert images.records(path) == expected
    ec2_bake(path, run_id="r4")
    assert [r["artifact_id"] for r in images.records(path)][-2:] == ["ami-1", "ami-2"]


def test_another_tools_packer_build_in_the_file_is_kept_and_skipped(tmp_path):
    path = tmp_path / "manifest.json"
    packer = {"name": "amazon-ebs", "builder_type": "amazon-ebs", "build_time": 1485460577, "files": None,
              "artifact_id": "us-east-1:ami-0f4", "packer_run_uuid": "6d5d3185-fa95-44e1-8775-9e64fe2e2d8f"}
    path.write_text(json.dumps({"builds": [packer], "last_run_uuid": packer["packer_run_uuid"]}))
    ec2_bake(path)
    assert [r["artifact_id"] for r in images.records(path)] == ["ami-1", "ami-2"]
    images.forget(path, ["ami-1", "ami-2", "ami-0f4"])  # ours only: Packer's build is not ours to drop
    assert json.loads(path.read_text())["builds"][0]["artifact_id"] == "us-east-1:ami-0f4"


@pytest.mark.parametrize("content", ['{"builds": [{"custom_data": "x"}]}', '{"builds": {"a": 1}}', "[]"])
def test_a_wrong_shape_is_one_manifest_error(tmp_path, content):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(images.ManifestError, match="expected an object with a 'builds' list of objects"):
        images.records(path)
