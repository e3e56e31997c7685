#!/usr/bin/env bash
# ubuntu24.04 (noble): a CI worker from an Ubuntu 24.04 LTS base image.
# The package lists are apt.sh's defaults for current Debian and Ubuntu releases.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=apt.sh
. "$CISLAVES_LIB_DIR/apt.sh"

# Sourced (tests, extra scripts) it only defines; run, it provisions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
