/**
 * The packet-path fuzz target: the daemon exactly as `vpnmasq run` composes
 * it (Daemon: NAPT, fragments, forwards, PPTP and IPsec helpers, the journal
 * drain in the batch callback), started on an in-memory TUN device with a
 * virtual clock and a seeded Math.random, fed batches of generated frames.
 * Every written packet is checked (oracle.ts), and after every batch the
 * slots around the packets, the exception counters, the journal and the
 * table sizes; every few thousand batches the tables' indexes are walked
 * for consistency, the connection listing is built and the heap is
 * measured. The timers' work (sweep), `conns list`, `conns delete` and
 * runtime `forwards add|remove` run between batches as the event loop would.
 */
import { parseConfig } from '../../src/config/schema';
import { ControlCommands } from '../../src/daemon/control-commands';
import type { ControlRequest } from '../../src/query/protocol';
import { Daemon } from '../../src/daemon/daemon';
import type { Logger } from '../../src/daemon/log';
import type { TunBuffers, TunDevice, TunSink } from '../../src/edge/tun/device';
import { STATS_COUNT } from '../../src/edge/tun/native';
import { Journal } from '../../src/core/journal';
import { ESP_PENDING, ESP_ESTABLISHED, ESP_SQUELCHED } from '../../src/helpers/ipsec/ipsec';
import { SLOT_COUNT } from '../../src/nat/sessions';
import { Rng } from './rng';
import { ICMP, TCP, UDP, VNET_LEN, ipText } from './craft';
import { PacketGenerator, View } from './generator';
import { PPTP_PORT, Sides, checkOutput, protoName } from './oracle';
import { Profile, PUBLIC, drawProfile, isLanAddr } from './world';
import { r16, r32 } from './inet';
import { SIDE_LAN, SIDE_WAN, tunDeviceNames } from '../../src/core/side';

/** One thing that happens to the daemon: a batch read from the TUN, or work between batches. */
export type FuzzEvent =
  | { t: 'batch'; now: number; frames: Uint8Array[] }
  | { t: 'sweep'; now: number }
  /** A control-socket request, handled by the daemon's own command handler. */
  | { t: 'control'; req: ControlRequest };

/** What came out wrong, with where. */
export interface Violation {
  problem: string;
  /** Same problem, numbers and addresses blanked: what minimization must keep reproducing. */
  signature: string;
  /** The packet that came in (hex), when the problem is about a written packet. */
  input?: string;
  output?: string;
}

export function signatureOf(problem: string): string {
  return problem.replace(/0x[0-9a-f]+/gi, 'X').replace(/\d+(\.\d+){3}/g, 'A').replace(/\d+/g, 'N');
}

const CANARY = 48;
const canaryByte = (i: number): number => (i * 29 + 0x5b) & 0xff;
/** Post-GC heap growth over the epoch's first measurement that counts as unbounded. */
const HEAP_SLACK = 96 * 1024 * 1024;

/**
 * Whether `pkt` is the ICMP destination-unreachable code 13 (RFC 5508 REQ-8)
 * answering `origin` from its slot: to the origin's source, quoting the
 * origin's addresses, protocol and IP ID.
 */
function isRefusal(pkt: Uint8Array, origin: Uint8Array): boolean {
  if (pkt.length < VNET_LEN + 56 || origin.length < VNET_LEN + 20) return false;
  const ip = pkt.subarray(VNET_LEN);
  const o = origin.subarray(VNET_LEN);
  const hl = (ip[0] & 0x0f) * 4;
  if (ip[9] !== ICMP || ip[hl] !== 3 || ip[hl + 1] !== 13 || ip.length < hl + 8 + 20) return false;
  const q = ip.subarray(hl + 8);
  const same = (a: Uint8Array, ao: number, b: Uint8Array, bo: number, n: number): boolean => {
    for (let k = 0; k < n; k++) if (a[ao + k] !== b[bo + k]) return false;
    return true;
  };
  let sum = 0;
  for (let k = 0; k < hl; k += 2) sum += (ip[k] << 8) | ip[k + 1];
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum === 0xffff && same(ip, 16, o, 12, 4) && same(q, 12, o, 12, 8) && q[9] === o[9] && same(q, 4, o, 4, 2);
}

/** An in-memory TUN: the rig writes frames into the receive slots and reads the tx list itself. */
class FuzzTun implements TunDevice {
  readonly names = [...tunDeviceNames('fuzz0')];
  readonly queues = 1;
  readonly offloadError = null;
  readonly io = { mode: 'fake', fallback: null };
  private readonly counters = new Float64Array(STATS_COUNT);
  buffers: TunBuffers | null = null;
  sink: TunSink | null = null;

  constructor(readonly offloads: number) {}

  stats(): Float64Array { return this.counters; }

  start(buffers: TunBuffers, sink: TunSink): void {
    if (this.sink !== null) throw new Error('fuzz TUN already started');
    this.buffers = buffers;
    this.sink = sink;
  }

  close(): void {
    this.sink = null;
  }
}

/** A daemon under test for one epoch (one profile). */
export class Rig {
  readonly daemon: Daemon;
  readonly tun: FuzzTun;
  now = 1_700_000_000_000;
  private readonly errors: string[] = [];
  private readonly fatal: string[] = [];
  private packetErrors = 0;
  private batchErrors = 0;
  private readonly savedRandom = Math.random;
  private heapBase = -1;
  readonly view: View;
  /** The control socket's command handler, as the daemon builds it, minus the socket. */
  private readonly commands: ControlCommands;
  /** Set by the generator loop: told about every written packet. */
  observer: ((ip: Uint8Array, toLan: boolean) => void) | null = null;

  constructor(readonly profile: Profile, randomSeed: number) {
    const config = parseConfig(JSON.stringify(profile.config), `fuzz profile (${profile.name})`);
    const random = new Rng(randomSeed);
    // The daemon draws public ports from Math.random: seeded, so a run is reproducible.
    Math.random = () => random.float();
    const sink = (level: string) => (msg: string, fields?: Record<string, unknown>): void => {
      if (level === 'error') this.errors.push(`${msg}${fields?.error ? `: ${String(fields.error)}` : ''}${fields?.stack ? `\n${String(fields.stack)}` : ''}`);
    };
    const log: Logger = { error: sink('error'), warn: sink('warn'), info: sink('info'), debug: sink('debug'), event: () => undefined,
      lazyEvent: () => undefined, enabled: () => false, configure: () => undefined };
    this.tun = new FuzzTun(profile.offloads ? 0x67 : 0);
    this.daemon = new Daemon(config, log, {
      persist: false, openTun: () => this.tun, now: () => this.now, onFatal: (e) => this.fatal.push(e.message),
    });
    this.daemon.startPacketLoop(this.tun);
    this.view = tableView(this.daemon);
    this.commands = new ControlCommands(this.daemon, () => this.now);
  }

  close(): void {
    Math.random = this.savedRandom;
  }

  /** Runs one event; returns the violations it caused. The caller lets the event loop turn after it (observers run then). */
  async run(e: FuzzEvent): Promise<Violation[]> {
    const out: Violation[] = [];
    if (e.t === 'batch') {
      out.push(...this.batch(e.now, e.frames));
    } else if (e.t === 'sweep') {
      this.now = Math.max(this.now, e.now);
      try {
        this.daemon.sweep();
      } catch (err) {
        out.push(violation(`the sweep threw: ${(err as Error).stack ?? String(err)}`));
      }
    } else {
      out.push(...await this.control(e.req));
    }
    // What the daemon schedules after a batch (observers, the id index, reports) runs before the next one.
    await new Promise<void>((resolve) => setImmediate(resolve));
    out.push(...this.afterEvent());
    return out;
  }

  /**
   * A control request as the socket would pass it: errors the commands
   * throw on purpose (bad ids, filters, forwards) are answers; a TypeError,
   * RangeError or the like is a bug. Listings are streamed to the end and
   * their ids checked for duplicates.
   */
  private async control(req: ControlRequest): Promise<Violation[]> {
    const out: Violation[] = [];
    try {
      const reply = await this.commands.handle(req);
      if (reply.rows !== undefined) {
        const ids = new Set<number>();
        for await (const row of reply.rows) {
          const id = (row as { id?: number }).id;
          if (id === undefined) continue;
          if (ids.has(id)) out.push(violation(`${req.cmd} lists id ${id} twice`));
          ids.add(id);
        }
      }
    } catch (err) {
      if (err instanceof TypeError || err instanceof RangeError || err instanceof ReferenceError || !(err instanceof Error)) {
        out.push(violation(`control ${req.cmd} threw ${(err as Error).stack ?? String(err)}`));
      }
    }
    return out;
  }

  /**
   * The TUN device the policy routing would read `frame` from: the LAN one
   * for a source in a LAN prefix, else the WAN one; except one frame in 64
   * (by its IP ID), which comes in on the other side as a spoof would.
   */
  private deviceOf(frame: Uint8Array): number {
    if (frame.length < VNET_LEN + 20) return frame.length & 1;
    const lan = isLanAddr(this.profile, r32(frame, VNET_LEN + 12));
    const misrouted = (r16(frame, VNET_LEN + 4) & 63) === 0;
    return lan !== misrouted ? SIDE_LAN : SIDE_WAN;
  }

  private batch(now: number, frames: Uint8Array[]): Violation[] {
    const tun = this.tun;
    const b = tun.buffers as TunBuffers;
    const sink = tun.sink as TunSink;
    const slot = b.slotSize;
    const arena = b.arena;
    const n = Math.min(frames.length, b.rxOffs.length, b.ringSlots);
    const origins: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      const f = frames[i].length > slot ? frames[i].subarray(0, slot) : frames[i];
      const base = i * slot;
      arena.set(f, base);
      b.rxOffs[i] = base;
      b.rxLens[i] = f.length;
      b.rxDevs[i] = this.deviceOf(f);
      origins.push(f);
      this.remember(f);
      const end = Math.min(slot, f.length + CANARY);
      for (let j = f.length; j < end; j++) arena[base + j] = canaryByte(j);
    }
    this.now = Math.max(this.now, now);
    const out: Violation[] = [];
    let count: number;
    try {
      count = sink.onBatch(n);
    } catch (err) {
      return [violation(`the batch callback threw: ${(err as Error).stack ?? String(err)}`)];
    }
    const txCap = b.txList.length / 2;
    if (!Number.isInteger(count) || count < 0 || count > txCap) return [violation(`the batch callback returned ${count}, not a tx count`)];
    const holdBase = slot * this.daemon.datapath.layout.rxSlots;
    const layout = this.daemon.datapath.layout;
    const seen = new Set<number>();
    /** Slots answered with a refusal: it may be longer than the packet it answers. */
    const refused = new Set<number>();
    const sides = { profile: this.profile, publicAddr: PUBLIC, mssClamp: this.daemon.datapath.napt.mssClamp };
    const written: Array<{ pkt: Uint8Array; origin: Uint8Array | null }> = [];
    for (let k = 0; k < count; k++) {
      const off = b.txList[2 * k];
      const len = b.txList[2 * k + 1];
      let origin: Uint8Array | null = null;
      if (off < holdBase) {
        const i = Math.floor(off / slot);
        if (off % slot !== 0 || i >= n) { out.push(violation(`tx entry at ${off} is not the start of a slot read in this batch`)); continue; }
        // A refused new flow is answered with ICMP code 13 built in its own slot (refuse.ts): not a translation of it.
        if (isRefusal(arena.subarray(off, off + len), origins[i])) { seen.add(off); refused.add(i); continue; }
        if (len > b.rxLens[i]) { out.push(violation(`tx entry writes ${len} bytes of a ${b.rxLens[i]}-byte packet`)); continue; }
        origin = origins[i];
      } else {
        const h = (off - holdBase) / layout.holdSlotSize;
        if (!Number.isInteger(h) || h >= layout.holdSlots) { out.push(violation(`tx entry at ${off} is not a hold slot`)); continue; }
        if (len > layout.holdSlotSize) { out.push(violation(`tx entry of ${len} bytes overruns its ${layout.holdSlotSize}-byte hold slot`)); continue; }
      }
      if (seen.has(off)) { out.push(violation(`the slot at ${off} is written twice in one batch`)); continue; }
      seen.add(off);
      written.push({ pkt: arena.subarray(off, off + len), origin });
    }
    // In the order the packets were translated: what a packet released or copied (hold slots) is listed just before it.
    let pending: Array<{ pkt: Uint8Array; origin: Uint8Array | null }> = [];
    for (const w of written) {
      if (w.origin === null) { pending.push(w); continue; }
      this.firstFragment(w.pkt, w.origin);
      for (const h of pending) out.push(...this.judge(sides, h.pkt, null));
      pending = [];
      out.push(...this.judge(sides, w.pkt, w.origin));
    }
    for (const h of pending) out.push(...this.judge(sides, h.pkt, null));
    for (let i = 0; i < n; i++) {
      if (refused.has(i)) continue;
      const base = i * slot;
      const end = Math.min(slot, origins[i].length + CANARY);
      for (let j = origins[i].length; j < end; j++) {
        if (arena[base + j] !== canaryByte(j)) {
          out.push(violation(`bytes after the packet in slot ${i} were written (at +${j} of a ${origins[i].length}-byte packet)`, hex(origins[i])));
          break;
        }
      }
    }
    out.push(...this.afterEvent());
    return out;
  }

  /**
   * Frames that may come out of a hold slot later (fragments, inbound ESP and
   * ISAKMP that guessing copies), by fingerprint: the bytes a translation
   * never changes. Bounded: the oldest go first.
   */
  private readonly prints = new Map<string, Uint8Array[]>();
  /**
   * PPTP control segments (TCP 1723) and first fragments of them, by IP ID:
   * the helper may hold one beyond a gap and send it later, whole and cut to
   * what the stream has not had yet.
   */
  private readonly segments = new Map<number, Uint8Array[]>();
  /** Datagram (as read: source, destination, protocol, IP ID) -> the addresses its first fragment left with. */
  private readonly firsts = new Map<string, string>();

  private remember(f: Uint8Array): void {
    if (f.length < VNET_LEN + 20 || f[VNET_LEN] >> 4 !== 4) return;
    const ip = f.subarray(VNET_LEN);
    const proto = ip[9];
    const fragmented = (r16(ip, 6) & 0x3fff) !== 0;
    const hl = (ip[0] & 15) * 4;
    const ports = ip.length >= hl + 4;
    const pptp = proto === TCP && ports && (r16(ip, hl) === PPTP_PORT || r16(ip, hl + 2) === PPTP_PORT);
    if (pptp && (r16(ip, 6) & 0x1fff) === 0) keep(this.segments, r16(ip, 4), f);
    if (pptp && !fragmented) return;
    if (!fragmented && proto !== 50 && !(proto === UDP && ports && r16(ip, hl) === 500)) return;
    keep(this.prints, fingerprint(f), f);
  }

  /** Records where a translated first fragment went (keyed by the datagram as it was read). */
  private firstFragment(pkt: Uint8Array, origin: Uint8Array): void {
    if (pkt.length < VNET_LEN + 20 || origin.length < VNET_LEN + 20) return;
    const frag = r16(pkt, VNET_LEN + 6);
    if ((frag & 0x2000) === 0 || (frag & 0x1fff) !== 0) return;
    this.firsts.set(datagramKey(origin), `${ipText(r32(pkt, VNET_LEN + 12))} -> ${ipText(r32(pkt, VNET_LEN + 16))}`);
    if (this.firsts.size > 200_000) this.firsts.delete(this.firsts.keys().next().value as string);
  }

  /** A later fragment must leave with the addresses its first fragment left with (RFC 4787 REQ-14). */
  private laterFragment(pkt: Uint8Array, origin: Uint8Array): string[] {
    if (pkt.length < VNET_LEN + 20 || origin.length < VNET_LEN + 20 || (r16(pkt, VNET_LEN + 6) & 0x1fff) === 0) return [];
    const got = `${ipText(r32(pkt, VNET_LEN + 12))} -> ${ipText(r32(pkt, VNET_LEN + 16))}`;
    const first = this.firsts.get(datagramKey(origin));
    if (first === undefined) return [`a later fragment left (${got}) though no first fragment of its datagram was translated`];
    return first === got ? [] : [`a later fragment left as ${got}, its first fragment as ${first}`];
  }

  /** The checks of one written packet; a hold-slot packet is judged against the packet it came from, found by its fingerprint. */
  private judge(sides: Sides, pkt: Uint8Array, from: Uint8Array | null): Violation[] {
    let origin = from;
    let problems: string[];
    if (origin !== null) {
      problems = checkOutput(sides, pkt, origin);
    } else if (isWholeTcp(pkt) && this.segments.has(r16(pkt, VNET_LEN + 4))) {
      problems = checkOutput(sides, pkt, null);
      if (!(this.segments.get(r16(pkt, VNET_LEN + 4)) ?? []).some((c) => covers(c, pkt))) problems.push('a TCP segment from a hold slot lies in no PPTP segment that was read');
    } else {
      const candidates = this.prints.get(fingerprint(pkt)) ?? [];
      problems = checkOutput(sides, pkt, null);
      if (candidates.length === 0) problems.push('a packet from a hold slot matches no packet that was read');
      for (const c of candidates) {
        const p = checkOutput(sides, pkt, c);
        if (origin === null || p.length < problems.length) { problems = p; origin = c; }
        if (p.length === 0) break;
      }
    }
    if (origin !== null) {
      // A reassembled datagram leaves as its fragments, all from hold slots, first fragment first.
      if (from === null) this.firstFragment(pkt, origin);
      problems.push(...this.laterFragment(pkt, origin));
    }
    if (this.observer !== null && pkt.length >= VNET_LEN + 20) this.observer(pkt.subarray(VNET_LEN), isLanAddr(this.profile, r32(pkt, VNET_LEN + 16)));
    return problems.map((p) => ({ problem: p, signature: signatureOf(p), input: origin ? hex(origin) : '(held)', output: hex(pkt) }));
  }

  /** Exceptions, fatal stops, the journal drain and table sizes after any event. */
  private afterEvent(): Violation[] {
    const out: Violation[] = [];
    const d = this.daemon;
    const f = d.faults;
    if (f.packetErrors !== this.packetErrors || f.batchErrors !== this.batchErrors) {
      out.push(violation(`translation threw (${f.packetErrors - this.packetErrors} packets, ${f.batchErrors - this.batchErrors} batches): ${this.errors.at(-1) ?? '(not logged yet)'}`));
      this.packetErrors = f.packetErrors;
      this.batchErrors = f.batchErrors;
    }
    if (this.fatal.length > 0) out.push(violation(`forwarding stopped: ${this.fatal.splice(0).join('; ')}`));
    for (const e of this.errors.splice(0)) if (!/packet translation threw/.test(e)) out.push(violation(`logged an error: ${e}`));
    const j = d.table.journal as Journal;
    if (j.length !== 0) out.push(violation(`${j.length} journal events left after the batch (the drain must empty it)`));
    if (j.lost !== 0) out.push(violation(`${j.lost} journal events lost and not handled by the drain`));
    const t = d.table;
    let bySlot = 0;
    for (let i = 0; i < SLOT_COUNT; i++) {
      if (t.countBySlot[i] < 0) out.push(violation(`negative session count for slot ${i}`));
      bySlot += t.countBySlot[i];
    }
    if (t.sessionCount < 0 || t.sessionCount > t.capacity) out.push(violation(`${t.sessionCount} sessions in a table of ${t.capacity}`));
    if (bySlot !== t.sessionCount) out.push(violation(`per-protocol counts add up to ${bySlot}, not ${t.sessionCount} sessions`));
    if (t.mappingCount < 0 || t.mappingCount > t.sessionCount) out.push(violation(`${t.mappingCount} mappings for ${t.sessionCount} sessions`));
    const fr = d.datapath.frags;
    if (fr.heldCount < 0 || fr.heldCount > d.datapath.layout.holdSlots) out.push(violation(`${fr.heldCount} held fragments in ${d.datapath.layout.holdSlots} slots`));
    const calls = d.pptp.calls;
    if (calls.count < 0 || calls.count > calls.capacity) out.push(violation(`${calls.count} PPTP calls in a table of ${calls.capacity}`));
    const ipsec = d.ipsec;
    if (ipsec.isakmpCount < 0 || ipsec.isakmpCount > ipsec.opts.capacity) out.push(violation(`${ipsec.isakmpCount} ISAKMP entries`));
    for (const c of ipsec.espCountByState) if (c < 0 || c > ipsec.opts.capacity) out.push(violation(`ESP count by state ${Array.from(ipsec.espCountByState).join('/')}`));
    return out;
  }

  /**
   * Walks every table: each live row is reachable through each of its
   * indexes, counts match, addresses are LAN hosts, public ports lie in the
   * ranges or are forwarded, a PPTP call's control connection is alive, ids
   * are unique across tables. O(capacity): every few thousand batches.
   */
  deepCheck(): Violation[] {
    const out: Violation[] = [];
    const d = this.daemon;
    const t = d.table;
    const cfg = d.config;
    const serials = new Set<number>();
    const dup = (id: number, what: string): void => {
      if (serials.has(id)) out.push(violation(`id ${id} (${what}) is used twice`));
      serials.add(id);
    };
    let live = 0;
    const refs = new Map<number, number>();
    // Sessions of a forward outlive its removal: every port ever forwarded counts.
    const forwardPorts = new Set([...cfg.forwards, ...RUNTIME_FORWARDS].flatMap((f) => ('publicPort' in f ? [`${f.proto}/${f.publicPort}`] : [])));
    const inRange = (port: number, lanPort: number, proto: number): boolean => {
      const r = cfg.wan.mode === 'shared' ? [cfg.ports.range[0], Math.min(cfg.ports.range[1], 0xfffe)] : cfg.ports.range;
      const low = cfg.ports.lowRange;
      if (proto !== ICMP && low !== null && lanPort < 1024) return port >= low[0] && port <= low[1];
      return port >= r[0] && port <= r[1];
    };
    for (let s = 0; s < t.capacity; s++) {
      if (t.sInUse[s] !== 1) continue;
      live++;
      const m = t.mapOf(s);
      const proto = t.protoOf(s);
      refs.set(m, (refs.get(m) ?? 0) + 1);
      dup(t.sSerial[s], `${protoName(proto)} session`);
      if (t.findOut(proto, t.lanOf(s), t.lanPortOf(s), t.remOf(s), t.remPortOf(s)) !== s) out.push(violation(`session ${s} not found by its outbound key`));
      if (t.findIn(proto, t.pubIdxOf(s), t.pubPortOf(s), t.remOf(s), t.remPortOf(s)) !== s) out.push(violation(`session ${s} not found by its inbound key`));
      // With port overlapping a public port has no one owner; under endpoint-independent filtering it has.
      if (t.exclusivePorts && t.mappingOfPort(proto, t.pubIdxOf(s), t.mPubPort[m]) !== m) out.push(violation(`mapping ${m} does not own its public port ${t.mPubPort[m]}`));
      if (t.findMapping(proto, t.mLan[m], t.mLanPort[m]) !== m) out.push(violation(`mapping ${m} not found by its LAN endpoint`));
      if (!isLanAddr(this.profile, t.mLan[m] >>> 0)) out.push(violation(`a ${protoName(proto)} mapping belongs to ${ipText(t.mLan[m] >>> 0)}, not a LAN host`));
      const pubPort = t.mPubPort[m];
      const forwarded = forwardPorts.has(`${proto === TCP ? 'tcp' : proto === UDP ? 'udp' : 'icmp'}/${pubPort}`);
      if (!forwarded && !inRange(pubPort, t.mLanPort[m], proto) && !(cfg.ports.preserve && pubPort === t.mLanPort[m] && inRange(pubPort, pubPort, proto))) {
        out.push(violation(`${protoName(proto)} mapping on public port ${pubPort} (LAN port ${t.mLanPort[m]}) is outside the configured ranges`));
      }
    }
    if (live !== t.sessionCount) out.push(violation(`${live} live sessions, count says ${t.sessionCount}`));
    if (refs.size !== t.mappingCount) out.push(violation(`${refs.size} mappings in use, count says ${t.mappingCount}`));
    for (const [m, n] of refs) if (t.mRefs[m] !== n) { out.push(violation(`mapping ${m} has ${n} sessions, refs say ${t.mRefs[m]}`)); break; }
    const calls = d.pptp.calls;
    let liveCalls = 0;
    for (let c = 0; c < calls.capacity; c++) {
      if (calls.inUse[c] !== 1) continue;
      liveCalls++;
      dup(calls.serial[c], 'PPTP call');
      if (calls.findLan(calls.lan[c], calls.rem[c], calls.lanId[c]) !== c) out.push(violation(`call ${c} not found by its LAN Call ID`));
      if (calls.findPub(calls.rem[c], calls.pubId[c]) !== c) out.push(violation(`call ${c} not found by its public Call ID`));
      if (calls.pubId[c] === 0) out.push(violation(`call ${c} has public Call ID 0`));
      const cs = calls.ctlSession[c];
      if (t.sInUse[cs] !== 1 || t.sSerial[cs] !== calls.ctlSerial[c]) out.push(violation(`call ${calls.serial[c]} outlived its control connection`));
      if (!isLanAddr(this.profile, calls.lan[c] >>> 0)) out.push(violation(`a call belongs to ${ipText(calls.lan[c] >>> 0)}, not a LAN host`));
    }
    if (liveCalls !== calls.count) out.push(violation(`${liveCalls} live calls, count says ${calls.count}`));
    const ip = d.ipsec;
    const byState = [0, 0, 0, 0];
    for (let e = 0; e < ip.opts.capacity; e++) {
      if (ip.kInUse[e] === 1) {
        dup(ip.kSerial[e], 'ISAKMP entry');
        if (!isLanAddr(this.profile, ip.kLan[e] >>> 0)) out.push(violation(`an ISAKMP entry belongs to ${ipText(ip.kLan[e] >>> 0)}`));
      }
      if (ip.eInUse[e] === 1) {
        dup(ip.eSerial[e], 'ESP entry');
        const st = ip.eState[e];
        if (st !== ESP_PENDING && st !== ESP_ESTABLISHED && st !== ESP_SQUELCHED) out.push(violation(`a live ESP entry in state ${st}`));
        else byState[st]++;
        if (!isLanAddr(this.profile, ip.eLan[e] >>> 0)) out.push(violation(`an ESP entry belongs to ${ipText(ip.eLan[e] >>> 0)}`));
      }
    }
    for (const st of [ESP_PENDING, ESP_ESTABLISHED, ESP_SQUELCHED]) {
      if (byState[st] !== ip.espCountByState[st]) out.push(violation(`${byState[st]} ESP entries in state ${st}, count says ${ip.espCountByState[st]}`));
    }
    for (const id of serials) if (id >= t.serials.next) { out.push(violation(`id ${id} is not below the next id ${t.serials.next}`)); break; }
    return out;
  }

  /** Post-GC heap against the epoch's first measurement (needs node --expose-gc; skipped without). */
  heapCheck(): Violation[] {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (gc === undefined) return [];
    gc();
    const used = process.memoryUsage().heapUsed;
    if (this.heapBase < 0) this.heapBase = used;
    if (used > this.heapBase + HEAP_SLACK) return [violation(`heap grew from ${mib(this.heapBase)} to ${mib(used)} MiB`)];
    return [];
  }
}

/** The generator's window into the daemon's tables (addresses unsigned). */
function tableView(d: Daemon): View {
  const t = d.table;
  const calls = d.pptp.calls;
  const ip = d.ipsec;
  /** A live record near the low end (records are handed out lowest first), or -1. */
  const probe = (rng: Rng, inUse: Uint8Array, count: number): number => {
    if (count === 0) return -1;
    const cap = inUse.length;
    let i = rng.int(Math.min(cap, count * 2 + 8));
    for (let n = 0; n < 64; n++, i = i + 1 === cap ? 0 : i + 1) if (inUse[i] === 1) return i;
    return -1;
  };
  const cookie = (a: number, b: number): Uint8Array => {
    const c = new Uint8Array(8);
    new DataView(c.buffer).setInt32(0, a);
    new DataView(c.buffer).setInt32(4, b);
    return c;
  };
  return {
    pubPortOf(proto, lan, lanPort, rem, remPort) {
      const s = t.findOut(proto, lan | 0, lanPort, rem | 0, proto === ICMP ? 0 : remPort);
      return s < 0 ? -1 : t.pubPortOf(s);
    },
    session(rng) {
      const s = probe(rng, t.sInUse, t.sessionCount);
      if (s < 0) return null;
      return { proto: t.protoOf(s), lan: t.lanOf(s) >>> 0, lanPort: t.lanPortOf(s), pubPort: t.pubPortOf(s), rem: t.remOf(s) >>> 0, remPort: t.remPortOf(s) };
    },
    callOf(lan, rem, lanId) {
      const c = calls.findLan(lan | 0, rem | 0, lanId);
      return c < 0 ? null : { pubId: calls.pubId[c], remId: calls.remId[c] };
    },
    call(rng) {
      const c = probe(rng, calls.inUse, calls.count);
      return c < 0 ? null : { lan: calls.lan[c] >>> 0, rem: calls.rem[c] >>> 0, lanId: calls.lanId[c], pubId: calls.pubId[c], remId: calls.remId[c] };
    },
    esp(rng) {
      const e = probe(rng, ip.eInUse, 16);
      return e < 0 ? null : { lan: ip.eLan[e] >>> 0, rem: ip.eRem[e] >>> 0, outSpi: ip.eOutSpi[e] >>> 0, inSpi: ip.eInSpi[e] >>> 0 };
    },
    isakmp(rng) {
      const k = probe(rng, ip.kInUse, ip.isakmpCount);
      return k < 0 ? null : {
        lan: ip.kLan[k] >>> 0, rem: ip.kRem[k] >>> 0, ic: cookie(ip.kIc0[k], ip.kIc1[k]), rc: ip.kHasRc[k] === 1 ? cookie(ip.kRc0[k], ip.kRc1[k]) : null,
      };
    },
  };
}

/** The bytes of a frame no translation changes: IP ID, protocol, fragment field, length, and payload past the first 8 L4 bytes. */
function fingerprint(f: Uint8Array): string {
  const ip = f.subarray(VNET_LEN);
  const hl = (ip[0] & 0x0f) * 4;
  const total = Math.min(r16(ip, 2), ip.length);
  const later = (r16(ip, 6) & 0x1fff) !== 0;
  // A TCP first fragment (of a datagram reassembled for the PPTP helper) by its sequence number: the helper rewrites its
  // payload and checksum.
  if (!later && ip[9] === TCP) return `${r16(ip, 4)}/${ip[9]}/${r16(ip, 6)}/${r16(ip, 2)}/${hex(ip.subarray(Math.min(hl + 4, total), Math.min(hl + 8, total)))}`;
  // A later fragment by its place alone: when its datagram was reassembled for a helper, its payload carries translated bytes.
  if (later) return `${r16(ip, 4)}/${ip[9]}/${r16(ip, 6)}/${r16(ip, 2)}`;
  return `${r16(ip, 4)}/${ip[9]}/${r16(ip, 6)}/${r16(ip, 2)}/${hex(ip.subarray(Math.min(hl + 8, total), Math.min(hl + 32, total)))}`;
}

/** A TCP segment that is not a fragment (the PPTP helper sends held ones whole, also when they came in fragments). */
function isWholeTcp(f: Uint8Array): boolean {
  return f.length >= VNET_LEN + 40 && f[VNET_LEN + 9] === TCP && (r16(f, VNET_LEN + 6) & 0x3fff) === 0;
}

/**
 * Whether the payload of segment `out` lies within that of `read` (a
 * segment or the first fragment of one, same IP ID), by sequence number. A
 * first fragment's datagram may be up to 64 KiB long.
 */
function covers(read: Uint8Array, out: Uint8Array): boolean {
  const span = (f: Uint8Array): [number, number] | null => {
    const ip = f.subarray(VNET_LEN);
    const hl = (ip[0] & 0x0f) * 4;
    const total = Math.min(r16(ip, 2), ip.length);
    if ((r16(ip, 6) & 0x2000) !== 0) return total < hl + 8 ? null : [r32(ip, hl + 4) >>> 0, 0xffff];
    if (total < hl + 20) return null;
    const doff = (ip[hl + 12] >> 4) * 4;
    return [r32(ip, hl + 4) >>> 0, Math.max(0, total - hl - doff)];
  };
  const a = span(read);
  const b = span(out);
  if (a === null || b === null) return false;
  const start = (b[0] - a[0]) >>> 0;
  return start <= a[1] && start + b[1] <= a[1];
}

/** Appends `f` to the list under `key`, at most 4 per key and 100,000 keys; the oldest go first. */
function keep<K>(map: Map<K, Uint8Array[]>, key: K, f: Uint8Array): void {
  const list = map.get(key);
  if (list !== undefined) {
    list.push(f);
    if (list.length > 4) list.shift();
    return;
  }
  map.set(key, [f]);
  if (map.size > 100_000) map.delete(map.keys().next().value as K);
}

/** A datagram as it was read: source, destination, protocol, IP ID. */
function datagramKey(f: Uint8Array): string {
  const ip = f.subarray(VNET_LEN);
  return `${r32(ip, 12)}/${r32(ip, 16)}/${ip[9]}/${r16(ip, 4)}`;
}

function violation(problem: string, input?: string): Violation {
  return { problem, signature: signatureOf(problem), input };
}

export const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const mib = (n: number): string => (n / 1048576).toFixed(1);

/** Runtime forwards the fuzzer adds and removes (some collide with the config's, some are invalid). */
const RUNTIME_FORWARDS: Record<string, unknown>[] = [
  { proto: 'udp', publicPort: 6000, lanAddress: '10.77.0.60', lanPort: 6000 },
  { proto: 'tcp', publicPort: 1723, lanAddress: '10.77.0.61' },
  { proto: 'gre', lanAddress: '10.77.0.62' },
  { proto: 'esp', lanAddress: '10.77.0.63' },
  { proto: 'tcp', publicPort: 2222, lanAddress: '192.0.2.1', lanPort: 22 },
  { proto: 'sctp', publicPort: 1 },
];

export interface EpochPlan {
  profile: Profile;
  randomSeed: number;
}

/**
 * Produces the events of one epoch: batches of generated frames on an
 * advancing clock, the sweep every 100 ms of virtual time, and now and then
 * a listing, a deletion of live ids or a runtime forward change.
 */
export class EventSource {
  readonly gen: PacketGenerator;
  private now = 1_700_000_000_000;
  private lastSweep = this.now;
  private emitted = 0;

  constructor(private readonly rng: Rng, private readonly rig: Rig) {
    this.gen = new PacketGenerator(rng.fork(), rig.profile, rig.view);
    rig.observer = (ip, toLan) => this.gen.observe(ip, toLan);
  }

  get packets(): number { return this.emitted; }

  next(maxPackets: number): FuzzEvent {
    const rng = this.rng;
    if (this.now - this.lastSweep >= 100) {
      this.lastSweep = this.now;
      return { t: 'sweep', now: this.now };
    }
    if (rng.chance(0.008)) return { t: 'control', req: this.request() };
    this.now += rng.chance(0.002) ? rng.range(1_000, 400_000) : rng.skewed(30);
    const size = Math.min(maxPackets, rng.chance(0.1) ? 1 : rng.range(1, 64));
    const frames: Uint8Array[] = [];
    for (let i = 0; i < size; i++) frames.push(this.gen.next());
    this.emitted += size;
    return { t: 'batch', now: this.now, frames };
  }

  /** A control request an operator might send: listings, lookups and deletions by id or filter, runtime forwards. */
  private request(): ControlRequest {
    const rng = this.rng;
    const filter = (): Record<string, unknown> => rng.pick<Record<string, unknown>>([
      {}, { proto: rng.pick(['tcp', 'udp', 'icmp', 'esp', 'gre', 'isakmp', '50', 'sctp']) }, { src: rng.pick(['10.77.0.0/24', '10.77.0.12', '10.88.1.5:500']) },
      { dport: rng.pick([500, 1723, 53, 70000]) }, { state: rng.pick(['ESTABLISHED', 'REPLIED', 'pending', 'CONFIRMED', 'bogus']) },
      { spi: rng.pick(['0x100', 'ffffffff', 'zz']) }, { callId: rng.pick(['1', '0x4001', '70000']) }, { remote: '198.18.0.10' },
    ]);
    switch (rng.weighted([20, 25, 25, 8, 12, 10])) {
      case 0: return { cmd: 'conns', filter: filter(), ...(rng.chance(0.3) ? { sort: rng.pick(['id', 'bytes', 'remote']), reverse: rng.chance(0.5) } : {}), ...(rng.chance(0.3) ? { limit: rng.int(50) } : {}) };
      case 1: return { cmd: 'conns-show', id: rng.pick(this.liveIds()) ?? rng.int(100) };
      case 2: return { cmd: 'conns-delete', id: rng.pick(this.liveIds()) ?? 1 };
      case 3: return rng.chance(0.5) ? { cmd: 'conns-delete', filter: filter() } : { cmd: 'conns-flush', filter: { proto: rng.pick(['udp', 'esp', 'gre']) } };
      case 4: return { cmd: 'forwards-add', forward: rng.pick(RUNTIME_FORWARDS) };
      default: { const f = rng.pick(RUNTIME_FORWARDS); return { cmd: 'forwards-remove', proto: f.proto, publicPort: f.publicPort }; }
    }
  }

  private liveIds(): number[] {
    const d = this.rig.daemon;
    const ids: number[] = [];
    const take = (inUse: Uint8Array, serial: Float64Array): void => {
      for (let n = 0; n < 3; n++) {
        const i = this.rng.int(Math.min(inUse.length, 64));
        if (inUse[i] === 1) ids.push(serial[i]);
      }
    };
    take(d.table.sInUse, d.table.sSerial);
    take(d.pptp.calls.inUse, d.pptp.calls.serial);
    take(d.ipsec.kInUse, d.ipsec.kSerial);
    take(d.ipsec.eInUse, d.ipsec.eSerial);
    if (this.rng.chance(0.2)) ids.push(this.rng.int(1 << 20), 2 ** 53 - 1);
    return ids.length > 0 ? ids : [1];
  }
}

export interface PacketFuzzOptions {
  seed: number;
  packets: number;
  /** Packets per epoch (one profile, one daemon); default 50,000. */
  epochPackets?: number;
  /** Called about once a second. */
  progress?: (done: number, rate: number) => void;
}

export interface Failure {
  seed: number;
  epoch: number;
  plan: EpochPlan;
  /** The epoch's events up to and including the one that failed. */
  events: FuzzEvent[];
  violations: Violation[];
}

export interface PacketFuzzResult {
  packets: number;
  outputs: number;
  epochs: string[];
  seconds: number;
  failure: Failure | null;
  /** What the packets reached, summed over the epochs: drop reasons, translated traffic, VPN helper counters. */
  coverage: Record<string, number>;
}

/** Adds the daemon's counters (flattened `stats`) to `into`. */
function addCoverage(into: Record<string, number>, d: Daemon): void {
  const walk = (prefix: string, v: unknown): void => {
    if (typeof v === 'number') into[prefix] = (into[prefix] ?? 0) + v;
    else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, x);
  };
  const st = d.stats();
  walk('', { packets: st.packets, drops: st.drops, ipsec: st.ipsec, pptp: st.pptp });
}

const DEEP_EVERY = 2000;
const HEAP_EVERY = 20000;

/** The epochs of a run: each its own profile and daemon Math.random seed, all from the run's seed. */
export function epochPlan(seed: number, epoch: number): EpochPlan {
  const rng = new Rng((seed * 7919 + epoch * 104729) >>> 0);
  return { profile: drawProfile(rng), randomSeed: rng.u32() };
}

export async function fuzzPackets(opts: PacketFuzzOptions): Promise<PacketFuzzResult> {
  const epochSize = opts.epochPackets ?? 50_000;
  const started = process.hrtime.bigint();
  let done = 0;
  let outputs = 0;
  const names: string[] = [];
  const coverage: Record<string, number> = {};
  const result = (packets: number, failure: Failure | null): PacketFuzzResult =>
    ({ packets, outputs, epochs: names, seconds: elapsed(started), failure, coverage });
  let lastReport = Date.now();
  for (let epoch = 0; done < opts.packets; epoch++) {
    const plan = epochPlan(opts.seed, epoch);
    names.push(plan.profile.name);
    const rig = new Rig(plan.profile, plan.randomSeed);
    const source = new EventSource(new Rng((opts.seed ^ (epoch * 0x9e3779b9)) >>> 0), rig);
    const events: FuzzEvent[] = [];
    const limit = Math.min(epochSize, opts.packets - done);
    let batches = 0;
    try {
      while (source.packets < limit) {
        const e = source.next(limit - source.packets);
        events.push(e);
        const v = await rig.run(e);
        if (e.t === 'batch') {
          batches++;
          outputs += rig.daemon.datapath.tx.count;
          if (batches % DEEP_EVERY === 0) v.push(...rig.deepCheck());
          if (batches % HEAP_EVERY === 0) v.push(...rig.heapCheck());
        }
        if (v.length > 0) return result(done + source.packets, { seed: opts.seed, epoch, plan, events, violations: v });
        if (opts.progress && Date.now() - lastReport >= 1000) {
          lastReport = Date.now();
          const d = done + source.packets;
          opts.progress(d, d / elapsed(started));
        }
      }
      const v = rig.deepCheck();
      if (v.length > 0) return result(done + source.packets, { seed: opts.seed, epoch, plan, events, violations: v });
    } finally {
      addCoverage(coverage, rig.daemon);
      rig.close();
    }
    done += source.packets;
  }
  return result(done, null);
}

const elapsed = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e9;

/**
 * Replays events on a fresh daemon of the plan; returns the first violations,
 * or null. With `deep` the tables are walked after every batch.
 */
export async function replay(plan: EpochPlan, events: readonly FuzzEvent[], deep = true): Promise<Violation[] | null> {
  const rig = new Rig(plan.profile, plan.randomSeed);
  try {
    for (const e of events) {
      let v = await rig.run(e);
      if (v.length === 0 && deep && e.t === 'batch') v = rig.deepCheck();
      if (v.length > 0) return v;
    }
    const v = rig.deepCheck();
    return v.length > 0 ? v : null;
  } finally {
    rig.close();
  }
}

/** One line about a frame (virtio-net header + datagram) for a human. */
export function describeFrame(f: Uint8Array): string {
  if (f.length < VNET_LEN + 20) return `${f.length}-byte frame`;
  const ip = f.subarray(VNET_LEN);
  const hl = (ip[0] & 0x0f) * 4;
  const proto = ip[9];
  const ports = (proto === TCP || proto === UDP) && ip.length >= hl + 4 ? `:${r16(ip, hl)} -> ` : ' -> ';
  const dports = (proto === TCP || proto === UDP) && ip.length >= hl + 4 ? `:${r16(ip, hl + 2)}` : '';
  const frag = r16(ip, 6) & 0x3fff ? ` frag@${(r16(ip, 6) & 0x1fff) * 8}${r16(ip, 6) & 0x2000 ? '+' : ''}` : '';
  const vflags = f[0] ? ` vnet.flags=${f[0]}` : '';
  return `${protoName(proto)} ${ipText(r32(ip, 12))}${ports}${ipText(r32(ip, 16))}${dports} len=${r16(ip, 2)}${frag}${vflags}`;
}
