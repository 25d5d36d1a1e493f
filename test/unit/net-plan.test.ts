/**
 * The kernel plumbing as data (src/edge/netlink/plan.ts) and the host-state
 * record (host-state.ts) against a directory standing in for /proc/sys.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  NetSpec, dedicatedAddresses, narrowPortRange, ruleText, safetyNet, safetyNetSysctls, steerableRange, sysctlPaths, tunDeviceNames,
  tunDeviceSysctls, tunRoutes, wanSysctls, TABLE_LAN, TABLE_WAN, TABLE_WAN_ICMP,
} from '../../src/edge/netlink/plan';
import { TUN_NAME_MAX } from '../../src/core/side';
import { HostState } from '../../src/edge/netlink/host-state';

const dedicated: NetSpec = {
  mode: 'dedicated', tunName: 'vpnmasq0', lanInterfaces: ['lan0', 'lan1'], lanPrefixes: ['10.77.0.0/24'], wanInterface: 'eth0.7',
  publicAddress: '198.18.0.2', portRange: [1024, 65535], forwardPorts: [],
};
const shared: NetSpec = {
  ...dedicated, mode: 'shared', lanInterfaces: ['lan0'], publicAddress: '198.51.100.1', portRange: [61000, 65535],
  forwardPorts: [{ proto: 'tcp', port: 8443 }, { proto: 'udp', port: 62000 }, { proto: 'tcp', port: 65535 }],
};

describe('safety net plan', () => {
  it('dedicated: the public address to the WAN side (LAN ingress to the LAN side), LAN -> LAN routed, LAN rules per interface and prefix, blackholes in both tables', () => {
    const net = safetyNet(dedicated);
    assert.deepEqual(net.rules.map(ruleText), [
      '48: from all to 198.18.0.2 iif lan0 lookup 7100',
      '48: from all to 198.18.0.2 iif lan1 lookup 7100',
      '50: from all to 198.18.0.2 lookup 7101',
      '7099: from all to 10.77.0.0/24 lookup main suppress_prefixlength 0',
      '7100: from 10.77.0.0/24 iif lan0 lookup 7100',
      '7100: from 10.77.0.0/24 iif lan1 lookup 7100',
    ]);
    assert.deepEqual(net.blackholes.map((r) => [r.table, r.type, r.metric]), [[TABLE_LAN, 'blackhole', 0xffffffff], [TABLE_WAN, 'blackhole', 0xffffffff]]);
    assert.equal(net.localMoved, false);
    assert.deepEqual(tunRoutes(dedicated).map((r) => [r.table, r.type, r.metric, r.dev]),
      [[TABLE_LAN, 'tun', 0, 'vpnmasq0'], [TABLE_WAN, 'tun', 0, 'vpnmasq0-w']]);
  });

  it('device names: LAN keeps tun.name, WAN adds "-w"; a name too long for both is refused', () => {
    assert.deepEqual(tunDeviceNames('vpnmasq0'), ['vpnmasq0', 'vpnmasq0-w']);
    assert.deepEqual(tunDeviceNames('a'.repeat(TUN_NAME_MAX))[1].length, 15);
    assert.throws(() => tunDeviceNames('a'.repeat(TUN_NAME_MAX + 1)), /IFNAMSIZ/);
  });

  it('several LAN prefixes: each is routed between the others ahead of every LAN rule', () => {
    const rules = safetyNet({ ...dedicated, lanInterfaces: ['lan0'], lanPrefixes: ['10.77.0.0/24', '10.78.0.0/16'] }).rules.map(ruleText);
    assert.deepEqual(rules.filter((r) => r.startsWith('7099:') || r.startsWith('7100:')), [
      '7099: from all to 10.77.0.0/24 lookup main suppress_prefixlength 0',
      '7099: from all to 10.78.0.0/16 lookup main suppress_prefixlength 0',
      '7100: from 10.77.0.0/24 iif lan0 lookup 7100',
      '7100: from 10.78.0.0/16 iif lan0 lookup 7100',
    ]);
  });

  it('dedicated with several public addresses: a rule and a proxy neighbour for each; shared mode has none', () => {
    const several: NetSpec = { ...dedicated, lanInterfaces: ['lan0'], otherPublicAddresses: ['198.18.0.3', '198.18.0.4'] };
    assert.deepEqual(safetyNet(several).rules.map(ruleText), [
      '48: from all to 198.18.0.2 iif lan0 lookup 7100',
      '50: from all to 198.18.0.2 lookup 7101',
      '48: from all to 198.18.0.3 iif lan0 lookup 7100',
      '50: from all to 198.18.0.3 lookup 7101',
      '48: from all to 198.18.0.4 iif lan0 lookup 7100',
      '50: from all to 198.18.0.4 lookup 7101',
      '7099: from all to 10.77.0.0/24 lookup main suppress_prefixlength 0',
      '7100: from 10.77.0.0/24 iif lan0 lookup 7100',
    ]);
    assert.deepEqual(dedicatedAddresses(several), ['198.18.0.2', '198.18.0.3', '198.18.0.4']);
    assert.deepEqual(dedicatedAddresses(shared), []);
  });

  it('shared: steering ahead of the moved local rule; ICMP to a table without a blackhole; forwards outside the range', () => {
    const net = safetyNet(shared);
    assert.deepEqual(net.rules.map(ruleText), [
      '48: from all to 198.51.100.1 iif lan0 ipproto tcp dport 61000-65534 lookup 7100',
      '48: from all to 198.51.100.1 iif lan0 ipproto udp dport 61000-65534 lookup 7100',
      '48: from all to 198.51.100.1 iif lan0 ipproto udp sport 500 dport 500 lookup 7100',
      '48: from all to 198.51.100.1 iif lan0 ipproto esp lookup 7100',
      '48: from all to 198.51.100.1 iif lan0 ipproto gre lookup 7100',
      '48: from all to 198.51.100.1 iif lan0 ipproto tcp dport 8443 lookup 7100',
      '48: from all to 198.51.100.1 iif lan0 ipproto icmp lookup 7100',
      '49: from all iif vpnmasq0 lookup local',
      '49: from all iif vpnmasq0-w lookup local',
      '50: from all to 198.51.100.1 ipproto tcp dport 61000-65534 lookup 7101',
      '50: from all to 198.51.100.1 ipproto udp dport 61000-65534 lookup 7101',
      '50: from all to 198.51.100.1 ipproto udp sport 500 dport 500 lookup 7101',
      '50: from all to 198.51.100.1 ipproto esp lookup 7101',
      '50: from all to 198.51.100.1 ipproto gre lookup 7101',
      '50: from all to 198.51.100.1 ipproto tcp dport 8443 lookup 7101',
      '50: from all to 198.51.100.1 ipproto icmp lookup 7102',
      '100: from all lookup local',
      '7099: from all to 10.77.0.0/24 lookup main suppress_prefixlength 0',
      '7100: from 10.77.0.0/24 iif lan0 lookup 7100',
    ]);
    assert.equal(net.localMoved, true);
    assert.ok(!net.blackholes.some((r) => r.table === TABLE_WAN_ICMP), 'ICMP to the box falls through while nothing translates');
    assert.deepEqual(tunRoutes(shared).map((r) => [r.table, r.dev]), [[TABLE_LAN, 'vpnmasq0'], [TABLE_WAN, 'vpnmasq0-w'], [TABLE_WAN_ICMP, 'vpnmasq0-w']]);
  });

  it('shared without an address yet: LAN rules and blackholes only', () => {
    assert.deepEqual(safetyNet({ ...shared, publicAddress: null }).rules.map(ruleText),
      ['49: from all iif vpnmasq0 lookup local', '49: from all iif vpnmasq0-w lookup local', '100: from all lookup local',
        '7099: from all to 10.77.0.0/24 lookup main suppress_prefixlength 0', '7100: from 10.77.0.0/24 iif lan0 lookup 7100']);
  });

  it('sysctls: ip_forward always, the port reservation from the original values in shared mode', () => {
    const orig = (p: string) => ({ 'net/ipv4/ip_local_port_range': '32768\t60999', 'net/ipv4/ip_local_reserved_ports': '8080' } as Record<string, string>)[p] ?? '0';
    const values = (spec: NetSpec) => safetyNetSysctls(spec).map(([p, v]) => [p, v(orig(p))]);
    assert.deepEqual(values(dedicated), [['net/ipv4/ip_forward', '1']]);
    assert.deepEqual(values(shared), [
      ['net/ipv4/ip_forward', '1'],
      ['net/ipv4/ip_local_port_range', '32768 60999'],
      ['net/ipv4/ip_local_reserved_ports', '8080,61000-65535'],
    ]);
    assert.deepEqual(wanSysctls(dedicated).map(([p, v]) => [p, v('0')]), [['net/ipv4/conf/eth0/7/rp_filter', '1'], ['net/ipv4/neigh/eth0/7/proxy_delay', '0']],
      'strict reverse-path filtering on the WAN; a dot in the name is a slash in /proc/sys');
    assert.deepEqual(wanSysctls(shared).map(([p]) => p), ['net/ipv4/conf/eth0/7/rp_filter']);
    assert.deepEqual(tunDeviceSysctls(shared), [
      ['net/ipv4/conf/vpnmasq0/rp_filter', '0'], ['net/ipv4/conf/vpnmasq0/accept_local', '1'],
      ['net/ipv4/conf/vpnmasq0-w/rp_filter', '0'], ['net/ipv4/conf/vpnmasq0-w/accept_local', '1'],
    ]);
    assert.deepEqual([...sysctlPaths(dedicated)].sort(),
      ['net/ipv4/conf/all/rp_filter', 'net/ipv4/conf/eth0/7/rp_filter', 'net/ipv4/ip_forward', 'net/ipv4/neigh/eth0/7/proxy_delay']);
  });

  it('port ranges: a rule cannot end at 65535; the box keeps the larger side of its ephemeral range', () => {
    assert.deepEqual(steerableRange([61000, 65535]), [61000, 65534]);
    assert.deepEqual(narrowPortRange([32768, 60999], [61000, 65535]), [32768, 60999]);
    assert.deepEqual(narrowPortRange([32768, 65535], [61000, 65535]), [32768, 60999]);
    assert.deepEqual(narrowPortRange([1024, 65535], [1024, 20000]), [20001, 65535]);
    assert.throws(() => narrowPortRange([61000, 61001], [61000, 65535]), /leaves no ephemeral ports/);
  });
});

describe('host state record', () => {
  const procSys = (): { dir: string; file: string; read(p: string): string } => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-hoststate-'));
    const sys = path.join(dir, 'sys');
    for (const [p, v] of [['net/ipv4/ip_forward', '0'], ['net/ipv4/ip_local_port_range', '32768\t60999'], ['net/ipv4/ip_local_reserved_ports', '']]) {
      fs.mkdirSync(path.dirname(path.join(sys, p)), { recursive: true });
      fs.writeFileSync(path.join(sys, p), `${v}\n`);
    }
    return { dir, file: path.join(dir, 'state', 'host-state.json'), read: (p) => fs.readFileSync(path.join(sys, p), 'utf8').trim() };
  };

  it('saves each original before its first write and keeps it across a crash; restores them all', () => {
    const t = procSys();
    try {
      const opts = { procSys: path.join(t.dir, 'sys'), identity: 'boot-1 net:[1]' };
      const a = HostState.load(t.file, opts);
      a.saveSpec(shared);
      a.apply(safetyNetSysctls(shared));
      assert.equal(t.read('net/ipv4/ip_forward'), '1');
      assert.equal(t.read('net/ipv4/ip_local_reserved_ports'), '61000-65535');
      // A crash and a new process: the saved originals are the pre-vpnmasq ones, not the current values.
      const b = HostState.load(t.file, opts);
      assert.equal(b.note, null);
      b.apply(safetyNetSysctls(shared));
      assert.equal(t.read('net/ipv4/ip_local_reserved_ports'), '61000-65535', 'not appended twice');
      assert.deepEqual(b.sysctls, { 'net/ipv4/ip_forward': '0', 'net/ipv4/ip_local_port_range': '32768\t60999', 'net/ipv4/ip_local_reserved_ports': '' });
      assert.deepEqual(b.spec, shared);
      const restored = b.restoreExcept(new Set());
      assert.equal(restored.length, 3);
      assert.equal(t.read('net/ipv4/ip_forward'), '0');
      assert.equal(t.read('net/ipv4/ip_local_reserved_ports'), '');
      assert.deepEqual(HostState.load(t.file, opts).sysctls, {});
    } finally {
      fs.rmSync(t.dir, { recursive: true, force: true });
    }
  });

  it('a record of an earlier boot keeps its spec and drops its originals; a damaged one is moved aside', () => {
    const t = procSys();
    try {
      const sys = path.join(t.dir, 'sys');
      const a = HostState.load(t.file, { procSys: sys, identity: 'boot-1 net:[1]' });
      a.saveSpec(dedicated);
      a.apply(safetyNetSysctls(dedicated));
      const rebooted = HostState.load(t.file, { procSys: sys, identity: 'boot-2 net:[1]' });
      assert.deepEqual(rebooted.note, { kind: 'earlier-boot' });
      assert.deepEqual(rebooted.spec, dedicated);
      assert.deepEqual(rebooted.sysctls, {});
      fs.writeFileSync(t.file, '{"version": 1, "identity": ');
      const damaged = HostState.load(t.file, { procSys: sys, identity: 'boot-2 net:[1]' });
      assert.equal(damaged.note?.kind, 'unreadable');
      assert.equal(damaged.spec, null);
      assert.equal(fs.readFileSync((damaged.note as { movedTo: string }).movedTo, 'utf8'), '{"version": 1, "identity": ', 'kept, not overwritten');
    } finally {
      fs.rmSync(t.dir, { recursive: true, force: true });
    }
  });
});
