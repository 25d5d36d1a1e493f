/**
 * Control clients cannot slow forwarding down: 300 `conns watch` clients that
 * never read while new flows keep the journal busy. Ping through the router
 * keeps being answered, and each watcher ends with one "events lost: N" line
 * and is disconnected. The ping percentiles with and without the watchers,
 * full-table listings during flows, the new mappings made and the event-loop
 * delay the daemon measured are printed (speed figures: reported, never
 * asserted, as a loaded machine moves them). The daemon runs at the
 * service's priority (Nice= of systemd/vpnmasq.service), the clients at the
 * default. In shared-address and dedicated mode: the pings and flows take
 * each mode's own path through the router.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import { createLab, Lab, requireRoot } from './lab';
import { RouterHandle, startRouter, UNIT_NICE } from './router-harness';
import { RX_WAIT_BUCKETS } from '../../src/edge/tun/native';

requireRoot();
const PINGS = 500;
const WATCHERS = 300;
const PREFILL = 12_000;

/** Round-trip times (ms) of `count` pings 10 ms apart from the LAN host to the WAN host. */
async function pingRtts(lab: Lab, count: number): Promise<number[]> {
  const r = await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count, intervalMs: 10, waitMs: 1000 });
  assert.ok(!r.failed, `ping helper failed: ${r.stderr}`);
  assert.ok(r.rttMs.length >= count * 0.98, `only ${r.rttMs.length} of ${count} pings answered`);
  return r.rttMs;
}

/** A UDP sink on the WAN host's port 9: the flows get no port-unreachable error that would end their mapping. */
function sink(lab: Lab): ChildProcess {
  return lab.spawn(lab.ns.wan[0], ['python3', '-c', [
    'import socket,time',
    's=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("0.0.0.0",9)); s.settimeout(1); t=time.time()+300',
    'while time.time()<t:',
    ' try: s.recv(2048)',
    ' except socket.timeout: pass',
  ].join('\n')]);
}

const p99 = (xs: number[]): number => {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)];
};

/** Sends one UDP datagram from each port in [from, from + n) to the WAN host, `perSecond` at most. */
function flows(lab: Lab, from: number, n: number, perSecond: number): Promise<unknown> {
  return lab.exec(lab.ns.lan[0], ['python3', '-c', [
    'import socket,sys,time',
    'host=sys.argv[1]; a=int(sys.argv[2]); n=int(sys.argv[3]); rate=float(sys.argv[4]); t0=time.time()',
    'for i in range(n):',
    ' s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("0.0.0.0",a+i)); s.sendto(b"x"*16,(host,9)); s.close()',
    ' d=t0+(i+1)/rate-time.time()',
    ' if d>0: time.sleep(d)',
  ].join('\n'), lab.addr.wan[0], String(from), String(n), String(perSecond)], { timeoutMs: 120_000 });
}

/** A `conns watch` client that never reads. */
function silentWatcher(socket: string): net.Socket {
  const c = net.createConnection(socket);
  c.on('connect', () => c.write(JSON.stringify({ cmd: 'watch' }) + '\n'));
  c.on('error', () => undefined);
  c.pause();
  return c;
}

/** Reads everything the socket sends until it closes (bounded); the lines. */
function drain(c: net.Socket, ms = 15_000): Promise<string[]> {
  return new Promise((resolve) => {
    let buf = '';
    const done = () => { clearTimeout(t); resolve(buf.split('\n').filter((l) => l !== '')); };
    const t = setTimeout(() => { c.destroy(); }, ms);
    c.setEncoding('utf8');
    c.on('data', (d: string) => { buf += d; });
    c.once('close', done);
    c.resume();
  });
}

/** A full-table listing read as fast as it comes (lines counted, not parsed: the reader costs little CPU); the row count. */
function listing(socket: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(socket);
    let lines = 0;
    let last = '';
    c.on('connect', () => c.write(JSON.stringify({ cmd: 'conns' }) + '\n'));
    c.on('error', reject);
    c.on('close', () => reject(new Error(`listing closed after ${lines} lines`)));
    c.on('data', (d: Buffer) => {
      for (let nl = d.indexOf(10); nl >= 0; nl = d.indexOf(10, nl + 1)) lines++;
      last = (last + d.subarray(Math.max(0, d.length - 256)).toString('latin1')).slice(-256);
      if (/"end":true[^\n]*\n$/.test(last)) {
        c.removeAllListeners('close');
        c.destroy();
        resolve(lines - 1);
      }
    });
  });
}

for (const mode of ['shared', 'dedicated'] as const) {
  describe(`control clients and forwarding (${mode} mode)`, () => {
    let lab: Lab;
    let router: RouterHandle;
    let discard: ChildProcess | undefined;
    const sockets: net.Socket[] = [];

    before(async () => {
      lab = await createLab({ lanHosts: 1, wanHosts: 1, farHost: false });
      discard = sink(lab);
      // One LAN host offers all the flows: the per-host limits (a share of the table by default) are lifted, or its pings would be refused.
      // tun.io "threads": its reader stamps every packet, so the TUN's rx-wait counts measure the forwarding delay
      // (io_uring's kernel holds packets until the next io_uring_enter, unstamped); the event loop is the same in both.
      router = await startRouter(lab, { tun: { name: `${lab.prefix.slice(3)}cl`, mtu: 1500, offloads: true, io: 'threads' }, limits: { maxSessions: 65536, hostSessions: 65536, hostNewPerSecond: 0 }, ...(mode === 'dedicated'
        ? { wan: { interface: lab.routerIfaces.wan, mode, publicAddress: lab.addr.public } }
        : { wan: { interface: lab.routerIfaces.wan, mode }, ports: { range: [40000, 65535] } }) },
      // At the priority the service gives it: the CLI clients compete for the CPU as they would on a box.
      { nice: UNIT_NICE });
    });

    after(async () => {
      for (const s of sockets) s.destroy();
      discard?.kill('SIGKILL');
      await router?.stop().catch(() => undefined);
      await lab?.destroy();
    });

    const mappings = async (): Promise<number> => (await router.conns()).filter((r) => r.proto === 'udp' && r.remote.port === 9).length;
    const loop = async (): Promise<string> => {
      const e = (await router.stats()).eventLoop as { p99Ms: number; maxMs: number };
      return `daemon event-loop delay since start p99 ${e.p99Ms.toFixed(2)} ms, max ${e.maxMs.toFixed(2)} ms`;
    };
    // The TUN batches by how long their oldest packet waited for the event loop (Stat.RX_WAIT_*): a phase's count is the difference.
    const waits = async (): Promise<number[]> => {
      const t = (await router.stats()).tun as Record<string, number>;
      return RX_WAIT_BUCKETS.map((b) => t[`rx_wait_${b.name}`]);
    };
    const waited = (from: number[], to: number[]): string => {
      const d = to.map((v, i) => v - from[i]);
      return `${d.reduce((a, b) => a + b, 0)} batches waited ${RX_WAIT_BUCKETS.map((b, i) => `${b.name.replace(/_/g, ' ')}: ${d[i]}`).join(', ')}`;
    };
    const watchers = async (): Promise<number> => Number(((await router.request('status')).control as Record<string, number>).watchers);

    it('300 non-reading watchers: each is told how many events it lost, then disconnected; forwarding goes on (ping percentiles with and without them reported)', async () => {
      await flows(lab, 10_000, PREFILL, 20_000);
      const before0 = await mappings();
      process.stdout.write(`# ${mode}: ${before0} mappings after ${PREFILL} flows offered at 20,000/s; ${await loop()}\n`);
      const w0 = await waits();
      const baseFlows = flows(lab, 40_000, 3000, 600);
      const base = await pingRtts(lab, PINGS);
      await baseFlows;
      const before1 = await mappings();
      const w1 = await waits();

      for (let i = 0; i < WATCHERS; i++) sockets.push(silentWatcher(router.socket));
      const deadline = Date.now() + 10_000;
      while (await watchers() < WATCHERS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(await watchers(), WATCHERS, 'every watcher connected');
      const loadFlows = flows(lab, 44_000, 3000, 600);
      const loaded = await pingRtts(lab, PINGS);
      await loadFlows;
      const w2 = await waits();
      const after1 = await mappings();

      process.stdout.write(`# ${mode}: ping p99 ${p99(base).toFixed(2)} ms without watchers, ${p99(loaded).toFixed(2)} ms with ${WATCHERS} silent watchers; ` +
        `max ${Math.max(...base).toFixed(2)} / ${Math.max(...loaded).toFixed(2)} ms; new mappings per 3000 flows offered: ${before1 - before0} without, ` +
        `${after1 - before1} with; ${await loop()}\n# ${mode}: without watchers ${waited(w0, w1)}; with them ${waited(w1, w2)}\n`);

      // Each silent watcher was told how many events it lost, then disconnected.
      const ends = await Promise.all(sockets.map((s) => drain(s)));
      const last = ends.map((lines) => JSON.parse(lines.at(-1) ?? '{}') as Record<string, unknown>);
      assert.equal(last.filter((l) => l.event === 'LOST' && /^events lost: \d+/.test(String(l.error))).length, WATCHERS);
      assert.equal(await watchers(), 0);
    });

    it('full-table listings while flows arrive: ping and event-loop delay measured (reported, not asserted)', async () => {
      const w0 = await waits();
      const baseFlows = flows(lab, 48_000, 2000, 600);
      const base = await pingRtts(lab, PINGS);
      await baseFlows;
      const w1 = await waits();
      const rows = await mappings();
      const loadFlows = flows(lab, 52_000, 2000, 600);
      const lists = (async () => {
        const counts: number[] = [];
        while (counts.length < 3) counts.push(await listing(router.socket));
        return counts;
      })();
      const loaded = await pingRtts(lab, PINGS);
      await loadFlows;
      const listed = await lists;
      const w2 = await waits();
      process.stdout.write(`# ${mode}: ping p99 ${p99(base).toFixed(2)} ms without listings, ${p99(loaded).toFixed(2)} ms during 3 full listings ` +
        `(${listed.join(', ')} rows); max ${Math.max(...base).toFixed(2)} / ${Math.max(...loaded).toFixed(2)} ms; ${await loop()}\n` +
        `# ${mode}: without listings ${waited(w0, w1)}; during them ${waited(w1, w2)}\n`);
      assert.ok(listed.every((n) => n >= rows), `listings of ${listed.join(', ')} rows, ${rows} mappings before`);
    });
  });
}
