#!/usr/bin/env bash
# Installs the built vpnmasq (run `npm run build` first) as a system service:
#   /opt/vpnmasq/                program: dist/, native addon, runtime node_modules
#   /usr/local/bin/vpnmasq       wrapper
#   /etc/vpnmasq/vpnmasq.json    commented example config (only if absent)
#   /etc/systemd/system/vpnmasq.service
#   group "vpnmasq"              may use the control socket
# and enables the unit when systemd runs. Idempotent: run it again to upgrade.
# What it created is listed in /opt/vpnmasq/.installed for scripts/uninstall.sh.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=install-paths.sh
. "$SRC/scripts/install-paths.sh"

die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
NODE="$(command -v node)" || die "node is not installed"
[ -f "$SRC/dist/src/cli/main.js" ] || die "not built: run 'npm run build' in $SRC"
[ -f "$SRC/build/Release/vpnmasq_tun.node" ] || die "native addon missing: run 'npm run build' in $SRC"

# Keep the record of an earlier install: what it created is still ours to remove.
previous=""
[ -f "$MANIFEST" ] && previous="$(cat "$MANIFEST")"
created() { grep -qx "$1" <<<"$previous"; }
record=()

# ---- program (replaced as a whole, so an upgrade leaves no stale files) ----
staging="$(mktemp -d /opt/.vpnmasq-install.XXXXXX)"
trap 'rm -rf "$staging"' EXIT
cp -a "$SRC/dist" "$staging/dist"
# Tests are not part of the program: the test tree and the vector tests beside the sources.
rm -rf "$staging/dist/test"
find "$staging/dist" \( -name '*.test.js' -o -name '*.test.js.map' \) -delete
mkdir -p "$staging/build/Release"
cp "$SRC/build/Release/vpnmasq_tun.node" "$staging/build/Release/"
cp "$SRC/package.json" "$staging/"
[ -f "$SRC/README.md" ] && cp "$SRC/README.md" "$staging/"
mkdir -p "$staging/node_modules"
# Runtime dependencies only (npm ls reads the local tree; no registry access).
(cd "$SRC" && npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2) | while read -r dir; do
  rel="${dir#"$SRC"/}"
  mkdir -p "$staging/$(dirname "$rel")"
  cp -a "$dir" "$staging/$rel"
done
chmod 0755 "$staging"
rm -rf "$PREFIX"
mv "$staging" "$PREFIX"
trap - EXIT

# ---- wrapper ----
cat > "$BIN.tmp" <<WRAPPER
#!/bin/sh
# Installed by vpnmasq scripts/install.sh
exec "$NODE" "$PREFIX/dist/src/cli/main.js" "\$@"
WRAPPER
chmod 0755 "$BIN.tmp"
mv "$BIN.tmp" "$BIN"

# ---- group ----
if getent group "$GROUP" >/dev/null; then
  created group && record+=(group)
else
  groupadd --system "$GROUP"
  record+=(group)
fi

# ---- config (never overwrite the operator's file) ----
if [ ! -d "$CONFIG_DIR" ]; then
  install -d -m 0750 -g "$GROUP" "$CONFIG_DIR"
  record+=(config-dir)
elif created config-dir; then
  record+=(config-dir)
fi
if [ ! -e "$CONFIG" ]; then
  install -m 0640 -g "$GROUP" "$SRC/examples/vpnmasq.json" "$CONFIG"
  record+=(config)
elif created config; then
  record+=(config)
fi
cp "$SRC/examples/vpnmasq.json" "$PREFIX/vpnmasq.json.example"

# ---- unit ----
install -m 0644 "$SRC/systemd/vpnmasq.service" "$UNIT"

printf '%s\n' "${record[@]}" > "$MANIFEST"

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable vpnmasq.service
  echo "vpnmasq installed and enabled; edit $CONFIG, then: systemctl start vpnmasq"
else
  echo "vpnmasq installed; systemd is not running, so the unit was not enabled (run: $BIN run)"
fi
