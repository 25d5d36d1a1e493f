import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { createLab, Lab, sweepStaleLabs } from './lab';

const skip = process.getuid?.() !== 0 ? 'requires root (network namespaces)' : false;

const FIXTURE = path.join(__dirname, 'fixtures', 'router-net-fixture.js');
const TUN = 'vmqt0';
const TABLE = 7100;
const PRIO = 7100;
const PREFIXES = ['10.77.0.0/24', '10.78.0.0/16'];
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Line-oriented driver for the fixture process running inside the router namespace. */
class Fixture {
  private buf = '';
  private readonly lines: string[] = [];
  private waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;
  stderr = '';

  constructor(readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
      this.wake();
    });
    child.stderr!.on('data', (d: string) => (this.stderr += d));
    child.stdin!.on('error', () => undefined);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        this.wake();
        resolve(code);
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  send(line: string): void {
    this.child.stdin!.write(line + '\n');
  }

  /** Next line starting with `word` (consumes lines up to it); rejects on "error ..." lines, exit or timeout. */
  async expect(word: string, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.lines.length) {
        const l = this.lines.shift()!;
        if (l.startsWith('error ')) throw new Error(`fixture: ${l} ${this.stderr}`);
        if (l === word || l.startsWith(word + ' ')) return l.slice(word.length).trim();
      }
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`fixture exited (${this.child.exitCode ?? this.child.signalCode}) before "${word}": ${this.stderr}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for "${word}" from fixture: ${this.stderr}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async waitExit(timeoutMs = 10_000): Promise<number | null> {
    return Promise.race([
      this.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('fixture did not exit')), timeoutMs).unref()),
    ]);
  }
}

interface IpRule {
  priority?: number;
  src?: string;
  srclen?: number;
  iif?: string;
  table?: string;
  protocol?: string;
}
interface IpRoute {
  dst?: string;
  dev?: string;
  protocol?: string;
  scope?: string;
  table?: string;
}
interface IpNeigh {
  dst?: string;
  dev?: string;
  flags?: string[];
  protocol?: string;
  lladdr?: string;
  state?: string[];
}

describe('RouterNet (netlink) in a lab router namespace', { skip, timeout: 180_000 }, () => {
  let lab: Lab | undefined;
  let R = '';
  const L = (): Lab => {
    assert.ok(lab, 'lab was not created');
    return lab;
  };

  const ipJson = async <T>(ns: string, args: string[]): Promise<T[]> => {
    const r = await L().exec(ns, ['ip', '-j', ...args]);
    if (r.code !== 0) {
      if (/table does not exist/i.test(r.stderr)) return [];
      throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
    }
    return r.stdout.trim() ? (JSON.parse(r.stdout) as T[]) : [];
  };
  const sysctl = async (key: string): Promise<string> => {
    const r = await L().exec(R, ['cat', `/proc/sys/${key.replace(/\./g, '/')}`]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  const ourRules = async (): Promise<IpRule[]> =>
    (await ipJson<IpRule>(R, ['rule', 'show'])).filter((r) => r.priority === PRIO || r.table === String(TABLE) || r.protocol === '247');
  const allProto247Routes = async (): Promise<IpRoute[]> => ipJson<IpRoute>(R, ['route', 'show', 'table', 'all', 'proto', '247']);
  const proxyNeighs = async (): Promise<IpNeigh[]> => ipJson<IpNeigh>(R, ['neigh', 'show', 'proxy']);

  const setupOpts = (tunName = TUN): string =>
    JSON.stringify({
      tunName,
      mtu: 1400,
      table: TABLE,
      rulePriority: PRIO,
      lanInterfaces: ['lan0'],
      lanPrefixes: PREFIXES,
      publicAddress: L().addr.public,
      wanInterface: 'wan0',
    });
  const startFixture = (args: string[]): Fixture => new Fixture(L().spawn(R, [process.execPath, FIXTURE, ...args]));

  const expectNothingLeft = async (): Promise<void> => {
    assert.deepEqual(await ourRules(), [], 'rules left');
    assert.deepEqual(await ipJson<IpRoute>(R, ['route', 'show', 'table', String(TABLE)]), [], 'table routes left');
    assert.deepEqual(await allProto247Routes(), [], 'proto 247 routes left');
    assert.deepEqual(await proxyNeighs(), [], 'proxy neighbours left');
  };

  before(async () => {
    await sweepStaleLabs();
    lab = await createLab({ lanHosts: 2, wanHosts: 1, vpnServer: false, farHost: false });
    R = lab.ns.router;
    const t = await lab.exec(R, ['ip', 'tuntap', 'add', 'dev', TUN, 'mode', 'tun']);
    assert.equal(t.code, 0, t.stderr);
    // Non-default "previous" values so restoring them is observable.
    const s = await lab.exec(R, [
      'sysctl', '-q', '-w',
      'net.ipv4.ip_forward=0',
      'net.ipv4.conf.all.rp_filter=2',
      `net.ipv4.conf.${TUN}.rp_filter=1`,
    ]);
    assert.equal(s.code, 0, s.stderr);
  });

  after(async () => {
    await lab?.destroy();
  });

  describe('setup / teardown', () => {
    let fx: Fixture | undefined;
    const F = (): Fixture => {
      assert.ok(fx, 'fixture not running');
      return fx;
    };
    after(async () => {
      if (fx && fx.child.exitCode === null) fx.child.kill('SIGKILL');
    });

    test('setup installs mtu/up, table route, rules, public route, proxy neighbour and sysctls', async () => {
      fx = startFixture(['run', setupOpts()]);
      const recorded = JSON.parse(await F().expect('ready')) as { entries: string[] };
      assert.equal(recorded.entries.length, 2 + 1 + PREFIXES.length);

      const link = await ipJson<{ mtu: number; flags: string[] }>(R, ['link', 'show', 'dev', TUN]);
      assert.equal(link[0]?.mtu, 1400);
      assert.ok(link[0]?.flags.includes('UP'), JSON.stringify(link));

      const rules = await ourRules();
      assert.equal(rules.length, PREFIXES.length, JSON.stringify(rules));
      for (const p of PREFIXES) {
        const [net, len] = p.split('/');
        const r = rules.find((x) => x.src === net && x.srclen === Number(len));
        assert.ok(r, `rule for ${p} missing: ${JSON.stringify(rules)}`);
        assert.equal(r.priority, PRIO);
        assert.equal(r.iif, 'lan0');
        assert.equal(r.table, String(TABLE));
        assert.equal(r.protocol, '247');
      }
      // The local table rule still comes first.
      const all = await ipJson<IpRule>(R, ['rule', 'show']);
      assert.equal(all[0]?.priority, 0);
      assert.equal(all[0]?.table, 'local');

      const t = await ipJson<IpRoute>(R, ['route', 'show', 'table', String(TABLE)]);
      assert.equal(t.length, 1, JSON.stringify(t));
      assert.equal(t[0]?.dst, 'default');
      assert.equal(t[0]?.dev, TUN);
      assert.equal(t[0]?.protocol, '247');

      const pub = await ipJson<IpRoute>(R, ['route', 'show', 'exact', `${L().addr.public}/32`]);
      assert.equal(pub.length, 1, JSON.stringify(pub));
      assert.equal(pub[0]?.dev, TUN);
      assert.equal(pub[0]?.protocol, '247');

      const pn = await proxyNeighs();
      assert.equal(pn.length, 1, JSON.stringify(pn));
      assert.equal(pn[0]?.dst, L().addr.public);
      assert.equal(pn[0]?.dev, 'wan0');
      assert.equal(pn[0]?.protocol, '247');

      assert.equal(await sysctl('net.ipv4.ip_forward'), '1');
      assert.equal(await sysctl('net.ipv4.conf.all.rp_filter'), '0');
      assert.equal(await sysctl(`net.ipv4.conf.${TUN}.rp_filter`), '0');
      assert.equal(await sysctl('net.ipv4.neigh.wan0.proxy_delay'), '0');
    });

    test('setup is idempotent (no duplicate rules or routes)', async () => {
      F().send('setup');
      const recorded = JSON.parse(await F().expect('ready')) as { entries: string[] };
      assert.equal(recorded.entries.length, 2 + 1 + PREFIXES.length);
      assert.equal((await ourRules()).length, PREFIXES.length);
      assert.equal((await allProto247Routes()).length, 2);
      assert.equal((await proxyNeighs()).length, 1);
    });

    test('addressesOf lists IPv4 addresses of an interface', async () => {
      F().send('addresses wan0');
      assert.deepEqual(JSON.parse(await F().expect('addresses')), ['198.18.0.1']);
      F().send(`addresses ${TUN}`);
      assert.deepEqual(JSON.parse(await F().expect('addresses')), []);
    });

    test('router-local traffic from the LAN is still delivered locally', async () => {
      const l = L();
      for (const dst of [l.addr.routerLan, l.addr.routerWan]) {
        const r = await l.ping(l.ns.lan[0]!, dst, { count: 2 });
        assert.equal(r.received, 2, `${dst}: ${JSON.stringify(r)}`);
      }
      // LAN <-> LAN is bridged, never policy-routed.
      const r = await l.ping(l.ns.lan[0]!, l.addr.lan[1]!, { count: 1 });
      assert.equal(r.received, 1, JSON.stringify(r));
    });

    test('LAN traffic goes through the TUN and the public address works end to end (toy NAT on the TUN)', async () => {
      const l = L();
      // A minimal ICMP "NAT" attached to the TUN: LAN source -> public, public destination -> LAN.
      // It exercises the policy rule, the table route, rp_filter=0, forwarding, the
      // public /32 route and proxy ARP on wan0.
      const nat = l.spawn(R, [
        PYTHON, '-c', TOY_NAT_PY, TUN, l.addr.lan[0]!, l.addr.public, '20',
      ]);
      const natFx = new Fixture(nat);
      try {
        await natFx.expect('attached', 10_000);
        const r = await l.ping(l.ns.lan[0]!, l.addr.wan[0]!, { count: 3, waitMs: 2000 });
        assert.equal(r.received, 3, `${JSON.stringify(r)} nat stderr: ${natFx.stderr}`);
        const out = await natFx.expect('out');
        assert.match(out, new RegExp(`^${l.addr.lan[0]!.replace(/\./g, '\\.')} -> ${l.addr.wan[0]!.replace(/\./g, '\\.')}$`));
        const inn = await natFx.expect('in');
        assert.match(inn, new RegExp(`^${l.addr.wan[0]!.replace(/\./g, '\\.')} -> ${l.addr.public.replace(/\./g, '\\.')}$`));
        // w1 learned the public address via proxy ARP: it maps to the router's wan0 MAC.
        const wanMac = (await ipJson<{ address: string }>(R, ['link', 'show', 'dev', 'wan0']))[0]?.address;
        const n = await ipJson<IpNeigh>(l.ns.wan[0]!, ['neigh', 'show', l.addr.public]);
        assert.equal(n[0]?.lladdr, wanMac, JSON.stringify(n));
      } finally {
        if (nat.exitCode === null) nat.kill('SIGKILL');
        await natFx.waitExit(5000).catch(() => undefined);
      }
    });

    test('teardown removes everything (tolerating already-gone items) and restores sysctls', async () => {
      // Someone removed one entry behind our back: teardown must not fail on it.
      const d = await L().exec(R, ['ip', 'neigh', 'del', 'proxy', L().addr.public, 'dev', 'wan0']);
      assert.equal(d.code, 0, d.stderr);
      const d2 = await L().exec(R, ['ip', 'route', 'del', `${L().addr.public}/32`, 'dev', TUN]);
      assert.equal(d2.code, 0, d2.stderr);

      F().send('teardown');
      const recorded = JSON.parse(await F().expect('done')) as { entries: string[]; sysctls: Record<string, string> };
      assert.deepEqual(recorded.entries, []);
      assert.deepEqual(recorded.sysctls, {});
      await expectNothingLeft();
      assert.equal(await sysctl('net.ipv4.ip_forward'), '0');
      assert.equal(await sysctl('net.ipv4.conf.all.rp_filter'), '2');
      assert.equal(await sysctl(`net.ipv4.conf.${TUN}.rp_filter`), '1');
      assert.notEqual(await sysctl('net.ipv4.neigh.wan0.proxy_delay'), '0');

      // A second teardown is a no-op.
      F().send('teardown');
      await F().expect('done');
      F().send('exit');
      assert.equal(await F().waitExit(), 0);
    });
  });

  test('setup against a missing TUN fails without leaving anything behind', async () => {
    const fx = startFixture(['run', setupOpts('nosuchtun0')]);
    await assert.rejects(fx.expect('ready'), /nosuchtun0 does not exist/);
    assert.equal(await fx.waitExit(), 1);
    await expectNothingLeft();
    assert.equal(await sysctl('net.ipv4.ip_forward'), '0');
  });

  test('cleanupLeftovers removes what a SIGKILLed run left behind, and nothing else', async () => {
    const l = L();
    // Foreign entries that must survive.
    for (const argv of [
      ['ip', 'rule', 'add', 'pref', '7200', 'from', '10.99.0.0/16', 'lookup', '7200'],
      ['ip', 'route', 'add', '203.0.113.0/24', 'dev', TUN, 'proto', 'static'],
      ['ip', 'neigh', 'add', 'proxy', '198.18.0.3', 'dev', 'wan0'],
    ]) {
      const r = await l.exec(R, argv);
      assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    }

    const fx = startFixture(['run', setupOpts()]);
    await fx.expect('ready');
    const pid = fx.child.pid!;
    process.kill(-pid, 'SIGKILL');
    await fx.waitExit();

    assert.equal((await ourRules()).length, PREFIXES.length);
    assert.equal((await allProto247Routes()).length, 2);
    assert.equal((await proxyNeighs()).filter((n) => n.protocol === '247').length, 1);

    const r = await l.exec(R, [process.execPath, FIXTURE, 'cleanup', String(TABLE)], { timeoutMs: 15_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const counts = JSON.parse(/^cleanup (.*)$/m.exec(r.stdout)?.[1] ?? 'null') as { rules: number; routes: number; proxyNeighbours: number };
    assert.deepEqual(counts, { rules: PREFIXES.length, routes: 2, proxyNeighbours: 1 });

    assert.deepEqual(await ourRules(), []);
    assert.deepEqual(await allProto247Routes(), []);
    const pn = await proxyNeighs();
    assert.deepEqual(pn.map((n) => n.dst), ['198.18.0.3']);
    const rules = await ipJson<IpRule>(R, ['rule', 'show']);
    assert.ok(rules.some((x) => x.priority === 7200 && x.table === '7200'), 'foreign rule was removed');
    const foreign = await ipJson<IpRoute>(R, ['route', 'show', 'exact', '203.0.113.0/24']);
    assert.equal(foreign.length, 1, 'foreign route was removed');

    // Running it again finds nothing.
    const again = await l.exec(R, [process.execPath, FIXTURE, 'cleanup', String(TABLE)], { timeoutMs: 15_000 });
    assert.match(again.stdout, /^cleanup \{"rules":0,"routes":0,"proxyNeighbours":0\}$/m);
  });
});

/** argv: TUN LAN_ADDR PUBLIC_ADDR SECONDS. Prints "attached", then "out SRC -> DST" / "in SRC -> DST" per translated packet. */
const TOY_NAT_PY = String.raw`
import fcntl, os, select, socket, struct, sys, time
tun, lan, pub, secs = sys.argv[1], socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3]), float(sys.argv[4])
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454ca, 0x0001, 0x1000
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', tun.encode(), IFF_TUN | IFF_NO_PI))
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
print('attached', flush=True)
end = time.time() + secs
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if not r: continue
    p = bytearray(os.read(fd, 65535))
    if len(p) < 20 or p[0] >> 4 != 4: continue
    ihl = (p[0] & 15) * 4
    src, dst = bytes(p[12:16]), bytes(p[16:20])
    if src == lan: p[12:16] = pub; tag = 'out'
    elif dst == pub: p[16:20] = lan; tag = 'in'
    else: continue
    p[10:12] = b'\0\0'
    p[10:12] = struct.pack('!H', csum(bytes(p[:ihl])))
    os.write(fd, bytes(p))
    print('%s %s -> %s' % (tag, socket.inet_ntoa(src), socket.inet_ntoa(dst)), flush=True)
`;
