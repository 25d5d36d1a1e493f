/**
 * Test helpers: craft real IPv4 packets with correct checksums, parse them
 * back for assertions, verify every checksum they carry, and drive a Napt
 * engine one packet at a time.
 *
 * The checksum arithmetic here is a deliberately naive, independent RFC 1071
 * implementation, so the engine's own (src/wire/checksum.ts) is checked
 * against something it does not share code with.
 */
import assert from 'node:assert/strict';
import { Drop, DROP_NAMES } from '../../src/core/verdict';
import type { IpsecMasq } from '../../src/helpers/ipsec/ipsec';
import { FragmentTracker, WHOLE_SIZE } from '../../src/nat/fragments';
import { Journal } from '../../src/core/journal';
import { Napt, NatTimers } from '../../src/nat/napt';
import { PortPolicy, SessionTable } from '../../src/nat/sessions';
import type { HostLimits } from '../../src/nat/hosts';
import type { InboundLimits } from '../../src/nat/budget';
import { TxList } from '../../src/core/tx-list';
import { int32ToIpv4, ipv4ToInt32 } from '../../src/core/ipv4-addr';
import { SIDE_LAN, SIDE_WAN, type Side } from '../../src/core/side';

export const ICMP = 1;
export const TCP = 6;
export const UDP = 17;
export const DF = 0x4000;
export const MF = 0x2000;
export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;

export type Addr = string | number;
export const addr = (a: Addr): number => (typeof a === 'string' ? ipv4ToInt32(a) : a | 0);

// ---- byte helpers ---------------------------------------------------------

export const r16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1];
export const r32 = (b: Uint8Array, o: number): number => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
export function w16(b: Uint8Array, o: number, v: number): void { b[o] = (v >>> 8) & 0xff; b[o + 1] = v & 0xff; }
export function w32(b: Uint8Array, o: number, v: number): void { w16(b, o, v >>> 16); w16(b, o + 2, v & 0xffff); }

export function hex(text: string): Uint8Array {
  const digits = text.replace(/\s+/g, '');
  assert.equal(digits.length % 2, 0, 'odd number of hex digits');
  return Uint8Array.from(digits.match(/../g) ?? [], (x) => parseInt(x, 16));
}

/** Bytes 0, 1, 2, ... (mod 251, so fragments do not line up with a period). */
export function pattern(len: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (i + seed) % 251);
}

export const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/** Copy of `p` changed by `fn`. */
export function mutate(p: Uint8Array, fn: (b: Uint8Array) => void): Uint8Array {
  const b = Uint8Array.from(p);
  fn(b);
  return b;
}

/** Seeded PRNG (mulberry32) in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- reference checksum (RFC 1071) ----------------------------------------

/** Folded one's-complement sum of big-endian 16-bit words (odd length padded with zero). */
export function onesSum(b: Uint8Array, initial = 0): number {
  let s = initial;
  for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) | (i + 1 < b.length ? b[i + 1] : 0);
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return s;
}

export const inetChecksum = (b: Uint8Array, initial = 0): number => ~onesSum(b, initial) & 0xffff;

/** Uncomplemented sum of the TCP/UDP pseudo-header. */
export function pseudo(src: Addr, dst: Addr, proto: number, l4Len: number): number {
  const p = new Uint8Array(12);
  w32(p, 0, addr(src));
  w32(p, 4, addr(dst));
  p[9] = proto;
  w16(p, 10, l4Len);
  return onesSum(p);
}

/** Fills in a transport checksum at `csumAt` (UDP: a computed 0 is sent as 0xffff). */
function finishL4(l4: Uint8Array, csumAt: number, src: Addr, dst: Addr, proto: number): Uint8Array {
  w16(l4, csumAt, 0);
  const c = inetChecksum(l4, pseudo(src, dst, proto, l4.length));
  w16(l4, csumAt, proto === UDP && c === 0 ? 0xffff : c);
  return l4;
}

// ---- builders ---------------------------------------------------------------

export interface IpOpts {
  id?: number;
  ttl?: number;
  tos?: number;
  /** DF and/or MF. */
  flags?: number;
  /** Fragment offset in bytes (a multiple of 8). */
  fragOffset?: number;
  /** IP options, a multiple of 4 bytes. */
  options?: Uint8Array;
}

export interface Ipv4Spec extends IpOpts {
  src: Addr;
  dst: Addr;
  proto: number;
  payload: Uint8Array;
}

export function ipv4(s: Ipv4Spec): Uint8Array {
  const opts = s.options ?? new Uint8Array(0);
  assert.equal(opts.length % 4, 0, 'IP options must be padded to 4 bytes');
  const hl = 20 + opts.length;
  const p = new Uint8Array(hl + s.payload.length);
  p[0] = 0x40 | (hl >>> 2);
  p[1] = s.tos ?? 0;
  w16(p, 2, p.length);
  w16(p, 4, s.id ?? 0x1234);
  w16(p, 6, (s.flags ?? 0) | ((s.fragOffset ?? 0) >>> 3));
  p[8] = s.ttl ?? 64;
  p[9] = s.proto;
  w32(p, 12, addr(s.src));
  w32(p, 16, addr(s.dst));
  p.set(opts, 20);
  w16(p, 10, inetChecksum(p.subarray(0, hl)));
  p.set(s.payload, hl);
  return p;
}

/** Recomputes the IP header checksum in place (after a deliberate mutation). */
export function fixIpChecksum(p: Uint8Array): Uint8Array {
  const hl = (p[0] & 0x0f) << 2;
  w16(p, 10, 0);
  w16(p, 10, inetChecksum(p.subarray(0, hl)));
  return p;
}

/** Recomputes the TCP/UDP (with pseudo-header) or ICMP checksum of a whole, unfragmented packet in place. */
export function fixL4Checksum(p: Uint8Array): Uint8Array {
  const q = parse(p);
  const l4 = p.subarray(q.hdrLen, q.totalLen);
  if (q.proto === ICMP) {
    w16(l4, 2, 0);
    w16(l4, 2, inetChecksum(l4));
  } else {
    finishL4(l4, q.proto === TCP ? 16 : 6, q.src, q.dst, q.proto);
  }
  return p;
}

/** The packet as a CHECKSUM_PARTIAL sender hands it over: the L4 checksum field holds the pseudo-header sum. */
export function asPartial(p: Uint8Array): Uint8Array {
  const q = parse(p);
  return mutate(p, (b) => w16(b, q.hdrLen + (q.proto === TCP ? 16 : 6), pseudo(q.src, q.dst, q.proto, q.totalLen - q.hdrLen)));
}

export interface TcpSpec {
  sport: number;
  dport: number;
  flags: number;
  seq?: number;
  ack?: number;
  window?: number;
  options?: Uint8Array;
  payload?: Uint8Array;
}

export function tcp(t: TcpSpec, src: Addr, dst: Addr): Uint8Array {
  const opts = t.options ?? new Uint8Array(0);
  const hl = 20 + ((opts.length + 3) & ~3);
  const payload = t.payload ?? new Uint8Array(0);
  const b = new Uint8Array(hl + payload.length);
  w16(b, 0, t.sport);
  w16(b, 2, t.dport);
  w32(b, 4, t.seq ?? 1000);
  w32(b, 8, t.ack ?? 0);
  b[12] = (hl >>> 2) << 4;
  b[13] = t.flags;
  w16(b, 14, t.window ?? 65535);
  b.set(opts, 20);
  b.set(payload, hl);
  return finishL4(b, 16, src, dst, TCP);
}

export interface UdpSpec {
  sport: number;
  dport: number;
  payload?: Uint8Array;
  /** Send checksum 0 ("no checksum", RFC 768). */
  noChecksum?: boolean;
}

export function udp(u: UdpSpec, src: Addr, dst: Addr): Uint8Array {
  const payload = u.payload ?? new Uint8Array(0);
  const b = new Uint8Array(8 + payload.length);
  w16(b, 0, u.sport);
  w16(b, 2, u.dport);
  w16(b, 4, b.length);
  b.set(payload, 8);
  return u.noChecksum ? b : finishL4(b, 6, src, dst, UDP);
}

export interface EchoSpec {
  /** 8 request (default), 0 reply. */
  type?: number;
  id: number;
  seq?: number;
  payload?: Uint8Array;
}

export function icmpEcho(e: EchoSpec): Uint8Array {
  const payload = e.payload ?? new Uint8Array(0);
  const b = new Uint8Array(8 + payload.length);
  b[0] = e.type ?? 8;
  w16(b, 4, e.id);
  w16(b, 6, e.seq ?? 1);
  b.set(payload, 8);
  w16(b, 2, inetChecksum(b));
  return b;
}

/** ICMP error message quoting the first `quoteLen` bytes of `quoted`; `mtu` goes in the next-hop MTU field. */
export function icmpError(type: number, code: number, quoted: Uint8Array, quoteLen = quoted.length, mtu = 0): Uint8Array {
  const b = new Uint8Array(8 + Math.min(quoteLen, quoted.length));
  b[0] = type;
  b[1] = code;
  w16(b, 6, mtu);
  b.set(quoted.subarray(0, b.length - 8), 8);
  w16(b, 2, inetChecksum(b));
  return b;
}

export const udpPacket = (src: Addr, dst: Addr, u: UdpSpec, ip: IpOpts = {}): Uint8Array =>
  ipv4({ ...ip, src, dst, proto: UDP, payload: udp(u, src, dst) });
export const tcpPacket = (src: Addr, dst: Addr, t: TcpSpec, ip: IpOpts = {}): Uint8Array =>
  ipv4({ ...ip, src, dst, proto: TCP, payload: tcp(t, src, dst) });
export const icmpPacket = (src: Addr, dst: Addr, icmp: Uint8Array, ip: IpOpts = {}): Uint8Array =>
  ipv4({ ...ip, src, dst, proto: ICMP, payload: icmp });

/** Splits an IP packet into fragments carrying `fragSize` payload bytes each (a multiple of 8). */
export function fragment(p: Uint8Array, fragSize: number): Uint8Array[] {
  assert.equal(fragSize % 8, 0, 'fragment size must be a multiple of 8');
  const hl = (p[0] & 0x0f) << 2;
  const field = r16(p, 6);
  const baseOff = (field & 0x1fff) << 3;
  const payload = p.subarray(hl, r16(p, 2));
  const out: Uint8Array[] = [];
  for (let o = 0; o < payload.length; o += fragSize) {
    const chunk = payload.subarray(o, o + fragSize);
    const last = o + fragSize >= payload.length;
    const f = concat(p.subarray(0, hl), chunk);
    w16(f, 2, f.length);
    w16(f, 6, (field & DF) | (last ? field & MF : MF) | ((baseOff + o) >>> 3));
    out.push(fixIpChecksum(f));
  }
  return out;
}

/** Reassembles fragments (any order) into one IP packet; throws on gaps or overlaps. */
export function reassemble(frags: Uint8Array[]): Uint8Array {
  const sorted = frags.map((f) => ({ f, off: (r16(f, 6) & 0x1fff) << 3, hl: (f[0] & 0x0f) << 2 })).sort((a, b) => a.off - b.off);
  let next = 0;
  const parts: Uint8Array[] = [];
  for (const { f, off, hl } of sorted) {
    assert.equal(off, next, `fragment gap or overlap at ${next}`);
    parts.push(f.subarray(hl, r16(f, 2)));
    next += r16(f, 2) - hl;
  }
  assert.equal(r16(sorted[sorted.length - 1].f, 6) & MF, 0, 'last fragment has MF set');
  const first = sorted[0];
  const p = concat(first.f.subarray(0, first.hl), ...parts);
  w16(p, 2, p.length);
  w16(p, 6, r16(p, 6) & DF);
  return fixIpChecksum(p);
}

// ---- parser -----------------------------------------------------------------

export interface Parsed {
  hdrLen: number;
  totalLen: number;
  id: number;
  flags: number;
  fragOffset: number;
  ttl: number;
  proto: number;
  src: string;
  dst: string;
  /** Transport bytes present (may be fewer than the header says, for a quoted packet). */
  l4: Uint8Array;
  sport?: number;
  dport?: number;
  l4Csum?: number;
  tcpFlags?: number;
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  /** Next-hop MTU of a fragmentation-needed error. */
  mtu?: number;
  /** The packet quoted by an ICMP error. */
  inner?: Parsed;
}

const ICMP_ERROR_TYPES = new Set([3, 4, 11, 12]);

export function parse(b: Uint8Array): Parsed {
  const hdrLen = (b[0] & 0x0f) << 2;
  const totalLen = r16(b, 2);
  const frag = r16(b, 6);
  const p: Parsed = {
    hdrLen, totalLen, id: r16(b, 4), flags: frag & (DF | MF), fragOffset: (frag & 0x1fff) << 3,
    ttl: b[8], proto: b[9], src: int32ToIpv4(r32(b, 12)), dst: int32ToIpv4(r32(b, 16)),
    l4: b.subarray(hdrLen, Math.min(totalLen, b.length)),
  };
  const l4 = p.l4;
  if (p.fragOffset !== 0) return p;
  if ((p.proto === TCP || p.proto === UDP) && l4.length >= 4) {
    p.sport = r16(l4, 0);
    p.dport = r16(l4, 2);
    const csumAt = p.proto === TCP ? 16 : 6;
    if (l4.length >= csumAt + 2) p.l4Csum = r16(l4, csumAt);
    if (p.proto === TCP && l4.length >= 14) p.tcpFlags = l4[13];
  } else if (p.proto === ICMP && l4.length >= 8) {
    p.icmpType = l4[0];
    p.icmpCode = l4[1];
    p.l4Csum = r16(l4, 2);
    if (ICMP_ERROR_TYPES.has(l4[0])) {
      p.mtu = r16(l4, 6);
      if (l4.length >= 28) p.inner = parse(l4.subarray(8));
    } else {
      p.icmpId = r16(l4, 4);
    }
  }
  return p;
}

// ---- checksum verifier ------------------------------------------------------

/**
 * Every checksum problem of an IP packet, as readable strings (empty = valid):
 * the IP header; unless it is a fragment, the TCP/UDP checksum with its
 * pseudo-header or the ICMP checksum over the message; for an ICMP error the
 * quoted packet's IP header and, when the quoted datagram is whole, its own
 * transport checksum (recursively).
 */
export function checksumProblems(b: Uint8Array, label = ''): string[] {
  const problems: string[] = [];
  const p = parse(b);
  if (onesSum(b.subarray(0, p.hdrLen)) !== 0xffff) problems.push(`${label}IP header checksum`);
  const whole = p.totalLen <= b.length;
  if (!whole && label === '') problems.push('packet shorter than its total length');
  if (!whole || p.flags & MF || p.fragOffset !== 0) return problems;
  const l4 = p.l4;
  if (p.proto === TCP || p.proto === UDP) {
    if (!(p.proto === UDP && r16(l4, 6) === 0) && onesSum(l4, pseudo(r32(b, 12), r32(b, 16), p.proto, l4.length)) !== 0xffff) {
      problems.push(`${label}${p.proto === TCP ? 'TCP' : 'UDP'} checksum`);
    }
  } else if (p.proto === ICMP) {
    if (onesSum(l4) !== 0xffff) problems.push(`${label}ICMP checksum`);
    if (ICMP_ERROR_TYPES.has(l4[0]) && l4.length >= 28) problems.push(...checksumProblems(l4.subarray(8), `${label}embedded `));
  }
  return problems;
}

export const checksumsValid = (b: Uint8Array): boolean => checksumProblems(b).length === 0;

/** Completes a CHECKSUM_PARTIAL packet the way the kernel does: sum from csumStart to the end, store at csumStart + csumOffset. */
export function completePartial(b: Uint8Array, csumStart: number, csumOffset: number): Uint8Array {
  const c = mutate(b, () => undefined);
  w16(c, csumStart + csumOffset, inetChecksum(c.subarray(csumStart, r16(c, 2))));
  return c;
}

// ---- captured packets -------------------------------------------------------

/** Real captures (hex as printed by Wireshark/tcpdump, link header removed). */
export const CAPTURED: ReadonlyArray<{ name: string; bytes: Uint8Array; src: string; dst: string; proto: number }> = [
  {
    name: 'Windows ping 10.0.1.16 -> 8.8.8.8, echo request id 1 seq 1, 32 bytes "abc..."',
    src: '10.0.1.16', dst: '8.8.8.8', proto: ICMP,
    bytes: hex(`45 00 00 3c 3b b6 00 00 80 01 e3 eb 0a 00 01 10 08 08 08 08
      08 00 4d 5a 00 01 00 01 61 62 63 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70
      71 72 73 74 75 76 77 61 62 63 64 65 66 67 68 69`),
  },
  {
    name: 'Linux ping localhost, echo request id 21780 seq 1, 56 bytes (tcpdump -X)',
    src: '127.0.0.1', dst: '127.0.0.1', proto: ICMP,
    bytes: hex(`4500 0054 9210 4000 4001 aa96 7f00 0001 7f00 0001 0800 492b 5514 0001
      2d08 f460 0000 0000 6c83 0d00 0000 0000 1011 1213 1415 1617 1819 1a1b 1c1d 1e1f
      2021 2223 2425 2627 2829 2a2b 2c2d 2e2f 3031 3233 3435 3637`),
  },
  {
    name: 'Linux ping localhost, the matching echo reply',
    src: '127.0.0.1', dst: '127.0.0.1', proto: ICMP,
    bytes: hex(`4500 0054 9211 0000 4001 ea95 7f00 0001 7f00 0001 0000 512b 5514 0001
      2d08 f460 0000 0000 6c83 0d00 0000 0000 1011 1213 1415 1617 1819 1a1b 1c1d 1e1f
      2021 2223 2425 2627 2829 2a2b 2c2d 2e2f 3031 3233 3435 3637`),
  },
  {
    name: 'TCP keep-alive (ACK, 1 byte) 10.0.1.16:65047 -> 108.177.14.95:443',
    src: '10.0.1.16', dst: '108.177.14.95', proto: TCP,
    bytes: hex(`45 00 00 29 95 cc 40 00 80 06 de e2 0a 00 01 10 6c b1 0e 5f
      fe 17 01 bb 2e d3 a6 f9 64 0e f3 68 50 10 01 ff fa 9d 00 00 00`),
  },
];

// ---- engine harness ---------------------------------------------------------

export const LAN_NET = '10.77.0.0';
export const LAN_MASK = '255.255.255.0';
export const PUBLIC = '198.18.0.2';

export const TIMERS: NatTimers = {
  tcpEstablishedMs: 7440_000,
  tcpTransitoryMs: 240_000,
  udpMs: 300_000,
  icmpMs: 60_000,
  fragmentMs: 5_000,
};

export const DEFAULT_PORTS: PortPolicy = { range: [1024, 65535], lowRange: [1, 1023], preserve: true };

export interface VnetSpec {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

/** struct virtio_net_hdr, little-endian fields. */
export function vnetHeader(v: VnetSpec = {}): Uint8Array {
  const b = new Uint8Array(10);
  const dv = new DataView(b.buffer);
  b[0] = v.flags ?? 0;
  b[1] = v.gsoType ?? 0;
  dv.setUint16(2, v.hdrLen ?? 0, true);
  dv.setUint16(4, v.gsoSize ?? 0, true);
  dv.setUint16(6, v.csumStart ?? 0, true);
  dv.setUint16(8, v.csumOffset ?? 0, true);
  return b;
}

export interface NatSetup {
  vnetLen?: number;
  capacity?: number;
  ports?: PortPolicy;
  eif?: boolean;
  /** Public addresses (default: PUBLIC alone). */
  publics?: Addr[];
  hostLimits?: HostLimits;
  inboundLimits?: InboundLimits;
  /** false: refused flows are only dropped (no ICMP code 13). */
  refuseWithIcmp?: boolean;
  holdSlots?: number;
  holdSlotSize?: number;
  seed?: number;
  now?: number;
}

/** A Napt over an arena of one receive slot (big enough for a 64 KiB super-packet) plus the fragment hold pool. */
export class NatHarness {
  static readonly SLOT = 65536 + 64;
  readonly vnetLen: number;
  readonly journal = new Journal(1024);
  readonly table: SessionTable;
  readonly frags: FragmentTracker;
  readonly napt: Napt;
  readonly arena: Uint8Array;
  readonly out = new TxList(64);
  /** IPsec tables attached by a test (test/unit/ipsec.test.ts). */
  ipsec: IpsecMasq | null = null;
  /** The vnet headers of the last `send`'s output, in order. */
  lastVnet: Uint8Array[] = [];

  constructor(s: NatSetup = {}) {
    this.vnetLen = s.vnetLen ?? 10;
    const holdSlots = s.holdSlots ?? 8;
    const holdSlotSize = s.holdSlotSize ?? 2048;
    this.arena = new Uint8Array(NatHarness.SLOT + holdSlots * holdSlotSize + WHOLE_SIZE);
    this.table = new SessionTable(s.capacity ?? 256, (s.publics ?? [PUBLIC]).map(addr), s.ports ?? DEFAULT_PORTS, this.journal,
      prng(s.seed ?? 1), { exclusivePorts: s.eif ?? false, hostLimits: s.hostLimits, inboundLimits: s.inboundLimits });
    this.frags = new FragmentTracker(64, NatHarness.SLOT, holdSlotSize, holdSlots, NatHarness.SLOT + holdSlots * holdSlotSize);
    this.napt = new Napt(this.table, this.frags, this.arena, {
      lanPrefixes: [[addr(LAN_NET), addr(LAN_MASK)]],
      timers: TIMERS,
      endpointIndependentFiltering: s.eif ?? false,
      vnetLen: this.vnetLen,
      refuseWithIcmp: s.refuseWithIcmp,
    });
    this.napt.now = s.now ?? 1_000_000;
  }

  get now(): number { return this.napt.now; }
  set now(t: number) { this.napt.now = t; }

  /**
   * Runs one batch of one packet given as raw bytes (vnet header included)
   * and `len`, read from the TUN device of `side`; returns the IP packets
   * queued. By default the side the policy routing would feed it from: LAN
   * when its source is in the LAN prefix, else WAN.
   */
  processRaw(raw: Uint8Array, len = raw.length, side?: Side): Uint8Array[] {
    this.frags.recycleReleased();
    this.out.count = 0;
    this.arena.set(raw, 0);
    const v0 = this.vnetLen;
    const src = raw.length >= v0 + 16 ? ((raw[v0 + 12] << 24) | (raw[v0 + 13] << 16) | (raw[v0 + 14] << 8) | raw[v0 + 15]) : addr(LAN_NET);
    this.napt.process(0, len, this.out, side ?? (this.napt.isLan(src) ? SIDE_LAN : SIDE_WAN));
    const v = this.vnetLen;
    const pkts: Uint8Array[] = [];
    this.lastVnet = [];
    for (let i = 0; i < this.out.count; i++) {
      const off = this.out.list[2 * i];
      const n = this.out.list[2 * i + 1];
      this.lastVnet.push(this.arena.slice(off, off + v));
      pkts.push(this.arena.slice(off + v, off + n));
    }
    return pkts;
  }

  /** Sends one IP packet (prefixed with a vnet header built from `vnet` when vnetLen is 10), from `side` (default: by its source). */
  send(ip: Uint8Array, vnet?: VnetSpec, side?: Side): Uint8Array[] {
    if (this.vnetLen === 0) {
      assert.equal(vnet, undefined, 'vnet header given but vnetLen is 0');
      return this.processRaw(ip, ip.length, side);
    }
    const raw = concat(vnetHeader(vnet), ip);
    return this.processRaw(raw, raw.length, side);
  }

  /** Sends a packet (from `side`, default by its source) expected to produce exactly one output packet (and no drop), and returns it. */
  one(ip: Uint8Array, vnet?: VnetSpec, side?: Side): Uint8Array {
    const before = Float64Array.from(this.napt.drops.counts);
    const out = this.send(ip, vnet, side);
    assert.deepEqual(this.dropDelta(before), {}, 'unexpected drop');
    assert.equal(out.length, 1, `expected one packet out, got ${out.length}`);
    return out[0];
  }

  /** Drop counters that changed since `before`, by name. */
  dropDelta(before: Float64Array): Record<string, number> {
    const delta: Record<string, number> = {};
    this.napt.drops.counts.forEach((c, i) => { if (c !== before[i]) delta[DROP_NAMES[i]] = c - before[i]; });
    return delta;
  }

  /** Runs `fn` (which processes packets) and asserts it dropped exactly one packet for `reason` and sent nothing. */
  expectDrop(reason: number, fn: () => Uint8Array[]): void {
    const before = Float64Array.from(this.napt.drops.counts);
    const out = fn();
    assert.deepEqual(this.dropDelta(before), { [DROP_NAMES[reason]]: 1 });
    assert.equal(out.length, 0, 'a dropped packet was queued for sending');
  }

  /**
   * Sending the outbound `ip` is refused for `reason` (counted as that drop)
   * and answered with ICMP destination unreachable, code 13, from `from` to
   * its sender, quoting its IP header and 8 more bytes (RFC 5508 REQ-8).
   */
  refused(reason: number, ip: Uint8Array, from: Addr = PUBLIC): Uint8Array {
    const before = Float64Array.from(this.napt.drops.counts);
    const out = this.send(ip);
    assert.deepEqual(this.dropDelta(before), { [DROP_NAMES[reason]]: 1 });
    assert.equal(out.length, 1, 'one ICMP error back');
    const e = out[0];
    const p = parse(e);
    assert.deepEqual([p.proto, p.src, p.dst, e[20], e[21]], [ICMP, int32ToIpv4(addr(from)), parse(ip).src, 3, 13]);
    const hl = (ip[0] & 0x0f) * 4;
    assert.deepEqual(e.subarray(28), ip.subarray(0, Math.min(ip.length, hl + 8)), 'quotes the header and 8 bytes');
    assert.deepEqual(checksumProblems(e), []);
    if (this.vnetLen > 0) assert.deepEqual(this.lastVnet[0], new Uint8Array(10), 'a plain vnet header');
    return e;
  }

  /** Shorthand: sending `ip` drops it for `reason`. */
  dropped(reason: number, ip: Uint8Array, vnet?: VnetSpec): void {
    this.expectDrop(reason, () => this.send(ip, vnet));
  }

  /** Session for an outbound flow, or -1. */
  session(proto: number, lan: Addr, lanPort: number, rem: Addr, remPort: number): number {
    return this.table.findOut(proto, addr(lan), lanPort, addr(rem), remPort);
  }

  /** Public port of a LAN endpoint's flow to a remote, or -1. */
  pubPort(proto: number, lan: Addr, lanPort: number, rem: Addr, remPort: number): number {
    const s = this.session(proto, lan, lanPort, rem, remPort);
    return s < 0 ? -1 : this.table.pubPortOf(s);
  }
}

export { Drop };
