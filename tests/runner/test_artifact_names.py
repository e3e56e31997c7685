"""Where a collected artifact lands in the build directory: never over the build's own files."""
import tarfile

from cislaves.ci.execute import RENAMED, RESERVED, safe_target


def member(name, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def test_an_artifact_named_like_the_builds_own_files_is_kept_aside(tmp_path):
    for name in RESERVED:
        assert safe_target(tmp_path, member(name)) == tmp_path / RENAMED / name
    assert "index.html" in RESERVED  # the published index page
    assert safe_target(tmp_path, member("logs/index.html")) == tmp_path / "logs" / "index.html"


def test_only_plain_relative_files_are_collected(tmp_path):
    assert safe_target(tmp_path, member("/etc/passwd")) is None
    assert safe_target(tmp_path, member("logs/../../x")) is None
    assert safe_target(tmp_path, member("link", tarfile.SYMTYPE)) is None
