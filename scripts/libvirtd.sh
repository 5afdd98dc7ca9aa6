#!/usr/bin/env bash
# A libvirt daemon with the QEMU driver on a machine without systemd (Debian 12, as root).
#   scripts/libvirtd.sh start     start virtlogd and libvirtd (under scripts/subreaper.py), wait until ready
#   scripts/libvirtd.sh ensure    start only if qemu:///system does not answer
#   scripts/libvirtd.sh restart   restart the daemons; running guests keep running
#   scripts/libvirtd.sh stop      destroy running domains and networks, then stop what `start` started
#   scripts/libvirtd.sh status
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
run=/run/epfiot-libvirtd
log=/var/log/libvirt/epfiot-libvirtd.log
uri=qemu:///system

say() { echo "libvirtd: $*"; }
reachable() { virsh -c "$uri" uri >/dev/null 2>&1; }

prepare() {
  mkdir -p /var/log/libvirt /var/lib/libvirt /var/cache/libvirt /run/libvirt "$run" /etc/libvirt
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  id libvirt-qemu >/dev/null 2>&1 || useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  # No SELinux/AppArmor and no unprivileged user here: QEMU runs as root without a security driver.
  local conf=/etc/libvirt/qemu.conf
  if ! grep -qs '^security_driver = "none"' "$conf"; then
    printf 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n' > "$conf"
  fi
}

wait_ready() {
  local deadline=$((SECONDS + 60))
  until reachable; do
    if ((SECONDS > deadline)); then
      say "not ready after 60 s; last log lines:" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    if [[ -f $run/libvirtd.pid ]] && ! kill -0 "$(cat "$run/libvirtd.pid")" 2>/dev/null; then
      say "exited during start-up; last log lines:" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

start() {
  if reachable; then say "already running at $uri"; return 0; fi
  local t0=$SECONDS
  prepare
  # A stopped virtlogd may linger as a zombie (PID 1 reaps late here): only a live one counts.
  if ! pgrep -x -r R,S,D virtlogd >/dev/null; then
    virtlogd -d -p "$run/virtlogd.pid"
  fi
  setsid python3 "$here/subreaper.py" libvirtd >>"$log" 2>&1 < /dev/null &
  echo $! > "$run/libvirtd.pid"
  wait_ready
  say "ready at $uri ($((SECONDS - t0)) s)"
}

stop_daemons() {
  if [[ -f $run/libvirtd.pid ]]; then
    local pid
    pid=$(cat "$run/libvirtd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" && pkill -KILL -x libvirtd || true
    fi
    rm -f "$run/libvirtd.pid"
  fi
  if [[ -f $run/virtlogd.pid ]]; then
    kill -TERM "$(cat "$run/virtlogd.pid")" 2>/dev/null || true
    rm -f "$run/virtlogd.pid"
  fi
}

stop() {
  if [[ ! -f $run/libvirtd.pid ]]; then say "not started by this script; leaving it alone"; return 0; fi
  if reachable; then
    # dnsmasq runs per network and QEMU per domain: stop them through libvirt before the daemon goes.
    for dom in $(virsh -c "$uri" list --name); do virsh -c "$uri" destroy "$dom" >/dev/null 2>&1 || true; done
    for net in $(virsh -c "$uri" net-list --name); do virsh -c "$uri" net-destroy "$net" >/dev/null 2>&1 || true; done
  fi
  stop_daemons
  say "stopped"
}

restart() {
  if [[ ! -f $run/libvirtd.pid ]]; then say "not started by this script" >&2; exit 1; fi
  local pid
  pid=$(cat "$run/libvirtd.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$run/libvirtd.pid"
  start
}

case "${1:-}" in
  start) start ;;
  ensure) reachable && say "running at $uri" || start ;;
  restart) restart ;;
  stop) stop ;;
  status) if reachable; then say "running at $uri"; else say "not reachable at $uri"; exit 3; fi ;;
  *) echo "usage: $0 start|ensure|restart|stop|status" >&2; exit 2 ;;
esac
