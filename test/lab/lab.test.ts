import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { requireRoot, createLab, Lab, sweepStaleLabs, withLab } from './lab';

requireRoot();

function netnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 5000 })
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
}

function rootLinks(): string {
  return execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8', timeout: 5000 });
}

function processGone(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

describe('namespace lab', { timeout: 120_000 }, () => {
  let lab: Lab | undefined;
  const L = (): Lab => {
    assert.ok(lab, 'lab was not created');
    return lab;
  };

  before(async () => {
    await sweepStaleLabs();
    lab = await createLab();
  });

  after(async () => {
    await lab?.destroy();
  });

  test('layout: names, addresses and namespaces exist', () => {
    const l = L();
    assert.match(l.prefix, /^vmq[0-9a-f]{6}$/);
    assert.equal(l.ns.router, `${l.prefix}-r`);
    assert.deepEqual(l.ns.lan, [`${l.prefix}-l1`, `${l.prefix}-l2`]);
    assert.deepEqual(l.ns.wan, [`${l.prefix}-w1`, `${l.prefix}-w2`]);
    assert.equal(l.ns.vpnServer, `${l.prefix}-vs`);
    assert.equal(l.ns.wanRouter, `${l.prefix}-wr`);
    assert.equal(l.ns.far, `${l.prefix}-far`);
    assert.deepEqual(l.addr.lan, ['10.77.0.11', '10.77.0.12']);
    assert.deepEqual(l.addr.wan, ['198.18.0.11', '198.18.0.12']);
    assert.equal(l.addr.public, '198.18.0.2');
    assert.equal(l.lanPrefix, '10.77.0.0/24');
    const present = new Set(netnsList());
    for (const ns of l.namespaces()) assert.ok(present.has(ns), `namespace ${ns} missing`);
    assert.equal(l.namespaces().length, 8);
    // Nothing of the lab in the root namespace.
    assert.doesNotMatch(rootLinks(), /\b(lan0|wan0|l1|w1|vs|wr)\b/);
  });

  test('OS-side config: IPv6 off, no forwarding on the router, public address unassigned', async () => {
    const l = L();
    for (const ns of l.namespaces()) {
      const r = await l.exec(ns, ['cat', '/proc/sys/net/ipv6/conf/all/disable_ipv6']);
      assert.equal(r.stdout.trim(), '1', ns);
    }
    const fwd = await l.exec(l.ns.router, ['cat', '/proc/sys/net/ipv4/ip_forward']);
    assert.equal(fwd.stdout.trim(), '0');
    const addrs = await l.exec(l.ns.router, ['ip', '-o', '-4', 'addr', 'show']);
    assert.match(addrs.stdout, /lan0\s+inet 10\.77\.0\.1\/24/);
    assert.match(addrs.stdout, /wan0\s+inet 198\.18\.0\.1\/24/);
    assert.doesNotMatch(addrs.stdout, /198\.18\.0\.2\//);
    const wanRoutes = await l.exec(l.ns.wan[0]!, ['ip', '-4', 'route', 'show']);
    assert.doesNotMatch(wanRoutes.stdout, /10\.77\./);
    assert.doesNotMatch(wanRoutes.stdout, /^default/m);
    const mtu = await l.exec(l.ns.far, ['cat', '/sys/class/net/eth0/mtu']);
    assert.equal(mtu.stdout.trim(), '1280');
  });

  test('LAN host reaches the router LAN address', async () => {
    const l = L();
    for (let i = 0; i < l.ns.lan.length; i++) {
      const r = await l.ping(l.ns.lan[i]!, l.addr.routerLan, { count: 2 });
      assert.equal(r.received, 2, JSON.stringify(r));
    }
  });

  test('WAN host and VPN server reach the router WAN address', async () => {
    const l = L();
    for (const ns of [...l.ns.wan, l.ns.vpnServer]) {
      const r = await l.ping(ns, l.addr.routerWan, { count: 2 });
      assert.equal(r.received, 2, `${ns}: ${JSON.stringify(r)}`);
    }
  });

  test('far host is reachable from a WAN host over a 1280-MTU link (kernel frag-needed)', async () => {
    const l = L();
    const w1 = l.ns.wan[0]!;
    const small = await l.ping(w1, l.addr.far, { size: 1200, df: true, count: 2 });
    assert.equal(small.received, 2, JSON.stringify(small));

    const big = await l.ping(w1, l.addr.far, { size: 1400, df: true });
    assert.equal(big.received, 0, JSON.stringify(big));
    // Either the ICMP frag-needed from wr, or (PMTU already cached) a local EMSGSIZE.
    const e = big.errors[0];
    assert.ok(e, `expected an error: ${JSON.stringify(big)}`);
    if (e.kind === 'icmp') {
      assert.match(e.message, /Frag needed/);
      assert.equal(e.mtu, 1280);
      assert.equal(e.from, '198.18.0.254');
    } else {
      assert.equal(e.errno, 'EMSGSIZE');
    }
    // DF without the cached PMTU: always a kernel-generated frag-needed from wr.
    const probe = await l.ping(w1, l.addr.far, { size: 1400, df: 'probe' });
    assert.equal(probe.errors[0]?.kind, 'icmp', JSON.stringify(probe));
    assert.equal(probe.errors[0]?.icmpType, 3);
    assert.equal(probe.errors[0]?.icmpCode, 4);
    assert.equal(probe.errors[0]?.mtu, 1280);
    assert.equal(probe.errors[0]?.from, '198.18.0.254');
  });

  test('LAN host cannot reach WAN hosts without a NAT (WAN has no route back)', async () => {
    const l = L();
    // Without forwarding nothing leaves the router at all.
    const r0 = await l.ping(l.ns.lan[0]!, l.addr.wan[0]!, { count: 1, waitMs: 500 });
    assert.equal(r0.received, 0, JSON.stringify(r0));
    // With forwarding, requests reach w1 but it has no route back to 10.77.0.0/24.
    const fw = await l.exec(l.ns.router, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    assert.equal(fw.code, 0, fw.stderr);
    try {
      const before = await l.exec(l.ns.wan[0]!, ['nstat', '-asz', 'IcmpInEchos']);
      const r = await l.ping(l.ns.lan[0]!, l.addr.wan[0]!, { count: 2, waitMs: 500 });
      assert.equal(r.received, 0, JSON.stringify(r));
      const afterStats = await l.exec(l.ns.wan[0]!, ['nstat', '-asz', 'IcmpInEchos']);
      const n = (s: string): number => Number(/IcmpInEchos\s+(\d+)/.exec(s)?.[1] ?? NaN);
      assert.ok(n(afterStats.stdout) - n(before.stdout) >= 2, `w1 did not see the echo requests: ${before.stdout} / ${afterStats.stdout}`);
      const w1Route = await l.exec(l.ns.wan[0]!, ['ip', 'route', 'get', l.addr.lan[0]!]);
      assert.notEqual(w1Route.code, 0, 'WAN host unexpectedly has a route to the LAN');
    } finally {
      await l.exec(l.ns.router, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=0']);
    }
  });

  test('exec is bounded by its timeout and passes stdin', async () => {
    const l = L();
    const t0 = Date.now();
    const r = await l.exec(l.ns.router, ['sh', '-c', 'sleep 30; echo never'], { timeoutMs: 300 });
    assert.equal(r.timedOut, true);
    assert.notEqual(r.code, 0);
    assert.ok(Date.now() - t0 < 5000);
    const c = await l.exec(l.ns.router, ['cat'], { input: 'hello lab' });
    assert.equal(c.code, 0);
    assert.equal(c.stdout, 'hello lab');
    const f = await l.exec(l.ns.router, ['sh', '-c', 'echo oops >&2; exit 3']);
    assert.equal(f.code, 3);
    assert.equal(f.stderr.trim(), 'oops');
  });

  test('destroy kills spawned process groups and removes every namespace', async () => {
    const l = L();
    const child = l.spawn(l.ns.wan[0]!, ['sh', '-c', 'sleep 300 & sleep 300; wait'], { stdio: 'ignore' });
    assert.ok(child.pid);
    let pids: number[] = [];
    assert.ok(
      await waitFor(() => {
        pids = execFileSync('ip', ['netns', 'pids', l.ns.wan[0]!], { encoding: 'utf8' }).split(/\s+/).filter(Boolean).map(Number);
        return pids.length >= 3;
      }, 5000),
      'spawned processes did not show up',
    );
    const names = l.namespaces();
    await l.destroy();
    assert.equal(l.destroyed, true);
    const left = netnsList().filter((n) => n.startsWith(`${l.prefix}-`));
    assert.deepEqual(left, []);
    for (const n of names) assert.ok(!netnsList().includes(n));
    assert.ok(await waitFor(() => pids.every(processGone), 3000), `processes survived: ${pids.join(',')}`);
    assert.ok(!fs.existsSync(`/run/vmq-lab-${l.prefix}.pid`) && !fs.existsSync(path.join(os.tmpdir(), `vmq-lab-${l.prefix}.pid`)));
    await l.destroy(); // idempotent
    assert.throws(() => l.spawn(l.ns.router, ['true']), /destroyed/);
  });
});

describe('lab lifecycle helpers', { timeout: 60_000 }, () => {
  test('withLab destroys the lab even when the callback throws', async () => {
    let prefix = '';
    await assert.rejects(
      withLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false }, async (lab) => {
        prefix = lab.prefix;
        assert.equal(lab.ns.vpnServer, '');
        assert.equal(lab.ns.wanRouter, '');
        assert.equal(lab.ns.far, '');
        assert.equal(lab.namespaces().length, 3);
        const r = await lab.ping(lab.ns.lan[0]!, lab.addr.routerLan);
        assert.equal(r.received, 1);
        throw new Error('boom');
      }),
      /boom/,
    );
    assert.match(prefix, /^vmq[0-9a-f]{6}$/);
    assert.deepEqual(netnsList().filter((n) => n.startsWith(`${prefix}-`)), []);
  });

  test('a sweep that cannot see a live lab\'s pid file (another mount namespace, a chroot) leaves it alone', async () => {
    await withLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false }, async (live) => {
      const pidDir = fs.existsSync(`/run/vmq-lab-${live.prefix}.pid`) ? '/run' : os.tmpdir();
      const pidFile = path.join(pidDir, `vmq-lab-${live.prefix}.pid`);
      const hidden = `${pidFile}.hidden`;
      fs.renameSync(pidFile, hidden);
      try {
        // Another process sweeping, as a test run in a chroot sharing /run/netns would.
        const out = execFileSync(process.execPath, ['-e', `require(${JSON.stringify(path.join(__dirname, 'lab.js'))}).sweepStaleLabs().then((r) => console.log(JSON.stringify(r)))`],
          { encoding: 'utf8', timeout: 30000 });
        const removed = JSON.parse(out.trim()) as string[];
        assert.deepEqual(removed.filter((n) => n.startsWith(`${live.prefix}-`)), [], 'the marker on its loopback says the owner lives');
        for (const ns of live.namespaces()) assert.ok(netnsList().includes(ns));
      } finally {
        fs.renameSync(hidden, pidFile);
      }
    });
  });

  test('sweepStaleLabs removes labs of dead processes only', async () => {
    // A fake stale lab: namespace + pid file naming a process that has exited.
    const dead = execFileSync('sh', ['-c', 'sh -c "echo \\$\\$"'], { encoding: 'utf8' }).trim();
    const stalePrefix = `vmq${Math.floor(Math.random() * 0xffffff).toString(16).padStart(6, '0')}`;
    const staleNs = `${stalePrefix}-r`;
    const pidDir = fs.existsSync('/run') ? '/run' : os.tmpdir();
    const pidFile = path.join(pidDir, `vmq-lab-${stalePrefix}.pid`);
    fs.writeFileSync(pidFile, JSON.stringify({ pid: Number(dead), start: '1' }) + '\n');
    execFileSync('ip', ['netns', 'add', staleNs]);
    // One without a pid file, marked on its loopback by the dead process (a lab of a chroot'ed run).
    const markedNs = `${stalePrefix.slice(0, -1)}${(parseInt(stalePrefix.slice(-1), 16) ^ 1).toString(16)}-r`;
    execFileSync('ip', ['netns', 'add', markedNs]);
    execFileSync('ip', ['-n', markedNs, 'link', 'set', 'lo', 'alias', `vmq-lab owner=${dead} start=1 pidns=${fs.readlinkSync('/proc/self/ns/pid')}`]);
    try {
      await withLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false }, async (live) => {
        const removed = await sweepStaleLabs();
        assert.ok(removed.includes(staleNs), `not swept: ${JSON.stringify(removed)}`);
        assert.ok(removed.includes(markedNs), `marked by a dead owner, not swept: ${JSON.stringify(removed)}`);
        const now = netnsList();
        assert.ok(!now.includes(staleNs));
        for (const ns of live.namespaces()) assert.ok(now.includes(ns), `live lab namespace ${ns} was swept`);
        assert.ok(!fs.existsSync(pidFile));
      });
    } finally {
      for (const ns of [staleNs, markedNs]) {
        try {
          execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
        } catch {
          /* swept */
        }
      }
      fs.rmSync(pidFile, { force: true });
    }
  });
});
