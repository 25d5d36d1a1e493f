/**
 * scripts/install.sh, then the installed /opt/vpnmasq/scripts/uninstall.sh,
 * on this machine: the program runs from its command with the node on PATH
 * at run time, only the runtime tree is installed (no tests, benchmarks or
 * dev dependencies), `vpnmasq --version` reports package.json's version,
 * both scripts are idempotent, an edited config survives a re-install, and
 * afterwards every path and group is as before. Needs root and a build.
 * These paths are global, so the test holds a machine-wide lock
 * (/run/lock/vpnmasq-install-test.lock) and two runs wait for each other.
 * Stopping and restarting a running service across a re-install needs
 * systemd as PID 1: scripts/appliance-check.sh covers it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');
const isRoot = process.getuid?.() === 0;
const WATCHED = ['/opt', '/usr/local/bin', '/usr/local/lib', '/usr/local/share', '/etc/vpnmasq', '/etc/systemd/system', '/var/lib/vpnmasq', '/run/vpnmasq'];
const LOCK = '/run/lock/vpnmasq-install-test.lock';
const LOCK_WAIT_S = 900;
const PREFIX = '/opt/vpnmasq';
const BIN = '/usr/local/bin/vpnmasq';

/** Every path under the watched directories (not following symlinks), plus the group list. */
function snapshot(): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    let st: fs.Stats;
    try { st = fs.lstatSync(p); } catch { return; }
    out.push(`${p} ${st.mode.toString(8)}`);
    if (st.isDirectory()) for (const e of fs.readdirSync(p).sort()) walk(path.join(p, e));
  };
  for (const d of WATCHED) walk(d);
  for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) if (line) out.push(`group ${line.split(':')[0]}`);
  return out;
}

function run(script: string, ...args: string[]): string {
  const r = spawnSync('bash', [script, ...args], { encoding: 'utf8', timeout: 180000 });
  assert.equal(r.status, 0, `${script} failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * Takes the machine-wide lock: flock(1) holds it for as long as its stdin is
 * open, so it is released when the returned function is called or when this
 * process dies. Throws if the lock is not free within LOCK_WAIT_S.
 */
async function globalLock(): Promise<() => Promise<void>> {
  assert.ok(fs.existsSync(path.dirname(LOCK)), `${path.dirname(LOCK)} missing`);
  const holder = spawn('flock', ['--exclusive', '--timeout', String(LOCK_WAIT_S), LOCK, 'sh', '-c', 'echo locked; exec cat >/dev/null'],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => holder.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    holder.stdout.once('data', () => resolve());
    holder.once('error', (e) => reject(new Error(`flock: ${e.message}`)));
    void exited.then((code) => reject(new Error(`flock ${LOCK} gave up (exit ${code}) after ${LOCK_WAIT_S}s`)));
  });
  return async () => {
    holder.stdin.end();
    await exited;
  };
}

function files(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' });
}

describe('install.sh / uninstall.sh', { skip: !isRoot && 'needs root' }, () => {
  it('installs the runtime program with its uninstaller and removes every trace of it', async () => {
    const unlock = await globalLock();
    const shims = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-install-node-'));
    try {
      const before = snapshot();
      assert.ok(!before.some((l) => l.startsWith(`${PREFIX} `) || l === 'group vpnmasq'), 'vpnmasq is already installed here');
      try {
        run(path.join(ROOT, 'scripts/install.sh'));
        const out = run(path.join(ROOT, 'scripts/install.sh'));
        assert.match(out, /installed under \/opt\/vpnmasq \(remove it with \/opt\/vpnmasq\/scripts\/uninstall\.sh\)/);
        assert.match(out, /systemd is not running|enabled|restarted/);
        for (const p of [`${PREFIX}/dist/src/bin/vpnmasq.js`, `${PREFIX}/build/Release/vpnmasq_tun.node`, `${PREFIX}/scripts/uninstall.sh`,
          `${PREFIX}/node_modules/better-sqlite3/build/Release/better_sqlite3.node`, '/usr/local/share/bash-completion/completions/vpnmasq',
          '/etc/vpnmasq/vpnmasq.json', '/etc/systemd/system/vpnmasq.service']) {
          assert.ok(fs.existsSync(p), `${p} missing after install`);
        }
        assert.equal(fs.readlinkSync(BIN), `${PREFIX}/bin/vpnmasq`);
        assert.ok(snapshot().includes('group vpnmasq'));

        // Only the runtime tree: no tests, benchmarks, lab scripts, source maps, dev dependencies or native build leftovers.
        assert.deepEqual(fs.readdirSync(`${PREFIX}/dist`), ['src']);
        assert.deepEqual(files(PREFIX).filter((f) => /\.map$|(^|\/)test_extension\.node$|\/deps\/sqlite3|\.(cc|c|h)$/.test(f)), []);
        for (const dev of ['typescript', 'node-gyp', '@types/better-sqlite3']) assert.ok(!fs.existsSync(`${PREFIX}/node_modules/${dev}`), `dev dependency ${dev} installed`);

        // The version has one source, package.json.
        const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
        const v = spawnSync(BIN, ['--version'], { encoding: 'utf8', cwd: '/' });
        assert.equal(v.stdout, `vpnmasq ${version}\n`, v.stderr);

        // The command finds node on PATH when it runs: a node put first on PATH is the one used, none is a clear error.
        const wrapper = fs.readFileSync(`${PREFIX}/bin/vpnmasq`, 'utf8');
        assert.ok(!wrapper.includes(process.execPath), `the command names ${process.execPath}:\n${wrapper}`);
        const marker = path.join(shims, 'used');
        fs.writeFileSync(path.join(shims, 'node'), `#!/bin/sh\ntouch ${marker}\nexec ${process.execPath} "$@"\n`, { mode: 0o755 });
        const viaShim = spawnSync(BIN, ['check-native'], { encoding: 'utf8', cwd: '/', env: { PATH: `${shims}:/usr/bin:/bin` } });
        assert.equal(viaShim.status, 0, viaShim.stderr);
        assert.match(viaShim.stderr, /better-sqlite3: ok\nTUN addon: ok\nnative modules load in Node v\d+/);
        assert.ok(fs.existsSync(marker), 'the node first on PATH was not used');
        const noNode = spawnSync(`${PREFIX}/bin/vpnmasq`, ['--version'], { encoding: 'utf8', cwd: '/', env: { PATH: path.join(shims, 'none') } });
        assert.equal(noNode.status, 1);
        assert.match(noNode.stderr, /^vpnmasq: node is not on PATH/);

        // The installed copy runs from its own node_modules, not from the source tree.
        const help = spawnSync(BIN, ['--help'], { encoding: 'utf8', cwd: '/' });
        assert.equal(help.status, 0, help.stderr);
        assert.match(help.stdout, /Usage: vpnmasq/);
        const statusRun = spawnSync(BIN, ['status'], { encoding: 'utf8', cwd: '/' });
        assert.match(statusRun.stdout + statusRun.stderr, /not running|control socket|wan\.interface|config/);
        // An edited config survives a re-install.
        fs.appendFileSync('/etc/vpnmasq/vpnmasq.json', '\n# edited\n');
        run(path.join(ROOT, 'scripts/install.sh'));
        assert.match(fs.readFileSync('/etc/vpnmasq/vpnmasq.json', 'utf8'), /# edited/);
      } finally {
        // The installed uninstaller removes itself with the rest.
        if (fs.existsSync(`${PREFIX}/scripts/uninstall.sh`)) run(`${PREFIX}/scripts/uninstall.sh`, '--purge');
        else run(path.join(ROOT, 'scripts/uninstall.sh'), '--purge');
      }
      run(path.join(ROOT, 'scripts/uninstall.sh'));
      assert.deepEqual(snapshot(), before);
    } finally {
      fs.rmSync(shims, { recursive: true, force: true });
      await unlock();
    }
  });
});
