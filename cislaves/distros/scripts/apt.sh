# shellcheck shell=bash disable=SC2034 # the package lists are read by lib.sh
# Package family apt (Debian, Ubuntu): sourced by a distribution script after lib.sh.

# Package lists of current Debian and Ubuntu releases (a distribution script may change them).
BASE_PACKAGES=(sudo bash ca-certificates git python3 python3-venv python3-pip)
BUILD_PACKAGES=(build-essential autoconf automake libtool pkg-config python3-dev python3-virtualenv)
JAVA_PACKAGES=(openjdk-17-jre-headless)
NGINX_PACKAGES=(nginx)
DOCKER_PACKAGES=(docker.io xz-utils)
FPM_PACKAGES=(ruby ruby-dev rpm)

# Wait for a dpkg lock held by first-boot updates (cloud images) instead of failing at once.
APT_OPTIONS=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt_updated=""

apt_update() {
    [[ -n "$apt_updated" ]] && return
    apt-get -q -o DPkg::Lock::Timeout=600 update
    apt_updated=1
}

pkg_upgrade() {
    apt_update
    apt-get "${APT_OPTIONS[@]}" dist-upgrade
}

# A package (NAME or NAME=VERSION) is installed.
pkg_installed() { dpkg-query -W -f='${Status}' "${1%%=*}" 2>/dev/null | grep -q 'install ok installed'; }

pkg_add() {
    apt_update
    apt-get "${APT_OPTIONS[@]}" --no-install-recommends install "$@"
}

# The downloaded .debs and the package lists: about 130 of a 285 MB local debian12 image.
pkg_clean() {
    apt-get -q -o DPkg::Lock::Timeout=600 clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
    apt_updated=""
}

# Debian/Ubuntu packages ask for a reboot with /run/reboot-required; an installed kernel newer than
# the running one asks too.
reboot_required() {
    [[ -e "${CISLAVES_REBOOT_REQUIRED_FILE:-/run/reboot-required}" ]] || kernel_reboot_needed
}

# dash owns /bin/sh through a dpkg diversion; a local diversion keeps bash there across dash upgrades
# (dash's postinst leaves a LOCAL diversion alone).
sh_to_bash() {
    local diverter
    diverter="$(dpkg-divert --listpackage /bin/sh || true)"
    if [[ "$diverter" == dash ]]; then
        dpkg-divert --package dash --no-rename --remove /bin/sh
        diverter=""
    fi
    if [[ "$diverter" != LOCAL ]]; then
        dpkg-divert --local --no-rename --divert /bin/sh.distrib --add /bin/sh
    fi
    ln -sf bash /bin/sh.cislaves
    mv -f /bin/sh.cislaves /bin/sh
}
