#!/usr/bin/env bash
# centos7 (end of life, the seed's): a CI worker from a CentOS 7 base image.
# CentOS 7's repositories moved to vault.centos.org and EPEL 7's to archives.fedoraproject.org in
# 2024: the script points every .repo file at them before anything else.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=el.sh
. "$CISLAVES_LIB_DIR/el.sh"
PKG_TOOL=yum
REPO_DIR="${CISLAVES_REPO_DIR:-/etc/yum.repos.d}"
CENTOS_VAULT="${CISLAVES_CENTOS_VAULT:-https://vault.centos.org/7.9.2009}"
EPEL_ARCHIVE="${CISLAVES_EPEL_ARCHIVE:-https://archives.fedoraproject.org/pub/archive/epel/7}"
SCL_RUBY=rh-ruby30

BASE_PACKAGES=(sudo bash git python3 python3-pip)
BUILD_PACKAGES=(gcc gcc-c++ make autoconf automake libtool patch rpm-build python3-devel python36-virtualenv)
JAVA_PACKAGES=(java-11-openjdk-headless)
DOCKER_PACKAGES=(docker)
FPM_PACKAGES=("$SCL_RUBY" "$SCL_RUBY-ruby-devel" rpm-build)

switch_to_vault() {
    # shellcheck disable=SC2016 # $releasever is yum's variable, matched literally
    switch_repos_to_archive "$REPO_DIR" 'mirrorlist\.centos\.org' \
        'https?://mirror\.centos\.org/(centos/)?(\$releasever|7)/' "$CENTOS_VAULT/"
    switch_repos_to_archive "$REPO_DIR" 'mirrors\.fedoraproject\.org/metalink\?repo=epel-' \
        'https?://download\.fedoraproject\.org/pub/epel/7/' "$EPEL_ARCHIVE/"
}

prepare_repositories() {
    switch_to_vault
    pkg_install epel-release yum-utils
    if full_set; then
        pkg_install centos-release-scl
    fi
    switch_to_vault  # the release packages above bring repo files with the dead mirrors
}

# CentOS 7's Ruby 2.0 is too old for fpm: use the Software Collection's Ruby and a wrapper.
gem_install_fpm() {
    scl enable "$SCL_RUBY" -- gem install --no-document --bindir /opt/cislaves/fpm/bin fpm \
        -v "$CISLAVES_FPM_VERSION"
    printf '#!/bin/sh\nexec scl enable %s -- /opt/cislaves/fpm/bin/fpm "$@"\n' "$SCL_RUBY" >/usr/local/bin/fpm
    chmod 0755 /usr/local/bin/fpm
}

# Sourced (tests, extra scripts) it only defines; run, it provisions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
