# Where scripts/install.sh puts vpnmasq and scripts/uninstall.sh removes it from.
PREFIX=/opt/vpnmasq
BIN=/usr/local/bin/vpnmasq
COMPLETION_DIR=/usr/local/share/bash-completion/completions
CONFIG_DIR=/etc/vpnmasq
CONFIG="$CONFIG_DIR/vpnmasq.json"
UNIT=/etc/systemd/system/vpnmasq.service
GROUP=vpnmasq
STATE_DIR=/var/lib/vpnmasq
MANIFEST="$PREFIX/.installed"
