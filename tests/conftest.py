"""Shared test setup. Fixtures for local-cloud machines live in tests/fixtures_local.py."""
import os
import shutil
import signal
import sys

import pytest

pytest_plugins = ["tests.fixtures_local", "tests.fixtures_ci"]

# Subprocesses (`fab ...`) must use the same environment as the tests (the .venv of setup.sh).
_bin = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _bin:
    os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")


def pytest_collection_modifyitems(config, items):
    """Tests marked `root` need root, systemd-nspawn, debootstrap and iptables: skip them (saying why)
    elsewhere. In CI (CI=true) a missing requirement is a failure, not a skip."""
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "iptables", "ip") if not shutil.which(tool)]
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, mounts, systemd-nspawn)"
    elif missing:
        reason = f"needs {', '.join(missing)} (run .ci/run or the README's setup)"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI cannot run the local-cloud tests: {reason}")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt in the tests' process, as a Ctrl-C at a terminal does, for a test
    that sends itself one: a pytest started as a shell's background job inherits SIGINT ignored, and
    that test would then wait in vain (restored after the test)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
