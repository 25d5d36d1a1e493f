/**
 * The in-process engine section of `npm run bench`: the packet path built as
 * the daemon wires it (Daemon without start(): no TUN, no routing), fed
 * batches of 64 packets from memory on one core. No I/O, so a regression in
 * translation or in a table shows as a number here.
 *
 *   live sessions: outbound UDP of existing sessions at 1 k, 100 k and 1 M
 *     live sessions (4 public addresses, 4 remotes per LAN endpoint, ports
 *     shared by overlapping where the addresses run out), in random order
 *     over the whole table; the tables are measured in turn, the median of
 *     BENCH_ENGINE_ROUNDS (3) rounds each;
 *   exhaustion: half existing flows, half new ones that cannot be mapped:
 *     all ports taken towards the remote (port overlapping has no free
 *     5-tuple), the session table full, the fragment pool full;
 *   memory: RSS beyond the idle daemon with 1 M live sessions (child process,
 *     --expose-gc), per session;
 *   restore: 1 M sessions persisted by a daemon killed with SIGKILL,
 *     restored by a new one (child processes).
 *
 * Every packet is copied into its receive slot before the batch (56 bytes),
 * as the TUN read would; that copy is part of the figures.
 *
 *   node dist/bench/engine.js            the whole section
 *   node dist/bench/engine.js quick      1 k and 100 k only, no 1 M runs
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfig } from '../src/config/schema';
import { Daemon } from '../src/daemon/daemon';
import type { Logger } from '../src/daemon/log';
import { Drop } from '../src/core/verdict';
import { SIDE_LAN } from '../src/core/side';

const quiet: Logger = { error: () => undefined, warn: () => undefined, info: () => undefined, debug: () => undefined, event: () => undefined,
  lazyEvent: () => undefined, enabled: () => false, configure: () => undefined };

const VNET = 10;
const IP = VNET;
const UDP = IP + 20;
const PKT_LEN = UDP + 8 + 18;
const BATCH = 64;
const TEMPLATES = 16384;
/** Each measurement runs this long (and at least MIN_PACKETS). */
const MEASURE_MS = Number(process.env.BENCH_ENGINE_MS ?? 1500);
const MIN_PACKETS = 200_000;

const LAN_BASE = 0x0a000001; // 10.0.0.1
const REMOTE_BASE = 0xcb000000; // 203.0.0.0
const PUBLICS = ['198.18.0.2', '198.18.0.3', '198.18.0.4', '198.18.0.5'];
const HOSTS = 1024;
const REMOTES_PER_ENDPOINT = 4;

interface Engine {
  daemon: Daemon;
  arena: Uint8Array;
  slotSize: number;
  process(n: number): number;
}

function engine(overrides: { maxSessions?: number; publicAddresses?: string[]; state?: string; ports?: Record<string, unknown>;
  maxHeldFragments?: number; persist?: boolean }): Engine {
  const dir = overrides.state ?? path.join(os.tmpdir(), `vmq-engine-${process.pid}`);
  const cfg = parseConfig(JSON.stringify({
    tun: { name: 'bench0', mtu: 1500, offloads: false },
    lan: { interfaces: ['lan0'], prefixes: ['10.0.0.0/16'] },
    wan: { interface: 'wan0', mode: 'dedicated', publicAddresses: overrides.publicAddresses ?? PUBLICS },
    ports: overrides.ports ?? { range: [1024, 65535], lowRange: null, preserve: false },
    limits: { maxSessions: overrides.maxSessions ?? 262144, hostNewPerSecond: 0, hostSessions: overrides.maxSessions ?? 262144,
      ...(overrides.maxHeldFragments ? { maxHeldFragments: overrides.maxHeldFragments } : {}) },
    state: { path: path.join(dir, 'state.db') },
    control: { socket: path.join(dir, 'control.sock'), group: 'root' },
  }), 'bench');
  const daemon = new Daemon(cfg, quiet, { persist: overrides.persist ?? false });
  const fw = daemon.datapath;
  const internals = daemon as unknown as { drainJournal(): void };
  const journal = daemon.table.journal as { length: number };
  const onError = (e: unknown): void => { throw e; };
  const now = Date.now();
  // Every batch fills slots 0..BATCH-1, all read from the LAN device, as the TUN would list them.
  for (let j = 0; j < BATCH; j++) {
    fw.rxOffs[j] = j * fw.layout.slotSize;
    fw.rxDevs[j] = SIDE_LAN;
  }
  return {
    daemon, arena: fw.arena, slotSize: fw.layout.slotSize,
    process(n: number): number {
      fw.rxLens.fill(PKT_LEN, 0, n);
      const count = fw.processBatch(n, now, onError);
      if (journal.length > 0) internals.drainJournal();
      return count;
    },
  };
}

function csum(b: Uint8Array, off: number, len: number, initial: number): number {
  let s = initial;
  for (let i = 0; i < len; i += 2) s += (b[off + i] << 8) | b[off + i + 1];
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** A 64-byte-frame UDP datagram (18 bytes of payload) with its vnet header at `o`; checksum 0 (none) when !l4sum. */
function writeUdp(b: Uint8Array, o: number, src: number, dst: number, sport: number, dport: number, l4sum = true): void {
  b.fill(0, o, o + PKT_LEN);
  const ip = o + IP;
  b[ip] = 0x45; b[ip + 3] = PKT_LEN - VNET; b[ip + 8] = 64; b[ip + 9] = 17;
  w32(b, ip + 12, src); w32(b, ip + 16, dst);
  w16(b, ip + 10, ~csum(b, ip, 20, 0) & 0xffff);
  const u = o + UDP;
  w16(b, u, sport); w16(b, u + 2, dport); w16(b, u + 4, 8 + 18);
  for (let i = 0; i < 18; i++) b[u + 8 + i] = i;
  if (l4sum) {
    const pseudo = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + 17 + 26;
    w16(b, u + 6, (~csum(b, u, 26, pseudo) & 0xffff) || 0xffff);
  }
}

function w16(b: Uint8Array, o: number, v: number): void { b[o] = (v >>> 8) & 0xff; b[o + 1] = v & 0xff; }
function w32(b: Uint8Array, o: number, v: number): void { w16(b, o, v >>> 16); w16(b, o + 2, v & 0xffff); }

/** Session i of the live-session layout: LAN endpoint i/4 (1024 hosts x ports from 1024), one of 4096 remotes, a different one per session of an endpoint. */
function sessionOf(i: number): [number, number, number, number] {
  const e = Math.floor(i / REMOTES_PER_ENDPOINT);
  const j = i % REMOTES_PER_ENDPOINT;
  return [LAN_BASE + (e % HOSTS), 1024 + Math.floor(e / HOSTS), REMOTE_BASE + ((Math.imul(e, 40503) + j * 1024) & 4095), 443];
}

/** Creates sessions 0..n-1 through the packet path; returns how many were translated. */
function fill(en: Engine, n: number, of: (i: number) => [number, number, number, number]): number {
  let ok = 0;
  for (let i = 0; i < n; i += BATCH) {
    const k = Math.min(BATCH, n - i);
    for (let j = 0; j < k; j++) {
      const [src, sport, dst, dport] = of(i + j);
      writeUdp(en.arena, j * en.slotSize, src, dst, sport, dport);
    }
    ok += en.process(k);
  }
  return ok;
}

/** A random generator with a fixed seed (xorshift32), so runs compare. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 4294967296; };
}

interface Rate { nsPerPacket: number; mpps: number; packets: number; translated: number }

/**
 * Runs batches of templates (packets of existing sessions) until MEASURE_MS;
 * `patch(slotOffset, k)` may rewrite every other slot into a new flow. Time
 * is the process's CPU time, so other load on the box does not count as ours.
 */
function measure(en: Engine, templates: Uint8Array, patch?: (o: number, k: number) => void): Rate {
  const tCount = templates.length / PKT_LEN;
  const views = Array.from({ length: tCount }, (_, i) => templates.subarray(i * PKT_LEN, i * PKT_LEN + PKT_LEN));
  let packets = 0;
  let translated = 0;
  let t = 0;
  const start = process.cpuUsage();
  const end = Date.now() + MEASURE_MS;
  while (packets < MIN_PACKETS || Date.now() < end) {
    for (let round = 0; round < 64; round++) {
      for (let j = 0; j < BATCH; j++) {
        const o = j * en.slotSize;
        if (patch !== undefined && (j & 1) === 1) patch(o, packets + j);
        else {
          en.arena.set(views[t], o);
          if (++t === tCount) t = 0;
        }
      }
      translated += en.process(BATCH);
      packets += BATCH;
    }
  }
  const used = process.cpuUsage(start);
  const ns = (used.user + used.system) * 1000;
  return { nsPerPacket: ns / packets, mpps: packets / ns * 1000, packets, translated };
}

/** Templates: packets of `count` random sessions among 0..n-1. */
function templatesOf(n: number, of: (i: number) => [number, number, number, number], count = TEMPLATES): Uint8Array {
  const b = new Uint8Array(count * PKT_LEN);
  const r = rng(12345);
  for (let t = 0; t < count; t++) {
    const [src, sport, dst, dport] = of(Math.floor(r() * n));
    writeUdp(b, t * PKT_LEN, src, dst, sport, dport);
  }
  return b;
}

/** Rounds of the live-session measurements: the tables stay built, and each round measures every size once, in turn. */
const LIVE_ROUNDS = Number(process.env.BENCH_ENGINE_ROUNDS ?? 3);

/**
 * Outbound UDP of existing sessions at each of `sizes` live sessions. All the
 * tables are built first and measured in turn, LIVE_ROUNDS times, so that a
 * disturbance of the box (another process, the hypervisor) falls on every
 * size alike; the figure is each size's median.
 */
export function liveSessions(sizes: readonly number[]): Array<Record<string, number>> {
  const built = sizes.map((n) => {
    const en = engine({ maxSessions: n > 262144 ? 1048576 : 262144 });
    const made = fill(en, n, sessionOf);
    if (en.daemon.table.sessionCount !== n) throw new Error(`live ${n}: ${en.daemon.table.sessionCount} sessions (${made} translated)`);
    return { n, en, templates: templatesOf(n, sessionOf), ns: [] as number[] };
  });
  for (let round = 0; round < LIVE_ROUNDS; round++) {
    for (const b of built) {
      const r = measure(b.en, b.templates);
      if (r.translated !== r.packets) throw new Error(`live ${b.n}: ${r.packets - r.translated} packets of existing sessions not translated`);
      b.ns.push(r.nsPerPacket);
    }
  }
  return built.map((b) => {
    const ns = median(b.ns);
    return { sessions: b.n, mappings: b.en.daemon.table.mappingCount, nsPerPacket: ns, mpps: 1000 / ns };
  });
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const drops = (en: Engine, d: number): number => en.daemon.datapath.napt.drops.counts[d];

/** New flows from ever-new LAN endpoints (no negative-cache help): 1024 hosts x 64 k ports, UDP checksum 0. */
function newFlows(en: Engine, dst: number, dport: number): (o: number, k: number) => void {
  let c = 0;
  return (o) => {
    c++;
    writeUdp(en.arena, o, LAN_BASE + 2048 + (c & 1023), dst, 1024 + ((c >>> 10) % 64512), dport, false);
  };
}

export function exhaustion(): Array<Record<string, number | string>> {
  const out: Array<Record<string, number | string>> = [];
  // Ports: one address, 64512 ports, every one of them mapped towards 198.51.100.1:53; port overlapping finds no
  // free 5-tuple for another flow to it (bounded probes), so every new flow is refused (ICMP code 13, rate limited).
  {
    const server = 0xc6336401;
    const en = engine({ publicAddresses: ['198.18.0.2'] });
    const of = (i: number): [number, number, number, number] => [LAN_BASE + (i % HOSTS), 1024 + Math.floor(i / HOSTS), server, 53];
    fill(en, 64512, of);
    const tpl = templatesOf(64512, of);
    const before = drops(en, Drop.PORTS_EXHAUSTED);
    const r = measure(en, tpl, newFlows(en, server, 53));
    out.push({ case: 'ports exhausted, 50 % new flows', nsPerPacket: r.nsPerPacket, mpps: r.mpps,
      existingTranslated: r.translated / (r.packets / 2), refused: (drops(en, Drop.PORTS_EXHAUSTED) - before) / (r.packets / 2) });
    // The same LAN endpoints retrying: answered from the negative cache.
    let c = 0;
    const retry = (o: number): void => { c++; writeUdp(en.arena, o, LAN_BASE + 2048 + (c & 63), server, 5000, 53, false); };
    const r2 = measure(en, tpl, retry);
    out.push({ case: 'ports exhausted, 50 % retries of 64 endpoints', nsPerPacket: r2.nsPerPacket, mpps: r2.mpps,
      existingTranslated: r2.translated / (r2.packets / 2), refused: 1 });
  }
  // Sessions: the table full (131072 sessions), new flows to fresh remotes.
  {
    const en = engine({ maxSessions: 131072 });
    fill(en, 131072, sessionOf);
    const tpl = templatesOf(131072, sessionOf);
    const before = drops(en, Drop.TABLE_FULL);
    const r = measure(en, tpl, newFlows(en, 0xc6336402, 53));
    out.push({ case: 'session table full, 50 % new flows', nsPerPacket: r.nsPerPacket, mpps: r.mpps,
      existingTranslated: r.translated / (r.packets / 2), refused: (drops(en, Drop.TABLE_FULL) - before) / (r.packets / 2) });
  }
  // Fragments: non-first fragments of ever-new datagrams wait for a first one that never comes; the pool
  // (maxHeldFragments 512) fills and stays full.
  {
    const en = engine({});
    fill(en, 100_000, sessionOf);
    const tpl = templatesOf(100_000, sessionOf);
    let id = 0;
    const frag = (o: number): void => {
      const [src, sport, dst, dport] = sessionOf(id % 100_000);
      writeUdp(en.arena, o, src, dst, sport, dport, false);
      const ip = o + IP;
      id++;
      w16(en.arena, ip + 4, id & 0xffff);
      w16(en.arena, ip + 6, 0x2000 | 185); // MF, offset 1480
      w16(en.arena, ip + 10, 0);
      w16(en.arena, ip + 10, ~csum(en.arena, ip, 20, 0) & 0xffff);
    };
    const r = measure(en, tpl, frag);
    out.push({ case: 'fragment pool full, 50 % fragments', nsPerPacket: r.nsPerPacket, mpps: r.mpps,
      existingTranslated: r.translated / (r.packets / 2), refused: NaN });
  }
  return out;
}

// ---- memory and restore (child processes) ----------------------------------

function rssBytes(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

function settle(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  for (let i = 0; i < 3; i++) gc();
  return rssBytes();
}

const MILLION = 1_000_000;

function memoryChild(): Record<string, number> {
  const base = settle();
  const small = engine({});
  const rssDefault = settle();
  void small;
  const en = engine({ maxSessions: 1048576 });
  const rssIdle = settle();
  fill(en, MILLION, sessionOf);
  if (en.daemon.table.sessionCount !== MILLION) throw new Error(`memory: ${en.daemon.table.sessionCount} sessions`);
  const rssFull = settle();
  // The default-sized daemon stays alive beside the big one: take its share out of the big one's figures.
  const other = rssDefault - base;
  return { rssDefaultMiB: rssDefault / 2 ** 20, rssIdleMiB: (rssIdle - other) / 2 ** 20, rssFullMiB: (rssFull - other) / 2 ** 20,
    bytesPerSession: (rssFull - rssIdle) / MILLION };
}

/** Persists 1 M sessions as the daemon does (journal -> store, group commits), then dies by SIGKILL. */
function persistChild(dir: string): void {
  const en = engine({ maxSessions: 1048576, state: dir, persist: true });
  const d = en.daemon as unknown as { openStore(): void; store: { flush(): void; tick(): void } };
  d.openStore();
  for (let i = 0; i < MILLION; i += 16384) {
    fill(en, Math.min(16384, MILLION - i), (k) => sessionOf(i + k));
    d.store.flush();
    d.store.tick(); // what the store's timer does between batches in the daemon (updates, the WAL kept in bounds)
  }
  if (en.daemon.table.sessionCount !== MILLION) throw new Error(`persist: ${en.daemon.table.sessionCount} sessions`);
  process.kill(process.pid, 'SIGKILL');
}

function restoreChild(dir: string): Record<string, number> {
  const en = engine({ maxSessions: 1048576, state: dir, persist: true });
  const rssIdle = settle();
  const d = en.daemon as unknown as { openStore(): void; store: { close(): void } };
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  d.openStore();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const c = process.cpuUsage(c0);
  const restored = en.daemon.table.sessionCount;
  const rss = settle();
  d.store.close();
  return { restored, restoreMs: ms, restoreCpuMs: (c.user + c.system) / 1000, bytesPerSession: (rss - rssIdle) / restored };
}

function child(args: string[]): Record<string, number> {
  const r = spawnSync(process.execPath, ['--expose-gc', '--max-old-space-size=4096', __filename, ...args], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`engine ${args[0]} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, number>;
}

// ---- the section ------------------------------------------------------------

const f1 = (x: number): string => x.toFixed(1);
const f2 = (x: number): string => x.toFixed(2);

export interface EngineFigures {
  live: Array<Record<string, number>>;
  exhaustion: Array<Record<string, number | string>>;
  memory?: Record<string, number>;
  restore?: Record<string, number>;
}

/** Runs the engine section and prints its table; `quick` leaves out the 1 M runs. */
export function engineSection(quick = false): EngineFigures {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`\nengine, in process (no I/O), one core of ${cpu}, node ${process.version}, batches of ${BATCH}`);
  liveSessions([1000]); // warm-up: the first run would carry the compiler's work
  const live = liveSessions(quick ? [1000, 100_000] : [1000, 100_000, MILLION]);
  console.log('outbound UDP of existing sessions   live sessions   ns/packet   Mpackets/s   vs 1 k');
  for (const l of live) {
    console.log(`${''.padEnd(36)}${String(l.sessions).padStart(13)}   ${f1(l.nsPerPacket).padStart(9)}   ${f2(l.mpps).padStart(10)}   ${f2(l.nsPerPacket / live[0].nsPerPacket).padStart(5)}x`);
  }
  const ex = exhaustion();
  console.log('under exhaustion                                        ns/packet   Mpackets/s   existing translated');
  for (const e of ex) {
    console.log(`${String(e.case).padEnd(54)}${f1(e.nsPerPacket as number).padStart(11)}   ${f2(e.mpps as number).padStart(10)}   ${((e.existingTranslated as number) * 100).toFixed(0).padStart(5)} %`);
  }
  const figures: EngineFigures = { live, exhaustion: ex };
  if (!quick) {
    const memory = child(['memory']);
    console.log(`memory: idle daemon ${f1(memory.rssDefaultMiB)} MiB RSS with the default table (262144), ${f1(memory.rssIdleMiB)} MiB with ` +
      `maxSessions 1048576, ${f1(memory.rssFullMiB)} MiB with 1 M live sessions: ${memory.bytesPerSession.toFixed(0)} bytes/session beyond the ` +
      `idle daemon of that size`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmq-engine-restore-'));
    try {
      const r = spawnSync(process.execPath, ['--max-old-space-size=4096', __filename, 'persist', dir], { encoding: 'utf8', timeout: 900_000 });
      if (r.signal !== 'SIGKILL') throw new Error(`engine persist ended with ${r.status ?? r.signal}: ${r.stderr}`);
      const fileMiB = fs.readdirSync(dir).reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0) / 2 ** 20;
      const restore = child(['restore', dir]);
      console.log(`restore after kill -9: ${restore.restored} sessions in ${(restore.restoreMs / 1000).toFixed(2)} s ` +
        `(${(restore.restoreCpuMs / 1000).toFixed(2)} s of CPU) ` +
        `(state ${f1(fileMiB)} MiB with its WAL), ${restore.bytesPerSession.toFixed(0)} bytes/session of RSS once restored`);
      figures.memory = memory;
      figures.restore = { ...restore, fileMiB };
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  return figures;
}

if (require.main === module) {
  const [cmd, arg] = process.argv.slice(2);
  if (cmd === 'memory') console.log(JSON.stringify(memoryChild()));
  else if (cmd === 'persist') persistChild(arg);
  else if (cmd === 'restore') console.log(JSON.stringify(restoreChild(arg)));
  else {
    const figures = engineSection(cmd === 'quick');
    if (process.env.BENCH_ENGINE_JSON) fs.writeFileSync(process.env.BENCH_ENGINE_JSON, JSON.stringify(figures, null, 2));
  }
}
