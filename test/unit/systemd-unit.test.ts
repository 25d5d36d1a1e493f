/**
 * systemd/vpnmasq.service: the settings the appliance relies on are present,
 * `systemd-analyze verify` accepts it and `systemd-analyze security
 * --offline=true` scores it (the score is printed for the README). Verify
 * runs on a temporary copy whose ExecStart is /bin/true, because
 * /opt/vpnmasq/bin/vpnmasq exists only once installed.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const UNIT = path.resolve(__dirname, '../../../systemd/vpnmasq.service');
const EARLY = path.resolve(__dirname, '../../../systemd/vpnmasq-safety-net.service');
const analyze = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
/** A missing systemd-analyze fails the test with its reason (scripts/ensure-deps.sh installs it). */
function requireAnalyze(): void {
  if (analyze.error) throw new Error('systemd-analyze is not installed (Debian package systemd): run scripts/ensure-deps.sh');
}

/** Settings as key -> values (a key may repeat). */
function settings(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1], [...(out.get(m[1]) ?? []), m[2]]);
  }
  return out;
}

/** Both units in one directory (they refer to each other), with ExecStart=/bin/true. */
function verifiableCopy(): { dir: string; file: string; early: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-unit-'));
  const file = path.join(dir, 'vpnmasq.service');
  const early = path.join(dir, 'vpnmasq-safety-net.service');
  fs.writeFileSync(file, fs.readFileSync(UNIT, 'utf8').replace(/^ExecStart=.*$/m, 'ExecStart=/bin/true').replace(/^ExecReload=.*$/m, 'ExecReload=/bin/true'));
  fs.writeFileSync(early, fs.readFileSync(EARLY, 'utf8').replace(/^ExecStart=.*$/m, 'ExecStart=/bin/true'));
  return { dir, file, early };
}

describe('systemd/vpnmasq.service', () => {
  const s = settings(fs.readFileSync(UNIT, 'utf8'));
  const one = (k: string) => (s.get(k) ?? []).join(' ');

  it('has the settings the appliance relies on', () => {
    assert.equal(one('Type'), 'notify');
    assert.equal(one('NotifyAccess'), 'main');
    assert.equal(one('WatchdogSec'), '30s');
    assert.equal(one('ExecStart'), '/opt/vpnmasq/bin/vpnmasq run');
    assert.equal(one('ExecReload'), '/opt/vpnmasq/bin/vpnmasq reload');
    assert.equal(one('Restart'), 'on-failure');
    assert.equal(one('CapabilityBoundingSet'), 'CAP_NET_ADMIN');
    assert.equal(one('AmbientCapabilities'), 'CAP_NET_ADMIN');
    for (const k of ['StateDirectory', 'RuntimeDirectory', 'ConfigurationDirectory']) assert.equal(one(k), 'vpnmasq', k);
    // The mode install.sh and the package give /etc/vpnmasq (root:vpnmasq): systemd warns at every start when they differ.
    assert.equal(one('ConfigurationDirectoryMode'), '0750');
    assert.equal(one('ProtectSystem'), 'strict');
    assert.equal(one('ProtectHome'), 'yes');
    assert.equal(one('PrivateTmp'), 'yes');
    assert.equal(one('NoNewPrivileges'), 'yes');
    assert.equal(one('DeviceAllow'), '/dev/net/tun rw');
    assert.equal(one('RestrictAddressFamilies'), 'AF_UNIX AF_NETLINK AF_INET AF_INET6');
    assert.equal(one('SystemCallFilter'), '@system-service');
    // Started early: it waits for the WAN itself; the early unit has put the safety net in place.
    assert.match(one('Wants'), /vpnmasq-safety-net\.service/);
    assert.match(one('After'), /vpnmasq-safety-net\.service/);
    assert.doesNotMatch(one('After'), /network-online/);
    // Never gives up: a failing start leaves the box closed (kernel state), so retrying is safe.
    assert.equal(one('StartLimitIntervalSec'), '0');
    assert.equal(one('RestartSec'), '2s');
    // V8's JIT needs W+X pages: Node aborts under MemoryDenyWriteExecute=yes.
    assert.equal(s.has('MemoryDenyWriteExecute'), false);
    // These would hide /dev/net/tun or make /proc/sys/net read-only.
    assert.equal(s.has('PrivateDevices'), false);
    assert.equal(s.has('ProtectKernelTunables'), false);
  });

  it('the early unit installs the safety net before the network is configured', () => {
    const e = settings(fs.readFileSync(EARLY, 'utf8'));
    const get = (k: string) => (e.get(k) ?? []).join(' ');
    assert.equal(get('Type'), 'oneshot');
    assert.equal(get('ExecStart'), '/opt/vpnmasq/bin/vpnmasq safety-net');
    assert.equal(get('DefaultDependencies'), 'no');
    assert.match(get('Before'), /network-pre\.target/);
    assert.match(get('Before'), /vpnmasq\.service/);
    assert.match(get('After'), /systemd-sysctl\.service/);
    assert.equal(get('StateDirectory'), 'vpnmasq');
  });

  it('passes systemd-analyze verify', () => {
    requireAnalyze();
    const { dir, file, early } = verifiableCopy();
    try {
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', file, early], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr.trim(), '', 'verify printed warnings');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is scored by systemd-analyze security --offline=true', (t) => {
    requireAnalyze();
    const { dir, file } = verifiableCopy();
    try {
      const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', file], { encoding: 'utf8' });
      const m = /Overall exposure level for vpnmasq\.service: ([\d.]+) (\w+)/.exec(r.stdout);
      assert.ok(m, `no score in output:\n${r.stdout}\n${r.stderr}`);
      const exposed = r.stdout.split('\n').filter((l) => l.startsWith('✗')).map((l) => l.slice(2).split(/\s+/)[0]);
      t.diagnostic(`exposure ${m[1]} ${m[2]}; remaining: ${exposed.join(', ')}`);
      // 0 = fully locked down, 10 = unprotected; anything above 4 is "MEDIUM" or worse.
      assert.ok(Number(m[1]) <= 3, `exposure ${m[1]} regressed`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
