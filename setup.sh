#!/usr/bin/env bash
# Installs everything cislaves needs on a Debian/Ubuntu machine (run as root):
# the local cloud's system packages, the locked Python packages (requirements.txt) in ./.venv, and
# cislaves itself there (editable: .venv/bin/cislaves and .venv/bin/fab run this checkout).
#   ./setup.sh lock   rewrites requirements.txt from pyproject.toml in a clean venv (keeping the
#                     locked versions that still fit), then installs as above.
set -euo pipefail
cd "$(dirname "$0")"

lock() {
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "==> locking '.[all,test]' in a clean venv"
  python3 -m venv "$tmp/venv"
  sed -n '/^[A-Za-z0-9]/p' requirements.txt >"$tmp/constraints.txt"
  "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -c "$tmp/constraints.txt" '.[all,test]'
  { sed -n '/^#/p' requirements.txt; "$tmp/venv/bin/python" -m pip freeze --exclude cislaves; } >"$tmp/lock.txt"
  mv "$tmp/lock.txt" requirements.txt
  rm -rf build cislaves.egg-info
}

packages=(
  systemd-container   # systemd-nspawn: the local cloud's machines
  debootstrap         # builds the local cloud's base image
  iptables iproute2   # the machines' network namespaces, veth pairs and NAT
  openssh-client      # `fab ssh`
  rsync ca-certificates
  openssh-server      # the private sshd of the log-publishing tests (rsync over SSH)
  chromium            # headless checks of the CI's log pages
  shellcheck          # the provisioning scripts' lint (tests)
  zookeeper default-jre-headless  # a real ZooKeeper for the scale-out tests (tests/coord)
  python3 python3-venv
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Each local machine's systemd takes a few inotify instances; the kernel's default (128) allows ~25.
if (( $(sysctl -n fs.inotify.max_user_instances) < 1024 )); then
  sysctl -q -w fs.inotify.max_user_instances=1024
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> python3 -m venv .venv"
  python3 -m venv .venv
fi
if [[ "${1:-}" == lock ]]; then
  lock
fi
echo "==> pip install -r requirements.txt (the lock), then cislaves itself"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# editable_mode=compat: a path entry in a .pth file instead of setuptools' import-hook finder, which
# every Python start of the venv imported (importlib.util/metadata: 15-20 ms of each command)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . --config-settings editable_mode=compat
# An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE (set on these machines) or
# invoke's default of writing no bytecode every command would compile cislaves again (0.04 s of each
# start-up): compile it once here, as pip does for a regular install. A changed source file is still
# compiled afresh (Python checks each file's time).
.venv/bin/python -m compileall -q cislaves fabfile.py
echo "==> ready: .venv/bin/cislaves --help (or .venv/bin/fab -l)"
