# shellcheck shell=bash disable=SC2034 # the package lists are read by lib.sh
# Package family yum/dnf (CentOS, Rocky): sourced by a distribution script after lib.sh.

PKG_TOOL="${PKG_TOOL:-yum}"

# Package lists of EL9 (a distribution script may change them).
BASE_PACKAGES=(sudo bash git python3 python3-pip)
BUILD_PACKAGES=(gcc gcc-c++ make autoconf automake libtool patch rpm-build python3-devel python3-virtualenv)
JAVA_PACKAGES=(java-17-openjdk-headless)
NGINX_PACKAGES=(nginx)
DOCKER_PACKAGES=(docker-ce docker-ce-cli containerd.io)
FPM_PACKAGES=(ruby ruby-devel rubygems redhat-rpm-config)

pkg_upgrade() { "$PKG_TOOL" -y update; }

pkg_installed() { rpm -q --whatprovides "$1" >/dev/null 2>&1; }

pkg_add() { "$PKG_TOOL" -y install "$@"; }

# The package manager's caches (downloaded rpms, repository metadata).
pkg_clean() {
    "$PKG_TOOL" -y clean all
    rm -rf /var/cache/yum/* /var/cache/dnf/*
}

# needs-restarting -r (yum-utils / dnf-utils) exits 1 when a reboot is needed; without it, compare the
# newest installed kernel with the running one.
reboot_required() {
    if have needs-restarting; then
        ! needs-restarting -r >/dev/null 2>&1
    else
        local newest
        newest="$(rpm -q --last kernel 2>/dev/null | head -n1 | awk '{print $1}')"
        newest="${newest#kernel-}"
        [[ -n "$newest" && "$newest" != "$(uname -r)" ]]
    fi
}

# /bin/sh is bash on EL already; make sure of it.
sh_to_bash() {
    [[ "$(readlink -f /bin/sh)" == */bash ]] || ln -sf bash /bin/sh
}

# Point .repo files at an archive: comment out mirrorlist/metalink lines that name `host_pattern`
# and replace `#baseurl=OLD_PREFIX` (commented or not) with `baseurl=NEW_PREFIX`.
# Usage: switch_repos_to_archive DIR HOST_PATTERN OLD_PREFIX_REGEX NEW_PREFIX
switch_repos_to_archive() {
    local dir="$1" host="$2" old="$3" new="$4" f
    for f in "$dir"/*.repo; do
        [[ -e "$f" ]] || continue
        grep -Eq "^[[:space:]]*(mirrorlist|metalink)=[^#]*${host}|^[[:space:]]*#?[[:space:]]*baseurl=${old}" "$f" || continue
        [[ -e "$f.cislaves-orig" ]] || cp -p "$f" "$f.cislaves-orig"
        sed -i -E \
            -e "s%^[[:space:]]*((mirrorlist|metalink)=[^#]*${host}.*)%#\\1%" \
            -e "s%^[[:space:]]*#?[[:space:]]*baseurl=${old}%baseurl=${new}%" \
            "$f"
        info "switched $f to $new"
    done
}
