"""Publishing into a real-shaped segredos all.yaml (comments, anchors, aliases, merge keys, flow
mappings, odd quoting, blank lines): only the id lines change, byte for byte; a new region is added
as new lines; the git commit holds exactly that change; dry runs and bad files change nothing."""
from __future__ import annotations

import subprocess

import pytest

from cislaves.errors import ConfigError
from cislaves.lifecycle import publish
from tests.lifecycle.conftest import DATA, segredos_repo

PATH = "env.default.jenkins.clouds.images.{cloud_key}.{region}.{distribution}"


def keys(cloud_key, region, distribution):
    return publish.key_path(PATH, cloud_key=cloud_key, region=region, distribution=distribution)


def test_existing_ids_change_in_place_and_nothing_else_does():
    old = (DATA / "all.yaml").read_text()
    changes = [(keys("aws", "us-west-2", "centos7"), "ami-0bbbbbbbbbbbbbbb1"),        # plain + comment
               (keys("aws", "us-west-2", "ubuntu14.04"), "ami-0bbbbbbbbbbbbbbb2"),    # dotted key, '...'
               (keys("aws", "us-west-2", "debian12"), "ami-0bbbbbbbbbbbbbbb3"),       # "..."
               (keys("aws", "eu-west-1", "debian12"), "ami-0bbbbbbbbbbbbbbb4"),       # anchored
               (keys("aws", "ap-southeast-2", "centos7"), "ami-0bbbbbbbbbbbbbbb5"),   # flow mapping
               (keys("rackspace", "DFW", "centos7"), "0c9d-new")]
    new = publish.render(old, changes, "all.yaml")
    old_lines, new_lines = old.splitlines(True), new.splitlines(True)
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert changed == [
        ("              centos7: ami-0aaaaaaaaaaaaaaa1      # baked 2019-03-02\n",
         "              centos7: ami-0bbbbbbbbbbbbbbb1      # baked 2019-03-02\n"),
        ("              ubuntu14.04:   'ami-0aaaaaaaaaaaaaaa2'\n", "              ubuntu14.04:   'ami-0bbbbbbbbbbbbbbb2'\n"),
        ('              debian12: "ami-0aaaaaaaaaaaaaaa3"\n', '              debian12: "ami-0bbbbbbbbbbbbbbb3"\n'),
        ("              debian12: &eu_debian ami-0aaaaaaaaaaaaaaa4\n",
         "              debian12: &eu_debian ami-0bbbbbbbbbbbbbbb4\n"),
        ("            ap-southeast-2: { centos7: ami-0aaaaaaaaaaaaaaa5 }\n",
         "            ap-southeast-2: { centos7: ami-0bbbbbbbbbbbbbbb5 }\n"),
        ("              centos7: '6f1b3a9e-0000-4000-8000-00000000dfw1'\n", "              centos7: '0c9d-new'\n"),
    ]


def test_a_new_region_and_a_new_cloud_are_added_as_lines_under_their_parents():
    old = (DATA / "all.yaml").read_text()
    new = publish.render(old, [(keys("aws", "us-east-1", "debian12"), "ami-0ccccccccccccccc1"),
                               (keys("local", "lab-c", "debian12"), "local-debian12-c"),
                               (keys("gce", "us-central1", "debian12"), "cislaves-debian12-1")], "all.yaml")
    added = [line for line in publish.diff(old, new, "all.yaml").splitlines()
             if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert added == ["+            us-east-1:", "+              debian12: ami-0ccccccccccccccc1",
                     "+            lab-c:", "+              debian12: local-debian12-c",
                     "+          gce:", "+            us-central1:", "+              debian12: cislaves-debian12-1"]


def test_a_path_through_a_scalar_is_one_line_and_writes_nothing(tmp_path):
    old = (DATA / "all.yaml").read_text()
    with pytest.raises(publish.PublishError, match=r"env\.default\.jenkins\.url is a string, expected a mapping"):
        publish.render(old, [(["env", "default", "jenkins", "url", "x"], "ami-1")], "all.yaml")
    with pytest.raises(ConfigError, match=r"all.yaml:3: not valid YAML"):
        publish.render("a: 1\nb: [\n---\n", [], "all.yaml")
    with pytest.raises(ConfigError, match=r"unknown field 'zone'"):
        publish.key_path("images.{zone}")


def test_the_commit_on_a_new_branch_holds_exactly_the_id_change(tmp_path):
    path = segredos_repo(tmp_path / "segredos")
    root = publish.check_git(path, "images-20261202")
    old = path.read_text()
    new = publish.render(old, [(keys("aws", "us-west-2", "debian12"), "ami-0ddddddddddddddd1")], str(path))
    head = publish.commit(path, new, "images-20261202", publish.message([("ec2/debian12/us-west-2", "us-west-2",
                                                                           "ami-0ddddddddddddddd1")]),
                          push=False, remote="origin")
    git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout
    assert git("rev-parse", "--abbrev-ref", "HEAD").strip() == "images-20261202"
    assert git("rev-parse", "HEAD").strip() == head
    assert git("show", "--name-only", "--format=", "HEAD").split() == ["ci-platform/all/all.yaml"]
    shown = git("diff", "HEAD~1", "HEAD", "--unified=0").splitlines()
    assert [line for line in shown if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        '-              debian12: "ami-0aaaaaaaaaaaaaaa3"', '+              debian12: "ami-0ddddddddddddddd1"']
    assert "ec2/debian12/us-west-2 us-west-2: ami-0ddddddddddddddd1" in git("log", "-1", "--format=%B")
    assert git("status", "--porcelain") == ""
    # a dirty file is refused before anything happens; so is a bad branch name
    path.write_text(old + "# local edit\n")
    with pytest.raises(publish.PublishError, match="has uncommitted changes"):
        publish.check_git(path, "images-x")
    with pytest.raises(publish.PublishError, match="not a valid branch name"):
        publish.check_git(path, "images..bad")
