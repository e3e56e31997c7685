"""Base-image selection, image creation, region copies and image lines, against moto."""
import boto3
import pytest

from cislaves import distros
from cislaves.clouds.base import TAG_DISTRIBUTION, TAG_EXPIRES, TAG_OWNER, TAG_RUN, TAG_TOOL, standard_tags
from cislaves.errors import ConfigError
from tests.contract import OWNER, make_spec
from tests.ec2.moto_env import CENTOS_OWNER, image_of_new_instance

CENTOS_78, CENTOS_79, CENTOS_ARM, IMPOSTOR = ("ami-0c7e000000000701", "ami-0c7e000000000702",
                                               "ami-0c7e000000000703", "ami-0c7e000000000799")


def test_newest_match_wins_by_creation_date_among_the_owners_images_of_the_pattern(proxy, make_cloud, centos7):
    cloud = make_cloud(proxy.url)
    proxy.creation_dates.update({CENTOS_78: "2020-04-27T10:00:00.000Z", CENTOS_79: "2020-11-12T10:00:00.000Z",
                                 CENTOS_ARM: "2021-01-01T00:00:00.000Z", IMPOSTOR: "2024-01-01T00:00:00.000Z"})
    image = cloud.base_image(centos7)
    assert (image.id, image.name, image.state) == (CENTOS_79, "CentOS 7.9.2009 x86_64", "available")
    assert image.extra["owner"] == CENTOS_OWNER and image.region == "us-west-2"
    proxy.creation_dates[CENTOS_78] = "2022-02-02T00:00:00.000Z"  # a newer rebuild of an older name
    assert cloud.base_image(centos7).id == CENTOS_78


@pytest.mark.parametrize("name, owner", [("ubuntu14.04", "099720109477"), ("debian12", "136693071363")])
def test_catalog_selectors_find_their_images(make_cloud, name, owner):
    image = make_cloud().base_image(distros.get(name))
    assert image.extra["owner"] == owner
    assert image.distribution == name


def test_configured_name_pattern_and_ami_override_the_catalog(make_cloud, centos7):
    by_name = make_cloud(base_images={"centos7": {"name": "CentOS 7.8*"}})
    assert by_name.base_image(centos7).id == CENTOS_78
    by_id = make_cloud(base_images={"centos7": {"ami": CENTOS_78}})
    assert by_id.base_image(centos7).id == CENTOS_78


def test_stale_configured_ami_is_one_line_naming_the_filters_pick_and_creates_nothing(proxy, make_cloud, centos7):
    cloud = make_cloud(proxy.url, base_images={"centos7": {"ami": "ami-00000000deadbeef"}})
    proxy.creation_dates.update({CENTOS_78: "2020-04-27T10:00:00.000Z", CENTOS_79: "2020-11-12T10:00:00.000Z"})
    with pytest.raises(ConfigError) as err:
        cloud.base_image(centos7)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("clouds.ec2.base_images.centos7.ami: ami-00000000deadbeef no longer exists in us-west-2")
    assert f"the filter would pick {CENTOS_79} (CentOS 7.9.2009 x86_64" in message
    assert set(proxy.actions) == {"DescribeRegions", "DescribeImages"}  # the region check, then the lookup


def test_deregistered_configured_ami_is_stale_too(make_cloud, centos7, tmp_path):
    cloud = make_cloud()
    _, image = image_of_new_instance(cloud, centos7, tmp_path / "keys", "old-base")
    cloud.delete_image(image)
    stale = make_cloud(base_images={"centos7": {"ami": image.id}})
    with pytest.raises(ConfigError, match=f"{image.id} no longer exists .* the filter would pick ami-"):
        stale.base_image(centos7)


def test_filter_matching_nothing_says_what_to_set(make_cloud, centos7):
    cloud = make_cloud(base_images={"centos7": {"name": "CentOS 6*"}})
    with pytest.raises(Exception, match=r"no available AMI of owner 125523088429 matches 'CentOS 6\*' in "
                                        r"us-west-2; set clouds.ec2.base_images.centos7"):
        cloud.base_image(centos7)


def test_create_image_names_tags_copies_and_lines(make_cloud, centos7, tmp_path, moto_url, left):
    regions = ["eu-west-1", "ap-southeast-2"]
    cloud = make_cloud(copy_regions=regions + ["us-west-2"], tags={"team": "ci"})
    assert cloud.copy_regions() == regions
    spec = make_spec(cloud, centos7, tmp_path / "keys")
    instance = cloud.launch(spec)
    try:
        tags = standard_tags(spec.run_id, "centos7", "image", name="cislaves-centos7")
        image = cloud.create_image(instance, "cislaves-centos7-20261122-010203", tags)
        copies = cloud.copy_image(image, cloud.copy_regions())
    finally:
        cloud.destroy(instance)
    assert image.name == "cislaves-centos7-20261122-010203" and image.state == "available"
    assert image.source_image == spec.image.id
    for made in [image, *copies]:
        assert made.tags[TAG_RUN] == spec.run_id and made.tags[TAG_TOOL] == "cislaves"
        assert made.tags[TAG_DISTRIBUTION] == "centos7" and made.tags["team"] == "ci"
        assert made.tags["Name"] == "cislaves-centos7"
        found = boto3.client("ec2", region_name=made.region, endpoint_url=moto_url).describe_images(
            ImageIds=[made.id])["Images"][0]
        real = {t["Key"]: t["Value"] for t in found["Tags"]}
        assert real[TAG_OWNER] == OWNER and "cislaves:unfinished" not in real  # inherited from the instance
        assert real[TAG_EXPIRES] == tags[TAG_EXPIRES]  # the final expiry, not the unfinished one
    assert [(c.region, c.source_image) for c in copies] == [(r, image.id) for r in regions]
    assert cloud.image_lines([image, *copies]) == [f"Image:{image.id} us-west-2"] + [
        f"Image:{c.id} {c.region}" for c in copies]
    remaining = left(spec.run_id, ("us-west-2", *regions))
    assert sorted(r for r in remaining if " image " in r) == sorted(
        f"{m.region} image {m.id}" for m in [image, *copies])
    assert any(r.startswith("us-west-2 snapshot ") for r in remaining)  # tagged for cleanup by tag
    listed = cloud.list_images({TAG_RUN: spec.run_id})  # finds the copies too (reaping a dead run needs them)
    assert sorted((i.id, i.region) for i in listed) == sorted((m.id, m.region) for m in [image, *copies])
    for made in [image, *copies]:
        cloud.delete_image(made)
    assert left(spec.run_id, ("us-west-2", *regions)) == []


def test_image_names_get_a_utc_timestamp_and_only_valid_characters(make_cloud, centos7, tmp_path):
    cloud = make_cloud()
    _, image = image_of_new_instance(cloud, centos7, tmp_path / "keys", "bake: centos7 #1")
    cloud.delete_image(image)
    assert image.name.startswith("bake- centos7 -1-")
    assert image.name[-16:-7].rstrip("T").isdigit() and image.name.endswith("Z")


def test_image_wait_polls_a_pending_image_until_available(proxy, make_cloud, centos7, tmp_path):
    cloud = make_cloud(proxy.url)
    before = []

    def arm():
        proxy.hold_pending(polls=4)
        before.append(proxy.count("DescribeImages"))
    _, image = image_of_new_instance(cloud, centos7, tmp_path / "keys", "cislaves-wait", arm)
    assert proxy.count("DescribeImages") - before[0] == 5  # four answers said pending, the fifth available
    cloud.delete_image(image)
