#!/usr/bin/env bash
# `npm run package`: builds vpnmasq_VERSION_ARCH.deb in the source tree from a
# built tree (`npm ci && npm run build` first) with dpkg-deb:
#   /opt/vpnmasq/                          the runtime tree (scripts/stage.sh)
#   /usr/bin/vpnmasq                       -> /opt/vpnmasq/bin/vpnmasq
#   /usr/lib/systemd/system/vpnmasq.service
#   /etc/vpnmasq/vpnmasq.json              the example config, a conffile
#   /usr/share/bash-completion/completions/vpnmasq
# and packaging/debian/{preinst,postinst,prerm,postrm}. VERSION is
# package.json's; Depends come from package.json's engines (nodejs) and
# from dpkg-shlibdeps on the native modules.
#   scripts/package.sh [--version VERSION] [--output DIR]
#     --version  build another version (written into the package's package.json)
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
die() { echo "package.sh: $*" >&2; exit 1; }
version="" out="$SRC"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --output) out="${2:?--output needs a directory}"; shift 2 ;;
    *) die "usage: package.sh [--version VERSION] [--output DIR]" ;;
  esac
done
for tool in dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev; do
  command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} is missing (apt install ${tool##*:})"
done
[ -n "$version" ] || version="$(node -p 'require(process.argv[1]).version' "$SRC/package.json")"
# Debian orders "~" before anything, as semver orders a pre-release before its release.
debversion="${version/-/\~}"
arch="$(dpkg --print-architecture)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
bash "$SRC/scripts/stage.sh" "$root/opt/vpnmasq" "$version"
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc/vpnmasq" "$root/usr/share/bash-completion/completions" "$root/DEBIAN"
ln -s /opt/vpnmasq/bin/vpnmasq "$root/usr/bin/vpnmasq"
install -m 0644 "$SRC/systemd/vpnmasq.service" "$root/usr/lib/systemd/system/"
# 0750/0640 root:root here; postinst's dpkg-statoverride gives them the vpnmasq group.
chmod 0750 "$root/etc/vpnmasq"
install -m 0640 "$SRC/examples/vpnmasq.json" "$root/etc/vpnmasq/vpnmasq.json"
"$root/opt/vpnmasq/bin/vpnmasq" completion bash > "$root/usr/share/bash-completion/completions/vpnmasq"
for s in preinst postinst prerm postrm; do install -m 0755 "$SRC/packaging/debian/$s" "$root/DEBIAN/"; done
echo /etc/vpnmasq/vpnmasq.json > "$root/DEBIAN/conffiles"

# nodejs bounds from engines.node, e.g. ">=20 <21" -> nodejs (>= 20), nodejs (<< 21).
node_depends="$(node -e '
  const range = require(process.argv[1]).engines.node;
  const op = { ">=": ">=", ">": ">>", "<": "<<", "<=": "<=", "=": "=" };
  console.log(range.trim().split(/\s+/).map((t) => {
    const m = /^(>=|<=|>|<|=)?(\d+(?:\.\d+)*)$/.exec(t);
    if (!m) throw new Error(`engines.node "${range}": cannot translate "${t}"`);
    return `nodejs (${op[m[1] || "="]} ${m[2]})`;
  }).join(", "));' "$SRC/package.json")" || die "cannot derive the nodejs dependency from package.json engines"
mkdir -p "$tmp/shlibs/debian"
printf 'Source: vpnmasq\n\nPackage: vpnmasq\nArchitecture: any\n' > "$tmp/shlibs/debian/control"
mapfile -t natives < <(find "$root/opt/vpnmasq" -name '*.node' -type f)
shlibs="$(cd "$tmp/shlibs" && dpkg-shlibdeps -O "${natives[@]/#/-e}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no library dependencies for ${natives[*]}"

cat > "$root/DEBIAN/control" <<CONTROL
Package: vpnmasq
Version: $debversion
Architecture: $arch
Maintainer: vpnmasq maintainers <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $node_depends, $shlibs, passwd
Section: net
Priority: optional
Description: $(node -p 'require(process.argv[1]).description' "$SRC/package.json")
 vpnmasq sits between a LAN and the internet, owns a TUN device and does
 NAPT for TCP, UDP and ICMP, plus the VPN masquerade ordinary NAT gets wrong:
 IPsec (ISAKMP by cookies, ESP paired by SPI) and PPTP (Call IDs, GRE).
 State is kept in SQLite across restarts and upgrades. It runs as the
 systemd service vpnmasq.service; the config is /etc/vpnmasq/vpnmasq.json.
CONTROL

mkdir -p "$out"
deb="$out/vpnmasq_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb ($(du -h "$deb" | cut -f1), installed $(( $(du -sk --exclude=DEBIAN "$root" | cut -f1) / 1024 )) MiB): apt install $deb"
