"""The `bootstrap` step: upload a distribution's provisioning script and run it on an instance.

What runs, in order, each with sudo (no sudo when the login user is root):
1. the distribution's script (scripts/<name>.sh with the shared lib.sh and its family file), which
   also installs `provision.extra_packages[<name>]` at its end;
2. each of `provision.extra_scripts[<name>]`, executed directly (any interpreter via its #! line),
   with CISLAVES_LIB (the helpers) and CISLAVES_SETTINGS (the settings file) in its environment.

Settings reach the scripts through a `settings.env` file whose every value is shell-quoted.
Reboot protocol: a script that needs a reboot saves its progress and exits with REBOOT_EXIT (194);
provision() reboots the instance through `cloud.reboot`, reconnects, uploads again and runs the same
script again, at most `provision.reboots` times in all.
A failing script raises ProvisionError naming the distribution, the last `==> step:` line and the
exit code. The scripts' output goes to `out`, one call per line, as it arrives.
"""
from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from invoke.exceptions import CommandTimedOut

from cislaves import progress, remote
from cislaves.records import new_run_id
from cislaves.clouds.ssh import ssh_timeout
from cislaves.errors import ConfigError, ProvisionError, SSHError

log = logging.getLogger(__name__)

REBOOT_EXIT = 194
STEP_PREFIX = "==> step: "
SEED_KEY_FILE = "ci-platform/all/all.yaml"  # relative to the config file's folder (segredos/)
PUBLIC_KEY = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|"
                        r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?$")
PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_:~-]*(=[A-Za-z0-9.+_:~-]+)?$")
FAMILY_FILES = {"apt": "apt.sh", "yum": "el.sh", "dnf": "el.sh"}
TTY_REFUSED = "you must have a tty to run sudo"


def provision(instance, distribution, config, cloud, out: Callable[[str], Any] = print) -> None:
    """Run the distribution's provisioning script and the configured extras on `instance`."""
    key = authorized_key(config)
    run_id = new_run_id()  # progress marks of this bootstrap survive its reboots, not the next bootstrap
    env_text = settings_env(distribution, config, cloud.name, run_id, key)
    extras = extra_scripts(distribution, config)
    units = [Unit(distribution.script.name, distribution.script.name)]
    units += [Unit(f"extra script {path.name}", f"extra-{i}-{path.name}", path=path) for i, path in enumerate(extras, 1)]
    session = _Session(instance, distribution, config, cloud, out, env_text, units)
    try:
        for unit in units:
            session.run_unit(unit)
    finally:
        session.close()
    out(f"==> {distribution.name}: provisioning finished ({len(units)} script"
        f"{'s' if len(units) > 1 else ''}, {session.reboots} reboot{'s' if session.reboots != 1 else ''})")


def authorized_key(config) -> str:
    """The CI user's authorized public key: `ci_user.authorized_key`, `ci_user.authorized_key_file`,
    or the YAML file `ci_user.authorized_key_yaml` at `ci_user.authorized_key_yaml_path` (default: the
    seed's segredos/ci-platform/all/all.yaml). One OpenSSH public key line; "" (with a warning) when
    none is configured and the seed's file does not exist."""
    ci_user = config.ci_user
    if ci_user.authorized_key:
        return check_public_key(ci_user.authorized_key, f"{config.where}: ci_user.authorized_key")
    if ci_user.authorized_key_file:
        path = config.relative(ci_user.authorized_key_file)
        return check_public_key(_read(path, "ci_user.authorized_key_file", config),
                                f"{path} (ci_user.authorized_key_file)")
    if ci_user.authorized_key_yaml:
        path = config.relative(ci_user.authorized_key_yaml)
        where = "ci_user.authorized_key_yaml"
    else:
        path = config.relative(SEED_KEY_FILE) if config.path else None
        where = "the seed's default"
        if path is None or not path.exists():
            # Nothing configured anywhere: bake anyway (a first try, a test bake), but say it loudly.
            log.warning("%s: ci_user: no authorized key configured: the CI user %r will accept no SSH "
                        "login; set ci_user.authorized_key, authorized_key_file or authorized_key_yaml "
                        "(default %s next to the config file)", config.where, ci_user.name, SEED_KEY_FILE)
            return ""
    try:
        data = yaml.safe_load(_read(path, where, config))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    value = lookup_key_path(data, ci_user.authorized_key_yaml_path, str(path))
    return check_public_key(value, f"{path} at {ci_user.authorized_key_yaml_path}")


def lookup_key_path(data: Any, key_path: str, where: str) -> Any:
    """The value at a dotted key path with list indexes, e.g. `a.b[0].c[1]`."""
    tokens = re.findall(r"([^.\[\]]+)|\[(\d+)\]", key_path)
    if not tokens or "".join(f".{k}" if k else f"[{i}]" for k, i in tokens).lstrip(".") != key_path:
        raise ConfigError(f"{where}: key path {key_path!r} is not of the form a.b[0].c")
    node, seen = data, ""
    for name, index in tokens:
        if name:
            if not isinstance(node, dict) or name not in node:
                raise ConfigError(f"{where}: no key {name!r} under {seen or '(top level)'} "
                                  f"(looking up {key_path})")
            node, seen = node[name], f"{seen}.{name}" if seen else name
        else:
            if not isinstance(node, list) or int(index) >= len(node):
                raise ConfigError(f"{where}: {seen or '(top level)'} has no item [{index}] "
                                  f"(looking up {key_path})")
            node, seen = node[int(index)], f"{seen}[{index}]"
    return node


def check_public_key(value: Any, where: str) -> str:
    """`value` stripped if it is one OpenSSH public key line, else a ConfigError naming `where`."""
    if not isinstance(value, str) or not PUBLIC_KEY.match(value.strip()):
        # never echo the value: a wrong key path may point at a private key
        shown = (f"{len(value.strip())} characters of other text" if isinstance(value, str)
                 else f"a {type(value).__name__}")
        raise ConfigError(f"{where}: expected one OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... "
                          f"comment'), got {shown}")
    return value.strip()


def settings_env(distribution, config, cloud_name: str, run_id: str, key: str) -> str:
    """The settings.env text the scripts source: every value shell-quoted, packages as a bash array."""
    packages = extra_packages(distribution, config)
    values = {
        "CISLAVES_DISTRIBUTION": distribution.name,
        "CISLAVES_FAMILY": distribution.family,
        "CISLAVES_CLOUD": cloud_name,
        "CISLAVES_RUN_ID": run_id,
        "CISLAVES_CI_USER": config.ci_user.name,
        "CISLAVES_CI_KEY": key,
        "CISLAVES_PACKAGE_SET": config.provision.package_set,
    }
    lines = ["# Written by cislaves for one provisioning run; every value is shell-quoted."]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    lines.append("CISLAVES_EXTRA_PACKAGES=(" + " ".join(shlex.quote(p) for p in packages) + ")")
    return "\n".join(lines) + "\n"


def extra_packages(distribution, config) -> list[str]:
    """`provision.extra_packages[<distribution>]`, each a package name (optionally =version)."""
    packages = config.provision.extra_packages.get(distribution.name, [])
    for i, name in enumerate(packages):
        if not PACKAGE_NAME.match(name):
            raise ConfigError(f"{config.where}: provision.extra_packages.{distribution.name}[{i}]: "
                              f"{name!r} is not a package name (letters, digits, . + _ : ~ -, "
                              f"optionally =version)")
    return list(packages)


def extra_scripts(distribution, config) -> list[Path]:
    """`provision.extra_scripts[<distribution>]` as existing files (relative to the config file)."""
    scripts = []
    for i, path in enumerate(config.provision.extra_scripts.get(distribution.name, [])):
        full = config.relative(path)
        if not full.is_file():
            raise ConfigError(f"{config.where}: provision.extra_scripts.{distribution.name}[{i}]: "
                              f"no such file: {full}")
        scripts.append(full)
    return scripts


def script_files(distribution) -> list[Path]:
    """The local files the distribution's script needs: lib.sh, its family file, the script."""
    folder = distribution.script.parent
    if not distribution.script.is_file():
        raise ProvisionError(f"{distribution.name}: provisioning script {distribution.script} is missing")
    return [folder / "lib.sh", folder / FAMILY_FILES[distribution.family], distribution.script]


def _read(path: Path, key: str, config) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{config.where}: {key}: cannot read {path}: {exc.strerror}") from None


@dataclass
class Unit:
    """One script provision() runs: `label` for messages, `remote_name` in the upload folder."""

    label: str
    remote_name: str
    path: Path | None = None  # an extra script (None: the distribution's own script)


class _LineWriter:
    """A file-like sink for Fabric's output streams: calls `out` once per line and remembers the
    last step line."""

    def __init__(self, out: Callable[[str], Any]):
        self.out = out
        self.buffer = ""
        self.last_step: str | None = None
        self.last_line: str | None = None  # the latest non-empty line, for the progress heartbeat
        self.tty_refused = False

    def write(self, text: str) -> int:
        self.buffer += text.replace("\r\n", "\n")
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.buffer:
            line, self.buffer = self.buffer, ""
            self._line(line)

    def _line(self, line: str) -> None:
        if line.startswith(STEP_PREFIX):
            self.last_step = line[len(STEP_PREFIX):].strip()
        if TTY_REFUSED in line:
            self.tty_refused = True
        if line.strip():
            self.last_line = line.strip()
        progress.clear_live()  # the heartbeat's live line redraws below this line
        self.out(line)


class _Session:
    """The SSH side of one provision() call: connection, upload folder, reboots."""

    def __init__(self, instance, distribution, config, cloud, out, env_text: str, units: list[Unit]):
        self.instance, self.distribution, self.config, self.cloud = instance, distribution, config, cloud
        self.out, self.env_text, self.units = out, env_text, units
        self.deadline = time.monotonic() + config.timeouts.provision
        self.reboots = 0
        self.conn = None
        self.folder: str | None = None
        self.pty = False

    def run_unit(self, unit: Unit) -> None:
        while True:
            self._ensure_uploaded()
            code, writer = self._execute(unit)
            if code == 0:
                return
            if writer.tty_refused and not self.pty:
                self.out("==> sudo on this image requires a terminal: running again with one")
                self.pty = True
                continue
            step = writer.last_step or "before its first step"
            if code != REBOOT_EXIT:
                raise ProvisionError(f"{self.distribution.name}: {unit.label} failed at step "
                                     f"'{step}' with exit code {code}")
            if self.reboots >= self.config.provision.reboots:
                raise ProvisionError(f"{self.distribution.name}: {unit.label} asked for a reboot at step "
                                     f"'{step}' after {self.reboots} reboot(s) already "
                                     f"(provision.reboots is {self.config.provision.reboots})")
            self.reboots += 1
            self.out(f"==> rebooting {self.instance.name} for {unit.label} "
                     f"({self.reboots}/{self.config.provision.reboots})")
            self.close()
            if self.cloud.reboot is not None:  # the cloud reboots its own way
                self.cloud.reboot(self.instance, ssh_timeout(self.cloud, self.config))
            else:
                remote.reboot(self.instance, self.config.data_dir, ssh_timeout(self.cloud, self.config))

    def close(self) -> None:
        if self.conn is not None:
            if self.folder:
                try:
                    remote.run(self.conn, ["rm", "-rf", "--", self.folder], hide=True, warn=True, timeout=60)
                except SSHError as exc:
                    log.debug("could not remove %s: %s", self.folder, exc)
            self.conn.close()
        self.conn, self.folder = None, None

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProvisionError(f"{self.distribution.name}: provisioning ran out of time "
                                 f"(timeouts.provision = {self.config.timeouts.provision:g}s)")
        return left

    def _ensure_uploaded(self) -> None:
        if self.conn is not None:
            return
        timeout = min(ssh_timeout(self.cloud, self.config), self._remaining())
        self.conn = remote.wait_for_ssh(self.instance, self.cloud.data_dir, timeout)
        # In the login user's home, not /tmp: /tmp may be mounted noexec, and extra scripts are executed.
        made = remote.run(self.conn, ["sh", "-c", 'mktemp -d "$HOME/.cislaves-provision.XXXXXX"'], hide=True)
        self.folder = made.stdout.strip()
        files = [(path, f"{self.folder}/{path.name}") for path in script_files(self.distribution)]
        files += [(u.path, f"{self.folder}/{u.remote_name}") for u in self.units if u.path is not None]
        remote.upload(self.conn, files)
        try:
            with self.conn.sftp().open(f"{self.folder}/settings.env", "w") as fh:
                fh.chmod(0o600)
                fh.write(self.env_text)
        except OSError as exc:
            raise SSHError(f"upload to {self.conn.host} failed: {exc}") from None

    def _execute(self, unit: Unit) -> tuple[int, _LineWriter]:
        assert self.conn is not None and self.folder is not None
        path = f"{self.folder}/{unit.remote_name}"
        if unit.path is None:
            argv, env = ["bash", path], None
        else:
            argv = [path]
            env = {"CISLAVES_LIB": f"{self.folder}/lib.sh", "CISLAVES_SETTINGS": f"{self.folder}/settings.env"}
        line = remote.command_line(argv, sudo=self.conn.user != "root", env=env)
        writer = _LineWriter(self.out)
        log.info("running %s on %s", unit.label, self.instance.name)
        try:
            with progress.Heartbeat(f"{unit.label} on {self.instance.name}", lambda: writer.last_line,
                                    timeout=self.config.timeouts.provision):
                result = self.conn.run(line, warn=True, pty=self.pty, in_stream=False, out_stream=writer,
                                       err_stream=writer, timeout=self._remaining())
        except CommandTimedOut:
            writer.flush()
            raise ProvisionError(f"{self.distribution.name}: {unit.label} timed out at step "
                                 f"'{writer.last_step or 'before its first step'}' (timeouts.provision = "
                                 f"{self.config.timeouts.provision:g}s)") from None
        except remote.RETRYABLE as exc:
            writer.flush()
            raise SSHError(f"{self.distribution.name}: SSH to {self.instance.address} failed while "
                           f"running {unit.label} at step '{writer.last_step}': {exc}") from None
        writer.flush()
        return result.exited, writer
