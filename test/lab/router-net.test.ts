/**
 * RouterNet (src/edge/netlink) alone in a lab router namespace, without the
 * daemon: the safety net and the TUN routes as the kernel shows them, what
 * the safety net does to packets once the TUN is gone (checked on the wire),
 * reconciliation with a changed spec, and a teardown that leaves the
 * namespace exactly as it was found. A persistent TUN (`ip tuntap add`)
 * stands in for the daemon's; a toy ICMP NAT in Python attached to it shows
 * the plumbing works end to end. Each test builds its own lab.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireRoot, createLab, Lab, TestOwner } from './lab';
import { hostSnapshot, TCP_PROBE } from './host-probes';
import { capture, leaks } from './capture';
import { tunDeviceNames } from '../../src/core/side';
import { NetSpec, TABLE_LAN, TABLE_WAN, TABLE_WAN_ICMP } from '../../src/edge/netlink/plan';

requireRoot();

const FIXTURE = path.join(__dirname, 'fixtures', 'router-net-fixture.js');
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const PREFIXES = ['10.77.0.0/24', '10.78.0.0/16'];
interface Env {
  lab: Lab;
  R: string;
  /** The LAN-side TUN (tunName); its WAN-side one is tunW. */
  tun: string;
  tunW: string;
  hostFile: string;
  sh(ns: string, argv: string[]): Promise<string>;
  fx(...args: string[]): Promise<any>;
  snapshot(): Promise<string>;
  spec(over?: Partial<NetSpec>): NetSpec;
}

/** A lab of its own, a persistent TUN and non-default sysctls (so restoring them is observable); removed in t.after. */
async function env(t: TestOwner): Promise<Env> {
  const lab = await createLab({ lanHosts: 2, wanHosts: 1, vpnServer: false, farHost: false });
  const dir = lab.tempDir('rn');
  t.after(() => lab.destroy());
  const R = lab.ns.router;
  const [tun, tunW] = tunDeviceNames(`${lab.prefix}t`);
  const sh = async (ns: string, argv: string[]): Promise<string> => {
    const r = await lab.exec(ns, argv);
    assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  for (const dev of [tun, tunW]) await sh(R, ['ip', 'tuntap', 'add', 'dev', dev, 'mode', 'tun']);
  await sh(R, ['sysctl', '-qw', 'net.ipv4.ip_forward=0', 'net.ipv4.conf.all.rp_filter=2', 'net.ipv4.conf.wan0.rp_filter=2', 'net.ipv4.neigh.wan0.proxy_delay=70',
    'net.ipv4.ip_local_port_range=30000 60999', 'net.ipv4.ip_local_reserved_ports=8080']);
  const hostFile = path.join(dir, 'host-state.json');
  const e: Env = {
    lab, R, tun, tunW, hostFile, sh,
    async fx(...args) {
      const r = await lab.exec(R, [process.execPath, FIXTURE, ...args], { timeoutMs: 20000 });
      const out = JSON.parse(r.stdout.trim().split('\n').pop() || '{}');
      assert.equal(r.code, 0, `fixture ${args[0]}: ${out?.error ?? r.stderr}`);
      return out;
    },
    snapshot: () => hostSnapshot(sh, R),
    spec: (over = {}) => ({
      mode: 'dedicated', tunName: tun, lanInterfaces: ['lan0'], lanPrefixes: PREFIXES, wanInterface: 'wan0',
      publicAddress: lab.addr.public, portRange: [61000, 65535], forwardPorts: [], ...over,
    }),
  };
  return e;
}

const sysctl = async (e: Env, key: string) => (await e.sh(e.R, ['cat', `/proc/sys/${key}`])).trim();
/** The routes of one table, one per line ('' when it has none; `ip route show table N` fails then). */
const tableRoutes = async (e: Env, table: number) =>
  (await e.sh(e.R, ['ip', 'route', 'show', 'table', 'all'])).split('\n').filter((l) => l.includes(` table ${table} `)).join('\n');

describe('RouterNet (netlink) in a lab router namespace', { timeout: 180_000 }, () => {
  it('dedicated: safety net, TUN routes, proxy ARP and sysctls; the toy NAT carries a ping; without the TUN nothing leaks or answers; teardown restores the namespace', async (t) => {
    const e = await env(t);
    const { lab, R, tun, tunW } = e;
    // Foreign entries that must survive everything.
    await e.sh(R, ['ip', 'rule', 'add', 'pref', '7200', 'from', '10.99.0.0/16', 'lookup', '7200']);
    await e.sh(R, ['ip', 'neigh', 'add', 'proxy', '198.18.0.3', 'dev', 'wan0']);
    const before = await e.snapshot();

    const changes = await e.fx('attach', e.hostFile, JSON.stringify(e.spec()), '1400');
    // Two blackholes, the public address's rule and its LAN-ingress copy, a LAN rule and a LAN->LAN rule per prefix, and lan.ipv6 "drop"'s IPv6 refusal on the LAN interface.
    assert.equal(changes.added.length, 2 + 1 + 1 + 2 * PREFIXES.length + 1, JSON.stringify(changes));
    assert.ok(changes.added.includes('7100: from all iif lan0 prohibit (IPv6)'), JSON.stringify(changes));
    const rules = await e.sh(R, ['ip', 'rule', 'show']);
    assert.match(rules, /^0:\s+from all lookup local/m, 'the local rule stays first');
    assert.match(rules, new RegExp(`^50:\\s+from all to ${lab.addr.public.replace(/\./g, '\\.')} lookup ${TABLE_WAN} proto 247`, 'm'));
    assert.match(rules, new RegExp(`^48:\\s+from all to ${lab.addr.public.replace(/\./g, '\\.')} iif lan0 lookup ${TABLE_LAN} proto 247`, 'm'));
    for (const p of PREFIXES) assert.match(rules, new RegExp(`^7100:\\s+from ${p.replace(/\./g, '\\.')} iif lan0 lookup ${TABLE_LAN} proto 247`, 'm'));
    for (const p of PREFIXES) assert.match(rules, new RegExp(`^7099:\\s+from all to ${p.replace(/\./g, '\\.')} lookup main suppress_prefixlength 0 proto 247`, 'm'));
    for (const [table, dev] of [[TABLE_LAN, tun], [TABLE_WAN, tunW]] as const) {
      const routes = await tableRoutes(e, table);
      assert.match(routes, new RegExp(`^default dev ${dev} table ${table} proto 247 scope link (linkdown )?$`, 'm'), routes);
      assert.match(routes, new RegExp(`^blackhole default table ${table} proto 247 metric 4294967295 $`, 'm'), routes);
    }
    assert.doesNotMatch(await e.sh(R, ['ip', 'route', 'show']), /198\.18\.0\.2/, 'no public-address route in main: a rule steers it');
    assert.match(await e.sh(R, ['ip', 'neigh', 'show', 'proxy']), new RegExp(`^${lab.addr.public.replace(/\./g, '\\.')} dev wan0 proxy`, 'm'));
    for (const dev of [tun, tunW]) {
      assert.match(await e.sh(R, ['ip', 'link', 'show', 'dev', dev]), /mtu 1400/);
      assert.equal(await sysctl(e, `net/ipv4/conf/${dev}/rp_filter`), '0');
    }
    assert.equal(await sysctl(e, 'net/ipv4/ip_forward'), '1');
    assert.equal(await sysctl(e, 'net/ipv4/conf/all/rp_filter'), '0');
    assert.equal(await sysctl(e, 'net/ipv4/conf/wan0/rp_filter'), '1', 'strict reverse-path filtering on the WAN');
    assert.equal(await sysctl(e, 'net/ipv4/neigh/wan0/proxy_delay'), '0');
    // Idempotent: a second run adds and removes nothing.
    const again = await e.fx('attach', e.hostFile, JSON.stringify(e.spec()), '1400');
    assert.deepEqual(again, { added: [], removed: [] });
    const status = await e.fx('inspect');
    assert.deepEqual([status.blackholes, status.tunRoutes], [[TABLE_LAN, TABLE_WAN], [TABLE_LAN, TABLE_WAN]]);

    // LAN to the router itself is still local; LAN to LAN is bridged.
    for (const dst of [lab.addr.routerLan, lab.addr.routerWan, lab.addr.lan[1]]) {
      assert.equal((await lab.ping(lab.ns.lan[0], dst, { count: 1 })).received, 1, dst);
    }
    // End to end through a toy NAT on the TUN: the LAN rule, the table, rp_filter, forwarding, the public rule, proxy ARP.
    const nat = lab.spawn(R, [PYTHON, '-c', TOY_NAT_PY, tun, tunW, lab.addr.lan[0], lab.addr.public, '15']);
    let natOut = '';
    nat.stdout?.on('data', (d: Buffer) => { natOut += d.toString(); });
    await waitFor(() => natOut.includes('attached'));
    const p = await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 3, waitMs: 2000 });
    assert.equal(p.received, 3, `${JSON.stringify(p)} ${natOut}`);
    assert.match(natOut, new RegExp(`out ${lab.addr.lan[0].replace(/\./g, '\\.')} -> ${lab.addr.wan[0].replace(/\./g, '\\.')}`));
    assert.match(natOut, new RegExp(`in ${lab.addr.wan[0].replace(/\./g, '\\.')} -> ${lab.addr.public.replace(/\./g, '\\.')}`));
    nat.kill('SIGKILL');

    // The TUNs go away (as when the daemon dies): their routes go with them, the blackholes stay.
    for (const dev of [tun, tunW]) await e.sh(R, ['ip', 'link', 'del', dev]);
    assert.doesNotMatch(await tableRoutes(e, TABLE_LAN), /dev/);
    assert.doesNotMatch(await tableRoutes(e, TABLE_WAN), /dev/);
    const cap = await capture(lab, lab.ns.wan[0]);
    const from = Date.now() / 1000;
    const lanPing = await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 3, waitMs: 500 });
    assert.equal(lanPing.received, 0);
    const wanPing = await lab.ping(lab.ns.wan[0], lab.addr.public, { count: 2, waitMs: 500 });
    assert.equal(wanPing.received, 0, 'the public address answers nothing');
    assert.deepEqual(wanPing.errors.filter((x) => x.from !== lab.addr.wan[0]), [], 'no error from anyone but the host itself (ARP)');
    const probe = (await e.sh(lab.ns.wan[0], [PYTHON, '-c', TCP_PROBE, lab.addr.public, '40000', '1'])).trim();
    assert.match(probe, /^(timeout|error 113)$/, 'no RST for the public address');
    const seen = await cap.stop();
    assert.deepEqual(leaks(seen, [lab.addr.routerWan, lab.addr.public], from), []);
    assert.deepEqual(seen.filter((x) => x.src === lab.addr.lan[0]), [], 'no LAN packet left untranslated');

    for (const dev of [tun, tunW]) await e.sh(R, ['ip', 'tuntap', 'add', 'dev', dev, 'mode', 'tun']);
    const report = await e.fx('teardown', e.hostFile);
    assert.equal(report.rules, 1 + 1 + 2 * PREFIXES.length + 1, 'the public address\'s rule and its LAN-ingress copy, the LAN and LAN->LAN rules and the IPv6 refusal');
    assert.equal(report.routes, 2);
    assert.equal(report.proxyNeighbours, 1);
    assert.equal(await e.snapshot(), before, 'the namespace as it was found');
    assert.equal(fs.existsSync(e.hostFile), false, 'the record is gone with what it recorded');
    assert.deepEqual(await e.fx('teardown', e.hostFile), { rules: 0, routes: 0, proxyNeighbours: 0, localRule: false, sysctls: [] });
  });

  it('shared: steering, the moved local rule and the port reservation; without the TUN the box still answers pings and its own ports, steered ones stay silent', async (t) => {
    const e = await env(t);
    const { lab, R } = e;
    const before = await e.snapshot();
    const spec = e.spec({ mode: 'shared', publicAddress: lab.addr.routerWan, forwardPorts: [{ proto: 'tcp', port: 8443 }] });
    await e.fx('install', e.hostFile, JSON.stringify(spec));
    const rules = await e.sh(R, ['ip', 'rule', 'show']);
    assert.doesNotMatch(rules, /^0:/m, 'lookup local left pref 0');
    assert.match(rules, /^49:\s+from all iif \S+ lookup local proto 247/m);
    assert.match(rules, new RegExp(`^50:\\s+from all to 198\\.18\\.0\\.1 ipproto tcp dport 61000-65534 lookup ${TABLE_WAN} proto 247`, 'm'));
    assert.match(rules, new RegExp(`^50:\\s+from all to 198\\.18\\.0\\.1 ipproto udp sport 500 dport 500 lookup ${TABLE_WAN} proto 247`, 'm'));
    assert.match(rules, new RegExp(`^50:\\s+from all to 198\\.18\\.0\\.1 ipproto tcp dport 8443 lookup ${TABLE_WAN} proto 247`, 'm'));
    assert.match(rules, new RegExp(`^50:\\s+from all to 198\\.18\\.0\\.1 ipproto icmp lookup ${TABLE_WAN_ICMP} proto 247`, 'm'));
    assert.match(rules, /^100:\s+from all lookup local proto 247/m);
    assert.equal(await tableRoutes(e, TABLE_WAN_ICMP), '', 'no blackhole for ICMP to the box');
    assert.equal(await sysctl(e, 'net/ipv4/ip_local_port_range'), '30000\t60999');
    assert.equal(await sysctl(e, 'net/ipv4/ip_local_reserved_ports'), '8080,61000-65535');
    assert.equal(await sysctl(e, 'net/ipv4/ip_forward'), '1');

    // Never attached: this is the box after a crash, or at boot before the daemon.
    const ssh = lab.spawn(R, [PYTHON, '-c', 'import socket,time\ns=socket.socket()\ns.bind(("0.0.0.0",2222))\ns.listen()\ntime.sleep(20)']);
    await waitFor(async () => (await e.sh(R, ['ss', '-ltn'])).includes(':2222'));
    const cap = await capture(lab, lab.ns.wan[0]);
    const from = Date.now() / 1000;
    const ping = await lab.ping(lab.ns.wan[0], lab.addr.routerWan, { count: 2 });
    assert.equal(ping.received, 2, 'ICMP to the box falls through to the local stack');
    assert.equal((await e.sh(lab.ns.wan[0], [PYTHON, '-c', TCP_PROBE, lab.addr.routerWan, '2222', '2'])).trim(), 'connected', 'the box serves its own ports');
    assert.equal((await e.sh(lab.ns.wan[0], [PYTHON, '-c', TCP_PROBE, lab.addr.routerWan, '2223', '2'])).trim(), 'refused', 'and answers for them');
    for (const port of ['62000', '8443']) {
      assert.equal((await e.sh(lab.ns.wan[0], [PYTHON, '-c', TCP_PROBE, lab.addr.routerWan, port, '1'])).trim(), 'timeout', `steered port ${port} is silent`);
    }
    const lanPing = await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 2, waitMs: 500 });
    assert.equal(lanPing.received, 0);
    const seen = await cap.stop();
    ssh.kill('SIGKILL');
    const bad = leaks(seen, [lab.addr.routerWan], from).filter((l) => !/\.2223 .*Flags \[R/.test(l));
    assert.deepEqual(bad, [], 'only the reset for the box\'s own closed port 2223');

    await e.fx('teardown', e.hostFile);
    assert.equal(await e.snapshot(), before);
  });

  it('reconciles a changed spec: new entries in before old ones out, nothing stale left, the old mode\'s settings back', async (t) => {
    const e = await env(t);
    const { lab, R } = e;
    const before = await e.snapshot();
    const shared = e.spec({ mode: 'shared', publicAddress: lab.addr.routerWan });
    await e.fx('install', e.hostFile, JSON.stringify(shared));
    // The WAN address changes: steering moves.
    const moved = await e.fx('install', e.hostFile, JSON.stringify({ ...shared, publicAddress: '198.18.0.3' }));
    // Six steering rules for the WAN side and the same six for LAN ingress (hairpin).
    assert.ok(moved.added.every((x: string) => x.includes('198.18.0.3')) && moved.added.length === 12, JSON.stringify(moved));
    assert.ok(moved.removed.every((x: string) => x.includes('198.18.0.1')) && moved.removed.length === 12, JSON.stringify(moved));
    // Another LAN, then dedicated mode: the local rule and the port sysctls come back.
    const lan = await e.fx('install', e.hostFile, JSON.stringify({ ...shared, publicAddress: '198.18.0.3', lanPrefixes: ['10.77.0.0/24'] }));
    assert.deepEqual(lan, { added: [], removed: ['7099: from all to 10.78.0.0/16 lookup main suppress_prefixlength 0', '7100: from 10.78.0.0/16 iif lan0 lookup 7100'] });
    await e.fx('install', e.hostFile, JSON.stringify(e.spec({ lanPrefixes: ['10.77.0.0/24'] })));
    const rules = await e.sh(R, ['ip', 'rule', 'show']);
    assert.match(rules, /^0:\s+from all lookup local/m);
    assert.doesNotMatch(rules, /^(49|100):|198\.18\.0\.[13]|10\.78/m);
    assert.equal(await sysctl(e, 'net/ipv4/ip_local_port_range'), '30000\t60999');
    assert.equal(await sysctl(e, 'net/ipv4/ip_local_reserved_ports'), '8080');
    await e.fx('teardown', e.hostFile);
    assert.equal(await e.snapshot(), before);
  });

  it('originals are the values before the first change, also after a crash and a second install', async (t) => {
    const e = await env(t);
    const spec = JSON.stringify(e.spec({ mode: 'shared', publicAddress: e.lab.addr.routerWan }));
    const before = await e.snapshot();
    await e.fx('install', e.hostFile, spec);
    await e.fx('install', e.hostFile, spec);
    const saved = JSON.parse(fs.readFileSync(e.hostFile, 'utf8'));
    assert.equal(saved.sysctls['net/ipv4/ip_forward'], '0');
    assert.equal(saved.sysctls['net/ipv4/ip_local_reserved_ports'], '8080');
    assert.equal(saved.localRule, true);
    assert.equal(saved.spec.publicAddress, e.lab.addr.routerWan);
    // A TUN that does not exist: attach fails and the safety net stays.
    const r = await e.lab.exec(e.R, [process.execPath, FIXTURE, 'attach', e.hostFile, JSON.stringify({ ...JSON.parse(spec), tunName: 'nosuchtun0' }), '1500']);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /nosuchtun0 does not exist/);
    assert.deepEqual((await e.fx('inspect')).blackholes, [TABLE_LAN, TABLE_WAN]);
    await e.fx('teardown', e.hostFile);
    assert.equal(await e.snapshot(), before);
  });

  it('follows the WAN interface state', async (t) => {
    const e = await env(t);
    const w = await e.fx('wan', 'wan0');
    assert.ok(w.index > 0);
    assert.deepEqual(w.addresses, ['198.18.0.1']);
    assert.equal(await e.fx('wan', 'nosuch0'), null);
  });
});

async function waitFor(fn: () => boolean | Promise<boolean>, ms = 10000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * argv: TUN TUN_W LAN_ADDR PUBLIC_ADDR SECONDS: reads the LAN-side and the WAN-side device, writes to the LAN one.
 * Prints "attached", then "out SRC -> DST" / "in SRC -> DST" per translated packet.
 */
const TOY_NAT_PY = String.raw`
import fcntl, os, select, socket, struct, sys, time
tuns, lan, pub, secs = sys.argv[1:3], socket.inet_aton(sys.argv[3]), socket.inet_aton(sys.argv[4]), float(sys.argv[5])
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454ca, 0x0001, 0x1000
fds = []
for tun in tuns:
    fds.append(os.open('/dev/net/tun', os.O_RDWR))
    fcntl.ioctl(fds[-1], TUNSETIFF, struct.pack('16sH', tun.encode(), IFF_TUN | IFF_NO_PI))
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
print('attached', flush=True)
end = time.time() + secs
while time.time() < end:
    r, _, _ = select.select(fds, [], [], 0.2)
    if not r: continue
    p = bytearray(os.read(r[0], 65535))
    if len(p) < 20 or p[0] >> 4 != 4: continue
    ihl = (p[0] & 15) * 4
    src, dst = bytes(p[12:16]), bytes(p[16:20])
    if src == lan: p[12:16] = pub; tag = 'out'
    elif dst == pub: p[16:20] = lan; tag = 'in'
    else: continue
    p[10:12] = b'\0\0'
    p[10:12] = struct.pack('!H', csum(bytes(p[:ihl])))
    os.write(fds[0], bytes(p))
    print('%s %s -> %s' % (tag, socket.inet_ntoa(src), socket.inet_ntoa(dst)), flush=True)
`;
