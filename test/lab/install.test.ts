/**
 * scripts/install.sh then scripts/uninstall.sh on this machine: the program
 * runs from the wrapper after install, both scripts are idempotent, and
 * afterwards every path and group is as before. Needs root and a build.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');
const isRoot = process.getuid?.() === 0;
const WATCHED = ['/opt', '/usr/local/bin', '/usr/local/lib', '/etc/vpnmasq', '/etc/systemd/system', '/var/lib/vpnmasq', '/run/vpnmasq'];

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
  const r = spawnSync('bash', [path.join(ROOT, 'scripts', script), ...args], { encoding: 'utf8', timeout: 120000 });
  assert.equal(r.status, 0, `${script} failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

describe('install.sh / uninstall.sh', { skip: !isRoot && 'needs root' }, () => {
  it('installs a working program and removes every trace of it', () => {
    const before = snapshot();
    assert.ok(!before.some((l) => l.startsWith('/opt/vpnmasq ') || l === 'group vpnmasq'), 'vpnmasq is already installed here');
    try {
      run('install.sh');
      const out = run('install.sh');
      assert.match(out, /systemd is not running|enabled/);
      for (const p of ['/usr/local/bin/vpnmasq', '/opt/vpnmasq/dist/src/cli/main.js', '/opt/vpnmasq/build/Release/vpnmasq_tun.node',
        '/etc/vpnmasq/vpnmasq.json', '/etc/systemd/system/vpnmasq.service']) {
        assert.ok(fs.existsSync(p), `${p} missing after install`);
      }
      assert.ok(snapshot().includes('group vpnmasq'));
      // The installed copy runs from its own node_modules, not from the source tree.
      const help = spawnSync('/usr/local/bin/vpnmasq', ['--help'], { encoding: 'utf8', cwd: '/' });
      assert.equal(help.status, 0, help.stderr);
      assert.match(help.stdout, /Usage: vpnmasq/);
      const statusRun = spawnSync('/usr/local/bin/vpnmasq', ['status'], { encoding: 'utf8', cwd: '/' });
      assert.match(statusRun.stdout + statusRun.stderr, /not running|control socket|wan\.interface|config/);
      // An edited config survives a re-install.
      fs.appendFileSync('/etc/vpnmasq/vpnmasq.json', '\n# edited\n');
      run('install.sh');
      assert.match(fs.readFileSync('/etc/vpnmasq/vpnmasq.json', 'utf8'), /# edited/);
    } finally {
      run('uninstall.sh', '--purge');
    }
    run('uninstall.sh');
    assert.deepEqual(snapshot(), before);
  });
});
