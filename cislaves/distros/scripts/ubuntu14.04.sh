#!/usr/bin/env bash
# ubuntu14.04 (trusty, end of life, the seed's): a CI worker from an Ubuntu 14.04 base image.
# Trusty runs upstart (services through `service`) and carries Java 7 and Ruby 1.9 in its archive.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=apt.sh
. "$CISLAVES_LIB_DIR/apt.sh"

BASE_PACKAGES=(sudo bash ca-certificates git python3 python3.4-venv python3-pip)
BUILD_PACKAGES=(build-essential autoconf automake libtool pkg-config python3-dev python-virtualenv)
JAVA_PACKAGES=(openjdk-7-jre-headless)
# The newest fpm whose own dependencies still install on trusty's Ruby is older.
CISLAVES_FPM_VERSION="${CISLAVES_FPM_VERSION_TRUSTY:-1.4.0}"

# Sourced (tests, extra scripts) it only defines; run, it provisions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
