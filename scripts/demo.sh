#!/usr/bin/env bash
# The main job on a real guest: specs/lwm2m-guest.yaml (a routed network, a Debian VM with a login and a fixed
# address, a thing bootstrapped to the LwM2M server in that VM), applied, then waited for until the guest
# answers SSH, then listed, with how to log in. Run by `make demo` after `make image`.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=specs/lwm2m-guest.yaml
t0=$(date +%s)
# epfiot runs where the daemon's networks are: its firewall table (inet epfiot) belongs beside their bridges.
in_netns=""
[[ -n ${EPFIOT_NETNS-epfiot} && -e /run/netns/${EPFIOT_NETNS-epfiot} ]] && in_netns="scripts/in-netns.sh "
epfiot() { ${in_netns}.venv/bin/epfiot "$@"; }

# The demo's password, made once and kept (a new one would change the VM's seed and re-run cloud-init).
if [[ -z ${ALICE_PASSWORD:-} ]]; then
  mkdir -p .state
  [[ -s .state/demo-password ]] || (umask 077; head -c 12 /dev/urandom | base64 | tr -d '/+=' >.state/demo-password)
  ALICE_PASSWORD=$(cat .state/demo-password)
  export ALICE_PASSWORD
fi

epfiot apply -f "$spec"
address=$(sed -n 's/^ *address: *\([0-9.]*\).*/\1/p' "$spec" | head -n 1)
echo
echo "demo: waiting for the guest to boot and answer SSH at $address (about 1-2 minutes: it runs under emulation here)"
deadline=$((SECONDS + 420))
until scripts/in-netns.sh timeout 2 bash -c "echo >/dev/tcp/$address/22" 2>/dev/null; do
  if ((SECONDS > deadline)); then
    echo "demo: the guest did not answer SSH in 7 minutes; its console: virsh console alice.lwm2m-server" >&2
    exit 1
  fi
  printf '\rdemo: %3ss since apply ' "$((SECONDS))"
  sleep 2
done
printf '\rdemo: the guest answers SSH after %ss\n\n' "$((SECONDS))"
epfiot get vms
echo
epfiot get things
cat <<EOT

Log in (the guest's network is in the libvirt daemon's network namespace, hence scripts/in-netns.sh):
  ${in_netns}ssh alice@$address          password: $ALICE_PASSWORD  (kept in .state/demo-password)
The thing prueba bootstraps from \`epfiot serve\` and is sent coap://$address:5683, the LwM2M server in the VM.
Remove it all: ALICE_PASSWORD=... ${in_netns}.venv/bin/epfiot delete -f $spec   (it asks first; then \`make stop\` stops the daemon)
demo: done in $(($(date +%s) - t0)) s
EOT
