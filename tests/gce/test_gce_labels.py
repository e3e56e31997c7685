"""GCE naming rules: tags to labels and back, resource names, list filters."""
import pytest

from cislaves.clouds.base import TAG_EXPIRES, TAG_OWNER, TAG_RUN, CleanupPolicy, expired, new_run_id, standard_tags
from cislaves.clouds.gce.labels import label_filter, labels_from_tags, resource_name, tags_from_labels
from tests.gce.fake_gce import LABEL_KEY, LABEL_VALUE, NAME, parse_filter


def test_standard_tags_become_valid_labels_and_come_back_exactly():
    run_id = new_run_id()
    tags = standard_tags(run_id, "ubuntu22.04", "bake", name="cislaves-ubuntu22.04-X", owner="o1a2b3c4d5e6f")
    labels = labels_from_tags(tags)
    assert labels["cislaves-run-id"] == run_id
    assert labels["cislaves-distribution"] == "ubuntu22-04"
    for key, value in labels.items():
        assert LABEL_KEY.match(key) and LABEL_VALUE.match(value), (key, value)
    back = tags_from_labels(labels)
    assert back[TAG_RUN] == run_id
    assert back[TAG_EXPIRES] == tags[TAG_EXPIRES]  # the ISO instant survives the label rules
    assert back["Name"] == "cislaves-ubuntu22-04-x"
    assert back[TAG_OWNER] == "o1a2b3c4d5e6f" and labels["cislaves-owner"] == "o1a2b3c4d5e6f"
    assert CleanupPolicy(owner="o1a2b3c4d5e6f").reason(back) == "run ended"  # the shared rule reads them


def test_an_expired_label_reads_back_as_expired():
    labels = labels_from_tags(standard_tags("r", "debian12", "bake", ttl_hours=-1, owner="oother"))
    assert expired(tags_from_labels(labels))
    assert CleanupPolicy(owner="ome").reason(tags_from_labels(labels)) == "expired"


@pytest.mark.parametrize("key,value", [
    ("Owner Team", "Ops & Infra"),
    ("9lives", "x" * 100),
    ("café:été", "Ünïcode/Value"),
    ("---", ""),
])
def test_any_tag_maps_to_a_label_gce_accepts(key, value):
    labels = labels_from_tags({key: value})
    ((label, label_value),) = labels.items()
    assert LABEL_KEY.match(label), label
    assert LABEL_VALUE.match(label_value), label_value


@pytest.mark.parametrize("text", ["cislaves-debian12-20261122023525-abc123", "CISlaves_Ubuntu22.04",
                                  "9-starts-with-digit", "ends-with-dash-", "x" * 80 + "-y", "---"])
def test_resource_names_follow_gce_rules(text):
    assert NAME.match(resource_name(text))


def test_label_filter_is_what_the_api_parses():
    text = label_filter({"cislaves-tool": "cislaves", "cislaves-run-id": "20261122-abc"})
    assert parse_filter(text) == [("labels.cislaves-run-id", "=", "20261122-abc"),
                                  ("labels.cislaves-tool", "=", "cislaves")]
