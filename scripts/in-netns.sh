#!/usr/bin/env bash
# Runs a command in the network namespace of the libvirt daemon that scripts/libvirtd.sh started (where its
# bridges and guests are), or as it is when that daemon runs in the machine's own namespace.
#   scripts/in-netns.sh ssh charlie@10.128.0.141
set -euo pipefail
netns=${EPFIOT_NETNS-epfiot}
if [[ -n $netns && -e /run/netns/$netns ]]; then
  exec ip netns exec "$netns" "$@"
fi
exec "$@"
