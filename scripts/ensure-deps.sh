#!/usr/bin/env bash
# Installs what vpnmasq and its tests need on a fresh Debian machine and
# builds it: Debian packages for the lab (as root), npm packages, the TUN
# addon and the TypeScript sources. As root it then checks that the lab can
# really run, by what the tools do rather than by package names: network
# namespaces and veths, a TUN device, policy rules with port ranges, nftables,
# charon with its gcm, openssl and kernel-libipsec plugins answering swanctl,
# and iperf3, tcpdump, socat, python3 and systemd-analyze (the unit's checks). A missing prerequisite stops here
# with its reason. Quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(iproute2 iputils-ping iperf3 python3 nftables tcpdump socat procps util-linux systemd g++ make
      strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins)

fail() { echo "ensure-deps: $*" >&2; exit 1; }

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "ensure-deps: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "ensure-deps: not root, skipping Debian packages: ${missing[*]} (lab tests need root)" >&2
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "ensure-deps: npm ci" >&2
  npm ci --no-audit --no-fund >&2
fi
for mod in node_modules/better-sqlite3/build/Release/better_sqlite3.node; do
  [ -f "$mod" ] || fail "native dependency did not build: $mod"
done

addon=build/Release/vpnmasq_tun.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" 2>/dev/null | head -1)" ]; then
  echo "ensure-deps: building the TUN addon" >&2
  npx --no-install node-gyp rebuild >/dev/null
fi
npx --no-install tsc -p tsconfig.json

[ "$(id -u)" = 0 ] || exit 0

# ---- capabilities the lab tests use (root only: they run only as root) ----
for tool in "iperf3 --version" "tcpdump --version" "socat -V" "nft --version" "setpriv --version" "unshare --version" "sysctl --version" \
    "systemd-analyze --version"; do
  out=$($tool 2>&1) || fail "'$tool' does not run: $out"
done
python3 -c 'import hashlib, json, select, socket, struct' 2>/dev/null || fail "python3 cannot import the modules test/hosts/*.py use"
[ -c /dev/net/tun ] || fail "/dev/net/tun is missing: vpnmasq and kernel-libipsec need the tun driver"

ns="vmqdeps$$"
work=$(mktemp -d /tmp/vmqdeps.XXXXXX)
charon_pid=""
cleanup() {
  [ -n "$charon_pid" ] && kill "$charon_pid" 2>/dev/null && wait "$charon_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns" || fail "cannot create a network namespace (needs CAP_SYS_ADMIN and a writable /run/netns)"
out=$(ip -n "$ns" link add vmqa type veth peer name vmqb 2>&1) || fail "cannot create a veth pair: $out"
out=$(ip -n "$ns" rule add pref 50 ipproto tcp dport 1000-2000 lookup 7101 2>&1) \
  || fail "policy rules cannot match ports (Linux >= 4.17 needed for shared-address mode): $out"
out=$(ip netns exec "$ns" python3 -c '
import fcntl, os, struct
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"vmqtun", 0x0001 | 0x1000 | 0x4000))
' 2>&1) || fail "cannot open a TUN device with IFF_VNET_HDR: $out"
out=$(ip netns exec "$ns" nft -f - 2>&1 <<<'table ip vmqdeps { chain c { type nat hook postrouting priority 100; masquerade; }; }') \
  || fail "nftables cannot load a masquerade rule (the benchmark's kernel baseline): $out"

# charon with the plugins the lab's proposals need, answering swanctl over vici.
[ -x /usr/lib/ipsec/charon ] || fail "/usr/lib/ipsec/charon is missing (strongswan-charon)"
cat > "$work/strongswan.conf" <<EOF
charon {
  plugins {
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec { load = yes }
    vici { socket = unix://$work/charon.vici }
  }
}
EOF
STRONGSWAN_CONF="$work/strongswan.conf" ip netns exec "$ns" unshare -m sh -c 'mount -t tmpfs tmpfs /run && exec /usr/lib/ipsec/charon' \
  >"$work/charon.out" 2>&1 &
charon_pid=$!
stats=""
for _ in $(seq 1 50); do
  stats=$(ip netns exec "$ns" swanctl --stats --uri "unix://$work/charon.vici" 2>/dev/null) && break
  sleep 0.2
done
[ -n "$stats" ] || fail "charon did not answer swanctl --stats within 10 s: $(tail -5 "$work/charon.out")"
plugins=$(grep -A1000 'loaded plugins:' <<<"$stats" | tr '\n' ' ')
for p in gcm openssl kernel-libipsec vici; do
  grep -qw -- "$p" <<<"$plugins" || fail "charon does not load its $p plugin (AES-GCM ESP proposals, libipsec ESP in namespaces); loaded: $plugins"
done
