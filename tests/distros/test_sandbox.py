"""Every distribution's script run end to end in a throwaway copy (systemd-nspawn --volatile=overlay)
of the local cloud's Debian tree, with the package managers replaced by recording stubs: the steps,
the package lists per distribution, the reboot protocol (exit 194, then resume without redoing the
updates), the CentOS vault switch on the real repository files, and a second bootstrap (idempotent).
Real here: useradd/usermod/groupadd, visudo, su, dpkg-divert, the files the scripts write."""
import shutil
import subprocess

import pytest

from cislaves import config, distros
from cislaves.distros import SCRIPTS_DIR
from cislaves.distros.provision import settings_env
from tests.distros.shell import DATA, stub
from tests.distros.test_settings import KEY

pytestmark = pytest.mark.root

STUBS = {
    "apt-get": 'echo "apt-get $*" >> /record/calls',
    "yum": 'exec /stubs/el-tool yum "$@"',
    "dnf": 'exec /stubs/el-tool dnf "$@"',
    "el-tool": '''tool=$1; shift; echo "$tool $*" >> /record/calls
[[ "$1" == -y ]] && shift
if [[ "$1" == install ]]; then
    shift
    for p in "$@"; do
        echo "$p" >> /record/installed
        case "$p" in
            epel-release) cp /record/repos/epel.repo /etc/yum.repos.d/ ;;
            centos-release-scl) cp /record/repos/CentOS-SCLo-scl-rh.repo /etc/yum.repos.d/ ;;
        esac
    done
fi''',
    "rpm": '[[ "$1 $2" == "-q --whatprovides" ]] && grep -qx -- "$3" /record/installed 2>/dev/null',
    "needs-restarting": "[[ -e /record/reboot-pending ]] && exit 1; exit 0",
    "gem": '''echo "gem $*" >> /record/calls
bindir=/usr/local/bin version=
while (($#)); do case "$1" in --bindir) bindir=$2; shift ;; -v) version=$2; shift ;; esac; shift; done
mkdir -p "$bindir"; printf '#!/bin/sh\\necho %s\\n' "$version" > "$bindir/fpm"; chmod 755 "$bindir/fpm"''',
    "scl": 'echo "scl $*" >> /record/calls; shift 3; exec "$@"',
    "service": 'echo "service $*" >> /record/calls',
}

DRIVER = r'''#!/bin/bash
set -u
export PATH=/stubs:$PATH CISLAVES_REBOOT_REQUIRED_FILE=/record/reboot-required
dist=$1
mkdir -p /tmp/prov && cp /cislaves/*.sh /tmp/prov/ && cp /record/settings.env /tmp/prov/
if [[ $dist == centos7 ]]; then mkdir -p /etc/yum.repos.d && cp /record/repos/CentOS-Base.repo /etc/yum.repos.d/; fi
touch /record/reboot-pending /record/reboot-required
for run in 1 2 3; do
    echo "=== run $run" >> /record/calls
    bash /tmp/prov/$dist.sh > /record/run$run.log 2>&1; echo $? > /record/run$run.rc
    rm -f /record/reboot-pending /record/reboot-required  # what the reboot after run 1 would clear
    [[ $run == 2 ]] && sed -i 's/^CISLAVES_RUN_ID=.*/CISLAVES_RUN_ID=second-bootstrap/' /tmp/prov/settings.env
done
id jenkins > /record/id
readlink -f /bin/sh > /record/sh
su - jenkins -c umask > /record/umask
visudo -c > /record/visudo 2>&1; echo "rc=$?" >> /record/visudo
cp /etc/sudoers.d/90-cislaves-ci-user /etc/profile.d/cislaves-umask.sh /etc/cislaves/provisioned /record/
stat -c '%U %a' /home/jenkins/.ssh/authorized_keys > /record/key-stat
cp /home/jenkins/.ssh/authorized_keys /record/
[[ -d /etc/yum.repos.d ]] && cp -a /etc/yum.repos.d /record/repos-after
exit 0
'''


@pytest.fixture(scope="module")
def rootfs(local_cloud):
    image = local_cloud.base_image(distros.get("debian12"))
    path = local_cloud.cache_dir / image.id / "rootfs"
    assert (path / "usr/bin/bash").exists(), path
    return path


def sandbox(rootfs, tmp_path, name, package_set="full"):
    record, stubs = tmp_path / "record", tmp_path / "stubs"
    record.mkdir()
    for tool, body in STUBS.items():
        stub(stubs, tool, body)
    shutil.copytree(DATA / "centos7", record / "repos")
    (record / "driver.sh").write_text(DRIVER)
    cfg_file = tmp_path / "cislaves.yaml"
    cfg_file.write_text(f"provision: {{package_set: {package_set}, extra_packages: {{{name}: [jq]}}}}\n")
    cfg = config.load(cfg_file, environ={})
    (record / "settings.env").write_text(settings_env(distros.get(name), cfg, "sandbox", "run-1", KEY))
    argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--volatile=overlay", "-D", str(rootfs),
            "-M", f"cislaves-sbx-{tmp_path.name[-20:]}".replace("_", "-"), f"--bind-ro={SCRIPTS_DIR}:/cislaves",
            f"--bind-ro={stubs}:/stubs", f"--bind={record}:/record", "bash", "/record/driver.sh", name]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert (record / "run3.rc").exists(), done.stdout + done.stderr
    return record


def calls_of_run(record, run):
    text = (record / "calls").read_text()
    return text.split(f"=== run {run}\n", 1)[1].split("=== run", 1)[0].splitlines()


EXPECTED = {  # distribution: (package tool, java package, docker package, fpm version)
    "debian12": ("apt-get", "openjdk-17-jre-headless", "docker.io", "1.15.1"),
    "ubuntu22.04": ("apt-get", "openjdk-17-jre-headless", "docker.io", "1.15.1"),
    "ubuntu24.04": ("apt-get", "openjdk-17-jre-headless", "docker.io", "1.15.1"),
    "ubuntu14.04": ("apt-get", "openjdk-7-jre-headless", "docker.io", "1.4.0"),
    "centos7": ("yum", "java-11-openjdk-headless", "docker", "1.15.1"),
    "rocky9": ("dnf", "java-17-openjdk-headless", "docker-ce", "1.15.1"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_script_runs_end_to_end_with_a_reboot_and_twice(rootfs, tmp_path, name):
    tool, java, docker, fpm = EXPECTED[name]
    record = sandbox(rootfs, tmp_path, name)
    run1, run2, run3 = ((record / f"run{i}.log").read_text() for i in (1, 2, 3))
    # run 1: updates, then asks for the reboot
    assert (record / "run1.rc").read_text().strip() == "194", run1
    assert run1.splitlines()[-1].startswith("==> step: reboot to finish the updates"), run1
    # run 2 (after the reboot, same run): does not update again, finishes
    assert (record / "run2.rc").read_text().strip() == "0", run2
    assert "==> step: system updates (done before the reboot)" in run2
    upgrades = [c for c in calls_of_run(record, 2) if "dist-upgrade" in c or c.endswith(" -y update")]
    assert upgrades == []
    assert [c for c in calls_of_run(record, 3) if "dist-upgrade" in c or c.endswith(" -y update")]
    # run 3 (a second bootstrap): updates again, finishes, changes nothing that matters
    assert (record / "run3.rc").read_text().strip() == "0", run3
    assert run3.splitlines()[-1] == "==> step: done"
    steps = [line for line in run3.splitlines() if line.startswith("==> step: ")]
    for expected in ("installing java runtime", "installing docker", "creating CI user jenkins",
                     "umask 022", "/bin/sh -> bash", "docker group and service",
                     f"installing fpm {fpm}", "installing extra packages: jq"):
        assert f"==> step: {expected}" in steps, steps
    installs = " ".join(c for c in calls_of_run(record, 2) if c.startswith(tool) and " install " in c)
    for package in (java, docker, "git", "jq"):
        assert f" {package}" in installs, installs
    assert any(c.startswith("gem ") and f"-v {fpm}" in c for c in calls_of_run(record, 2))
    # the machine as the checks see it
    assert "groups=" in (record / "id").read_text() and "(docker)" in (record / "id").read_text()
    assert (record / "sh").read_text().strip().endswith("/bash")
    assert (record / "umask").read_text().strip() == "0022"
    assert (record / "visudo").read_text().strip().endswith("rc=0")
    assert (record / "90-cislaves-ci-user").read_text() == \
        "Defaults:jenkins !requiretty\njenkins ALL=(ALL) NOPASSWD: ALL\n"
    assert (record / "authorized_keys").read_text() == KEY + "\n"
    assert (record / "key-stat").read_text().strip() == "jenkins 600"
    assert f"distribution={name}\n" in (record / "provisioned").read_text()


@pytest.mark.parametrize("name", ["rocky9", "centos7"])
def test_el_second_bootstrap_installs_nothing_again(rootfs, tmp_path, name):
    record = sandbox(rootfs, tmp_path, name)
    assert not [c for c in calls_of_run(record, 3) if " install " in c]  # packages and fpm alike
    assert "already installed: " in (record / "run3.log").read_text()


def test_centos7_points_every_repository_at_the_archives(rootfs, tmp_path):
    record = sandbox(rootfs, tmp_path, "centos7")
    repos = record / "repos-after"
    texts = {p.name: p.read_text() for p in repos.glob("*.repo")}
    assert set(texts) == {"CentOS-Base.repo", "epel.repo", "CentOS-SCLo-scl-rh.repo"}
    for name, text in texts.items():
        active = [line for line in text.splitlines() if line.startswith(("mirrorlist=", "metalink="))]
        assert active == [], (name, active)
    assert "baseurl=https://vault.centos.org/7.9.2009/os/$basearch/" in texts["CentOS-Base.repo"]
    assert "baseurl=https://archives.fedoraproject.org/pub/archive/epel/7/$basearch" in texts["epel.repo"]
    assert "baseurl=https://vault.centos.org/7.9.2009/sclo/$basearch/rh/" in texts["CentOS-SCLo-scl-rh.repo"]
    assert (record / "run1.log").read_text().index("switched") < (record / "run1.log").read_text().index(
        "==> step: system updates")


def test_minimal_set_skips_the_heavy_packages(rootfs, tmp_path):
    record = sandbox(rootfs, tmp_path, "debian12", package_set="minimal")
    log = (record / "run3.log").read_text()
    assert (record / "run3.rc").read_text().strip() == "0", log
    for skipped in ("installing docker", "installing java runtime", "installing fpm", "docker group"):
        assert skipped not in log
    assert "(docker)" not in (record / "id").read_text()
    installs = [c for c in calls_of_run(record, 3) if " install " in c]
    assert installs and all("docker" not in c and "openjdk" not in c for c in installs)
