#!/usr/bin/env bash
# Runs every test: unit tests on crafted packets (no root needed) and, as
# root, the lab tests in network namespaces. One node:test run, one summary.
# As root, a lab namespace left behind by a test of this run fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob globstar
# Unit tests, the byte-vector tests that sit beside the code (src/wire/*.test.ts)
# and the fuzz targets' short seeded passes (test/fuzz/).
files=(dist/test/unit/*.test.js dist/src/**/*.test.js dist/test/fuzz/*.test.js)
if [ "$(id -u)" = 0 ]; then
  node dist/test/lab/sweep.js
  files+=(dist/test/lab/*.test.js)
else
  echo "test: not root, lab tests skipped" >&2
fi
rc=0
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}" || rc=$?
if [ "$(id -u)" = 0 ] && ! node dist/test/lab/sweep.js --after; then
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
