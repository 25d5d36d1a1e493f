#!/usr/bin/env bash
# Installs what vpnmasq needs on a fresh Debian machine and builds it:
# Debian packages for the lab (only when running as root), npm packages,
# the TUN addon and the TypeScript sources. Quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(iproute2 iputils-ping iperf3 python3 nftables tcpdump socat g++ make
      strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins)

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
  [ -f "$mod" ] || { echo "ensure-deps: native dependency did not build: $mod" >&2; exit 1; }
done

addon=build/Release/vpnmasq_tun.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" 2>/dev/null | head -1)" ]; then
  echo "ensure-deps: building the TUN addon" >&2
  npx --no-install node-gyp rebuild >/dev/null
fi
npx --no-install tsc -p tsconfig.json
