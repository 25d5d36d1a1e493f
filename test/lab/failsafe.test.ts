/**
 * Fail closed, in both modes, with the real daemon: killed and kept down,
 * nothing leaks and nothing is answered for vpnmasq (checked with tcpdump on
 * the WAN side), the box itself still answers pings, `vpnmasq status` says
 * the safety net is in place, and `vpnmasq teardown` gives the host back as
 * it was found. A start without the WAN address (or the WAN interface)
 * waits, closed, and forwards once it appears; a start that fails leaves
 * the box closed; a changed LAN is reconciled at the next start; and the gap
 * between a rebuilt router's addresses and its steering is measured without
 * the early boot stage. Each test has its own lab and daemon.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { requireRoot, createLab, Lab, TestOwner } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';
import { hostSnapshot, TCP_PROBE } from './host-probes';
import { capture, isPrivateSource, leaks } from './capture';

requireRoot();

type Mode = 'shared' | 'dedicated';
/** Datagram listener standing in for systemd's notify socket. */
const NOTIFY_LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", file=sys.stderr, flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`;

/** Opens TUN argv[1] and keeps it until killed. */
const TUN_HOLDER = `
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))
print("holding", flush=True)
time.sleep(120)
`;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 15000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

interface World {
  lab: Lab;
  dir: string;
  sh(ns: string, argv: string[]): Promise<string>;
  /** sysctls, rules, routes and proxy neighbours of the router namespace. */
  hostSettings(): Promise<string>;
  config(mode: Mode, extra?: Record<string, unknown>): Record<string, unknown>;
}

async function world(t: TestOwner, lanHosts = 2): Promise<World> {
  const lab = await createLab({ lanHosts, wanHosts: 1 });
  const dir = lab.tempDir('failsafe');
  t.after(() => lab.destroy());
  const sh = async (ns: string, argv: string[]) => {
    const r = await lab.exec(ns, argv);
    assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  return {
    lab, dir, sh,
    hostSettings: () => hostSnapshot(sh, lab.ns.router),
    config: (mode, extra = {}) => ({
      tun: { name: `${lab.prefix.slice(3)}f`, mtu: 1500, offloads: true },
      state: { path: path.join(dir, 'state.db') },
      ...(mode === 'shared' ? { wan: { interface: lab.routerIfaces.wan, mode: 'shared' } } : {}),
      ...extra,
    }),
  };
}

/** A notify socket in `dir` for the daemons started while `env.NOTIFY_SOCKET` points at it. */
async function notifySocket(w: World): Promise<{ path: string; text(): string }> {
  const sock = path.join(w.dir, 'notify.sock');
  const proc = w.lab.spawn(w.lab.ns.router, ['python3', '-c', NOTIFY_LISTENER, sock]);
  let text = '';
  proc.stdout?.on('data', (d: Buffer) => { text += d.toString(); });
  await waitFor('notify listener', () => fs.existsSync(sock));
  return { path: sock, text: () => text };
}

async function startWithNotify(w: World, sock: string, cfg: Record<string, unknown>, t: TestOwner, waitTranslating: boolean): Promise<RouterHandle> {
  process.env.NOTIFY_SOCKET = sock;
  try {
    return await startRouter(w.lab, cfg, { owner: t, waitTranslating });
  } finally {
    delete process.env.NOTIFY_SOCKET;
  }
}

/** A UDP exchange LAN host 0 -> WAN host 0 through the daemon; returns the public endpoint the WAN host saw. */
async function udpThrough(w: World, port: number, sport: number): Promise<string> {
  const srv = await peerServer(w.lab, w.lab.ns.wan[0], ['udp-server', '--port', String(port)]);
  const r = await peer(w.lab, w.lab.ns.lan[0], ['udp-client', '--host', w.lab.addr.wan[0], '--port', String(port), '--sport', String(sport)]);
  await srv.result;
  return r.reply.peer as string;
}

for (const mode of ['shared', 'dedicated'] as const) {
  describe(`fail closed, ${mode} mode`, () => {
    it('killed and kept down: nothing leaks or is answered, the box answers its own pings, status says so, teardown restores the host', async (t) => {
      const w = await world(t);
      const { lab } = w;
      const publicAddr = mode === 'shared' ? lab.addr.routerWan : lab.addr.public;
      const before = await w.hostSettings();
      const router = await startRouter(lab, w.config(mode), { owner: t });
      const seenAt = await udpThrough(w, 7200, 47000);
      const [, mappedPort] = seenAt.split(':');
      assert.equal(seenAt.split(':')[0], publicAddr);
      const ssh = lab.spawn(lab.ns.router, ['python3', '-c', 'import socket,time\ns=socket.socket()\ns.bind(("0.0.0.0",2222))\ns.listen()\ntime.sleep(60)']);
      t.after(() => { ssh.kill('SIGKILL'); });
      await router.kill9();

      const cap = await capture(lab, lab.ns.wan[0]);
      const from = Date.now() / 1000;
      // From the LAN: nothing goes out untranslated.
      const lanPing = await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 3, waitMs: 400 });
      assert.equal(lanPing.received, 0, 'no forwarding without translation');
      const lanTcp = (await w.sh(lab.ns.lan[0], ['python3', '-c', TCP_PROBE, lab.addr.wan[0], '7201', '1.5'])).trim();
      assert.match(lanTcp, /^(timeout|error 113)$/, `a LAN connection attempt goes nowhere: ${lanTcp}`);
      const lanUdp = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', '7200', '--sport', '47000', '--timeout', '1']);
      assert.equal(lanUdp.reply, null);
      // From the WAN: vpnmasq's mapping, its range, IKE, ESP and GRE get no answer.
      assert.equal((await w.sh(lab.ns.wan[0], ['python3', '-c', TCP_PROBE, publicAddr, mappedPort, '1.5'])).trim().replace('error 113', 'timeout'), 'timeout', 'no RST for a mapped port');
      const udp = await peer(lab, lab.ns.wan[0], ['udp-refused', '--host', publicAddr, '--port', mappedPort, '--timeout', '1.5']);
      assert.equal(udp.refused ?? false, false, 'no port-unreachable for a mapped port');
      for (const proto of ['50', '47']) await peer(lab, lab.ns.wan[0], ['raw', '--dst', publicAddr, '--proto', proto, '--hex', '0000420000000001aabbccdd']);
      await peer(lab, lab.ns.wan[0], ['udp-client', '--host', publicAddr, '--port', '500', '--sport', '500', '--timeout', '1']);
      if (mode === 'shared') {
        // The box itself: ICMP and its own services stay open on purpose.
        assert.equal((await lab.ping(lab.ns.wan[0], lab.addr.routerWan, { count: 2 })).received, 2, 'the box answers pings while vpnmasq is down');
        assert.equal((await w.sh(lab.ns.wan[0], ['python3', '-c', TCP_PROBE, lab.addr.routerWan, '2222', '2'])).trim(), 'connected');
      }
      const seen = await cap.stop();
      assert.deepEqual(leaks(seen, [lab.addr.routerWan, lab.addr.public], from), [], 'no reset, no ICMP error, no private source');
      assert.deepEqual(seen.filter(isPrivateSource), []);

      const st = await router.cli('status');
      assert.equal(st.code, 1);
      assert.match(st.stdout, /^vpnmasq is not running\nSafety net +in place \(\d+ rules, blackholes in table 7100, 7101\): nothing translates; LAN traffic and inbound traffic for vpnmasq are dropped\n$/);
      const sj = JSON.parse((await router.cli('status', '--json')).stdout);
      assert.equal(sj.running, false);
      assert.deepEqual(sj.safetyNet.blackholes, [7100, 7101]);
      assert.deepEqual(sj.safetyNet.tunRoutes, []);

      const td = await router.teardown();
      assert.equal(td.code, 0, td.stderr);
      assert.match(td.stderr, /restored .*net\.ipv4\.ip_forward=0/);
      assert.equal(await w.hostSettings(), before, 'sysctls, rules, routes and neighbours as before the first start');
      const again = await router.cli('status');
      assert.match(again.stdout, /Safety net +none/);
    });

    it(`starts without the WAN ${mode === 'shared' ? 'address' : 'interface'}, waits closed, and forwards once it appears 5 s later`, async (t) => {
      const w = await world(t);
      const { lab } = w;
      const R = lab.ns.router;
      if (mode === 'shared') await w.sh(R, ['ip', 'addr', 'del', `${lab.addr.routerWan}/24`, 'dev', 'wan0']);
      else for (const a of [['wan0', 'down'], ['wan0', 'name', 'wanlater']]) await w.sh(R, ['ip', 'link', 'set', ...a]);
      const notify = await notifySocket(w);
      const router = await startWithNotify(w, notify.path, w.config(mode), t, false);
      const waitingFor = mode === 'shared' ? 'an IPv4 address on wan0' : 'interface wan0';
      await waitFor('READY=1', () => /READY=1/.test(notify.text()));
      assert.match(notify.text(), new RegExp(`READY=1\\|STATUS=waiting for ${waitingFor}; safety net in place, nothing translates`));
      const st = await router.request('status');
      assert.equal(st.translating, false);
      assert.equal(st.waitingFor, waitingFor);
      const human = await router.cli('status');
      assert.match(human.stdout, new RegExp(`^State +waiting for ${waitingFor}; safety net in place, nothing translates$`, 'm'));
      assert.match(human.stdout, /^Safety net +in place/m);
      const ping = await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 2, waitMs: 400 });
      assert.equal(ping.received, 0, 'closed while waiting');
      await sleep(5000);
      const addedAt = Date.now();
      if (mode === 'shared') await w.sh(R, ['ip', 'addr', 'add', `${lab.addr.routerWan}/24`, 'dev', 'wan0']);
      else for (const a of [['wanlater', 'name', 'wan0'], ['wan0', 'up']]) await w.sh(R, ['ip', 'link', 'set', ...a]);
      await waitFor('translating', async () => (await router.request('status')).translating === true);
      const forwardingAfter = Date.now() - addedAt;
      const seen = await udpThrough(w, 7202, 47002);
      assert.equal(seen.split(':')[0], mode === 'shared' ? lab.addr.routerWan : lab.addr.public);
      await waitFor('STATUS=forwarding', () => /STATUS=forwarding, public address/.test(notify.text()));
      assert.match(router.log(), new RegExp(`waiting for ${waitingFor}`));
      console.log(`# ${mode}: forwarding ${forwardingAfter} ms after the WAN ${mode === 'shared' ? 'address' : 'interface'} appeared`);
      assert.equal(await router.stop(), 0);
    });
  });
}

describe('fail closed across failed starts and changed configs', () => {
  it('a start that fails (the TUN name is taken) leaves the box closed and says so; the next good start forwards', async (t) => {
    const w = await world(t);
    const { lab } = w;
    const cfg = w.config('shared');
    const tun = (cfg.tun as { name: string }).name;
    // Another process holds the TUN: TUNSETIFF fails with EBUSY, as when an old daemon outlives its stop.
    const holder = lab.spawn(lab.ns.router, ['python3', '-c', TUN_HOLDER, tun]);
    t.after(() => { holder.kill('SIGKILL'); });
    await new Promise<void>((resolve) => holder.stdout?.once('data', () => resolve()));
    await assert.rejects(startRouter(lab, cfg, { owner: t }), /exited with 1 during start[\s\S]*start failed[\s\S]*busy/i);
    assert.equal((await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 2, waitMs: 400 })).received, 0, 'closed after a failed start');
    const st = await lab.exec(lab.ns.router, ['ip', 'rule', 'show']);
    assert.match(st.stdout, /^7100:\s+from 10\.77\.0\.0\/24 iif lan0 lookup 7100/m);
    holder.kill('SIGKILL');
    await waitFor('the held TUN to go', async () => (await lab.exec(lab.ns.router, ['ip', 'link', 'show', tun])).code !== 0);
    const router = await startRouter(lab, cfg, { owner: t });
    const status = await router.cli('status');
    assert.match(status.stdout, /^Safety net +in place .*the TUN carries the traffic$/m);
    assert.equal((await udpThrough(w, 7203, 47003)).split(':')[0], lab.addr.routerWan);
    assert.equal(await router.stop(), 0);
  });

  it('vpnmasq run with a changed LAN and mode reconciles: the old rules go, the new ones come, the host settings stay saved', async (t) => {
    const w = await world(t);
    const { lab } = w;
    const before = await w.hostSettings();
    const first = await startRouter(lab, w.config('shared', { lan: { interfaces: ['lan0'], prefixes: ['10.77.0.0/24', '10.79.0.0/16'] } }), { owner: t });
    assert.equal(await first.stop(), 0);
    assert.match(await w.sh(lab.ns.router, ['ip', 'rule', 'show']), /10\.79\.0\.0\/16/);
    const second = await startRouter(lab, w.config('dedicated'), { owner: t });
    const rules = await w.sh(lab.ns.router, ['ip', 'rule', 'show']);
    assert.doesNotMatch(rules, /10\.79\.0\.0|^(49|100):|198\.18\.0\.1 /m, rules);
    assert.match(rules, /^0:\s+from all lookup local/m);
    assert.match(rules, /^50:\s+from all to 198\.18\.0\.2 lookup 7101/m);
    assert.equal((await w.sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_reserved_ports'])).trim(), '', 'the shared-mode reservation is given back');
    assert.equal((await udpThrough(w, 7204, 47004)).split(':')[0], lab.addr.public);
    assert.equal(await second.stop(), 0);
    const td = await second.teardown();
    assert.equal(td.code, 0, td.stderr);
    assert.equal(await w.hostSettings(), before);
  });

  it('measures the boot gap without the early stage: from the rebuilt router\'s addresses to its steering', async (t) => {
    const w = await world(t);
    const { lab } = w;
    const first = await startRouter(lab, w.config('shared'), { owner: t });
    assert.equal(await first.stop(), 0);
    const { addressesAt } = await lab.rebuildRouter();
    // The daemon alone, started once the network is up (as with After=network-online.target).
    const started = startRouter(lab, w.config('shared'), { owner: t });
    const steeredAt = await waitFor('steering rules', async () => {
      const r = await lab.exec(lab.ns.router, ['ip', 'rule', 'show']);
      return /^50:\s+from all to 198\.18\.0\.1 ipproto tcp/m.test(r.stdout) ? Date.now() : undefined;
    }, 30000);
    const router = await started;
    console.log(`# boot gap without vpnmasq-safety-net.service: ${steeredAt - addressesAt} ms in which a packet for a restored mapping could reach the box's own stack`);
    assert.equal(await router.stop(), 0);
  });
});
