#!/usr/bin/env bash
# rocky9: a CI worker from a Rocky Linux 9 base image (EPEL and CRB enabled, Docker CE from Docker's
# signed repository: EL9 ships no docker engine).
# The package lists are el.sh's defaults (EL9).
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=el.sh
. "$CISLAVES_LIB_DIR/el.sh"
PKG_TOOL=dnf
DOCKER_REPO_URL="${CISLAVES_DOCKER_REPO_URL:-https://download.docker.com/linux/rhel/docker-ce.repo}"

prepare_repositories() {
    pkg_install epel-release dnf-plugins-core dnf-utils
    dnf config-manager --set-enabled crb
    if full_set && [[ ! -e /etc/yum.repos.d/docker-ce.repo ]]; then
        dnf config-manager --add-repo "$DOCKER_REPO_URL"
    fi
}

# Sourced (tests, extra scripts) it only defines; run, it provisions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
