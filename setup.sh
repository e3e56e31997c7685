#!/usr/bin/env bash
# Installs everything cislaves needs on a Debian/Ubuntu machine (run as root):
# the local cloud's system packages, and the pinned Python packages in ./.venv.
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  systemd-container   # systemd-nspawn: the local cloud's machines
  debootstrap         # builds the local cloud's base image
  iptables iproute2   # the machines' network namespaces, veth pairs and NAT
  openssh-client      # `fab ssh`
  rsync ca-certificates
  openssh-server      # the private sshd of the log-publishing tests (rsync over SSH)
  chromium            # headless checks of the CI's log pages
  shellcheck          # the provisioning scripts' lint (tests)
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
echo "==> pip install -r requirements.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
echo "==> ready: .venv/bin/fab -l"
