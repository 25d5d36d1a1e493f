// `vpnmasq firewall`: the nftables text for each mode (which crossings are
// marked, with which matches), several TUN and LAN devices as sets, the mark,
// and the CLI reading the config file without a daemon. The lab test
// (test/lab/firewall.test.ts) loads it into nft and sends traffic through.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { acceptRule, DEFAULT_FIREWALL_MARK, firewallRuleset, FirewallOptions } from '../../src/edge/netlink/firewall';
import { tunDevices } from '../../src/config/schema';
import { runCli, tempDir } from './cli-fixture';

const BASE: FirewallOptions = {
  tuns: ['vmq0'], lanInterfaces: ['lan0'], lanPrefixes: ['10.77.0.0/24'], wanInterface: 'eth0', mode: 'shared',
  publicAddress: null, mark: DEFAULT_FIREWALL_MARK, source: '/etc/vpnmasq/vpnmasq.json',
};
const rules = (text: string) => text.split('\n').filter((l) => /meta mark set/.test(l)).map((l) => l.trim().replace(/ meta mark set.*$/, ''));

describe('vpnmasq firewall', () => {
  it('marks the four forward crossings of the TUN and, in shared mode, the box\'s ICMP from the TUN', () => {
    const text = firewallRuleset(BASE);
    assert.deepEqual(rules(text), [
      'iifname "lan0" oifname "vmq0" ip saddr 10.77.0.0/24',
      'iifname "vmq0" oifname "eth0"',
      'iifname "eth0" oifname "vmq0"',
      'iifname "vmq0" oifname "lan0" ip daddr 10.77.0.0/24',
      'iifname "vmq0" ip protocol icmp',
    ]);
    assert.match(text, /^table inet vpnmasq\ndelete table inet vpnmasq\ntable inet vpnmasq \{$/m, 'replaces an earlier table atomically');
    assert.equal((text.match(/type filter hook (forward|input) priority filter - 10; policy accept;/g) ?? []).length, 2, 'ahead of the filter priority, drops nothing');
    assert.doesNotMatch(text.split('\n').filter((l) => !l.startsWith('#')).join('\n'), /\b(accept|drop)$/m, 'accepts and drops nothing itself');
    assert.match(text, /meta mark set meta mark \| 0x10000000 comment "LAN -> TUN/);
    for (const c of text.matchAll(/comment "([^"]*)"/g)) assert.ok(Buffer.byteLength(c[1]) <= 127, `nft comments are at most 128 bytes: ${c[1]}`);
  });

  it('matches the public address where it is known; dedicated mode hands nothing to the box', () => {
    const text = firewallRuleset({ ...BASE, mode: 'dedicated', publicAddress: '198.18.0.2' });
    assert.deepEqual(rules(text), [
      'iifname "lan0" oifname "vmq0" ip saddr 10.77.0.0/24',
      'iifname "vmq0" oifname "eth0" ip saddr 198.18.0.2',
      'iifname "eth0" oifname "vmq0" ip daddr 198.18.0.2',
      'iifname "vmq0" oifname "lan0" ip daddr 10.77.0.0/24',
    ]);
    assert.match(text, /chain input \{\n.*policy accept;\n    # dedicated mode: vpnmasq hands nothing to the box itself\n  \}/);
  });

  it('takes several TUN and LAN devices and prefixes as sets, and another mark', () => {
    const text = firewallRuleset({ ...BASE, tuns: ['vmq-lan', 'vmq-wan', 'vmq-lan'], lanInterfaces: ['lan0', 'lan1'], lanPrefixes: ['10.77.0.0/24', '10.78.0.0/16'], mark: 0x4 });
    assert.equal(rules(text)[0], 'iifname { "lan0", "lan1" } oifname { "vmq-lan", "vmq-wan" } ip saddr { 10.77.0.0/24, 10.78.0.0/16 }');
    assert.match(text, /meta mark set meta mark \| 0x00000004/);
    assert.equal(acceptRule(0x4), 'meta mark & 0x00000004 == 0x00000004 accept');
    assert.throws(() => firewallRuleset({ ...BASE, mark: 0 }), /mark must be 1\.\.0xffffffff/);
    assert.throws(() => firewallRuleset({ ...BASE, tuns: [] }), /no TUN device/);
    assert.deepEqual(tunDevices({ tun: { name: 'vpnmasq0', mtu: 1500, offloads: true, io: 'threads', busyPollUs: 0 } }), ['vpnmasq0', 'vpnmasq0-w'], 'the LAN and the WAN device');
  });

  it('prints the ruleset for the config file, no daemon needed; a bad --mark is a usage error', async () => {
    const dir = tempDir('firewall');
    try {
      const file = path.join(dir, 'vpnmasq.json');
      fs.writeFileSync(file, JSON.stringify({
        tun: { name: 'vmq7' }, lan: { interfaces: ['lan3'], prefixes: ['10.9.0.0/24'] },
        wan: { interface: 'wan9', mode: 'dedicated', publicAddress: '198.18.0.9' }, control: { socket: path.join(dir, 'c.sock'), group: 'root' },
      }));
      const r = await runCli(['-c', file, 'firewall']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, firewallRuleset({
        tuns: ['vmq7', 'vmq7-w'], lanInterfaces: ['lan3'], lanPrefixes: ['10.9.0.0/24'], wanInterface: 'wan9', mode: 'dedicated',
        publicAddress: '198.18.0.9', mark: DEFAULT_FIREWALL_MARK, source: file,
      }));
      const m = await runCli(['-c', file, 'firewall', '--mark', '0x20']);
      assert.match(m.stdout, /meta mark & 0x00000020 == 0x00000020 accept/);
      const bad = await runCli(['-c', file, 'firewall', '--mark', '0x1ffffffff']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--mark: not a mark between 1 and 0xffffffff/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
