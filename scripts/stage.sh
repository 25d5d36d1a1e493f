#!/usr/bin/env bash
# Builds the installed program tree into DEST (which must not exist) from a
# source tree where `npm ci` and `npm run build` ran: the compiled program
# (dist/src only, compiled afresh so no file of a removed source survives;
# no tests, benchmarks, lab scripts or source maps), the TUN addon, the
# runtime node_modules (no dev dependencies, no native build leftovers), the
# bin/vpnmasq wrapper, package.json (the version), the README and the example
# config. Used by scripts/install.sh (for /opt/vpnmasq) and scripts/package.sh.
#   scripts/stage.sh DEST [VERSION]   VERSION replaces package.json's in DEST
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:?usage: stage.sh DEST [VERSION]}"
VERSION="${2:-}"
die() { echo "stage.sh: $*" >&2; exit 1; }

addon="$SRC/build/Release/vpnmasq_tun.node"
[ -f "$addon" ] || die "TUN addon missing: run 'npm ci && npm run build' in $SRC"
[ -z "$(find "$SRC/native" "$SRC/binding.gyp" -type f -newer "$addon" 2>/dev/null | head -1)" ] || die "TUN addon older than native/: run 'npm run build' in $SRC"
[ -x "$SRC/node_modules/.bin/tsc" ] || die "TypeScript missing: run 'npm ci' in $SRC"
[ ! -e "$DEST" ] || die "$DEST exists"

mkdir -p "$DEST"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$SRC" && node_modules/.bin/tsc -p tsconfig.json --outDir "$tmp/dist" --sourceMap false) || die "TypeScript build failed"
mkdir -p "$DEST/dist"
mv "$tmp/dist/src" "$DEST/dist/src"
# The byte-vector tests beside the wire views are not part of the program.
find "$DEST/dist" -name '*.test.js' -delete

mkdir -p "$DEST/build/Release" "$DEST/bin"
cp "$addon" "$DEST/build/Release/"
cp "$SRC/bin/vpnmasq" "$DEST/bin/vpnmasq"
chmod 0755 "$DEST/bin/vpnmasq"
cp "$SRC/package.json" "$SRC/README.md" "$DEST/"
cp "$SRC/examples/vpnmasq.json" "$DEST/vpnmasq.json.example"
if [ -n "$VERSION" ]; then
  node -e 'const f = process.argv[1], p = JSON.parse(require("fs").readFileSync(f, "utf8")); p.version = process.argv[2];
    require("fs").writeFileSync(f, JSON.stringify(p, null, 2) + "\n")' "$DEST/package.json" "$VERSION"
fi

# Runtime dependencies only (npm ls reads the local tree; no registry access).
mkdir -p "$DEST/node_modules"
(cd "$SRC" && npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2) | while read -r dir; do
  rel="${dir#"$SRC"/}"
  [ -e "$DEST/$rel" ] && continue # already copied with its parent
  mkdir -p "$DEST/$(dirname "$rel")"
  cp -a "$dir" "$DEST/$rel"
done
[ -d "$DEST/node_modules/better-sqlite3" ] || die "runtime dependencies missing: run 'npm ci' in $SRC"
# better-sqlite3 needs only its JavaScript and the one module it loads (build/Release/better_sqlite3.node):
# not the SQLite sources, the object files or its test extension.
sqlite="$DEST/node_modules/better-sqlite3"
[ -f "$sqlite/build/Release/better_sqlite3.node" ] || die "better-sqlite3 is not built: run 'npm ci' in $SRC"
mv "$sqlite/build/Release/better_sqlite3.node" "$tmp/"
rm -rf "$sqlite/build" "$sqlite/deps" "$sqlite/src" "$sqlite/binding.gyp"
mkdir -p "$sqlite/build/Release"
mv "$tmp/better_sqlite3.node" "$sqlite/build/Release/"
# netlink ships N-API prebuilds for several machines: keep this one's.
netlink="$DEST/node_modules/netlink"
target="$(node -p 'process.platform + "-" + process.arch')"
[ -d "$netlink/prebuilds/$target" ] || die "netlink has no prebuilt module for $target"
find "$netlink/prebuilds" -mindepth 1 -maxdepth 1 ! -name "$target" -exec rm -rf {} +
rm -rf "$netlink/src" "$netlink/binding.gyp"
# node-addon-api is the TUN addon's C++ headers: needed to build it, not to run it.
rm -rf "$DEST/node_modules/node-addon-api"
find "$DEST/node_modules" -name '*.map' -type f -delete
chmod -R u+rwX,go+rX,go-w "$DEST"
