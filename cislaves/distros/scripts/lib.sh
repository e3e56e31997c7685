# shellcheck shell=bash
# Shared helpers of the provisioning scripts (sourced, never run on its own).
#
# A distribution script sources this file and one family file (apt.sh or el.sh), sets its package
# lists (BASE_PACKAGES, BUILD_PACKAGES, JAVA_PACKAGES, DOCKER_PACKAGES, NGINX_PACKAGES, FPM_PACKAGES)
# and calls `main`. Settings come from settings.env next to the scripts (written by
# cislaves.distros.provision, every value shell-quoted).
#
# Every step logs one line `==> step: NAME`; cislaves names the last one when a script fails.
# Exit code 194 (REBOOT_EXIT) means: progress is saved, reboot the machine and run me again.
set -euo pipefail
exec 2>&1
umask 022

CISLAVES_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REBOOT_EXIT=194
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

# Defaults; settings.env overrides them.
CISLAVES_DISTRIBUTION="${CISLAVES_DISTRIBUTION:-unknown}"
CISLAVES_CLOUD="${CISLAVES_CLOUD:-unknown}"
CISLAVES_RUN_ID="${CISLAVES_RUN_ID:-manual}"
CISLAVES_CI_USER="${CISLAVES_CI_USER:-jenkins}"
CISLAVES_CI_KEY="${CISLAVES_CI_KEY:-}"
CISLAVES_PACKAGE_SET="${CISLAVES_PACKAGE_SET:-full}"
CISLAVES_STATE_DIR="${CISLAVES_STATE_DIR:-/var/lib/cislaves/provision}"
CISLAVES_FPM_VERSION="${CISLAVES_FPM_VERSION:-1.15.1}"
CISLAVES_BOOT_DIR="${CISLAVES_BOOT_DIR:-/boot}"
CISLAVES_EXTRA_PACKAGES=()
BASE_PACKAGES=() BUILD_PACKAGES=() JAVA_PACKAGES=() DOCKER_PACKAGES=() NGINX_PACKAGES=() FPM_PACKAGES=()
DOCKER_SERVICE=docker

if [[ -f "$CISLAVES_LIB_DIR/settings.env" ]]; then
    # shellcheck source=/dev/null
    . "$CISLAVES_LIB_DIR/settings.env"
fi

step() { printf '==> step: %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*"; exit 1; }
full_set() { [[ "$CISLAVES_PACKAGE_SET" == full ]]; }
have() { command -v "$1" >/dev/null 2>&1; }

# Progress marks: a step done in this run (CISLAVES_RUN_ID) is skipped when the script runs again
# after a reboot; a new run (a new bootstrap) does it again.
mark_done() { mkdir -p "$CISLAVES_STATE_DIR"; printf '%s\n' "$CISLAVES_RUN_ID" >"$CISLAVES_STATE_DIR/$1"; }
is_done() { [[ -f "$CISLAVES_STATE_DIR/$1" && "$(cat "$CISLAVES_STATE_DIR/$1")" == "$CISLAVES_RUN_ID" ]]; }

# Newest kernel version installed as /boot/vmlinuz-VERSION (empty if none: containers have none).
newest_boot_kernel() {
    local k newest=""
    for k in "$CISLAVES_BOOT_DIR"/vmlinuz-*; do
        [[ -e "$k" ]] || continue
        k="${k##*/vmlinuz-}"
        [[ "$k" == *rescue* ]] && continue
        if [[ -z "$newest" ]] || [[ "$(printf '%s\n%s\n' "$newest" "$k" | sort -V | tail -n1)" == "$k" ]]; then
            newest="$k"
        fi
    done
    printf '%s' "$newest"
}

# True when an installed kernel is newer than the running one.
kernel_reboot_needed() {
    local newest
    newest="$(newest_boot_kernel)"
    [[ -n "$newest" && "$newest" != "$(uname -r)" ]]
}

# Ask cislaves for a reboot when the family says one is needed (after a kernel update).
reboot_if_needed() {
    if reboot_required; then
        step "reboot to finish the updates (running kernel $(uname -r))"
        mark_done reboot-requested
        exit "$REBOOT_EXIT"
    fi
}

setup_ci_user() {
    local user="$CISLAVES_CI_USER" home
    [[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "invalid CI user name: $user"
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$user"
        info "created user $user"
    else
        usermod --shell /bin/bash "$user"
    fi
    home="$(getent passwd "$user" | cut -d: -f6)"
    install -d -m 0700 -o "$user" -g "$(id -gn "$user")" "$home/.ssh"
    if [[ -n "$CISLAVES_CI_KEY" ]]; then
        printf '%s\n' "$CISLAVES_CI_KEY" >"$home/.ssh/authorized_keys.cislaves"
        chown "$user:$(id -gn "$user")" "$home/.ssh/authorized_keys.cislaves"
        chmod 0600 "$home/.ssh/authorized_keys.cislaves"
        mv -f "$home/.ssh/authorized_keys.cislaves" "$home/.ssh/authorized_keys"
        info "authorized key installed for $user"
    fi
}

setup_sudo() {
    local user="$CISLAVES_CI_USER" file="/etc/sudoers.d/90-cislaves-ci-user" tmp
    install -d -m 0750 /etc/sudoers.d
    tmp="$(mktemp /etc/sudoers.d/.cislaves.XXXXXX)"
    printf 'Defaults:%s !requiretty\n%s ALL=(ALL) NOPASSWD: ALL\n' "$user" "$user" >"$tmp"
    chmod 0440 "$tmp"
    if ! visudo -cqf "$tmp"; then
        rm -f "$tmp"
        die "sudoers rule for $user does not validate"
    fi
    mv -f "$tmp" "$file"
    # Old images carry a global `Defaults requiretty`: CI agents run commands without a terminal.
    if grep -Eq '^[[:space:]]*Defaults[[:space:]]+requiretty' /etc/sudoers; then
        sed -i.cislaves-orig -E 's/^([[:space:]]*Defaults[[:space:]]+requiretty)/# \1  # disabled by cislaves/' /etc/sudoers
        visudo -cq || die "/etc/sudoers does not validate after disabling requiretty"
    fi
}

setup_umask() {
    printf '# Set by cislaves: CI builds create files others can read.\numask 022\n' >/etc/profile.d/cislaves-umask.sh
    chmod 0644 /etc/profile.d/cislaves-umask.sh
    if [[ -f /etc/login.defs ]]; then
        if grep -Eq '^UMASK[[:space:]]' /etc/login.defs; then
            sed -i -E 's/^UMASK[[:space:]].*/UMASK\t\t022/' /etc/login.defs
        else
            printf 'UMASK\t\t022\n' >>/etc/login.defs
        fi
    fi
}

setup_docker_group() {
    getent group docker >/dev/null || groupadd --system docker
    usermod -aG docker "$CISLAVES_CI_USER"
    if have systemctl && [[ -d /run/systemd/system ]]; then
        systemctl enable "$DOCKER_SERVICE" >/dev/null 2>&1 || true
        if systemctl restart "$DOCKER_SERVICE"; then
            return
        fi
        # A container (the local cloud's systemd-nspawn machine) may not run a docker daemon.
        if [[ "$(systemd-detect-virt --container 2>/dev/null || true)" =~ ^(|none)$ ]]; then
            die "docker service failed to start"
        fi
        info "docker cannot run inside this container ($(systemd-detect-virt --container)); installed, not running"
    else
        service "$DOCKER_SERVICE" restart
    fi
}

install_fpm() {
    if have fpm && [[ "$(fpm --version 2>/dev/null)" == "$CISLAVES_FPM_VERSION" ]]; then
        info "fpm $CISLAVES_FPM_VERSION already installed"
        return
    fi
    gem_install_fpm
    have fpm || die "fpm is not on PATH after installing it"
}

# A pinned fpm from rubygems.org (never an unpinned installer); a distribution may redefine this.
gem_install_fpm() { gem install --no-document --bindir /usr/local/bin fpm -v "$CISLAVES_FPM_VERSION"; }

# Install the packages that are not installed yet (pkg_installed and pkg_add come from the family file).
pkg_install() {
    (($#)) || return 0
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        info "already installed: $*"
        return
    fi
    pkg_add "${missing[@]}"
}

install_extra_packages() {
    if ((${#CISLAVES_EXTRA_PACKAGES[@]})); then
        step "installing extra packages: ${CISLAVES_EXTRA_PACKAGES[*]}"
        pkg_install "${CISLAVES_EXTRA_PACKAGES[@]}"
    fi
}

# Hooks a distribution or family may redefine.
prepare_repositories() { :; }
after_packages() { :; }
pkg_clean() { :; }

main() {
    step "starting $CISLAVES_DISTRIBUTION provisioning (package set: $CISLAVES_PACKAGE_SET, cloud: $CISLAVES_CLOUD)"
    if have cloud-init; then
        step "waiting for cloud-init to finish first boot"
        cloud-init status --wait >/dev/null || info "cloud-init reported a problem; continuing"
    fi
    step "preparing package repositories"
    prepare_repositories
    if is_done system-updates; then
        step "system updates (done before the reboot)"
    else
        step "system updates"
        pkg_upgrade
        mark_done system-updates
    fi
    reboot_if_needed
    step "installing base packages: ${BASE_PACKAGES[*]}"
    pkg_install "${BASE_PACKAGES[@]}"
    if full_set; then
        step "installing build tools"
        pkg_install "${BUILD_PACKAGES[@]}"
        step "installing java runtime"
        pkg_install "${JAVA_PACKAGES[@]}"
        step "installing nginx"
        pkg_install "${NGINX_PACKAGES[@]}"
        step "installing docker"
        pkg_install "${DOCKER_PACKAGES[@]}"
    fi
    after_packages
    step "creating CI user $CISLAVES_CI_USER"
    setup_ci_user
    step "sudo without password or tty for $CISLAVES_CI_USER"
    setup_sudo
    step "umask 022"
    setup_umask
    step "/bin/sh -> bash"
    sh_to_bash
    if full_set; then
        step "docker group and service"
        setup_docker_group
        step "installing fpm $CISLAVES_FPM_VERSION"
        pkg_install "${FPM_PACKAGES[@]}"
        install_fpm
    fi
    install_extra_packages
    step "removing package caches and lists (they are half of a small image; jobs update first)"
    pkg_clean
    mkdir -p /etc/cislaves
    printf 'distribution=%s\npackage_set=%s\nci_user=%s\n' "$CISLAVES_DISTRIBUTION" "$CISLAVES_PACKAGE_SET" \
        "$CISLAVES_CI_USER" >/etc/cislaves/provisioned
    step "done"
}
