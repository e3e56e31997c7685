"""`fab rebake` end to end, through the real fab: a matrix of three local-cloud targets and two EC2
targets on moto (their SSH steps reach two local machines through ssh_host), baked in parallel, one
local target failing its provisioning. The others are validated (a fresh instance of each new
image passes the checks), published into a real-shaped all.yaml in a git repository (the commit
holds exactly the id lines), reported (summary, JSON, log file) and notified (aiosmtpd, a local
webhook); nothing of any run is left behind (the lock: test_settings.py). The whole matrix takes about a minute."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from cislaves import TOOL, clouds, config as config_mod, images
from cislaves.lifecycle import packages
from cislaves.records import TAG_RUN, TAG_TOOL
from tests.cli import fab
from tests.fixtures_local import tool_leftovers
from tests.lifecycle.conftest import ec2_target, fab_env, segredos_repo, write_config

pytestmark = [pytest.mark.root, pytest.mark.slow]
PATH = "env.default.jenkins.clouds.images.{cloud_key}.{region}.{distribution}"
COPY = "us-east-1"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, moto_url, machines, ci_key, local_cache_dir, request):
    """Run the matrix once for the module's tests; yield (result, folder, config, servers)."""
    smtp = request.getfixturevalue("smtp_server")
    hook = request.getfixturevalue("webhook_server")
    folder = tmp_path_factory.mktemp("segredos")
    published = segredos_repo(folder)
    machine_a, machine_b = machines(2)
    us = ec2_target("us-west-2", machine_a)
    us["config"]["clouds"]["ec2"]["copy_regions"] = [COPY]
    targets = [
        {"cloud": "local", "distribution": "debian12", "region": "lab-a"},
        {"cloud": "local", "distribution": "debian12", "region": "lab-c"},
        {"cloud": "local", "distribution": "debian12", "region": "lab-d",  # fails its provisioning
         "config": {"provision": {"extra_packages": {"debian12": ["cislaves-no-such-package"]}}}},
        us,
        ec2_target("eu-west-1", machine_b),
    ]
    path = write_config(folder, moto_url=moto_url, ci_key=ci_key, cache_dir=local_cache_dir, rebake={
        "targets": targets, "parallel": 5, "per_cloud": {"local": 3, "ec2": 2}, "validate": True, "keep": 3,
        "publish": {"file": "ci-platform/all/all.yaml", "path": PATH, "git": {"branch": "images-{date}"}},
        "notify": {"email": ["ci-admins@example.org"], "webhook": hook.url, "when": "failure",
                   "smtp": {"host": "127.0.0.1", "port": smtp.port, "sender": "cislaves@example.org"}}})
    before = published.read_text()
    result = fab("rebake", env=fab_env(path), timeout=600)
    yield result, folder, path, published, before, smtp, hook
    fab("cleanup:cloud=local", env=fab_env(path), timeout=300)


def summary_rows(stdout):
    """TARGET -> (RESULT, IMAGE, FAILED STEP) from the summary table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TARGET "))
    rows = {}
    for line in lines[start + 1:]:
        if not line.startswith(("local/", "ec2/")):
            break
        cols = line.split()
        rows[cols[0]] = (cols[1], cols[2], cols[4])
    return rows


def test_the_failed_target_is_named_and_the_others_succeed(matrix):
    result, *_ = matrix
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    rows = summary_rows(result.stdout)
    assert {k: (v[0], v[2]) for k, v in rows.items()} == {
        "local/debian12/lab-a": ("ok", "-"), "local/debian12/lab-c": ("ok", "-"),
        "local/debian12/lab-d": ("failed", "bootstrap"),
        "ec2/debian12/us-west-2": ("ok", "-"), "ec2/debian12/eu-west-1": ("ok", "-")}
    assert "4 of 5 targets succeeded; failed: local/debian12/lab-d" in result.stdout
    # the workers' output lines carry their target (they ran at once: the lines interleave)
    worker_lines = [line for line in result.stdout.splitlines() if re.match(r"(PASS|FAIL|SKIP|Image:|==>) ", line)]
    assert worker_lines == []
    prefixes = [m.group(1) for m in re.finditer(r"^\[([^\]]+)\] Image: ", result.stdout, re.M)]
    assert sorted(prefixes) == ["ec2/debian12/eu-west-1", "ec2/debian12/us-west-2", "local/debian12/lab-a",
                                "local/debian12/lab-c"]


def test_every_published_image_was_validated_and_exists(matrix, ec2):
    result, folder, path, *_ = matrix
    rows = summary_rows(result.stdout)
    config = config_mod.load(path, environ={})
    builds = {b["artifact_id"]: b for b in images.records(config.data_dir / "manifest.json")}
    for target, (status, image, _) in rows.items():
        if status != "ok":
            continue
        assert builds[image]["validated"] is True and builds[image]["published"].endswith("all.yaml")
        # validation booted a fresh instance of the new image: its checks appear twice per target
        assert len(re.findall(rf"^\[{re.escape(target)}\] ==> debian12: \d+ passed, 0 failed", result.stdout,
                              re.M)) == 2
        assert packages.load(config.data_dir, image), f"no package list recorded for {image}"
    local = clouds.get("local", config)
    assert {i.id for i in local.list_images({TAG_TOOL: TOOL}) if i.run_id} == {rows["local/debian12/lab-a"][1],
                                                                   rows["local/debian12/lab-c"][1]}
    assert ec2("us-west-2").describe_images(ImageIds=[rows["ec2/debian12/us-west-2"][1]])["Images"]
    assert ec2("eu-west-1").describe_images(ImageIds=[rows["ec2/debian12/eu-west-1"][1]])["Images"]


def test_the_commit_holds_exactly_the_id_lines(matrix, ec2):
    result, folder, path, published, before, *_ = matrix
    rows = summary_rows(result.stdout)
    copy = ec2(COPY).describe_images(Owners=["self"], Filters=[
        {"Name": f"tag:{TAG_RUN}", "Values": [run_of(ec2, rows["ec2/debian12/us-west-2"][1])]}])["Images"]
    assert len(copy) == 1
    git = lambda *a: subprocess.run(["git", "-C", str(folder), *a], capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout
    assert re.fullmatch(r"images-\d{8}", git("rev-parse", "--abbrev-ref", "HEAD").strip())
    assert git("show", "--name-only", "--format=", "HEAD").split() == ["ci-platform/all/all.yaml"]
    old_lines, new_lines = before.splitlines(), published.read_text().splitlines()
    removed = [line for line in old_lines if line not in new_lines]
    added = [line for line in new_lines if line not in old_lines]
    assert removed == ['              debian12: "ami-0aaaaaaaaaaaaaaa3"',
                       "              debian12: &eu_debian ami-0aaaaaaaaaaaaaaa4",
                       "              debian12: local-debian12-old-a"]
    assert added == [f'              debian12: "{rows["ec2/debian12/us-west-2"][1]}"',
                     f"              debian12: &eu_debian {rows['ec2/debian12/eu-west-1'][1]}",
                     f"            {COPY}:", f"              debian12: {copy[0]['ImageId']}",
                     f"              debian12: {rows['local/debian12/lab-a'][1]}",
                     "            lab-c:", f"              debian12: {rows['local/debian12/lab-c'][1]}"]
    assert git("diff", "HEAD~1", "HEAD", "--stat").strip().endswith("1 file changed, 7 insertions(+), 3 deletions(-)")
    assert git("status", "--porcelain", "--", "ci-platform") == ""


def test_the_report_log_and_notifications_say_which_failed(matrix):
    result, folder, path, published, before, smtp, hook = matrix
    report_path = re.search(r"^report: (\S+)$", result.stdout, re.M).group(1)
    report = json.loads(open(report_path).read())
    assert (report["succeeded"], report["failed"]) == (4, 1)
    failed = [t for t in report["targets"] if t["result"] == "failed"]
    assert [(t["target"], t["step"]) for t in failed] == [("local/debian12/lab-d", "bootstrap")]
    assert "cislaves-no-such-package" in result.stdout
    log = open(re.search(r"^log: (\S+)$", result.stdout, re.M).group(1)).read()
    assert "[ec2/debian12/eu-west-1] bootstrap: done" in log and "[local/debian12/lab-d] bootstrap: failed" in log
    (message,) = smtp.messages
    assert message["To"] == "ci-admins@example.org" and "FAILED: 4 succeeded, 1 failed" in message["Subject"]
    body = message.get_payload()[0].get_payload(decode=True).decode()
    assert re.search(r"^local/debian12/lab-d +failed +- .* bootstrap", body, re.M), body
    (post,) = hook.posts
    assert post["type"] == "application/json" and post["body"]["report"]["failed"] == 1
    assert "s3cret" not in result.stdout + result.stderr  # the webhook's token is not shown


def test_nothing_of_any_run_is_left_behind(matrix, ec2):
    result, folder, path, *_ = matrix
    config = config_mod.load(path, environ={})
    assert tool_leftovers(config.data_dir) == []
    assert json.loads((config.data_dir / "state.json").read_text())["instances"] == {}
    assert list((config.data_dir / "keys").iterdir()) == []
    assert list((config.data_dir / "known_hosts").iterdir()) == []
    for region in ("us-west-2", "eu-west-1", COPY):
        for reservation in ec2(region).describe_instances(Filters=[{"Name": f"tag:{TAG_TOOL}",
                                                                    "Values": [TOOL]}])["Reservations"]:
            for instance in reservation["Instances"]:
                assert instance["State"]["Name"] == "terminated", instance["InstanceId"]
        assert ec2(region).describe_key_pairs(Filters=[{"Name": f"tag:{TAG_TOOL}", "Values": [TOOL]}])["KeyPairs"] == []


def test_a_second_rebake_of_one_target_counts_the_changed_packages(matrix):
    """(Runs last: it changes the module's state.) The target now installs jq: the summary counts the
    packages added against its previous validated image, `fab image_diff` lists them, and the new id is
    committed on a second branch."""
    import yaml

    result, folder, path, published, *_ = matrix
    old = summary_rows(result.stdout)["local/debian12/lab-a"][1]
    config = yaml.safe_load(path.read_text())
    config["rebake"]["targets"][0]["config"] = {"provision": {"extra_packages": {"debian12": ["jq"]}}}
    config["rebake"].pop("notify")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    again = fab("rebake:only=local/debian12/lab-a", env=fab_env(path), timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    row = next(line for line in again.stdout.splitlines() if line.startswith("local/debian12/lab-a "))
    new, changed = row.split()[2], int(row.split()[-1])
    diff = fab(f"image_diff:{old},{new}", env=fab_env(path), timeout=60)
    assert diff.returncode == 0, diff.stderr
    lines = diff.stdout.splitlines()
    assert any(re.match(r"^\+ jq \S+$", line) for line in lines), diff.stdout
    assert lines[-1] == f"{changed} added, 0 removed, 0 changed between {old} and {new}"
    assert changed >= 1
    branches = subprocess.run(["git", "-C", str(folder), "branch", "--list", "images-*"], capture_output=True,
                              text=True, check=True).stdout.split()
    assert len([b for b in branches if b.startswith("images-")]) == 2
    assert f"debian12: {new}" in published.read_text()


def run_of(ec2, ami):
    image = ec2("us-west-2").describe_images(ImageIds=[ami])["Images"][0]
    return {t["Key"]: t["Value"] for t in image["Tags"]}[TAG_RUN]
