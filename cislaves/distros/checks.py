"""The `tests` step: check a provisioned instance through pytest-testinfra's paramiko backend.

Every check says what it expected and what it found. Checks of things only the full package set
installs are skipped (and say so) when `provision.package_set` is "minimal". On the local cloud a
docker daemon cannot run inside a systemd-nspawn machine: there, and only there, the docker-running
check is skipped with the reason when the engine is installed but not running.

Host keys: the testinfra backend uses the same pinned known_hosts file as every other SSH
connection of cislaves (trust on first use, a changed key is refused): see cislaves.remote.
"""
from __future__ import annotations

import functools
import logging
import shlex
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import testinfra.host
from testinfra.backend.paramiko import ParamikoBackend

from cislaves import remote
from cislaves.distros.provision import authorized_key
from cislaves.errors import CheckFailed

log = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class CheckResult:
    """One check's outcome: status PASS, FAIL or SKIP, what was expected and what was found."""

    name: str
    status: str
    expected: str
    found: str

    def line(self) -> str:
        if self.status == PASS:
            return f"PASS {self.name}: {self.found}"
        if self.status == SKIP:
            return f"SKIP {self.name}: {self.found}"
        return f"FAIL {self.name}: expected {self.expected}; found {self.found}"


class Skip(Exception):
    """Raised by a check that does not apply; the message says why."""


def run_checks(instance, distribution, config, cloud, out: Callable[[str], Any] = print) -> list[CheckResult]:
    """Run every check against `instance`; print one line per check; CheckFailed if any failed."""
    key = authorized_key(config)  # a configuration error before any connection
    host, backend = testinfra_host(instance, cloud.data_dir, config.timeouts.ssh)
    ctx = Context(host, distribution.name, config.ci_user.name, key, config.provision.package_set == "full",
                  cloud.name, cloud.capabilities.docker_inside)
    results = []
    try:
        for name, full_only, func in CHECKS:
            result = run_one(ctx, name, full_only, func)
            results.append(result)
            out(result.line())
    finally:
        backend.close()
    failed = [r.name for r in results if r.status == FAIL]
    passed = sum(r.status == PASS for r in results)
    skipped = sum(r.status == SKIP for r in results)
    out(f"==> {distribution.name}: {passed} passed, {len(failed)} failed, {skipped} skipped")
    if failed:
        raise CheckFailed(f"{distribution.name} on {instance.name}: {len(failed)} of {len(results)} "
                          f"checks failed: {', '.join(failed)}")
    return results


def testinfra_host(instance, data_dir, timeout: float):
    """A testinfra Host on the paramiko backend whose SSH client is cislaves' own (pinned host key,
    jump host/proxy, the instance's key). Returns (host, backend); close the backend when done."""
    query = {"ssh_identity_file": instance.key_file} if instance.key_file else {}
    spec = f"paramiko://{instance.user}@{instance.address}:{instance.port}"
    if query:
        spec += "?" + urllib.parse.urlencode(query)
    conn = remote.wait_for_ssh(instance, data_dir, timeout)
    backend = _PinnedParamikoBackend(spec, conn=conn, instance=instance, data_dir=data_dir,
                                     sudo=instance.user != "root")
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host, backend


def run_one(ctx: "Context", name: str, full_only: bool, func) -> CheckResult:
    """One check's result; an exception inside a check is that check's failure, with the reason."""
    if full_only and not ctx.full:
        return CheckResult(name, SKIP, "", "not installed by the minimal package set")
    try:
        ok, expected, found = func(ctx)
    except Skip as skip:
        return CheckResult(name, SKIP, "", str(skip))
    except Exception as exc:  # a broken check is a failed check, with the reason
        log.debug("check %s raised", name, exc_info=True)
        return CheckResult(name, FAIL, "the check to run", f"{type(exc).__name__}: {exc}")
    return CheckResult(name, PASS if ok else FAIL, expected, found)


@dataclass
class Context:
    """What a check gets: the testinfra host and the settings the machine was provisioned with."""

    host: Any  # testinfra.host.Host
    distribution: str
    user: str
    key: str
    full: bool
    cloud: str
    docker_inside: bool = True  # the cloud's capability: can a docker daemon run in its instances?

    def run(self, command: str):
        return self.host.run(command)

    def as_user(self, command: str):
        """Run a shell command as the CI user (no login shell), from root."""
        return self.host.run(f"su -s /bin/sh -c {shlex.quote(command)} {shlex.quote(self.user)}")


def first_line(result) -> str:
    """The first line of a command's output (stdout, then stderr)."""
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "(no output)"


def outcome(result) -> str:
    """`exit N: first line` of a command result, for a check's 'found' text."""
    return f"exit {result.rc}: {first_line(result)}"


CHECKS: list[tuple[str, bool, Callable[[Context], tuple[bool, str, str]]]] = []


def check(name: str, full_only: bool = False):
    """Register a check function (ctx -> (ok, expected, found)); `full_only`: skipped for the minimal set."""
    def register(func):
        CHECKS.append((name, full_only, func))
        return func
    return register


@check("provisioned")
def _provisioned(ctx: Context):
    f = ctx.host.file("/etc/cislaves/provisioned")
    expected = f"/etc/cislaves/provisioned naming distribution={ctx.distribution}"
    if not f.exists:
        return False, expected, "no /etc/cislaves/provisioned (the script did not finish)"
    content = f.content_string
    return f"distribution={ctx.distribution}\n" in content, expected, " ".join(content.split())


@check("ci-user")
def _ci_user(ctx: Context):
    user = ctx.host.user(ctx.user)
    expected = f"user {ctx.user} with shell /bin/bash and a home folder"
    if not user.exists:
        return False, expected, f"no user {ctx.user}"
    home = ctx.host.file(user.home)
    return (user.shell == "/bin/bash" and home.is_directory, expected,
            f"user {ctx.user} (uid {user.uid}), shell {user.shell}, home {user.home}"
            f"{'' if home.is_directory else ' (missing)'}")


@check("ci-user-key")
def _ci_user_key(ctx: Context):
    if not ctx.key:
        raise Skip("no authorized key is configured (ci_user.authorized_key...)")
    key_type, blob = ctx.key.split()[:2]
    expected = (f"~{ctx.user}/.ssh/authorized_keys owned by {ctx.user}, mode 0600, with the configured "
                f"{key_type} key ...{blob[-12:]}")
    user = ctx.host.user(ctx.user)
    if not user.exists:
        return False, expected, f"no user {ctx.user}"
    f = ctx.host.file(f"{user.home}/.ssh/authorized_keys")
    if not f.exists:
        return False, expected, f"no {user.home}/.ssh/authorized_keys"
    keys = [line.split()[1][-12:] for line in f.content_string.splitlines()
            if len(line.split()) >= 2 and not line.startswith("#")]
    found = f"owner {f.user}, mode {f.mode:04o}, keys ending {', '.join('...' + k for k in keys) or '(none)'}"
    return f.user == ctx.user and f.mode == 0o600 and blob[-12:] in keys, expected, found


@check("sudo-rule")
def _sudo_rule(ctx: Context):
    result = ctx.run(f"sudo -l -U {shlex.quote(ctx.user)}")
    rules = [line.strip() for line in result.stdout.splitlines() if "NOPASSWD" in line or "ALL" in line]
    return ("(ALL) NOPASSWD: ALL" in result.stdout, f"a sudo rule '(ALL) NOPASSWD: ALL' for {ctx.user}",
            "; ".join(rules) or outcome(result))


@check("sudo-without-tty")
def _sudo_no_tty(ctx: Context):
    result = ctx.as_user("sudo -n true")
    return (result.rc == 0, f"'sudo -n true' as {ctx.user} without a terminal to exit 0",
            "exit 0" if result.rc == 0 else outcome(result))


@check("umask")
def _umask(ctx: Context):
    # From a parent with umask 0077, so only what the machine configures can make it 0022.
    result = ctx.run(f"umask 0077; su - {shlex.quote(ctx.user)} -c umask")
    found = result.stdout.strip() or outcome(result)
    return found == "0022", f"umask 0022 in a login shell of {ctx.user}", found


@check("bin-sh")
def _bin_sh(ctx: Context):
    result = ctx.run("readlink -f /bin/sh")
    target = result.stdout.strip()
    return target.endswith("/bash"), "/bin/sh -> bash", f"/bin/sh -> {target or outcome(result)}"


def _version(name: str, command: str, expected: str, full_only: bool = False):
    """Register a check that passes when `command` exits 0 and shows its first output line."""
    def func(ctx: Context):
        result = ctx.run(command)
        return result.rc == 0, expected, first_line(result) if result.rc == 0 else outcome(result)
    check(name, full_only)(func)


_version("git", "git --version", "git installed ('git --version' exits 0)")
_version("pip", "python3 -m pip --version", "pip for python3 ('python3 -m pip --version' exits 0)")
_version("java", "java -version", "a Java runtime ('java -version' exits 0)", full_only=True)
_version("build-tools", "gcc --version && make --version && g++ --version",
         "gcc, g++ and make installed", full_only=True)
_version("virtualenv", "for c in virtualenv virtualenv-3; do command -v $c >/dev/null && exec $c --version; "
         "done; python3 -m virtualenv --version", "virtualenv installed ('virtualenv --version' exits 0)",
         full_only=True)
_version("nginx", "nginx -v", "nginx installed ('nginx -v' exits 0)", full_only=True)
_version("fpm", "fpm --version", "fpm installed ('fpm --version' exits 0)", full_only=True)


@check("python3-venv")
def _venv(ctx: Context):
    # A venv, and the pip that `python3 -m venv` puts into one (ensurepip's bundled wheel): the same
    # proof as a venv with pip installed, in 0.2 s instead of 3.5 s (installing pip dominated `tests`).
    result = ctx.as_user('d=$(mktemp -d) && python3 -m venv --without-pip "$d/v" && '
                         '"$d/v/bin/python" -m ensurepip --version; rc=$?; rm -rf "$d"; exit $rc')
    return (result.rc == 0, f"{ctx.user} can create a python3 venv, with pip available to it",
            f"venv created; ensurepip offers {first_line(result)}" if result.rc == 0 else outcome(result))


@check("docker-group", full_only=True)
def _docker_group(ctx: Context):
    user = ctx.host.user(ctx.user)
    groups = user.groups if user.exists else []
    return "docker" in groups, f"{ctx.user} in group docker", f"groups: {', '.join(groups) or '(none)'}"


@check("docker-running", full_only=True)
def _docker_running(ctx: Context):
    expected = f"docker service running and 'docker version' working for {ctx.user}"
    result = ctx.as_user("docker version --format '{{.Server.Version}}'")
    if result.rc == 0:
        return True, expected, f"docker server {result.stdout.strip()}"
    installed = ctx.run("command -v dockerd").rc == 0
    container = ctx.run("systemd-detect-virt --container").stdout.strip()
    if not ctx.docker_inside and installed and container not in ("", "none"):
        raise Skip(f"{ctx.cloud} cloud only: a docker daemon cannot run inside a {container} machine; "
                   f"the engine is installed but not running ({outcome(result)})")
    return False, expected, outcome(result)


class _PinnedParamikoBackend(ParamikoBackend):
    """testinfra's paramiko backend on cislaves' own SSH client (see cislaves.remote.connection):
    the instance's pinned known_hosts file, its key, its jump host or proxy command."""

    def __init__(self, hostspec: str, *, conn, instance, data_dir, **kwargs):
        super().__init__(hostspec, **kwargs)
        self._conn, self._instance, self._data_dir = conn, instance, data_dir
        self._first = True

    @functools.cached_property
    def client(self):
        if not self._first:  # testinfra dropped a dead client: connect again, same host-key rules
            self._conn.close()
            self._conn = remote.wait_for_ssh(self._instance, self._data_dir, 60)
        self._first = False
        return self._conn.client

    def close(self) -> None:
        self._conn.close()
