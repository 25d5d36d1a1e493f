#!/usr/bin/env bash
# Removes what scripts/install.sh installed: the program, the command, the
# completion, the unit, and the config file and group if install.sh created
# them (a config the operator edited is kept unless --purge). The state
# directory /var/lib/vpnmasq is kept unless --purge. Idempotent. Installed as
# /opt/vpnmasq/scripts/uninstall.sh; runs from a source tree as well.
set -euo pipefail

# shellcheck source=install-paths.sh
. "$(dirname "$0")/install-paths.sh"

purge=0
case "${1:-}" in
  --purge) purge=1 ;;
  "") ;;
  *) echo "usage: uninstall.sh [--purge]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }

manifest=""
[ -f "$MANIFEST" ] && manifest="$(cat "$MANIFEST")"
created() { grep -qx "$1" <<<"$manifest"; }

if [ -d /run/systemd/system ] && [ -f "$UNIT" ]; then
  systemctl disable --now vpnmasq.service || true
fi
# TEARDOWN: removes what a killed daemon left (TUN, routes, rules) once `vpnmasq teardown` exists; then drop the guard.
if [ -x "$PREFIX/bin/vpnmasq" ] && "$PREFIX/bin/vpnmasq" help teardown >/dev/null 2>&1; then "$PREFIX/bin/vpnmasq" teardown; fi
rm -f "$UNIT"
[ -d /run/systemd/system ] && systemctl daemon-reload

if [ -f "$CONFIG" ] && { [ "$purge" = 1 ] || { created config && cmp -s "$CONFIG" "$PREFIX/vpnmasq.json.example"; }; }; then
  rm -f "$CONFIG"
elif [ -f "$CONFIG" ]; then
  echo "uninstall.sh: keeping $CONFIG (edited; use --purge to remove it)"
fi
if [ -d "$CONFIG_DIR" ] && { [ "$purge" = 1 ] || created config-dir; }; then
  rmdir "$CONFIG_DIR" 2>/dev/null || true
fi
[ "$purge" = 1 ] && rm -rf "$STATE_DIR"

rm -f "$BIN" "$COMPLETION_DIR/vpnmasq"
if created completion-dir; then
  rmdir "$COMPLETION_DIR" 2>/dev/null && rmdir "$(dirname "$COMPLETION_DIR")" 2>/dev/null || true
fi
rm -rf "$PREFIX"

if getent group "$GROUP" >/dev/null && { created group || [ "$purge" = 1 ]; }; then
  groupdel "$GROUP"
fi
echo "vpnmasq uninstalled"
