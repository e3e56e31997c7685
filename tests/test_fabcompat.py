"""Fabric 1's `task:a,k=v` form, translated for Fabric 3 (unit level; test_cli.py runs the real fab)."""
import pytest
from invoke.exceptions import ParseError

from cislaves.fabcompat import signature_of, translate

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
