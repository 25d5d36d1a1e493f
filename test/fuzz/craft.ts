/**
 * Packet construction for the fuzzer: IPv4 datagrams with TCP, UDP, ICMP,
 * GRE, ESP, ISAKMP and PPTP control payloads, fragments and virtio-net
 * headers, all checksummed with the fuzzer's own code (inet.ts). Addresses
 * are unsigned 32-bit numbers.
 */
import { checksumOf, onesSum, pseudoSum, r16, w16, w32 } from './inet';

export const ICMP = 1, TCP = 6, UDP = 17, GRE = 47, ESP = 50, AH = 51;
export const MF = 0x2000, DF = 0x4000;
export const VNET_LEN = 10;
export const F_NEEDS_CSUM = 1, F_DATA_VALID = 2;
export const GSO_NONE = 0, GSO_TCPV4 = 1, GSO_UDP_L4 = 5, GSO_ECN = 0x80;
export const FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10;

export const ip4 = (text: string): number => text.split('.').reduce((v, x) => v * 256 + Number(x), 0);
export const ipText = (a: number): string => `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;

export interface IpFields {
  src: number;
  dst: number;
  proto: number;
  id?: number;
  ttl?: number;
  tos?: number;
  /** Flags and offset as in the header (DF | MF | offset / 8). */
  frag?: number;
  /** IP options, padded by the caller to a multiple of 4 bytes. */
  options?: Uint8Array;
}

export function ipHeaderChecksum(p: Uint8Array, off = 0): void {
  const hl = (p[off] & 0x0f) * 4;
  w16(p, off + 10, 0);
  w16(p, off + 10, checksumOf(p, off, hl));
}

/** An IPv4 datagram around `payload`, header checksum filled in. */
export function ipv4(f: IpFields, payload: Uint8Array): Uint8Array {
  const opts = f.options ?? new Uint8Array(0);
  const hl = 20 + opts.length;
  const p = new Uint8Array(hl + payload.length);
  p[0] = 0x40 | (hl >> 2);
  p[1] = f.tos ?? 0;
  w16(p, 2, p.length);
  w16(p, 4, f.id ?? 0);
  w16(p, 6, f.frag ?? 0);
  p[8] = f.ttl ?? 63;
  p[9] = f.proto;
  w32(p, 12, f.src);
  w32(p, 16, f.dst);
  p.set(opts, 20);
  p.set(payload, hl);
  ipHeaderChecksum(p);
  return p;
}

export const ipHdrLen = (p: Uint8Array): number => (p[0] & 0x0f) * 4;
export const ipSrc = (p: Uint8Array): number => ((p[12] << 24) | (p[13] << 16) | (p[14] << 8) | p[15]) >>> 0;
export const ipDst = (p: Uint8Array): number => ((p[16] << 24) | (p[17] << 16) | (p[18] << 8) | p[19]) >>> 0;

/** Offset of the L4 checksum field from the L4 header, or -1 (protocols without one the NAT updates). */
export function l4ChecksumAt(proto: number): number {
  return proto === TCP ? 16 : proto === UDP ? 6 : proto === ICMP ? 2 : -1;
}

/** Fills in the TCP, UDP or ICMP checksum of a whole datagram (UDP: a computed 0 goes out as 0xffff). */
export function l4Checksum(p: Uint8Array): void {
  const hl = ipHdrLen(p);
  const total = r16(p, 2);
  const proto = p[9];
  const at = l4ChecksumAt(proto);
  if (at < 0 || total - hl < at + 2) return;
  w16(p, hl + at, 0);
  const init = proto === ICMP ? 0 : pseudoSum(ipSrc(p), ipDst(p), proto, total - hl);
  let c = checksumOf(p, hl, total - hl, init);
  if (proto === UDP && c === 0) c = 0xffff;
  w16(p, hl + at, c);
}

/** Turns a whole TCP/UDP datagram into what a CHECKSUM_PARTIAL sender hands over: the field holds the folded pseudo-header sum. */
export function partialChecksum(p: Uint8Array): void {
  const hl = ipHdrLen(p);
  const total = r16(p, 2);
  const at = l4ChecksumAt(p[9]);
  if (at < 0 || p[9] === ICMP || total - hl < at + 2) return;
  w16(p, hl + at, pseudoSum(ipSrc(p), ipDst(p), p[9], total - hl));
}

export function udp(sport: number, dport: number, payload: Uint8Array): Uint8Array {
  const u = new Uint8Array(8 + payload.length);
  w16(u, 0, sport);
  w16(u, 2, dport);
  w16(u, 4, u.length);
  u.set(payload, 8);
  return u;
}

export interface TcpFields {
  sport: number;
  dport: number;
  seq: number;
  ack?: number;
  flags: number;
  window?: number;
  /** Options, padded with NOPs to 4 bytes here. */
  options?: Uint8Array;
  payload?: Uint8Array;
}

export function tcp(t: TcpFields): Uint8Array {
  const opts = t.options ?? new Uint8Array(0);
  const ol = (opts.length + 3) & ~3;
  const hl = 20 + ol;
  const data = t.payload ?? new Uint8Array(0);
  const b = new Uint8Array(hl + data.length);
  w16(b, 0, t.sport);
  w16(b, 2, t.dport);
  w32(b, 4, t.seq >>> 0);
  w32(b, 8, (t.ack ?? 0) >>> 0);
  b[12] = (hl / 4) << 4;
  b[13] = t.flags;
  w16(b, 14, t.window ?? 64240);
  b.set(opts, 20);
  for (let i = 20 + opts.length; i < hl; i++) b[i] = 1;
  b.set(data, hl);
  return b;
}

export const mssOption = (mss: number): Uint8Array => Uint8Array.of(2, 4, mss >> 8, mss & 0xff);

export function icmpQuery(type: number, code: number, id: number, seq: number, data: Uint8Array): Uint8Array {
  const m = new Uint8Array(8 + data.length);
  m[0] = type;
  m[1] = code;
  w16(m, 4, id);
  w16(m, 6, seq);
  m.set(data, 8);
  w16(m, 2, checksumOf(m, 0, m.length));
  return m;
}

/** An ICMP error quoting `quoted` (an IP datagram, cut to `quoteLen` bytes); `word` fills bytes 4-7 (next-hop MTU, pointer). */
export function icmpError(type: number, code: number, quoted: Uint8Array, quoteLen: number, word = 0): Uint8Array {
  const q = quoted.subarray(0, Math.min(quoteLen, quoted.length));
  const m = new Uint8Array(8 + q.length);
  m[0] = type;
  m[1] = code;
  w32(m, 4, word);
  m.set(q, 8);
  w16(m, 2, checksumOf(m, 0, m.length));
  return m;
}

export interface GreFields {
  /** Byte 0: C 0x80, R 0x40, K 0x20, S 0x10, s 0x08, recursion 0x07. */
  b0: number;
  /** Byte 1: A 0x80, flags 0x78, version 0x07. */
  b1: number;
  proto: number;
  /** Key (PPTP: payload length << 16 | Call ID). */
  key: number;
  seq: number;
  ack: number;
  payload: Uint8Array;
}

/** A GRE header laid out by its flags (RFC 2784 / 2890, PPTP's enhanced header RFC 2637 §4.1): C -> checksum+reserved, K, S, A. */
export function gre(g: GreFields): Uint8Array {
  const c = (g.b0 & 0x80) !== 0;
  const k = (g.b0 & 0x20) !== 0;
  const s = (g.b0 & 0x10) !== 0;
  const a = (g.b1 & 0x80) !== 0 && (g.b1 & 7) === 1;
  const hl = 4 + (c ? 4 : 0) + (k ? 4 : 0) + (s ? 4 : 0) + (a ? 4 : 0);
  const b = new Uint8Array(hl + g.payload.length);
  b[0] = g.b0;
  b[1] = g.b1;
  w16(b, 2, g.proto);
  let o = 4;
  const csumAt = o;
  if (c) o += 4;
  if (k) { w32(b, o, g.key >>> 0); o += 4; }
  if (s) { w32(b, o, g.seq >>> 0); o += 4; }
  if (a) { w32(b, o, g.ack >>> 0); o += 4; }
  b.set(g.payload, o);
  if (c) w16(b, csumAt, checksumOf(b, 0, b.length));
  return b;
}

export function esp(spi: number, seq: number, body: Uint8Array): Uint8Array {
  const b = new Uint8Array(8 + body.length);
  w32(b, 0, spi >>> 0);
  w32(b, 4, seq >>> 0);
  b.set(body, 8);
  return b;
}

export interface IsakmpFields {
  ic: Uint8Array;
  rc: Uint8Array;
  next: number;
  version: number;
  exchange: number;
  flags: number;
  messageId: number;
  body: Uint8Array;
}

export function isakmp(f: IsakmpFields): Uint8Array {
  const b = new Uint8Array(28 + f.body.length);
  b.set(f.ic.subarray(0, 8), 0);
  b.set(f.rc.subarray(0, 8), 8);
  b[16] = f.next;
  b[17] = f.version;
  b[18] = f.exchange;
  b[19] = f.flags;
  w32(b, 20, f.messageId >>> 0);
  w32(b, 24, b.length);
  b.set(f.body, 28);
  return b;
}

/** Fixed length of each PPTP control message type (RFC 2637 §2). */
export const PPTP_LEN = [0, 156, 156, 16, 16, 16, 20, 168, 32, 220, 24, 28, 16, 148, 40, 24];

/** A PPTP control message of `type`: Call ID @12, peer Call ID @14, result @16 where the type has them. */
export function pptpMessage(type: number, callId: number, peer: number, result: number, filler: number): Uint8Array {
  const m = new Uint8Array(PPTP_LEN[type] || 16);
  w16(m, 0, m.length);
  w16(m, 2, 1);
  w32(m, 4, 0x1a2b3c4d);
  w16(m, 8, type);
  for (let i = 12; i < m.length; i++) m[i] = (filler + i * 13) & 0xff;
  if (m.length >= 14) w16(m, 12, callId);
  if (m.length >= 16) w16(m, 14, peer);
  if (m.length >= 17) m[16] = result;
  return m;
}

export interface VnetFields {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** struct virtio_net_hdr before the datagram (little-endian fields, TUNSETVNETLE). */
export function withVnet(v: VnetFields, datagram: Uint8Array): Uint8Array {
  const f = new Uint8Array(VNET_LEN + datagram.length);
  f[0] = v.flags;
  f[1] = v.gsoType;
  const le16 = (o: number, x: number): void => { f[o] = x & 0xff; f[o + 1] = (x >> 8) & 0xff; };
  le16(2, v.hdrLen);
  le16(4, v.gsoSize);
  le16(6, v.csumStart);
  le16(8, v.csumOffset);
  f.set(datagram, VNET_LEN);
  return f;
}

export const NO_VNET: VnetFields = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

/**
 * Splits a datagram into fragments of at most `size` payload bytes (a
 * multiple of 8, RFC 791 §3.2); the first keeps the options, later ones drop
 * them as a router would.
 */
export function fragments(p: Uint8Array, size: number): Uint8Array[] {
  const hl = ipHdrLen(p);
  const total = r16(p, 2);
  const data = p.subarray(hl, total);
  const step = Math.max(8, size & ~7);
  const base = (r16(p, 6) & 0x1fff) * 8;
  const moreAfter = (r16(p, 6) & MF) !== 0;
  const out: Uint8Array[] = [];
  for (let o = 0; o < data.length; o += step) {
    const chunk = data.subarray(o, Math.min(data.length, o + step));
    const last = o + step >= data.length;
    const keepOpts = o === 0;
    const h = keepOpts ? hl : 20;
    const f = new Uint8Array(h + chunk.length);
    f.set(p.subarray(0, 20), 0);
    if (keepOpts) f.set(p.subarray(20, hl), 20);
    f[0] = 0x40 | (h >> 2);
    w16(f, 2, f.length);
    w16(f, 6, (r16(p, 6) & DF) | (last && !moreAfter ? 0 : MF) | ((base + o) >> 3));
    f.set(chunk, h);
    ipHeaderChecksum(f);
    out.push(f);
  }
  return out;
}

/** True when the L4 checksum of a whole datagram is valid (UDP 0 = none). */
export function l4Valid(p: Uint8Array): boolean {
  const hl = ipHdrLen(p);
  const total = r16(p, 2);
  const proto = p[9];
  const at = l4ChecksumAt(proto);
  if (at < 0 || total - hl < at + 2) return true;
  if (proto === UDP && r16(p, hl + 6) === 0) return true;
  const init = proto === ICMP ? 0 : pseudoSum(ipSrc(p), ipDst(p), proto, total - hl);
  return onesSum(p, hl, total - hl, init) === 0xffff;
}
