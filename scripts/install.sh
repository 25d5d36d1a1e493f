#!/usr/bin/env bash
# Installs vpnmasq from a built source tree (`npm ci && npm run build` first)
# as a system service:
#   /opt/vpnmasq/                program (scripts/stage.sh), with scripts/uninstall.sh
#   /usr/local/bin/vpnmasq       -> /opt/vpnmasq/bin/vpnmasq (runs the node on PATH)
#   /usr/local/share/bash-completion/completions/vpnmasq
#   /etc/vpnmasq/vpnmasq.json    commented example config (only if absent)
#   /etc/systemd/system/vpnmasq.service
#   group "vpnmasq"              may use the control socket
# and enables the unit when systemd runs. Idempotent: run it again to upgrade;
# a running vpnmasq is stopped before /opt/vpnmasq is replaced and started
# again afterwards (its state is kept in /var/lib/vpnmasq).
# What it created is listed in /opt/vpnmasq/.installed for uninstall.sh.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=install-paths.sh
. "$SRC/scripts/install-paths.sh"

die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
command -v node >/dev/null || die "node is not installed (Node.js 20: see the README)"
if dpkg-query -W -f='${Status}' vpnmasq 2>/dev/null | grep -q "ok installed"; then
  die "the vpnmasq Debian package is installed: upgrade it with the package (apt install ./vpnmasq_*.deb) or remove it first"
fi
systemd=0
[ -d /run/systemd/system ] && systemd=1

# Keep the record of an earlier install: what it created is still ours to remove.
previous=""
[ -f "$MANIFEST" ] && previous="$(cat "$MANIFEST")"
created() { grep -qx "$1" <<<"$previous"; }
record=()

# ---- program: staged and checked before anything is replaced ----
staging="$(mktemp -u /opt/.vpnmasq-install.XXXXXX)"
trap 'rm -rf "$staging"' EXIT
bash "$SRC/scripts/stage.sh" "$staging"
mkdir -p "$staging/scripts"
cp "$SRC/scripts/uninstall.sh" "$SRC/scripts/install-paths.sh" "$staging/scripts/"
chmod 0755 "$staging" "$staging/scripts/uninstall.sh"
"$staging/bin/vpnmasq" check-native || die "the built native modules do not load with $(command -v node); nothing was changed"

# The running daemon must not see its files replaced: stop it, swap, start it.
was_active=0
if [ "$systemd" = 1 ] && systemctl is-active --quiet vpnmasq.service; then
  was_active=1
  echo "install.sh: stopping the running vpnmasq for the upgrade"
  systemctl stop vpnmasq.service
fi
rm -rf "$PREFIX"
mv "$staging" "$PREFIX"
trap - EXIT

# ---- command and completion ----
ln -sfn "$PREFIX/bin/vpnmasq" "$BIN"
if [ ! -d "$COMPLETION_DIR" ]; then
  mkdir -p "$COMPLETION_DIR"
  record+=(completion-dir)
elif created completion-dir; then
  record+=(completion-dir)
fi
"$BIN" completion bash > "$COMPLETION_DIR/vpnmasq"

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

# ---- unit ----
install -m 0644 "$SRC/systemd/vpnmasq.service" "$UNIT"

printf '%s\n' "${record[@]}" > "$MANIFEST"

echo "vpnmasq $("$BIN" --version | cut -d' ' -f2) installed under $PREFIX (remove it with $PREFIX/scripts/uninstall.sh)"
if [ "$systemd" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --quiet vpnmasq.service
  if [ "$was_active" = 1 ]; then
    systemctl start vpnmasq.service
    echo "vpnmasq restarted"
  else
    echo "vpnmasq enabled; edit $CONFIG, then: systemctl start vpnmasq"
  fi
else
  echo "systemd is not running, so the unit was not enabled (run: $BIN run)"
fi
