#!/usr/bin/env bash
# The appliance check: vpnmasq installed from its Debian package on a clean
# Debian 13 box booted with systemd, then operated as an operator would.
# Not part of `npm test` (it takes several minutes). Run as root from a built
# source tree (`npm ci && npm run build`):
#   scripts/appliance-check.sh [--keep]      --keep leaves the box's files in /var/tmp on exit
#
# The box: a clean Debian 13 root (/var/tmp/vpnmasq-fresh-root, built by the
# project's clean-root CI, used read-only; built here with debootstrap when it
# is missing), plus a cached layer with systemd (/var/tmp/vpnmasq-appliance-layer),
# plus this run's changes, stacked with overlayfs and booted with
# `systemd-nspawn --register=no --keep-unit --private-network`, so nothing of
# the host's network is touched. In its own network namespace the box has a
# WAN interface eth0 (198.18.0.2/24, default route via the "ISP" 198.18.0.1)
# and a LAN interface lan0 (10.77.0.1/24) with one LAN host 10.77.0.11: veth
# pairs into two network namespaces inside the box, set up at boot by a unit
# ordered before network-online.target, as a real box's network config is.
# The ISP side runs a UDP echo server that answers with the source it saw;
# that is how the checks see the public port a mapping has.
#
# Checks, one line each, then a summary; exit status 1 if any failed:
# the package builds; installs and starts (Type=notify READY, no directory
# mode warning, CLI for the vpnmasq group, LAN traffic masqueraded); reload
# with a good and a bad config; a start error reaches `journalctl -p err`;
# restart, kill -9 and the watchdog (kill -STOP) each restart it with the
# mapping kept; a package upgrade restarts it with its state and edited config
# kept; remove and purge leave nothing; and from source: install.sh restarts a
# running service with its state, the installed uninstall.sh removes it.
set -uo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
FRESH_ROOT=/var/tmp/vpnmasq-fresh-root
OWN_ROOT=/var/tmp/vpnmasq-appliance-base
LAYER=/var/tmp/vpnmasq-appliance-layer
LAYER_PACKAGES="systemd systemd-sysv"
SUITE=trixie
MIRROR=http://deb.debian.org/debian

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  *) echo "usage: appliance-check.sh [--keep]" >&2; exit 2 ;;
esac
die() { echo "appliance-check: $*" >&2; exit 2; }
say() { echo "appliance-check: $*" >&2; }
[ "$(id -u)" = 0 ] || die "run as root"

# ---- host tools -------------------------------------------------------------
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "could not install ${need[*]}"
fi

# ---- the clean root and the systemd layer -----------------------------------
base="$FRESH_ROOT"
if [ ! -x "$base/usr/bin/node" ]; then
  base="$OWN_ROOT"
  if [ ! -x "$base/usr/bin/node" ]; then
    say "no clean root at $FRESH_ROOT: building one under $base (debootstrap, several minutes)"
    rm -rf "$base"
    debootstrap --variant=minbase --include=nodejs,python3,iproute2,procps,ca-certificates \
      "$SUITE" "$base" "$MIRROR" > "$base.log" 2>&1 || die "debootstrap failed: $base.log"
  fi
fi

mounts=()
unmount_all() { local i; for (( i=${#mounts[@]}-1; i>=0; i-- )); do umount -l "${mounts[$i]}" 2>/dev/null; done; mounts=(); }

# The layer is valid for the root it was built on and the package list.
stamp="$( (cat "$base/var/lib/dpkg/status"; echo "$LAYER_PACKAGES") | sha256sum | cut -d' ' -f1)"
# Built under an exclusive lock; held shared while this run uses it, so no run rebuilds it under another.
exec 9>/run/lock/vpnmasq-appliance-layer.lock
flock -x 9
if [ "$(cat "$LAYER/stamp" 2>/dev/null)" != "$stamp" ]; then
  say "building the systemd layer $LAYER on $base"
  rm -rf "$LAYER"
  mkdir -p "$LAYER/upper" "$LAYER/work" "$LAYER/m"
  mount -t overlay overlay -o "lowerdir=$base,upperdir=$LAYER/upper,workdir=$LAYER/work" "$LAYER/m" || die "overlay mount failed"
  mounts+=("$LAYER/m")
  mount -t proc proc "$LAYER/m/proc" && mounts+=("$LAYER/m/proc")
  cp /etc/resolv.conf "$LAYER/m/etc/resolv.conf"
  chroot "$LAYER/m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $LAYER_PACKAGES" > "$LAYER.log" 2>&1
  rc=$?
  rm -f "$LAYER/m/etc/resolv.conf"
  unmount_all
  rm -rf "$LAYER/work" "$LAYER/m"
  [ $rc = 0 ] && [ -x "$LAYER/upper/usr/lib/systemd/systemd" ] || { rm -rf "$LAYER"; die "installing $LAYER_PACKAGES failed: $LAYER.log"; }
  echo "$stamp" > "$LAYER/stamp"
fi
flock -s 9

# ---- this run: packages, the box's files, boot ------------------------------
W="$(mktemp -d /var/tmp/vpnmasq-appliance-run-XXXX)"
box_name="vmqa-${W##*-}"
nspawn=""
leader=""
# Runs a command in the box (stdin closed: a prompt fails instead of waiting).
box() { nsenter -t "$leader" -m -u -i -n -p -- /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@" < /dev/null; }
cleanup() {
  if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
    [ -n "$leader" ] && box systemctl poweroff >/dev/null 2>&1
    for _ in $(seq 60); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$nspawn" 2>/dev/null
    wait "$nspawn" 2>/dev/null
  fi
  unmount_all
  if [ "$keep" = 1 ]; then say "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

version="$(node -p 'require(process.argv[1]).version' "$SRC/package.json")"
upgrade_version="$version+appliance.1"
mkdir -p "$W/debs"
say "building the package (npm run package) and an upgrade to $upgrade_version"
(cd "$SRC" && npm run --silent package -- --output "$W/debs") > "$W/package.log" 2>&1 || die "npm run package failed: $(tail -5 "$W/package.log")"
bash "$SRC/scripts/package.sh" --version "$upgrade_version" --output "$W/debs" >> "$W/package.log" 2>&1 || die "the upgrade package failed: $(tail -5 "$W/package.log")"
deb="$(ls "$W"/debs/vpnmasq_"${version/-/\~}"_*.deb)"
deb_upgrade="$(ls "$W"/debs/vpnmasq_"${upgrade_version/-/\~}"_*.deb)"

mkdir -p "$W/upper" "$W/work" "$W/m"
mount -t overlay overlay -o "lowerdir=$LAYER/upper:$base,upperdir=$W/upper,workdir=$W/work" "$W/m" || die "overlay mount failed"
mounts+=("$W/m")
M="$W/m"
cp "$deb" "$deb_upgrade" "$M/root/"

# The box's network, as its network configuration would set it up at boot.
cat > "$M/usr/local/sbin/box-net" <<'NET'
#!/bin/sh
# WAN eth0 to the "ISP" (namespace isp, 198.18.0.1); LAN lan0 to one LAN host (namespace lanhost, 10.77.0.11).
set -e
ip netns add isp
ip netns add lanhost
ip link add eth0 type veth peer name isp0 netns isp
ip link add lan0 type veth peer name host0 netns lanhost
ip addr add 198.18.0.2/24 dev eth0
ip addr add 10.77.0.1/24 dev lan0
ip link set eth0 up
ip link set lan0 up
ip route add default via 198.18.0.1
ip -n isp link set lo up
ip -n isp addr add 198.18.0.1/24 dev isp0
ip -n isp link set isp0 up
ip -n lanhost link set lo up
ip -n lanhost addr add 10.77.0.11/24 dev host0
ip -n lanhost link set host0 up
ip -n lanhost route add default via 10.77.0.1
NET
cat > "$M/etc/systemd/system/box-net.service" <<'UNIT'
[Unit]
Description=The box's WAN and LAN interfaces
DefaultDependencies=no
Before=network-online.target network.target
Wants=network.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/box-net
[Install]
WantedBy=network-online.target multi-user.target
UNIT
# The ISP answers UDP on port 7000 with the address and port it saw.
cat > "$M/usr/local/sbin/box-echo" <<'ECHO'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.1", 7000))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)
ECHO
cat > "$M/etc/systemd/system/box-echo.service" <<'UNIT'
[Unit]
Description=UDP echo on the ISP side
Requires=box-net.service
After=box-net.service
[Service]
ExecStart=/usr/sbin/ip netns exec isp /usr/bin/python3 /usr/local/sbin/box-echo
[Install]
WantedBy=multi-user.target
UNIT
# The LAN host sends from a fixed port and prints what the ISP saw: the mapping's public address and port.
cat > "$M/usr/local/sbin/box-probe" <<'PROBE'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.11", int(sys.argv[1])))
s.settimeout(1.0)
for _ in range(5):
    s.sendto(b"probe", ("198.18.0.1", 7000))
    try:
        print(s.recv(2048).decode()); sys.exit(0)
    except socket.timeout:
        pass
print("no answer"); sys.exit(1)
PROBE
for u in box-net box-echo; do
  for t in $(sed -n 's/^WantedBy=//p' "$M/etc/systemd/system/$u.service"); do
    mkdir -p "$M/etc/systemd/system/$t.wants"
    ln -sf "/etc/systemd/system/$u.service" "$M/etc/systemd/system/$t.wants/$u.service"
  done
done
chmod 0755 "$M/usr/local/sbin/box-net"

say "booting $box_name (systemd-nspawn)"
systemd-nspawn --quiet --register=no --keep-unit --private-network --console=read-only \
  -D "$M" -M "$box_name" -b > "$W/console.log" 2>&1 < /dev/null &
nspawn=$!
for _ in $(seq 100); do
  leader="$(pgrep -P "$nspawn" -x systemd)" && break
  kill -0 "$nspawn" 2>/dev/null || die "systemd-nspawn exited: $(tail -5 "$W/console.log")"
  sleep 0.2
done
[ -n "$leader" ] || die "the box's systemd did not start: $(tail -5 "$W/console.log")"
# Until systemd listens on its socket, systemctl cannot connect: ask again.
for _ in $(seq 240); do
  state="$(timeout 120 nsenter -t "$leader" -m -u -i -n -p -- /usr/bin/systemctl is-system-running --wait 2>&1)"
  case "$state" in running|degraded) break ;; esac
  kill -0 "$nspawn" 2>/dev/null || break
  sleep 0.5
done
case "$state" in running|degraded) ;; *) die "the box did not boot ($state): $W/console.log" ;; esac

# ---- checks ------------------------------------------------------------------
passed=0
failed=()
# check NAME FUNCTION [ARGS]: FUNCTION prints one line of detail and returns its verdict.
# It runs in this shell (not a subshell), so what it learns (the public port) stays for the next checks.
check() {
  local name="$1" detail rc
  shift
  "$@" > "$W/detail" 2>&1; rc=$?
  detail="$(cat "$W/detail")"
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1)); echo "ok    $name${detail:+: ${detail//$'\n'/ | }}"
  else
    failed+=("$name"); echo "FAIL  $name${detail:+: ${detail//$'\n'/ | }}"
  fi
}
main_pid() { box systemctl show -P MainPID vpnmasq.service; }
# Waits until vpnmasq is active with a main PID other than $1; prints it.
wait_new_pid() {
  local old="$1" limit="$2" pid
  for _ in $(seq $((limit * 2))); do
    pid="$(main_pid)"
    if [ "$pid" != 0 ] && [ "$pid" != "$old" ] && [ "$(box systemctl is-active vpnmasq.service)" = active ]; then echo "$pid"; return 0; fi
    sleep 0.5
  done
  return 1
}
probe() { box ip netns exec lanhost python3 /usr/local/sbin/box-probe 40000; }
journal_since() { box journalctl -u vpnmasq.service --no-pager -o cat --since "@$1" "${@:2}"; }
# What vpnmasq changes on the box's network (it is IPv4 only; IPv6 link-local routes come and go on their own).
net_state() {
  box sh -c 'ip -o link show | cut -d" " -f2; ip -4 rule; ip -4 route show table all; ip -4 neigh show proxy; sysctl -n net.ipv4.ip_local_port_range'
}
CONFIG=/etc/vpnmasq/vpnmasq.json
apt_install() { box env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; }

public=""  # the mapping's public address:port, as the ISP saw it
net_before="$(net_state)"

c_install() {
  local t0 out
  t0="$(date +%s)"
  out="$(apt_install "/root/$(basename "$deb")" 2>&1)" || { echo "apt install failed: $(tail -3 <<<"$out")"; return 1; }
  grep -q "native modules load in Node" <<<"$out" || { echo "postinst did not check the native modules"; return 1; }
  [ "$(box systemctl is-enabled vpnmasq.service)" = enabled ] || { echo "not enabled"; return 1; }
  [ "$(box systemctl is-active vpnmasq.service)" = active ] || { echo "not active after install: $(journal_since "$t0" -p err | tail -2)"; return 1; }
  echo "$(basename "$deb") installed, enabled and active"
}
c_ready() {
  local status warn
  status="$(box systemctl show -P StatusText vpnmasq.service)"
  [ "$(box systemctl show -P Type vpnmasq.service)" = notify ] && [[ "$status" == forwarding* ]] || { echo "status text: $status"; return 1; }
  warn="$(box journalctl -u vpnmasq.service -b --no-pager -o cat | grep -i "mode is different")"
  [ -z "$warn" ] || { echo "$warn"; return 1; }
  box vpnmasq status | head -1
}
c_group_cli() {
  box useradd --no-create-home --groups vpnmasq boxop || return 1
  local member other
  member="$(box runuser -u boxop -- vpnmasq status 2>&1)" || { echo "member: $member"; box userdel boxop; return 1; }
  other="$(box runuser -u nobody -- vpnmasq status 2>&1)" && { echo "non-member got: $other"; box userdel boxop; return 1; }
  box userdel boxop
  grep -q "permission denied" <<<"$other" || { echo "non-member: $other"; return 1; }
  echo "a vpnmasq group member reads the status, others are told they lack permission"
}
c_traffic() {
  public="$(probe)" || { echo "no answer from the ISP"; return 1; }
  local port="${public#*:}"
  [ "${public%:*}" = 198.18.0.2 ] && [ "$port" -ge 36864 ] && [ "$port" -le 65535 ] || { echo "ISP saw $public"; return 1; }
  echo "LAN 10.77.0.11:40000 reaches the ISP as $public"
}
same_mapping() {
  local now
  now="$(probe)" || { echo "no answer from the ISP"; return 1; }
  [ "$now" = "$public" ] || { echo "mapping changed: $public -> $now"; return 1; }
}
c_reload_good() {
  local pid t0 rc
  pid="$(main_pid)"; t0="$(date +%s)"
  box sed -i 's/^  "mssClamp": "auto",/  "mssClamp": 1360,/' "$CONFIG"
  box grep -q '"mssClamp": 1360' "$CONFIG" || { echo "could not edit $CONFIG"; return 1; }
  box systemctl reload vpnmasq.service; rc=$?
  sleep 1
  [ "$rc" = 0 ] || { echo "systemctl reload exited $rc"; return 1; }
  [ "$(main_pid)" = "$pid" ] || { echo "the daemon restarted"; return 1; }
  journal_since "$t0" | grep -q "config reloaded" || { echo "no 'config reloaded' in the journal"; return 1; }
  same_mapping || return 1
  echo "mssClamp 1360 applied, same PID, mapping kept"
}
c_reload_bad() {
  local pid t0 rc errs
  pid="$(main_pid)"; t0="$(date +%s)"
  box cp "$CONFIG" /root/good.json
  box sh -c "echo '{ oops' >> $CONFIG"
  box systemctl reload vpnmasq.service; rc=$?
  sleep 1
  errs="$(journal_since "$t0" -p err)"
  box cp /root/good.json "$CONFIG"
  [ "$(main_pid)" = "$pid" ] && [ "$(box systemctl is-active vpnmasq.service)" = active ] || { echo "the daemon did not keep running"; return 1; }
  grep -q "reload rejected" <<<"$errs" || { echo "no 'reload rejected' at priority err"; return 1; }
  same_mapping || return 1
  [ "$rc" != 0 ] || { echo "rejected (logged at err, old config kept) but systemctl reload exited 0"; return 1; }
  echo "rejected, systemctl reload exited $rc, old config kept"
}
c_start_error() {
  local t0 rc errs pid
  t0="$(date +%s)"
  box cp "$CONFIG" /root/good.json
  box sh -c "echo '{ x' > $CONFIG"
  box systemctl restart vpnmasq.service >/dev/null 2>&1; rc=$?
  sleep 1
  errs="$(journal_since "$t0" -p err)"
  box cp /root/good.json "$CONFIG"
  box systemctl reset-failed vpnmasq.service
  box systemctl start vpnmasq.service
  pid="$(wait_new_pid 0 20)" || { echo "did not start again with the good config"; return 1; }
  [ "$rc" != 0 ] || { echo "systemctl restart with a broken config exited 0"; return 1; }
  grep -q "syntax error at line 1, column 3" <<<"$errs" || { echo "journalctl -p err: ${errs:-nothing}"; return 1; }
  same_mapping || return 1
  echo "journalctl -p err: $(grep -m1 "syntax error" <<<"$errs")"
}
c_restart() {
  local pid new
  pid="$(main_pid)"
  box systemctl restart vpnmasq.service || { echo "systemctl restart failed"; return 1; }
  new="$(wait_new_pid "$pid" 20)" || { echo "not active again"; return 1; }
  same_mapping || return 1
  echo "pid $pid -> $new, $public kept"
}
c_kill9() {
  local pid new restarts
  pid="$(main_pid)"; restarts="$(box systemctl show -P NRestarts vpnmasq.service)"
  box kill -9 "$pid"
  new="$(wait_new_pid "$pid" 30)" || { echo "not restarted within 30 s"; return 1; }
  [ "$(box systemctl show -P NRestarts vpnmasq.service)" -gt "$restarts" ] || { echo "NRestarts did not grow"; return 1; }
  same_mapping || return 1
  echo "restarted by systemd (pid $pid -> $new), $public kept"
}
c_watchdog() {
  local pid new t0 sec
  pid="$(main_pid)"; t0="$(date +%s)"
  sec="$(box systemctl show -P WatchdogUSec vpnmasq.service)"
  box kill -STOP "$pid"
  new="$(wait_new_pid "$pid" 150)" || { box kill -CONT "$pid"; echo "not restarted within 150 s (WatchdogSec $sec)"; return 1; }
  journal_since "$t0" --output=short | grep -qi "watchdog timeout" || { echo "no watchdog timeout in the journal"; return 1; }
  same_mapping || return 1
  echo "watchdog ($sec) fired after $(( $(date +%s) - t0 )) s, restarted (pid $new), $public kept"
}
c_upgrade() {
  local pid new out v
  pid="$(main_pid)"
  out="$(apt_install "/root/$(basename "$deb_upgrade")" 2>&1)" || { echo "apt install failed: $(tail -3 <<<"$out")"; return 1; }
  new="$(wait_new_pid "$pid" 30)" || { echo "not running a new process after the upgrade"; return 1; }
  v="$(box vpnmasq --version)"
  [ "$v" = "vpnmasq $upgrade_version" ] || { echo "version after the upgrade: $v"; return 1; }
  grep -q "native modules load in Node" <<<"$out" || { echo "postinst did not check the native modules"; return 1; }
  box grep -q '"mssClamp": 1360' "$CONFIG" || { echo "the edited config was replaced"; return 1; }
  grep -qi "conffile\|Configuration file" <<<"$out" && { echo "dpkg asked about the config: $(grep -i -m1 "conffile\|Configuration file" <<<"$out")"; return 1; }
  same_mapping || return 1
  echo "$v, restarted (pid $pid -> $new), edited config and $public kept"
}
c_remove() {
  local out left
  out="$(box env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q vpnmasq 2>&1)" || { echo "apt remove failed: $(tail -3 <<<"$out")"; return 1; }
  box pgrep -f /opt/vpnmasq/dist && { echo "still running"; return 1; }
  for p in /opt/vpnmasq /usr/bin/vpnmasq /usr/lib/systemd/system/vpnmasq.service; do box test -e "$p" && { echo "$p left"; return 1; }; done
  box test -f "$CONFIG" && box test -f /var/lib/vpnmasq/state.db || { echo "remove took the config or the state (purge does)"; return 1; }
  left="$(diff <(echo "$net_before") <(net_state))" || { echo "network state differs: ${left//$'\n'/; }"; return 1; }
  echo "stopped and removed; TUN, rules, routes and port range as before; config and state kept for purge"
}
c_purge() {
  local out
  out="$(box env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q vpnmasq 2>&1)" || { echo "apt purge failed: $(tail -3 <<<"$out")"; return 1; }
  for p in /etc/vpnmasq /var/lib/vpnmasq; do box test -e "$p" && { echo "$p left"; return 1; }; done
  box getent group vpnmasq && { echo "group vpnmasq left"; return 1; }
  [ -z "$(box find /etc/systemd -name 'vpnmasq*')" ] || { echo "unit links left: $(box find /etc/systemd -name 'vpnmasq*')"; return 1; }
  [ -z "$(box dpkg-statoverride --list | grep vpnmasq)" ] || { echo "statoverrides left"; return 1; }
  echo "config, state, group, unit links and overrides gone"
}

# From source: the tree as `npm ci && npm run build` left it (what git tracks, node_modules, the addon).
copy_source() {
  mkdir -p "$M/root/src/build/Release"
  (cd "$SRC" && git ls-files -z | xargs -0 cp -a --parents -t "$M/root/src" && cp -a node_modules "$M/root/src/") || return 1
  cp -a "$SRC/build/Release/vpnmasq_tun.node" "$M/root/src/build/Release/"
}
c_source_install() {
  local out new
  copy_source || { echo "could not copy the source tree"; return 1; }
  out="$(box bash /root/src/scripts/install.sh 2>&1)" || { echo "install.sh failed: $(tail -3 <<<"$out")"; return 1; }
  box systemctl start vpnmasq.service || { echo "did not start"; return 1; }
  new="$(wait_new_pid 0 20)" || { echo "not active"; return 1; }
  [ "$(box readlink /usr/local/bin/vpnmasq)" = /opt/vpnmasq/bin/vpnmasq ] || { echo "/usr/local/bin/vpnmasq is not the installed command"; return 1; }
  public="$(probe)" || { echo "no traffic"; return 1; }
  echo "$(box vpnmasq --version) from install.sh, active (pid $new), LAN traffic leaves as $public"
}
c_source_reinstall() {
  local pid new out
  pid="$(main_pid)"
  out="$(box bash /root/src/scripts/install.sh 2>&1)" || { echo "install.sh failed: $(tail -3 <<<"$out")"; return 1; }
  grep -q "vpnmasq restarted" <<<"$out" || { echo "install.sh did not restart it: $(tail -1 <<<"$out")"; return 1; }
  new="$(wait_new_pid "$pid" 20)" || { echo "not running a new process"; return 1; }
  same_mapping || return 1
  echo "stopped before /opt/vpnmasq was replaced, started again (pid $pid -> $new), $public kept"
}
c_source_uninstall() {
  local out left
  out="$(box /opt/vpnmasq/scripts/uninstall.sh --purge 2>&1)" || { echo "uninstall.sh failed: $(tail -3 <<<"$out")"; return 1; }
  for p in /opt/vpnmasq /usr/local/bin/vpnmasq /etc/systemd/system/vpnmasq.service /etc/vpnmasq /var/lib/vpnmasq; do
    box test -e "$p" && { echo "$p left"; return 1; }
  done
  box getent group vpnmasq && { echo "group vpnmasq left"; return 1; }
  left="$(diff <(echo "$net_before") <(net_state))" || { echo "network state differs: ${left//$'\n'/; }"; return 1; }
  echo "/opt/vpnmasq/scripts/uninstall.sh --purge left nothing"
}

t_start="$(date +%s)"
echo "appliance check: $(basename "$deb") ($(du -h "$deb" | cut -f1)) on $(box sh -c '. /etc/os-release; echo "$PRETTY_NAME"'), systemd $(box systemctl --version | head -1 | cut -d' ' -f2), Node $(box node --version)"
check "package install"            c_install
check "readiness (Type=notify)"    c_ready
check "CLI for the vpnmasq group"  c_group_cli
check "LAN traffic masqueraded"    c_traffic
check "reload, good config"        c_reload_good
check "reload, bad config"         c_reload_bad
check "start error at priority err" c_start_error
check "restart keeps state"        c_restart
check "kill -9: restarted, state kept" c_kill9
check "watchdog (kill -STOP)"      c_watchdog
check "package upgrade"            c_upgrade
check "package remove"             c_remove
check "package purge"              c_purge
check "source install"             c_source_install
check "source re-install restarts" c_source_reinstall
check "source uninstall"           c_source_uninstall
total=$((passed + ${#failed[@]}))
if [ ${#failed[@]} = 0 ]; then
  echo "appliance check: all $total checks passed in $(( $(date +%s) - t_start )) s"
  exit 0
fi
echo "appliance check: ${#failed[@]} of $total checks FAILED ($(IFS=,; echo "${failed[*]}")) in $(( $(date +%s) - t_start )) s; $( [ "$keep" = 1 ] && echo "the box's console log: $W/console.log" || echo "--keep keeps the box's files")"
exit 1
