"""The `tests` step: check a provisioned instance; every check says what it expected and what it found.

One round trip for all of them. A check is a function that asks for the results of shell commands
(`Context.run`) and judges them. run_checks first lets every check ask; the commands asked for go to
the instance in one SSH command that runs them side by side (each in its own login shell, stdin
from /dev/null) and sends back each one's exit code, stdout and stderr, framed by byte counts under a
random marker; then every check is judged locally on those results. A check that asks for another
command only after seeing a result (none of the minimal set does) costs one more round trip, for the
commands still missing. Per command the results are what running it alone would give: the same
exit codes and output, so a check's "found" text is the same as when each ran on its own channel.

Checks of things only the full package set installs are skipped (and say so) when
`provision.package_set` is "minimal". On the local cloud a docker daemon cannot run inside a
systemd-nspawn machine: there, and only there, the docker-running check is skipped with the reason
when the engine is installed but not running.

Host keys: the connection is cislaves' own (cislaves.remote): the instance's pinned known_hosts
file (trust on first use, a changed key is refused), its key, its jump host or proxy command. A
non-root login user runs the whole command through `sudo -n`.
"""
from __future__ import annotations

import logging
import secrets
import shlex
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from cislaves import remote
from cislaves.distros.provision import authorized_key
from cislaves.errors import CheckFailed, SSHError

log = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MISSING = 99  # exit code of a fact command whose file (or user) does not exist
NO_USER = 98
MAX_ROUNDS = 5  # round trips at most: a check asking for more is a bug in the check


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


class _Missing(BaseException):
    """Raised by Context.run for commands not gathered yet (a BaseException: a check's own `except
    Exception` must not swallow it)."""

    def __init__(self, commands: list[str]):
        super().__init__(commands)
        self.commands = commands


@dataclass
class Output:
    """A command's result as the checks see it."""

    rc: int
    stdout: str
    stderr: str


def run_checks(instance, distribution, config, cloud, out: Callable[[str], Any] = print) -> list[CheckResult]:
    """Run every check against `instance`; print one line per check; CheckFailed if any failed."""
    key = authorized_key(config)  # a configuration error before any connection
    ctx = Context(distribution.name, config.ci_user.name, key, config.provision.package_set == "full",
                  cloud.name, cloud.capabilities.docker_inside)
    conn = remote.wait_for_ssh(instance, cloud.data_dir, config.timeouts.ssh)
    try:
        sudo = instance.user != "root"
        results = judge(ctx, lambda commands: gather(conn, commands, sudo=sudo, timeout=config.timeouts.ssh))
    finally:
        conn.close()
    for result in results:
        out(result.line())
    failed = [r.name for r in results if r.status == FAIL]
    passed = sum(r.status == PASS for r in results)
    skipped = sum(r.status == SKIP for r in results)
    out(f"==> {distribution.name}: {passed} passed, {len(failed)} failed, {skipped} skipped")
    if failed:
        raise CheckFailed(f"{distribution.name} on {instance.name}: {len(failed)} of {len(results)} "
                          f"checks failed: {', '.join(failed)}")
    return results


def judge(ctx: "Context", gather_fn: Callable[[list[str]], dict[str, Output]], checks=None) -> list[CheckResult]:
    """Every check's result, in the order of `checks` (default CHECKS), gathering the commands they ask
    for in as few calls of `gather_fn` (commands -> {command: Output}) as their dependencies allow:
    one for CHECKS."""
    checks = CHECKS if checks is None else checks
    results: dict[int, CheckResult] = {}
    for _ in range(MAX_ROUNDS):
        wanted: dict[str, None] = {}
        for index, (name, full_only, func) in enumerate(checks):
            if index not in results:
                try:
                    results[index] = run_one(ctx, name, full_only, func)
                except _Missing as missing:
                    wanted.update(dict.fromkeys(missing.commands))
        if not wanted:
            return [results[i] for i in range(len(checks))]
        ctx.facts.update(gather_fn(list(wanted)))
    raise CheckFailed(f"the checks still asked for commands after {MAX_ROUNDS} round trips")


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


def gather(conn, commands: list[str], *, sudo: bool, timeout: float) -> dict[str, Output]:
    """Run `commands` side by side on the connection's host in one SSH command; {command: Output}.
    If the whole command fails (sudo refused, the connection dropped), every command's result says so."""
    marker = f"cislaves-{secrets.token_hex(8)}"
    line = remote.command_line(["sh", "-c", gather_script(commands, marker)], sudo=sudo)
    rc, data = _execute(conn, line, timeout)
    found = parse_gathered(data, marker, len(commands))
    if len(found) < len(commands):
        text = data.decode("utf-8", "replace").strip()
        reason = text.splitlines()[-1] if text else "(no output)"
        log.debug("the checks' command on %s exited %s: %s", conn.host, rc, text[-2000:])
        failed = Output(rc if rc else 255, "", f"the checks' command failed: {reason}")
        return {command: found.get(i, failed) for i, command in enumerate(commands)}
    return {command: found[i] for i, command in enumerate(commands)}


def gather_script(commands: list[str], marker: str) -> str:
    """The POSIX shell script gather() runs: every command in the background, then each one's
    `MARKER index rc stdout-bytes stderr-bytes` line followed by its stdout and stderr.
    As on an SSH channel of its own, a command runs in the login shell ($SHELL, which sshd and sudo set),
    and its stdout and stderr are pipes (emptied into files by `cat`): some programs write differently
    into a regular file (`sudo -l` wraps its lines at 80 columns)."""
    lines = ['d=$(mktemp -d) || exit 125', "trap 'rm -rf \"$d\"' EXIT",
             # the shell by its name, as sshd starts it (its messages then read "bash: ...")
             's=${SHELL:-/bin/sh}; n=${s##*/}; [ "$(command -v "$n")" -ef "$s" ] || n=$s']
    lines += [f'( {{ {{ "$n" -c {shlex.quote(command)} </dev/null 2>&4 4>&-; '
              f'echo $? >"$d/{i}.r"; }} | cat >"$d/{i}.o"; }} 4>&1 | cat >"$d/{i}.e" ) & p{i}=$!'
              for i, command in enumerate(commands)]
    lines += [f'wait "$p{i}"' for i in range(len(commands))]
    lines += [f'printf "%s %s %s %s %s\\n" {marker} {i} "$(cat "$d/{i}.r")" "$(wc -c <"$d/{i}.o")" '
              f'"$(wc -c <"$d/{i}.e")"; cat "$d/{i}.o" "$d/{i}.e"' for i in range(len(commands))]
    return "\n".join(lines) + "\n"


def parse_gathered(data: bytes, marker: str, count: int) -> dict[int, Output]:
    """{index: Output} from gather_script's output; whatever precedes the first marker is ignored."""
    found: dict[int, Output] = {}
    tag = marker.encode() + b" "
    pos = data.find(tag)
    while pos >= 0:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        try:
            index, rc, n_out, n_err = (int(x) for x in data[pos + len(tag):end].split())
        except ValueError:
            break
        body = data[end + 1:end + 1 + n_out + n_err]
        if len(body) < n_out + n_err or not 0 <= index < count:
            break
        found[index] = Output(rc, body[:n_out].decode("utf-8", "replace"), body[n_out:].decode("utf-8", "replace"))
        pos = data.find(tag, end + 1 + n_out + n_err)
    return found


def _execute(conn, line: str, timeout: float) -> tuple[int, bytes]:
    """Run one command on the open connection; (exit code, stdout and stderr as bytes)."""
    try:
        channel = conn.client.get_transport().open_session(timeout=timeout)
        try:
            channel.settimeout(timeout)
            channel.set_combine_stderr(True)
            channel.exec_command(line)
            chunks = []
            while chunk := channel.recv(65536):
                chunks.append(chunk)
            return channel.recv_exit_status(), b"".join(chunks)
        finally:
            channel.close()
    except socket.timeout:
        raise SSHError(f"the checks on {conn.host} did not finish within {timeout:g}s") from None
    except (AttributeError, *remote.RETRYABLE) as exc:  # AttributeError: no transport (closed)
        raise SSHError(f"SSH to {conn.host}:{conn.port} failed while checking: {exc}") from None


@dataclass
class Context:
    """What a check gets: the settings the machine was provisioned with, and the commands' results."""

    distribution: str
    user: str
    key: str
    full: bool
    cloud: str
    docker_inside: bool = True  # the cloud's capability: can a docker daemon run in its instances?
    facts: dict[str, Output] = field(default_factory=dict)  # command -> its result on the instance

    def run(self, command: str) -> Output:
        """The result of a shell command on the instance (as root)."""
        return self.run_all(command)[0]

    def run_all(self, *commands: str) -> list[Output]:
        """Results of several commands, asked for together (one round trip even if all are new)."""
        missing = [c for c in commands if c not in self.facts]
        if missing:
            raise _Missing(missing)
        return [self.facts[c] for c in commands]

    def as_user(self, command: str) -> Output:
        """Run a shell command as the CI user (no login shell), from root."""
        return self.run(self.as_user_command(command))

    def as_user_command(self, command: str) -> str:
        return f"su -s /bin/sh -c {shlex.quote(command)} {shlex.quote(self.user)}"


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
    expected = f"/etc/cislaves/provisioned naming distribution={ctx.distribution}"
    result = ctx.run(f"test -e /etc/cislaves/provisioned || exit {MISSING}; cat /etc/cislaves/provisioned")
    if result.rc == MISSING:
        return False, expected, "no /etc/cislaves/provisioned (the script did not finish)"
    if result.rc != 0:
        return False, expected, outcome(result)
    return f"distribution={ctx.distribution}\n" in result.stdout, expected, " ".join(result.stdout.split())


@check("ci-user")
def _ci_user(ctx: Context):
    expected = f"user {ctx.user} with shell /bin/bash and a home folder"
    # the passwd entry, then whether its home folder is a directory
    result = ctx.run(f"e=$(getent passwd {shlex.quote(ctx.user)}) || exit {MISSING}; printf '%s\\n' \"$e\"; "
                     "h=$(printf '%s' \"$e\" | cut -d: -f6); "
                     "if [ -d \"$h\" ]; then echo directory; else echo missing; fi")
    if result.rc == MISSING:
        return False, expected, f"no user {ctx.user}"
    if result.rc != 0:
        return False, expected, outcome(result)
    entry, kind = result.stdout.splitlines()[:2]
    _, _, uid, _, _, home, shell = entry.split(":")
    is_directory = kind == "directory"
    return (shell == "/bin/bash" and is_directory, expected,
            f"user {ctx.user} (uid {uid}), shell {shell}, home {home}{'' if is_directory else ' (missing)'}")


@check("ci-user-key")
def _ci_user_key(ctx: Context):
    if not ctx.key:
        raise Skip("no authorized key is configured (ci_user.authorized_key...)")
    key_type, blob = ctx.key.split()[:2]
    expected = (f"~{ctx.user}/.ssh/authorized_keys owned by {ctx.user}, mode 0600, with the configured "
                f"{key_type} key ...{blob[-12:]}")
    # the home folder, then the file's owner and mode, then its content
    result = ctx.run(f"e=$(getent passwd {shlex.quote(ctx.user)}) || exit {NO_USER}; "
                     "h=$(printf '%s' \"$e\" | cut -d: -f6); printf '%s\\n' \"$h\"; f=\"$h/.ssh/authorized_keys\"; "
                     f"[ -e \"$f\" ] || exit {MISSING}; stat -c '%U %a' -- \"$f\" && cat -- \"$f\"")
    if result.rc == NO_USER:
        return False, expected, f"no user {ctx.user}"
    home, _, rest = result.stdout.partition("\n")
    if result.rc == MISSING:
        return False, expected, f"no {home}/.ssh/authorized_keys"
    if result.rc != 0:
        return False, expected, outcome(result)
    stat, _, content = rest.partition("\n")
    owner, mode_text = stat.split()
    mode = int(mode_text, 8)
    keys = [line.split()[1][-12:] for line in content.splitlines()
            if len(line.split()) >= 2 and not line.startswith("#")]
    found = f"owner {owner}, mode {mode:04o}, keys ending {', '.join('...' + k for k in keys) or '(none)'}"
    return owner == ctx.user and mode == 0o600 and blob[-12:] in keys, expected, found


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
    result = ctx.run(f"id -Gn -- {shlex.quote(ctx.user)}")
    groups = result.stdout.split() if result.rc == 0 else []
    return "docker" in groups, f"{ctx.user} in group docker", f"groups: {', '.join(groups) or '(none)'}"


@check("docker-running", full_only=True)
def _docker_running(ctx: Context):
    expected = f"docker service running and 'docker version' working for {ctx.user}"
    result, dockerd, virt = ctx.run_all(ctx.as_user_command("docker version --format '{{.Server.Version}}'"),
                                        "command -v dockerd", "systemd-detect-virt --container")
    if result.rc == 0:
        return True, expected, f"docker server {result.stdout.strip()}"
    installed = dockerd.rc == 0
    container = virt.stdout.strip()
    if not ctx.docker_inside and installed and container not in ("", "none"):
        raise Skip(f"{ctx.cloud} cloud only: a docker daemon cannot run inside a {container} machine; "
                   f"the engine is installed but not running ({outcome(result)})")
    return False, expected, outcome(result)
