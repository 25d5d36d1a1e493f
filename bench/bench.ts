/**
 * `npm run bench`: what a user of the router feels, vpnmasq against the
 * kernel's own masquerade (nftables) on the same lab in the same run, both in
 * shared-address mode (the router's WAN address is the public address),
 * unpinned and pinned (endpoints on CPU 0, the NAT on CPU 1; perf-anchors §5).
 *
 *   TCP bulk, 1 stream and 4 streams (4 iperf3 pairs: iperf3 3.12 runs one thread)
 *   64-byte UDP datagrams received per second (bench/hosts/udpflood.c: a
 *     sendmmsg flood, since iperf3's own sender is slower than the paths)
 *   UDP request/response p50/p99 (bench/hosts/udprr.c, one datagram in flight)
 *   new TCP connections per second sustained over BENCH_CRR_SECONDS
 *     (bench/hosts/tcpcrr.c: connect, close with RST)
 *
 * Every figure is the median of BENCH_REPEAT runs, shown raw and as a ratio
 * to the kernel's. BENCH_SECONDS sets the length of the bulk and flood runs;
 * BENCH_IO lists the tun.io settings to measure (default "auto", what a
 * default config runs; e.g. "uring,threads" to compare them).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { createLab, Lab } from '../test/lab/lab';
import { RouterHandle, startRouter, UNIT_NICE } from '../test/lab/router-harness';
import { engineSection } from './engine';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CRR_SECONDS = Number(process.env.BENCH_CRR_SECONDS ?? 60);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const RR_COUNT = Number(process.env.BENCH_RR_COUNT ?? 20000);
const IO_MODES = (process.env.BENCH_IO ?? 'auto').split(',');
const CRR_THREADS = 8;
const IPERF_PORTS = [5201, 5202, 5203, 5204];
const FLOOD_PORT = 7000;
const RR_PORT = 7001;
const CRR_PORT = 7002;
/** Payload of a 64-byte Ethernet frame: 64 - 14 (Ethernet) - 4 (FCS) - 20 (IPv4) - 8 (UDP). */
const SMALL_PAYLOAD = 18;

const ROOT = path.resolve(__dirname, '../..');
const TOOLS = path.join(ROOT, 'dist/bench/hosts');

interface Figures {
  tcp1Gbps: number;
  tcp1Retrans: number;
  tcp4Gbps: number;
  udpPps: number;
  rrP50us: number;
  rrP99us: number;
  crrPerSec: number;
  crrFailed: number;
  /** vpnmasq only: CPU seconds of the daemon per million datagrams of the flood. */
  natCpuUsPerPkt?: number;
}

type Metric = keyof Figures;

/** Builds the load programs next to the compiled bench. */
function buildTools(): void {
  fs.mkdirSync(TOOLS, { recursive: true });
  for (const name of ['udpflood', 'udprr', 'tcpcrr']) {
    const src = path.join(ROOT, 'bench/hosts', `${name}.c`);
    const out = path.join(TOOLS, name);
    if (fs.existsSync(out) && fs.statSync(out).mtimeMs > fs.statSync(src).mtimeMs) continue;
    execFileSync('cc', ['-O2', '-Wall', '-pthread', '-o', out, src], { stdio: 'inherit' });
  }
}

const tool = (name: string): string => path.join(TOOLS, name);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Bench {
  private servers: ChildProcess[] = [];

  constructor(private readonly lab: Lab, private readonly pinned: boolean) {}

  /** argv pinned to CPU 0 in the pinned runs. */
  private onEndpointCpu(argv: string[]): string[] {
    return this.pinned ? ['taskset', '-c', '0', ...argv] : argv;
  }

  private async run(ns: string, argv: string[], timeoutMs: number): Promise<string> {
    const r = await this.lab.exec(ns, this.onEndpointCpu(argv), { timeoutMs });
    if (r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 500)}`);
    return r.stdout;
  }

  private spawnReady(ns: string, argv: string[]): Promise<ChildProcess> {
    const p = this.lab.spawn(ns, this.onEndpointCpu(argv));
    this.servers.push(p);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${argv[0]} not ready`)), 10000);
      p.stderr?.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) { clearTimeout(timer); resolve(p); }
      });
      p.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${argv.join(' ')} exited with ${code}`)); });
    });
  }

  async startServers(): Promise<void> {
    const wan = this.lab.ns.wan[0];
    for (const port of IPERF_PORTS) {
      const p = this.lab.spawn(wan, this.onEndpointCpu(['iperf3', '-s', '-p', String(port)]));
      this.servers.push(p);
    }
    await this.spawnReady(wan, [tool('udprr'), 'server', String(RR_PORT)]);
    await this.spawnReady(wan, [tool('tcpcrr'), 'server', String(CRR_PORT)]);
    await sleep(500);
  }

  stopServers(): void {
    for (const p of this.servers) p.kill('SIGKILL');
    this.servers = [];
  }

  private async iperf(port: number): Promise<{ gbps: number; retrans: number }> {
    const out = await this.run(this.lab.ns.lan[0], ['iperf3', '-c', this.lab.addr.wan[0], '-p', String(port), '-J', '-t', String(SECONDS), '-O', '1'], (SECONDS + 30) * 1000);
    const j = JSON.parse(out);
    return { gbps: j.end.sum_received.bits_per_second / 1e9, retrans: j.end.sum_sent.retransmits ?? 0 };
  }

  async tcp(streams: number): Promise<{ gbps: number; retrans: number }> {
    const rs = await Promise.all(IPERF_PORTS.slice(0, streams).map((p) => this.iperf(p)));
    return { gbps: rs.reduce((s, r) => s + r.gbps, 0), retrans: rs.reduce((s, r) => s + r.retrans, 0) };
  }

  async udpFlood(): Promise<number> {
    const rx = this.lab.spawn(this.lab.ns.wan[0], this.onEndpointCpu([tool('udpflood'), 'recv', String(FLOOD_PORT), String(SECONDS)]));
    let out = '';
    rx.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
    const done = new Promise<number | null>((resolve) => rx.once('exit', resolve));
    await new Promise<void>((resolve) => rx.stderr?.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); }));
    await this.run(this.lab.ns.lan[0], [tool('udpflood'), 'send', this.lab.addr.wan[0], String(FLOOD_PORT), String(SECONDS + 2), String(SMALL_PAYLOAD)], (SECONDS + 30) * 1000);
    const code = await done;
    if (code !== 0) throw new Error(`udpflood recv exited with ${code}: ${out}`);
    return JSON.parse(out).pps as number;
  }

  async requestResponse(): Promise<{ p50: number; p99: number }> {
    const out = await this.run(this.lab.ns.lan[0], [tool('udprr'), 'client', this.lab.addr.wan[0], String(RR_PORT), String(RR_COUNT)], 120_000);
    const j = JSON.parse(out);
    return { p50: j.p50us, p99: j.p99us };
  }

  async connectionRate(): Promise<{ perSec: number; failed: number }> {
    const out = await this.run(this.lab.ns.lan[0], [tool('tcpcrr'), 'client', this.lab.addr.wan[0], String(CRR_PORT), String(CRR_SECONDS), String(CRR_THREADS)], (CRR_SECONDS + 60) * 1000);
    const j = JSON.parse(out);
    return { perSec: j.perSecond, failed: j.failed };
  }

  async all(cpuSeconds?: () => number): Promise<Figures> {
    const t1 = await this.tcp(1);
    const t4 = await this.tcp(4);
    const cpu0 = cpuSeconds?.() ?? 0;
    const pps = await this.udpFlood();
    const cpu1 = cpuSeconds?.() ?? 0;
    const rr = await this.requestResponse();
    const crr = await this.connectionRate();
    return {
      tcp1Gbps: t1.gbps, tcp1Retrans: t1.retrans, tcp4Gbps: t4.gbps, udpPps: pps,
      rrP50us: rr.p50, rrP99us: rr.p99, crrPerSec: crr.perSec, crrFailed: crr.failed,
      ...(cpuSeconds ? { natCpuUsPerPkt: ((cpu1 - cpu0) * 1e6) / (pps * (SECONDS + 2)) } : {}),
    };
  }
}

async function kernelMasquerade(lab: Lab, on: boolean): Promise<void> {
  const rules = on
    ? `table ip vmqbench {\n chain masq {\n type nat hook postrouting priority 100; policy accept;\n oifname "${lab.routerIfaces.wan}" masquerade\n }\n}`
    : 'delete table ip vmqbench';
  const r = await lab.exec(lab.ns.router, ['nft', '-f', '-'], { input: `${rules}\n` });
  if (r.code !== 0) throw new Error(`nft: ${r.stderr}`);
  await lab.exec(lab.ns.router, ['sysctl', '-qw', `net.ipv4.ip_forward=${on ? 1 : 0}`]);
}

/** User + system CPU seconds of a process and its threads (clock ticks of USER_HZ = 100, proc(5)). */
function cpuSecondsOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function vpnmasqRun(lab: Lab, bench: Bench, pinned: boolean, io: string): Promise<Figures> {
  const router: RouterHandle = await startRouter(lab, {
    tun: { name: 'vmq0', mtu: 1500, offloads: true, io },
    wan: { interface: lab.routerIfaces.wan, mode: 'shared' },
    log: { level: 'warn' },
  });
  try {
    const pid = router.proc.pid as number; // `ip netns exec` execs node: the same pid, its own process group
    await lab.exec(lab.ns.router, ['renice', '-n', UNIT_NICE, '-g', String(pid)]);
    if (pinned) await lab.exec(lab.ns.router, ['taskset', '-a', '-p', '-c', '1', String(pid)]);
    return await bench.all(() => cpuSecondsOf(pid));
  } catch (e) {
    console.error(`vpnmasq log:\n${router.log().slice(-3000)}\nstats: ${JSON.stringify(await router.stats().catch(() => null))}`);
    throw e;
  } finally {
    await router.stop();
    // The safety net outlives the daemon by design (fail closed): its steering would send the kernel
    // masquerade's replies to a blackhole in the next kernel run. The box goes back to no vpnmasq at all.
    const down = await router.teardown();
    if (down.code !== 0) throw new Error(`vpnmasq teardown failed (${down.code}): ${down.stderr}`);
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function table(title: string, kernel: Figures[], vpnmasq: Figures[], io: string): string {
  const k = (m: Metric) => median(kernel.map((f) => f[m] as number));
  const v = (m: Metric) => median(vpnmasq.map((f) => f[m] as number));
  const span = (fs: Figures[], m: Metric, digits: number) => {
    const xs = fs.map((f) => f[m] as number);
    return `${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)}`;
  };
  const rows: Array<[string, Metric, (x: number) => string, 'ratio' | 'delta', number]> = [
    ['TCP, 1 stream', 'tcp1Gbps', (x) => `${x.toFixed(2)} Gbit/s`, 'ratio', 2],
    ['TCP, 4 streams', 'tcp4Gbps', (x) => `${x.toFixed(2)} Gbit/s`, 'ratio', 2],
    ['64 B UDP received', 'udpPps', (x) => `${(x / 1000).toFixed(0)} kpps`, 'ratio', 0],
    ['UDP req/resp p50', 'rrP50us', (x) => `${x.toFixed(0)} us`, 'delta', 0],
    ['UDP req/resp p99', 'rrP99us', (x) => `${x.toFixed(0)} us`, 'delta', 0],
    [`new TCP conns/s, ${CRR_SECONDS} s`, 'crrPerSec', (x) => `${x.toFixed(0)}/s`, 'ratio', 0],
  ];
  const lines = [title, `${''.padEnd(26)}${'kernel'.padStart(16)}${`vpnmasq ${io}`.padStart(16)}${'vs kernel'.padStart(12)}   vpnmasq runs`];
  for (const [name, m, fmt, kind, digits] of rows) {
    const kv = k(m);
    const vv = v(m);
    const cmp = kind === 'ratio' ? `${(vv / kv).toFixed(2)}x` : `${vv - kv >= 0 ? '+' : ''}${(vv - kv).toFixed(0)} us`;
    lines.push(`${name.padEnd(26)}${fmt(kv).padStart(16)}${fmt(vv).padStart(16)}${cmp.padStart(12)}   ${span(vpnmasq, m, digits)}`);
  }
  lines.push(`${'TCP 1 stream retransmits'.padEnd(26)}${String(k('tcp1Retrans')).padStart(16)}${String(v('tcp1Retrans')).padStart(16)}`);
  lines.push(`${'failed connects'.padEnd(26)}${String(k('crrFailed')).padStart(16)}${String(v('crrFailed')).padStart(16)}`);
  lines.push(`${'vpnmasq CPU per datagram'.padEnd(26)}${''.padStart(16)}${`${v('natCpuUsPerPkt').toFixed(1)} us`.padStart(16)}`);
  return lines.join('\n');
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('npm run bench needs root');
  buildTools();
  engineSection();
  const lab = await createLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false });
  const out: string[] = [];
  try {
    for (const pinned of [false, true]) {
      const bench = new Bench(lab, pinned);
      await bench.startServers();
      const kernel: Figures[] = [];
      const vpnmasq = new Map<string, Figures[]>(IO_MODES.map((io) => [io, []]));
      try {
        for (let rep = 0; rep < REPEAT; rep++) {
          await kernelMasquerade(lab, true);
          kernel.push(await bench.all());
          await kernelMasquerade(lab, false);
          console.error(`# ${pinned ? 'pinned' : 'unpinned'} run ${rep + 1}/${REPEAT}: kernel ${JSON.stringify(kernel[rep])}`);
          for (const [io, runs] of vpnmasq) {
            runs.push(await vpnmasqRun(lab, bench, pinned, io));
            console.error(`#   vpnmasq io ${io}: ${JSON.stringify(runs[rep])}`);
          }
        }
      } finally {
        bench.stopServers();
      }
      const title = pinned ? 'pinned: endpoints on CPU 0, the NAT (vpnmasq and all its threads) on CPU 1' : 'unpinned';
      for (const [io, runs] of vpnmasq) out.push(table(title, kernel, runs, io));
    }
  } finally {
    await lab.destroy();
  }
  const cpu = os.cpus();
  console.log(`\nvpnmasq (nice ${UNIT_NICE}, as systemd/vpnmasq.service) vs kernel nftables masquerade, wan.mode "shared", same lab and run, median of ${REPEAT}; ` +
    `${cpu.length} x ${cpu[0]?.model ?? 'CPU'}, Linux ${os.release()}, Node ${process.version}, load average ${os.loadavg()[0].toFixed(1)}\n`);
  console.log(out.join('\n\n'));
}

main().catch((e) => {
  console.error(`bench failed: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
