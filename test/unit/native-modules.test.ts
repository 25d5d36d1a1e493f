/**
 * The native-module check: the real modules load in this Node, and an addon
 * built for another NODE_MODULE_VERSION (a stub that registers itself as a
 * Node 18 module, compiled here) is reported with both ABI numbers and the
 * way to rebuild, as `vpnmasq run` and `vpnmasq check-native` print it.
 * `vpnmasq --version` reads the one version there is, package.json's.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkNativeModules, describeLoadError, REBUILD_HINT } from '../../src/edge/native-modules';
import { CLI, tempDir } from './cli-fixture';

/** A module that registers with nm_version 108 (Node 18) through node_module_register, like NODE_MODULE() does. */
const STUB = `
extern "C" {
struct node_module { int nm_version; unsigned int nm_flags; void* nm_dso_handle; const char* nm_filename;
  void* nm_register_func; void* nm_context_register_func; const char* nm_modname; void* nm_priv; node_module* nm_link; };
void node_module_register(void*);
static node_module m = { 108, 0, nullptr, "stub.cc", nullptr, nullptr, "stub", nullptr, nullptr };
__attribute__((constructor)) static void reg() { node_module_register(&m); }
}
`;

describe('native modules', () => {
  it('load in this Node', () => {
    assert.deepEqual(checkNativeModules(), [{ module: 'better-sqlite3', problem: null }, { module: 'TUN addon', problem: null }]);
    const r = spawnSync(process.execPath, [CLI, 'check-native'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`native modules load in Node ${process.version.replace(/\./g, '\\.')} .*NODE_MODULE_VERSION ${process.versions.modules}`));
  });

  it('reports an addon built for another NODE_MODULE_VERSION with both numbers and the rebuild path', () => {
    const dir = tempDir('native-abi');
    try {
      fs.writeFileSync(path.join(dir, 'stub.cc'), STUB);
      const file = path.join(dir, 'stub.node');
      const cc = spawnSync('g++', ['-shared', '-fPIC', '-o', file, path.join(dir, 'stub.cc')], { encoding: 'utf8' });
      assert.equal(cc.status, 0, `g++ (scripts/ensure-deps.sh installs it): ${cc.error?.message ?? cc.stderr}`);
      let error: Error | undefined;
      try {
        require(file);
      } catch (e) {
        error = e as Error;
      }
      assert.ok(error, 'a module for NODE_MODULE_VERSION 108 loaded');
      const message = describeLoadError('better-sqlite3', error);
      assert.ok(message.startsWith(`better-sqlite3 (${file}) was built for NODE_MODULE_VERSION 108, but this Node is ${process.version} (${process.execPath}, NODE_MODULE_VERSION ${process.versions.modules}): `), message);
      assert.ok(message.endsWith(REBUILD_HINT));
      assert.doesNotMatch(message, /\n/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports any other load failure on one line with the rebuild path', () => {
    const message = describeLoadError('TUN addon', new Error('/opt/vpnmasq/build/Release/vpnmasq_tun.node: cannot open\nshared object file'));
    assert.match(message, /^TUN addon does not load in Node v\d+.*: \/opt\/vpnmasq\/build\/Release\/vpnmasq_tun\.node: cannot open shared object file: rebuild vpnmasq/);
  });
});

describe('vpnmasq --version', () => {
  it('prints the version from package.json', () => {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = spawnSync(process.execPath, [CLI, flag], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, `vpnmasq ${pkg.version}\n`);
    }
  });
});
