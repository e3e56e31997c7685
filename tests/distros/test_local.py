"""provision() and run_checks() against a real local-cloud machine (systemd-nspawn, real sshd, real
apt): the debian12 script with the minimal package set, a second bootstrap through sudo as a non-root
login user with an extra script that asks for one reboot, the reboot bound, a failing script, a
changed host key, and a deliberately broken machine whose checks must fail."""
import dataclasses
import shlex

import pytest
import yaml

from cislaves import config, remote
from cislaves.clouds.base import LaunchSpec, generate_keypair, new_run_id, standard_tags
from cislaves.distros import checks
from cislaves.distros.checks import run_checks
from cislaves.distros.provision import provision
from cislaves.errors import CheckFailed, ProvisionError, SSHError

pytestmark = [pytest.mark.root, pytest.mark.slow]

REBOOT_ONCE = """#!/bin/bash
# Asks for one reboot: records the boot id, exits 194 the first time, checks the boot changed after.
set -euo pipefail
. "$CISLAVES_LIB"
step "test reboot"
dirname "$CISLAVES_LIB" > /var/lib/cislaves-test-folder
boot=$(cat /proc/sys/kernel/random/boot_id)
if [[ ! -e /var/lib/cislaves-test/boots ]]; then
    mkdir -p /var/lib/cislaves-test; echo "$boot" > /var/lib/cislaves-test/boots
    exit "$REBOOT_EXIT"
fi
[[ "$(head -n1 /var/lib/cislaves-test/boots)" != "$boot" ]] || die "same boot after the reboot"
echo "$boot" >> /var/lib/cislaves-test/boots
"""


class Out(list):
    def __call__(self, line):
        self.append(line)


@pytest.fixture(scope="module")
def ci_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("ci-key") / "jenkins"
    return path, generate_keypair(path, "jenkins@master")


def make_config(folder, local_config_file, ci_key, **provision_settings):
    data = yaml.safe_load(local_config_file.read_text())
    data["ci_user"] = {"authorized_key": ci_key[1]}
    data.setdefault("provision", {}).update(provision_settings)
    path = folder / f"cislaves-{len(list(folder.glob('cislaves-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return config.load(path, environ={})


@pytest.fixture(scope="module")
def machine(local_cloud, tmp_path_factory):
    from cislaves import distros

    debian12 = distros.get("debian12")
    run_id = new_run_id()
    name = f"cislaves-test-{run_id}"
    spec = LaunchSpec(distribution=debian12, image=local_cloud.base_image(debian12), run_id=run_id, name=name,
                      tags=standard_tags(run_id, debian12.name, "instance", name=name),
                      key_dir=tmp_path_factory.mktemp("keys"))
    instance = local_cloud.launch(spec)
    try:
        yield instance
    finally:
        local_cloud.destroy(instance)


@pytest.fixture(scope="module")
def provisioned(machine, local_cloud, local_config_file, ci_key, tmp_path_factory):
    from cislaves import distros

    cfg = make_config(tmp_path_factory.mktemp("cfg"), local_config_file, ci_key)
    out = Out()
    provision(machine, distros.get("debian12"), cfg, local_cloud, out=out)
    return machine, cfg, out


def as_ci_user(machine, ci_key):
    return dataclasses.replace(machine, user="jenkins", key_file=str(ci_key[0]))


def test_bootstrap_streams_its_steps_and_the_checks_pass(provisioned, local_cloud, debian12):
    machine, cfg, out = provisioned
    assert "==> step: installing base packages: sudo bash ca-certificates git python3 python3-venv python3-pip" in out
    assert out[-2] == "==> step: done"
    assert out[-1].startswith("==> debian12: provisioning finished (1 script, 0 reboots)")
    lines = Out()
    results = run_checks(machine, debian12, cfg, local_cloud, out=lines)
    assert [r.name for r in results] == [name for name, _, _ in checks.CHECKS]
    assert lines[:-1] == [r.line() for r in results] and len(lines) == len(checks.CHECKS) + 1
    status = {r.name: r.status for r in results}
    assert {n for n, s in status.items() if s == "SKIP"} == {n for n, full, _ in checks.CHECKS if full}
    assert all(s == "PASS" for n, s in status.items() if n not in
               {n for n, full, _ in checks.CHECKS if full}), lines
    assert "PASS bin-sh: /bin/sh -> /usr/bin/bash" in lines
    assert "PASS umask: 0022" in lines


@pytest.mark.parametrize("package_set", ["minimal", "full"])
def test_the_checks_see_what_each_command_alone_gives_after_one_round_trip(provisioned, local_cloud, debian12,
                                                                           package_set):
    """Over real SSH: one gather for every check of either set, and each command's gathered result is
    what running it alone on its own channel gives (exit code, stdout, stderr)."""
    machine, cfg, _ = provisioned
    ctx = checks.Context(debian12.name, cfg.ci_user.name, cfg.ci_user.authorized_key, package_set == "full",
                         local_cloud.name, local_cloud.capabilities.docker_inside)
    conn = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
    rounds = []

    def gather(commands):
        rounds.append(commands)
        return checks.gather(conn, commands, sudo=False, timeout=60)

    try:
        results = checks.judge(ctx, gather)
        alone = {c: conn.run(c, warn=True, hide=True, in_stream=False) for c in rounds[0]}
    finally:
        conn.close()
    assert len(rounds) == 1 and [r.name for r in results] == [name for name, _, _ in checks.CHECKS]
    for command, result in alone.items():
        assert ctx.facts[command] == checks.Output(result.exited, result.stdout, result.stderr), command
    assert (package_set == "minimal") == all(r.status != "FAIL" for r in results), [r.line() for r in results]


def test_steps_share_a_kept_connection_until_the_block_ends(provisioned, local_cloud, ci_key):
    """Inside kept_connections the next wait_for_ssh of the same instance, user and key gets the
    connection the last user closed (the same TCP connection, as sshd sees it); another login user
    gets its own; all of them close when the block ends."""
    machine, _, _ = provisioned
    seen = "echo $SSH_CONNECTION"
    with remote.kept_connections():
        first = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
        before = first.run(seen, hide=True, in_stream=False).stdout
        first.close()
        again = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
        other = remote.wait_for_ssh(as_ci_user(machine, ci_key), local_cloud.data_dir, 30)
        assert again is first and again.run(seen, hide=True, in_stream=False).stdout == before
        assert other is not first and other.run(seen, hide=True, in_stream=False).stdout != before
    assert not first.is_connected and not other.is_connected
    fresh = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)  # outside the block: close() closes
    try:
        assert fresh is not first and fresh.run(seen, hide=True, in_stream=False).stdout != before
    finally:
        fresh.close()
    assert not fresh.is_connected


def test_ci_user_logs_in_with_the_configured_key_and_has_sudo(provisioned, local_cloud, ci_key):
    machine, _, _ = provisioned
    conn = remote.wait_for_ssh(as_ci_user(machine, ci_key), local_cloud.data_dir, 30)
    try:
        result = conn.run("id -un; umask; sudo -n id -un; readlink -f /bin/sh", hide=True, in_stream=False)
    finally:
        conn.close()
    assert result.stdout.split() == ["jenkins", "0022", "root", "/usr/bin/bash"]


def test_second_bootstrap_through_sudo_with_a_reboot(provisioned, local_cloud, debian12, ci_key, tmp_path,
                                                   local_config_file):
    """Idempotent, and the reboot protocol: the extra script asks for a reboot once, provision()
    reboots through cloud.reboot, reconnects and runs it again; the checks still pass, this time
    through sudo as the non-root login user."""
    machine, _, _ = provisioned
    (tmp_path / "reboot-once.sh").write_text(REBOOT_ONCE)
    cfg = make_config(tmp_path, local_config_file, ci_key, extra_scripts={"debian12": ["reboot-once.sh"]},
                      extra_packages={"debian12": ["jq"]})
    login = as_ci_user(machine, ci_key)
    out = Out()
    with remote.kept_connections():  # as `fab` runs the steps: the reboot ends the kept connection
        provision(login, debian12, cfg, local_cloud, out=out)
        results = run_checks(login, debian12, cfg, local_cloud, out=Out())
    assert all(r.status != "FAIL" for r in results)
    assert "==> step: installing extra packages: jq" in out
    assert "==> rebooting " + machine.name + " for extra script reboot-once.sh (1/3)" in out
    assert out[-1] == "==> debian12: provisioning finished (2 scripts, 1 reboot)"
    conn = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
    try:
        boots = conn.run("cat /var/lib/cislaves-test/boots; cat /proc/sys/kernel/random/boot_id", hide=True,
                         in_stream=False).stdout.split()
        folder = conn.run("cat /var/lib/cislaves-test-folder", hide=True, in_stream=False).stdout.strip()
        left = conn.run(f"test -e {shlex.quote(folder)}", warn=True, hide=True, in_stream=False).exited
    finally:
        conn.close()
    assert len(boots) == 3 and boots[0] != boots[1] == boots[2]
    assert folder.startswith("/home/jenkins/.cislaves-provision.") and left == 1  # removed afterwards
    results = run_checks(login, debian12, cfg, local_cloud, out=Out())
    assert all(r.status != "FAIL" for r in results)


def test_reboots_are_bounded(provisioned, local_cloud, debian12, ci_key, tmp_path, local_config_file):
    machine, _, _ = provisioned
    (tmp_path / "always.sh").write_text('#!/bin/sh\necho "==> step: wanting a reboot"\nexit 194\n')
    cfg = make_config(tmp_path, local_config_file, ci_key, extra_scripts={"debian12": ["always.sh"]}, reboots=0)
    with pytest.raises(ProvisionError) as err:
        provision(machine, debian12, cfg, local_cloud, out=Out())
    assert str(err.value) == ("debian12: extra script always.sh asked for a reboot at step 'wanting a reboot' "
                              "after 0 reboot(s) already (provision.reboots is 0)")


def test_failing_script_names_the_step_and_exit_code(provisioned, local_cloud, debian12, ci_key, tmp_path,
                                                     local_config_file):
    machine, _, _ = provisioned
    (tmp_path / "fail.sh").write_text('#!/bin/bash\n. "$CISLAVES_LIB"\nstep "breaking on purpose"\n'
                                      'echo "it broke" >&2\nexit 3\n')
    (tmp_path / "never.sh").write_text("#!/bin/sh\ntouch /never-ran\n")
    cfg = make_config(tmp_path, local_config_file, ci_key,
                      extra_scripts={"debian12": ["fail.sh", "never.sh"]})
    out = Out()
    with pytest.raises(ProvisionError) as err:
        provision(machine, debian12, cfg, local_cloud, out=out)
    assert str(err.value) == "debian12: extra script fail.sh failed at step 'breaking on purpose' with exit code 3"
    assert "it broke" in out  # stderr streams too
    conn = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
    try:
        assert conn.run("test -e /never-ran", warn=True, hide=True, in_stream=False).exited == 1
    finally:
        conn.close()


def test_changed_host_key_is_refused(provisioned, local_cloud, debian12):
    machine, cfg, _ = provisioned
    known = remote.known_hosts_file(local_cloud.data_dir, machine)
    saved = known.read_text()
    assert machine.address in saved  # pinned on first contact
    other = generate_keypair(known.parent / "other-key").split()
    known.write_text(f"{machine.address} {other[0]} {other[1]}\n")
    try:
        with pytest.raises(SSHError, match="host key .* changed"):
            run_checks(machine, debian12, cfg, local_cloud, out=Out())
    finally:
        known.write_text(saved)
        (known.parent / "other-key").unlink()
        (known.parent / "other-key.pub").unlink()


def test_docker_cannot_run_in_a_local_machine_and_the_check_says_so(provisioned, local_cloud, debian12, ci_key,
                                                                    tmp_path, local_config_file):
    """With the full set's docker engine installed, dockerd fails inside systemd-nspawn; on the local
    cloud (only) docker-running is then a SKIP that says why. Other full-set checks fail (not installed)."""
    machine, _, _ = provisioned
    conn = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
    try:
        # provisioning removed the package lists (they are half of a small image): update first
        remote.run(conn, ["sh", "-c", "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get "
                                      "install -y -q --no-install-recommends docker.io >/dev/null && "
                                      "usermod -aG docker jenkins"], hide=True)
        assert remote.run(conn, ["systemctl", "is-active", "docker"], warn=True, hide=True).stdout.strip() != "active"
    finally:
        conn.close()
    cfg = make_config(tmp_path, local_config_file, ci_key, package_set="full")
    out = Out()
    with pytest.raises(CheckFailed) as err:
        run_checks(machine, debian12, cfg, local_cloud, out=out)
    assert "docker-running" not in str(err.value) and "java" in str(err.value)
    assert "PASS docker-group: groups: jenkins, docker" in out
    skip = [line for line in out if line.startswith("SKIP docker-running: ")]
    assert skip and "local cloud only: a docker daemon cannot run inside a systemd-nspawn machine" in skip[0]
    elsewhere = Out()
    with pytest.raises(CheckFailed) as err:
        run_checks(machine, debian12, cfg, _Named(local_cloud, "ec2"),
                   out=elsewhere)
    assert "docker-running" in str(err.value)


class _Named:
    """The same machine seen as a cloud that declares docker possible inside: the docker-running skip
    belongs to clouds whose capabilities say a daemon cannot run (the local cloud)."""

    def __init__(self, cloud, name):
        from cislaves.clouds.base import Capabilities

        self.data_dir, self.name = cloud.data_dir, name
        self.capabilities = Capabilities(docker_inside=True)
        self.reboot = None


def test_broken_machine_fails_its_checks(provisioned, local_cloud, debian12, ci_key):
    """Runs last in this module: it breaks the machine."""
    machine, cfg, _ = provisioned
    conn = remote.wait_for_ssh(machine, local_cloud.data_dir, 30)
    try:
        for command in ("rm /etc/sudoers.d/90-cislaves-ci-user", "ln -sf dash /bin/sh",
                        "chmod 0644 /home/jenkins/.ssh/authorized_keys", "rm /etc/profile.d/cislaves-umask.sh",
                        "sed -i 's/^UMASK.*/UMASK 077/' /etc/login.defs"):
            remote.run(conn, shlex.split(command) if "'" not in command else ["sh", "-c", command], hide=True)
    finally:
        conn.close()
    out = Out()
    with pytest.raises(CheckFailed) as err:
        run_checks(machine, debian12, cfg, local_cloud, out=out)
    assert str(err.value) == (f"debian12 on {machine.name}: 5 of {len(checks.CHECKS)} checks failed: "
                              "ci-user-key, sudo-rule, sudo-without-tty, umask, bin-sh")
    assert "FAIL bin-sh: expected /bin/sh -> bash; found /bin/sh -> /usr/bin/dash" in out
    assert "FAIL umask: expected umask 0022 in a login shell of jenkins; found 0077" in out
    failed = [line for line in out if line.startswith("FAIL ")]
    assert len(failed) == 5 and all("expected " in line and "; found " in line for line in failed)
    assert any(line.startswith("FAIL ci-user-key: ") and "mode 0644" in line for line in failed)
    assert any(line.startswith("FAIL sudo-without-tty: ") and "exit 1" in line for line in failed)
    skipped = sum(full for _, full, _ in checks.CHECKS)
    assert out[-1] == f"==> debian12: {len(checks.CHECKS) - 5 - skipped} passed, 5 failed, {skipped} skipped"
    # The CI user lost its sudo rule: as that login user, the one command the checks send through
    # `sudo -n` is refused, and every check says so (none passes on a machine it could not look at).
    as_ci_user_out = Out()
    with pytest.raises(CheckFailed):
        run_checks(as_ci_user(machine, ci_key), debian12, cfg, local_cloud, out=as_ci_user_out)
    failed = [line for line in as_ci_user_out if line.startswith("FAIL ")]
    assert len(failed) == len(checks.CHECKS) - skipped, as_ci_user_out
    assert all("; found " in line and "the checks' command failed: sudo: " in line for line in failed), failed
