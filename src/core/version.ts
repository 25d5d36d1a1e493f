/**
 * The program's version: the "version" of the package.json next to the built
 * tree (the source tree's, or the one scripts/install.sh and the Debian package
 * install under /opt/vpnmasq), so it is written in one place only.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** package.json seen from dist/src/core/version.js. */
const PACKAGE_JSON = path.join(__dirname, '../../../package.json');

let cached: string | undefined;

export function version(): string {
  cached ??= String((JSON.parse(fs.readFileSync(PACKAGE_JSON, 'utf8')) as { version: unknown }).version);
  return cached;
}
