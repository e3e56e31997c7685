"""Branches of the provisioning scripts exercised on this machine: the CentOS/EPEL mirror switch on
copies of the real repository files, kernel/reboot detection, package installs that skip what is
there. Package managers are stubs on PATH (this host has no yum and cannot reach their mirrors)."""
import shutil

import pytest

from tests.distros.shell import DATA, recording_stub, source_and_run, stub


@pytest.fixture
def repos(tmp_path):
    folder = tmp_path / "yum.repos.d"
    shutil.copytree(DATA / "centos7", folder, ignore=shutil.ignore_patterns("README"))
    return folder


def switch(repos):
    return source_and_run("centos7.sh", "switch_to_vault", env={"CISLAVES_REPO_DIR": str(repos)})


def active(path):
    return [line for line in path.read_text().splitlines()
            if line.startswith(("baseurl=", "mirrorlist=", "metalink="))]


def test_centos7_repositories_move_to_the_vault_and_epel_to_the_archive(repos):
    result = switch(repos)
    assert result.returncode == 0, result.stdout + result.stderr
    assert active(repos / "CentOS-Base.repo") == [
        "baseurl=https://vault.centos.org/7.9.2009/os/$basearch/",
        "baseurl=https://vault.centos.org/7.9.2009/updates/$basearch/",
        "baseurl=https://vault.centos.org/7.9.2009/extras/$basearch/",
        "baseurl=https://vault.centos.org/7.9.2009/centosplus/$basearch/"]
    assert active(repos / "epel.repo") == [
        "baseurl=https://archives.fedoraproject.org/pub/archive/epel/7/$basearch",
        "baseurl=https://archives.fedoraproject.org/pub/archive/epel/7/$basearch/debug",
        "baseurl=https://archives.fedoraproject.org/pub/archive/epel/7/SRPMS"]
    assert active(repos / "CentOS-SCLo-scl-rh.repo") == [
        "baseurl=https://vault.centos.org/7.9.2009/sclo/$basearch/rh/",
        "baseurl=http://buildlogs.centos.org/centos/7/sclo/$basearch/rh/"]  # disabled testing repo, untouched
    text = (repos / "CentOS-Base.repo").read_text()
    assert "#mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=os" in text
    assert "gpgcheck=1" in text and "enabled=0" in text  # the rest of the file is kept
    assert (repos / "CentOS-Base.repo.cislaves-orig").read_text() == (DATA / "centos7" / "CentOS-Base.repo").read_text()


def test_mirror_switch_is_idempotent(repos):
    switch(repos)
    first = {p.name: p.read_text() for p in repos.iterdir()}
    result = switch(repos)
    assert result.returncode == 0
    assert "switched" not in result.stdout
    assert {p.name: p.read_text() for p in repos.iterdir()} == first


def test_mirror_switch_leaves_other_repositories_alone(repos):
    (repos / "docker-ce.repo").write_text("[docker-ce-stable]\nbaseurl=https://download.docker.com/linux/centos/7/$basearch/stable\n")
    switch(repos)
    assert not (repos / "docker-ce.repo.cislaves-orig").exists()


@pytest.mark.parametrize("kernels,running,needed", [
    ([], "6.1.0-28-amd64", False),  # a container: no kernel in /boot
    (["6.1.0-28-amd64"], "6.1.0-28-amd64", False),
    (["6.1.0-28-amd64", "6.1.0-30-amd64"], "6.1.0-28-amd64", True),
    (["3.10.0-957.el7.x86_64", "3.10.0-1160.119.1.el7.x86_64"], "3.10.0-1160.119.1.el7.x86_64", False),
    (["3.10.0-957.el7.x86_64", "3.10.0-1160.119.1.el7.x86_64"], "3.10.0-957.el7.x86_64", True),
])
def test_kernel_reboot_detection(tmp_path, kernels, running, needed):
    boot = tmp_path / "boot"
    boot.mkdir()
    for version in kernels + ["0-rescue-abc"]:
        (boot / f"vmlinuz-{version}").write_text("")
    stub(tmp_path / "bin", "uname", f'echo "{running}"')
    result = source_and_run("debian12.sh", "reboot_required && echo NEEDED || echo NOT", tmp_path / "bin",
                            {"CISLAVES_BOOT_DIR": str(boot), "CISLAVES_REBOOT_REQUIRED_FILE": str(tmp_path / "none")})
    assert result.stdout.split()[-1] == ("NEEDED" if needed else "NOT")


def test_apt_reboot_required_file_asks_for_a_reboot(tmp_path):
    (tmp_path / "reboot-required").write_text("*** System restart required ***\n")
    result = source_and_run("ubuntu22.04.sh", "reboot_required && echo NEEDED",
                            env={"CISLAVES_REBOOT_REQUIRED_FILE": str(tmp_path / "reboot-required"),
                                 "CISLAVES_BOOT_DIR": str(tmp_path)})
    assert result.stdout.split()[-1] == "NEEDED"


@pytest.mark.parametrize("code,needed", [(1, True), (0, False)])
def test_el_reboot_detection_uses_needs_restarting(tmp_path, code, needed):
    stub(tmp_path / "bin", "needs-restarting", f'[[ "$*" == "-r" ]] || exit 9; exit {code}')
    result = source_and_run("rocky9.sh", "reboot_required && echo NEEDED || echo NOT", tmp_path / "bin")
    assert result.stdout.split()[-1] == ("NEEDED" if needed else "NOT")


def test_reboot_request_marks_progress_and_exits_194(tmp_path):
    stub(tmp_path / "bin", "needs-restarting", "exit 1")
    stub(tmp_path / "bin", "uname", 'echo 3.10.0-957.el7.x86_64')
    result = source_and_run("centos7.sh", "reboot_if_needed; echo NOT-REACHED", tmp_path / "bin",
                            {"CISLAVES_STATE_DIR": str(tmp_path / "state"), "CISLAVES_RUN_ID": "r1"})
    assert result.returncode == 194
    assert "==> step: reboot to finish the updates (running kernel 3.10.0-957.el7.x86_64)" in result.stdout
    assert "NOT-REACHED" not in result.stdout
    assert (tmp_path / "state" / "reboot-requested").read_text() == "r1\n"


def test_apt_installs_only_missing_packages_and_updates_once(tmp_path):
    log = tmp_path / "calls"
    stub(tmp_path / "bin", "dpkg-query", '[[ "${@: -1}" == git || "${@: -1}" == sudo ]] && '
                                         'printf "install ok installed" || exit 1')
    recording_stub(tmp_path / "bin", "apt-get", log)
    result = source_and_run("debian12.sh", "pkg_install sudo git jq; pkg_install curl=7.88.1-10; "
                            "pkg_install sudo git", tmp_path / "bin")
    assert result.returncode == 0, result.stdout
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get -q -o DPkg::Lock::Timeout=600 update"
    assert calls[1].endswith("--no-install-recommends install jq")
    assert calls[2].endswith("--no-install-recommends install curl=7.88.1-10")
    assert len(calls) == 3
    assert "already installed: sudo git" in result.stdout


def test_el_installs_only_missing_packages(tmp_path):
    log = tmp_path / "calls"
    stub(tmp_path / "bin", "rpm", '[[ "${@: -1}" == git ]]')
    recording_stub(tmp_path / "bin", "dnf", log)
    result = source_and_run("rocky9.sh", "pkg_install git nginx; pkg_install git", tmp_path / "bin")
    assert result.returncode == 0, result.stdout
    assert log.read_text().splitlines() == ["dnf -y install nginx"]


def test_failing_package_install_stops_the_script(tmp_path):
    stub(tmp_path / "bin", "rpm", "exit 1")
    stub(tmp_path / "bin", "yum", "echo 'No package nosuch available.'; exit 1")
    result = source_and_run("centos7.sh", 'step "installing nosuch"; pkg_install nosuch; echo NOT-REACHED',
                            tmp_path / "bin")
    assert result.returncode == 1
    assert "NOT-REACHED" not in result.stdout
