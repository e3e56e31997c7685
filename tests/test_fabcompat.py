"""Fabric 1's `task:a,k=v` form, translated for Fabric 3 (unit level), and the real `fab` and `cislaves`
over one task collection: same tasks, same arguments, every argument form, the README's quick start."""
import re

import pytest
from invoke.exceptions import ParseError

from cislaves.fabcompat import signature_of, translate
from tests.cli import REPO, cislaves, fab

SIG = {
    "it": [("cloud", False), ("distribution", False), ("keep_on_error", True)],
    "up": [("cloud", False), ("distribution", False), ("image", False), ("new", True)],
    "bootstrap": [("cloud", False), ("distribution", False), ("instance", False)],
    "tests": [("cloud", False)],
}


@pytest.mark.parametrize("argv, expected", [
    (["it:cloud=ec2,distribution=centos7"], ["it", "--cloud=ec2", "--distribution=centos7"]),
    (["up:cloud=local", "bootstrap", "tests"], ["up", "--cloud=local", "bootstrap", "tests"]),
    (["it:distribution=centos7,cloud=ec2"], ["it", "--cloud=ec2", "--distribution=centos7"]),
    (["it:ec2,centos7"], ["it", "--cloud=ec2", "--distribution=centos7"]),
    (["it:ec2,keep_on_error=yes"], ["it", "--cloud=ec2", "--keep-on-error"]),
    (["it:keep_on_error=false"], ["it"]),
    (["it:keep-on-error=True"], ["it", "--keep-on-error"]),
    (["up:image=a\\,b\\=c"], ["up", "--image=a,b=c"]),
    (["up:image=x=y"], ["up", "--image=x=y"]),
    (["up:image=back\\\\slash"], ["up", "--image=back\\slash"]),
    (["it:"], ["it"]),
    (["-l"], ["-l"]),
    (["nosuch:a=b"], ["nosuch:a=b"]),  # not a task: left for invoke to report
    (["up:cloud=local", "--", "it:cloud=x"], ["up", "--cloud=local", "--", "it:cloud=x"]),
])
def test_translate(argv, expected):
    assert translate(argv, SIG) == expected


@pytest.mark.parametrize("argv, message", [
    (["it:clod=ec2"], "task 'it' has no argument 'clod'; expected one of: cloud, distribution, keep_on_error"),
    (["it:keep_on_error=maybe"], "expects true or false, got 'maybe'"),
    (["tests:a,b"], "takes at most 1 argument"),
    (["it:cloud=a,cloud=b"], "given twice"),
])
def test_translate_refuses_bad_arguments(argv, message):
    with pytest.raises(ParseError) as err:
        translate(argv, SIG)
    assert message in str(err.value)


def test_signature_skips_the_context_and_marks_booleans():
    def body(c, cloud=None, keep_on_error=False, count=1):
        pass
    assert signature_of(body) == [("cloud", False), ("keep_on_error", True), ("count", False)]


# -- the real `fab` and `cislaves` over the one task collection (cislaves/tasks.py; fabfile.py re-exports it)

def task_names(listing: str) -> list[str]:
    return re.findall(r"^  (\w+) ", listing, re.M)


def options(help_text: str) -> list[str]:
    return sorted(set(re.findall(r"--[a-z][a-z-]*", help_text.split("Options:", 1)[1])))


def test_fab_and_cislaves_offer_the_same_tasks_with_the_same_arguments():
    fab_list, cislaves_list = fab("-l"), cislaves("--list")
    assert fab_list.returncode == 0 and cislaves_list.returncode == 0
    names = task_names(fab_list.stdout)
    assert names == task_names(cislaves_list.stdout)
    assert {"it", "up", "status", "validate", "rebake", "prune", "image_diff", "delete_image", "cancel", "logs",
            "enqueue", "listen", "jobs", "cleanup", "ssh", "help"} <= set(names)
    for name in ("it", "up", "status", "enqueue", "delete_image", "rebake"):
        from_fab, from_cislaves = fab("-h", name), cislaves("--help", name)
        assert from_fab.returncode == 0 and from_cislaves.returncode == 0, name
        assert options(from_fab.stdout) == options(from_cislaves.stdout), name
    assert options(fab("-h", "it").stdout) == ["--cloud", "--distribution", "--keep-on-error"]


@pytest.mark.parametrize("argv", [["it:cloud=nope,distribution=centos7"], ["it:nope,centos7"],
                                  ["it", "--cloud", "nope", "--distribution", "centos7"],
                                  ["it", "--cloud=nope", "--distribution=centos7"]])
def test_every_argument_form_reaches_the_task_the_same_way(argv, tmp_path):
    env = {"CISLAVES_DATA_DIR": str(tmp_path / "data"), "CISLAVES_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "none.yaml").write_text("")
    for result in (fab(*argv, env=env), cislaves(*argv, env=env)):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and errors == [
            "error: argument 'cloud': unknown cloud 'nope'; expected one of: ec2, gce, local, openstack, "
            "rackspace, static"], result.stderr


def test_the_readme_quick_start_commands_are_the_ones_that_work():
    """The quick start's two lines are what CI and the bake test run: setup.sh, then fab with the Fabric 1
    form on the local cloud (tests/test_bake_local.py bakes exactly that) and the test command (.ci/run)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block == ["./setup.sh && CISLAVES_CONFIG=examples/quickstart.yaml .venv/bin/fab it:cloud=local,distribution=debian12",
                     "./setup.sh && .venv/bin/python -m pytest"]
    assert (REPO / ".ci" / "run").read_text().rstrip().splitlines()[-2:] == ["./setup.sh", ".venv/bin/python -m pytest"]
    assert (REPO / "examples" / "quickstart.yaml").is_file()
    result = fab("-h", "it")
    assert result.returncode == 0 and "--distribution" in result.stdout
