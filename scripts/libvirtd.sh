#!/usr/bin/env bash
# A libvirt daemon with the QEMU driver on a machine without systemd (Debian 12, as root).
#   scripts/libvirtd.sh start     start virtlogd and libvirtd (under scripts/subreaper.py), wait until ready
#   scripts/libvirtd.sh ensure    start only if qemu:///system does not answer
#   scripts/libvirtd.sh restart   restart libvirtd; running guests keep running
#   scripts/libvirtd.sh stop      destroy running domains and active networks, then stop what `start` started
#   scripts/libvirtd.sh status    say whether qemu:///system answers (exit 3 if not)
# Pid files of what this script started are in /run/epfiot-libvirtd; it never stops a daemon it did not start.
#
# libvirtd runs inside the network namespace $EPFIOT_NETNS (default "epfiot", made here with only `lo`), so
# its bridges, dnsmasq and guests have their addresses there and never in the machine's own namespace; the
# libvirt socket is a file, reachable from anywhere. `scripts/in-netns.sh CMD` runs CMD in that namespace
# (to reach a guest: `scripts/in-netns.sh ssh user@10.128.0.141`). EPFIOT_NETNS= (empty) runs it in the
# machine's own namespace, as on a real edge host where the guests' networks are meant to be reachable.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
run=/run/epfiot-libvirtd
log=/var/log/libvirt/epfiot-libvirtd.log
uri=qemu:///system
netns=${EPFIOT_NETNS-epfiot}

say() { echo "libvirtd: $*"; }
reachable() { virsh -c "$uri" uri >/dev/null 2>&1; }
since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f s", t1 - t0 }'; }

# live PID: true if PID runs and is not a zombie (PID 1 reaps late here).
live() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# is PID WORD: true if PID is live and its command line has WORD in it (a pid from a stale pid file may
# have gone to another process since).
is() {
  [[ $1 =~ ^[0-9]+$ ]] && live "$1" || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qw -- "$2"
}

# pid_in FILE WORD: the pid written in FILE, if `is PID WORD`.
pid_in() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  is "$pid" "$2" || return 1
  echo "$pid"
}

# wait_gone PID SECONDS: true once PID is gone (or a zombie), false if it is still there after SECONDS.
wait_gone() {
  local deadline=$((SECONDS + $2))
  while live "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# terminate PID: SIGTERM, up to 10 s, then SIGKILL.
terminate() {
  kill -TERM "$1" 2>/dev/null || return 0
  wait_gone "$1" 10 && return 0
  say "pid $1 still there after 10 s: SIGKILL" >&2
  kill -KILL "$1" 2>/dev/null || true
  wait_gone "$1" 5 || true
}

ours() { [[ -f $run/subreaper.pid || -f $run/libvirtd.pid || -f $run/virtlogd.pid ]]; }

prepare() {
  mkdir -p /var/log/libvirt /var/lib/libvirt /var/cache/libvirt /run/libvirt "$run" /etc/libvirt
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  id libvirt-qemu >/dev/null 2>&1 || useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  # No SELinux/AppArmor and no unprivileged user here: QEMU runs as root without a security driver.
  local conf=/etc/libvirt/qemu.conf line missing=0
  for line in 'user = "root"' 'group = "root"' 'security_driver = "none"'; do
    grep -qsxF "$line" "$conf" || missing=1
  done
  if ((missing)); then
    say "writing $conf"
    printf '# Written by epfiot scripts/libvirtd.sh: QEMU as root, no security driver.\n%s\n%s\n%s\n' \
      'user = "root"' 'group = "root"' 'security_driver = "none"' >"$conf"
  fi
  if [[ -n $netns ]]; then
    if [[ ! -e /run/netns/$netns ]]; then
      ip netns add "$netns"
      echo "$netns" >"$run/netns"
    fi
    ip -n "$netns" link set lo up
    # With only the loopback addresses 127.0.0.1 and ::1, getaddrinfo(AI_ADDRCONFIG) takes neither family
    # for configured, and aiocoap, which resolves its bind address that way, fails with "No local bindable
    # address" for "::" and for 127.0.0.1 alike (until a libvirt network gives the namespace an address).
    # glibc discounts exactly 127.0.0.1 and ::1: a second loopback address and one of a unique local
    # prefix, both on lo and so reachable only inside this namespace, make both families count.
    ip -n "$netns" addr replace 127.0.0.2/32 dev lo
    ip -n "$netns" addr replace fd65:7066:696f::1/128 dev lo nodad
  fi
}

wait_ready() {
  local subreaper=$1 deadline=$((SECONDS + 60))
  until reachable; do
    if ((SECONDS > deadline)); then
      say "not ready after 60 s; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    if ! live "$subreaper"; then
      say "libvirtd exited during start-up; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      rm -f "$run/subreaper.pid" "$run/libvirtd.pid"
      exit 1
    fi
    sleep 0.1
  done
}

start() {
  if reachable; then say "already running at $uri"; return 0; fi
  local t0
  t0=$(date +%s.%N)
  prepare
  # virtlogd keeps the guests' logs; a running one (ours from before a restart, or anyone's) will do.
  if ! pid_in "$run/virtlogd.pid" virtlogd >/dev/null && ! pgrep -x -r R,S,D virtlogd >/dev/null; then
    virtlogd -d -p "$run/virtlogd.pid"
  fi
  echo "=== $(date '+%F %T') scripts/libvirtd.sh start" >>"$log"
  local in_netns=()
  [[ -z $netns ]] || in_netns=(ip netns exec "$netns")
  "${in_netns[@]}" python3 "$here/subreaper.py" --setsid --child-pidfile "$run/libvirtd.pid" libvirtd >>"$log" 2>&1 </dev/null &
  local subreaper=$!
  echo "$subreaper" >"$run/subreaper.pid"
  wait_ready "$subreaper"
  say "ready at $uri in $(since "$t0")${netns:+, in network namespace $netns} (log: $log)"
}

# Stop libvirtd itself; its subreaper stays while it has guests to reap, and is remembered for `stop`.
stop_libvirtd() {
  local pid subreaper
  if pid=$(pid_in "$run/libvirtd.pid" libvirtd); then
    terminate "$pid"
  fi
  if subreaper=$(pid_in "$run/subreaper.pid" subreaper.py); then
    echo "$subreaper" >>"$run/old-subreapers"
  fi
  rm -f "$run/libvirtd.pid" "$run/subreaper.pid"
}

stop() {
  if ! ours; then say "not started by this script: leaving it alone"; return 0; fi
  local t0 dom net pid
  t0=$(date +%s.%N)
  if reachable; then
    # dnsmasq runs per network and QEMU per domain: stop them through libvirt before the daemon goes.
    for dom in $(virsh -c "$uri" list --name); do virsh -c "$uri" destroy "$dom" >/dev/null 2>&1 || true; done
    for net in $(virsh -c "$uri" net-list --name); do virsh -c "$uri" net-destroy "$net" >/dev/null 2>&1 || true; done
  fi
  stop_libvirtd
  # Subreapers left without guests exit by themselves; one still holding a process is told to go.
  if [[ -f $run/old-subreapers ]]; then
    for pid in $(sort -u "$run/old-subreapers"); do
      if is "$pid" subreaper.py && ! wait_gone "$pid" 2; then terminate "$pid"; fi
    done
    rm -f "$run/old-subreapers"
  fi
  if pid=$(pid_in "$run/virtlogd.pid" virtlogd); then
    terminate "$pid"
  fi
  rm -f "$run/virtlogd.pid"
  if [[ -f $run/netns ]]; then
    ip netns delete "$(cat "$run/netns")" 2>/dev/null || true
    rm -f "$run/netns"
  fi
  say "stopped in $(since "$t0")"
}

restart() {
  if ! ours; then say "not started by this script: not restarting it" >&2; exit 1; fi
  local t0
  t0=$(date +%s.%N)
  stop_libvirtd
  say "libvirtd stopped in $(since "$t0")"
  start
}

status() {
  local pid how="not started by this script"
  if pid=$(pid_in "$run/libvirtd.pid" libvirtd); then how="started by this script, pid $pid"; fi
  if reachable; then say "running at $uri ($how)"; else say "not reachable at $uri"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  ensure) if reachable; then say "running at $uri"; else start; fi ;;
  restart) restart ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|ensure|restart|stop|status" >&2; exit 2 ;;
esac
