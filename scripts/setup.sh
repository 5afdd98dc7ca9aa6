#!/usr/bin/env bash
# Everything epfiot needs on a fresh Debian 12 machine, as root: apt packages and .venv (editable install with
# the dev tools). Idempotent, and quick when nothing changed: apt only for missing packages, pip only when
# pyproject.toml changed since the last install (its hash is kept in .venv/.epfiot-installed).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s.%N)

packages=(
  pkg-config libvirt-dev                                     # to build libvirt-python
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # the daemon (no libvirt-daemon-system: it pulls systemd)
  qemu-system-x86 qemu-utils ipxe-qemu                       # guests, qcow2 volumes, network boot
  dnsmasq-base iptables                                      # libvirt networks: DHCP and routing
  libxml2-utils                                              # xmllint, for virt-xml-validate
  mmdebstrap extlinux syslinux-common e2fsprogs fdisk       # image/build.sh: the Debian base image
  openssh-client iproute2                                    # the tests log in to real guests, in a netns
  autoconf automake libtool                                  # to build DTLSSocket (tinydtls) for CoAP over DTLS
  nftables                                                   # the firewall that keeps tenants' networks apart
  chromium chromium-driver                                   # the console's page, tested in a real browser
)
missing=()
for p in "${packages[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq -o DPkg::Lock::Timeout=300 update
  apt-get -qq -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: apt packages present"
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: python3 -m venv .venv"
  python3 -m venv .venv
fi
stamp=.venv/.epfiot-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: pip install -e '.[dev]'"
  # compat mode: a plain path entry instead of an import hook, which every epfiot command would pay for
  # Its output goes to a log, shown only if it fails (this machine's pip config adds noise to every run).
  if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat \
    >.venv/pip-install.log 2>&1; then
    grep -v "^WARNING: Location 'file:" .venv/pip-install.log | tail -n 40 >&2
    echo "setup: pip install failed (full log: .venv/pip-install.log)" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
else
  echo "setup: .venv up to date"
fi
# As pip does for installed packages: byte-compile the sources, so that no command pays for compiling them
# (the editable install runs them from the work tree, where PYTHONDONTWRITEBYTECODE may forbid caching).
.venv/bin/python -m compileall -q epfiot
echo "setup: done in $(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f s", t1 - t0 }')"
