/**
 * The invariants every packet the router writes must hold, checked with the
 * fuzzer's own arithmetic (inet.ts), not the code under test:
 *  - a valid IPv4 header (version, IHL, checksum) whose total length is what
 *    was written;
 *  - it leaves on the WAN side only with the public address as source, goes
 *    to a LAN host, or (shared mode, ICMP the box owns) back to the kernel
 *    unchanged; nothing else is addressed to the public address but (shared
 *    mode) a LAN host's echo request to the box;
 *  - valid L4 checksums where the router verified them on the way in, else
 *    the same error (residual) as the input had, or for a partial checksum
 *    the same relation to the pseudo-header;
 *  - ICMP errors: valid ICMP checksum, a valid quoted IPv4 header checksum,
 *    the quoted packet consistent with the outer header, quoted TCP/UDP/ICMP
 *    checksums moved with the fields that changed;
 *  - against the packet that came in (when the output is the rewritten input):
 *    the virtio-net header, protocol, IP ID, fragment field and length
 *    unchanged, the TTL given back (restoreHop), GRE checksums and ESP SPIs
 *    untouched.
 */
import { fold16, onesEqual, onesSub, onesSum, pseudoSum, r16, r32 } from './inet';
import { F_DATA_VALID, F_NEEDS_CSUM, GRE, ESP, ICMP, TCP, UDP, VNET_LEN, ipText } from './craft';
import { Profile, isLanAddr } from './world';

export interface Sides {
  profile: Profile;
  /** The public address, unsigned. */
  publicAddr: number;
  /** Largest MSS a SYN may carry out (config mssClamp), 0 for no clamping. */
  mssClamp: number;
}

const ICMP_ERRORS = new Set([3, 4, 11, 12]);
/** The PPTP control port (RFC 2637 §2.1): the helper reassembles its datagrams, holds its segments beyond a gap and rewrites Call IDs. */
export const PPTP_PORT = 1723;

/** Sum of the words a NAT changes in a TCP/UDP header: checksum, addresses, ports; moves together when updated right. */
function headerResidual(csum: number, src: number, dst: number, sport: number, dport: number): number {
  return fold16(csum + Math.floor(src / 65536) + (src % 65536) + Math.floor(dst / 65536) + (dst % 65536) + sport + dport);
}

/** The L4 sum of a whole TCP/UDP datagram with its pseudo-header (0xffff when the checksum is right). */
function l4Residual(ip: Uint8Array, hl: number, total: number, proto: number): number {
  return onesSum(ip, hl, total - hl, pseudoSum(r32(ip, 12), r32(ip, 16), proto, total - hl));
}

/**
 * Checks one written packet `out` (virtio-net header + datagram). `origin`
 * is the frame read into the same receive slot when the output is that
 * packet rewritten in place, or null (a held fragment, a guessed copy).
 * Returns the problems found (empty when none).
 */
export function checkOutput(sides: Sides, out: Uint8Array, origin: Uint8Array | null): string[] {
  const problems: string[] = [];
  const bad = (msg: string): void => { problems.push(msg); };
  if (out.length < VNET_LEN + 20) {
    bad(`written packet of ${out.length} bytes is shorter than a virtio-net and an IPv4 header`);
    return problems;
  }
  const ip = out.subarray(VNET_LEN);
  const hl = (ip[0] & 0x0f) * 4;
  if (ip[0] >> 4 !== 4 || hl < 20 || hl > ip.length) {
    bad(`written packet has version ${ip[0] >> 4} and header length ${hl}`);
    return problems;
  }
  const total = r16(ip, 2);
  if (total !== ip.length) bad(`written length ${out.length} is not the virtio-net header plus total length ${total}`);
  if (onesSum(ip, 0, hl) !== 0xffff) bad('IPv4 header checksum is wrong');
  if (total < hl || total > ip.length) return problems;
  const pub = sides.publicAddr;
  const src = r32(ip, 12);
  const dst = r32(ip, 16);
  const proto = ip[9];
  const frag = r16(ip, 6);
  const later = (frag & 0x1fff) !== 0;
  const fragment = (frag & 0x3fff) !== 0;
  const toLan = isLanAddr(sides.profile, dst);
  const oip = origin !== null && origin.length >= VNET_LEN + 20 ? origin.subarray(VNET_LEN) : null;
  // Shared mode: the box's own ICMP goes back to the kernel unchanged; from the public address itself only when it
  // came in so (the box's own packet to itself, steered into the TUN), never because a translation made it so.
  const fromBox = oip !== null && r32(oip, 12) === pub;
  const toKernel = !toLan && dst === pub && (src !== pub || fromBox) && sides.profile.shared && proto === ICMP;
  // Shared mode: a LAN host's echo or timestamp request to the box's own address, translated; the box's
  // answer is steered back into the TUN by the ICMP rule and reaches the host through the mapping.
  const toBox = !toLan && dst === pub && src === pub && sides.profile.shared && proto === ICMP && total > hl && (ip[hl] === 8 || ip[hl] === 13);
  if (!toLan) {
    if (dst === pub && !toKernel && !toBox) bad(`${protoName(proto)} addressed to the public address ${ipText(pub)} (from ${ipText(src)}): it would come back into the TUN`);
    else if (dst !== pub && src !== pub) bad(`leaves on the WAN side (to ${ipText(dst)}) with source ${ipText(src)}, not the public address`);
  }
  if (oip !== null) {
    for (let i = 0; i < VNET_LEN; i++) if (out[i] !== (origin as Uint8Array)[i]) { bad('the virtio-net header changed'); break; }
    if (oip[9] !== proto) bad(`protocol changed from ${oip[9]} to ${proto}`);
    if (r16(oip, 4) !== r16(ip, 4)) bad('IP ID changed');
    if (r16(oip, 6) !== frag) bad('fragment field changed');
    if (r16(oip, 2) !== total) bad(`total length changed from ${r16(oip, 2)} to ${total}`);
    const ttl = oip[8] === 255 ? 255 : oip[8] + 1;
    if (ip[8] !== ttl) bad(`TTL ${ip[8]} after ${oip[8]} (the router must give back the hop of its second pass, once)`);
    if (toKernel && !sameExceptTtl(oip, ip, hl)) bad('a packet handed back to the kernel was changed');
  }
  if (later || toKernel) return problems;
  const vflags = out[0];
  const l4 = hl;
  const l4len = total - hl;
  if ((proto === TCP && l4len >= 20) || (proto === UDP && l4len >= 8)) {
    const at = l4 + (proto === TCP ? 16 : 6);
    const csum = r16(ip, at);
    const oCsum = oip !== null && oip.length >= at + 2 ? r16(oip, at) : -1;
    if (fragment) {
      // A first fragment: the checksum covers bytes not here; it must move exactly with the addresses and ports. Not on the
      // PPTP control port: that datagram is reassembled and its Call IDs rewritten (RFC 2637 §2), wherever they lie.
      const onPptpPort = (b: Uint8Array): boolean => r16(b, l4) === PPTP_PORT || r16(b, l4 + 2) === PPTP_PORT;
      const pptp = proto === TCP && (onPptpPort(ip) || (oip !== null && oip.length >= l4 + 4 && onPptpPort(oip)));
      if (oip !== null && !pptp && (proto !== TCP || (ip[l4 + 13] & 0x02) === 0) && (vflags & F_NEEDS_CSUM) === 0) {
        if (proto === UDP && (oCsum === 0) !== (csum === 0)) bad('a UDP checksum turned on or off');
        else if (!(proto === UDP && csum === 0) && !onesEqual(
          headerResidual(csum, src, dst, r16(ip, l4), r16(ip, l4 + 2)),
          headerResidual(oCsum, r32(oip, 12), r32(oip, 16), r16(oip, l4), r16(oip, l4 + 2)),
        )) bad(`${protoName(proto)} checksum of a first fragment not updated with its addresses and ports`);
      }
    } else if ((vflags & F_NEEDS_CSUM) !== 0) {
      // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; its distance to the real one must not change.
      if (oip !== null) {
        const now = onesSub(csum, pseudoSum(src, dst, proto, l4len));
        const before = onesSub(oCsum, pseudoSum(r32(oip, 12), r32(oip, 16), proto, l4len));
        if (!onesEqual(now, before)) bad(`partial ${protoName(proto)} checksum no longer matches the pseudo-header (0x${csum.toString(16)})`);
      }
    } else if (proto === UDP && csum === 0) {
      if (oCsum > 0) bad('a UDP checksum was turned into 0 (no checksum)');
    } else if ((vflags & F_DATA_VALID) !== 0) {
      if (oip !== null && oCsum !== 0 && !onesEqual(l4Residual(ip, hl, total, proto), l4Residual(oip, hl, total, proto))) {
        bad(`${protoName(proto)} checksum changed its error (the kernel had vouched for the input)`);
      }
    } else if (l4Residual(ip, hl, total, proto) !== 0xffff) {
      bad(`${protoName(proto)} checksum is wrong`);
    }
    if (proto === TCP && !fragment && sides.mssClamp > 0 && (ip[l4 + 13] & 0x02) !== 0) {
      const mss = mssOf(ip, l4, total);
      if (mss > sides.mssClamp) bad(`a SYN leaves with MSS ${mss} above the clamp ${sides.mssClamp}`);
    }
  } else if (proto === ICMP && !fragment && l4len >= 8) {
    if (onesSum(ip, l4, l4len) !== 0xffff) bad('ICMP checksum is wrong');
    if (ICMP_ERRORS.has(ip[l4])) checkQuote(sides, ip, oip, hl, total, toLan, bad);
  } else if (proto === GRE && oip !== null && l4len >= 4 && (ip[l4] & 0x80) !== 0) {
    if ((onesSum(ip, l4, l4len) === 0xffff) !== (onesSum(oip, l4, l4len) === 0xffff)) bad('GRE checksum broken');
  } else if (proto === ESP && oip !== null && l4len >= 8 && r32(ip, l4) !== r32(oip, l4)) {
    bad('ESP SPI changed');
  }
  return problems;
}

/** The packet quoted by an ICMP error (RFC 5508 §3.2, REQ-3 to REQ-5). */
function checkQuote(sides: Sides, ip: Uint8Array, oip: Uint8Array | null, hl: number, total: number, toLan: boolean, bad: (m: string) => void): void {
  const e = hl + 8;
  const elen = total - e;
  if (elen < 20 || ip[e] >> 4 !== 4) return;
  const ehl = (ip[e] & 0x0f) * 4;
  if (ehl < 20 || ehl > elen) return;
  if (onesSum(ip, e, ehl) !== 0xffff) bad('quoted IPv4 header checksum is wrong');
  const isrc = r32(ip, e + 12);
  const idst = r32(ip, e + 16);
  const outerSrc = r32(ip, 12);
  const outerDst = r32(ip, 16);
  // To the LAN the error is about the LAN host's own packet; to the WAN it is about one the remote sent to the public address.
  if (toLan && isrc !== outerDst) bad(`ICMP error to ${ipText(outerDst)} quotes a packet from ${ipText(isrc)}`);
  if (!toLan && idst !== outerSrc) bad(`ICMP error from ${ipText(outerSrc)} quotes a packet to ${ipText(idst)}`);
  if (oip === null || oip.length < total || r16(oip, 2) !== total) return;
  const iproto = ip[e + 9];
  const il4 = e + ehl;
  const osrc = r32(oip, e + 12);
  const odst = r32(oip, e + 16);
  if ((iproto === UDP && total >= il4 + 8) || (iproto === TCP && total >= il4 + 18)) {
    const at = il4 + (iproto === TCP ? 16 : 6);
    const c = r16(ip, at);
    const oc = r16(oip, at);
    if (iproto === UDP && (c === 0) !== (oc === 0)) bad('quoted UDP checksum turned on or off');
    else if (!(iproto === UDP && c === 0) && !onesEqual(
      headerResidual(c, isrc, idst, r16(ip, il4), r16(ip, il4 + 2)),
      headerResidual(oc, osrc, odst, r16(oip, il4), r16(oip, il4 + 2)),
    )) bad(`quoted ${protoName(iproto)} checksum not updated with the quoted addresses and ports`);
  } else if (iproto === ICMP && total >= il4 + 8 && !ICMP_ERRORS.has(ip[il4])) {
    if (!onesEqual(fold16(r16(ip, il4 + 2) + r16(ip, il4 + 4)), fold16(r16(oip, il4 + 2) + r16(oip, il4 + 4)))) {
      bad('quoted ICMP checksum not updated with the quoted identifier');
    }
  }
  void sides;
}

/** The MSS option of a TCP header whose option list is well formed (RFC 9293 §3.2), or -1. */
function mssOf(ip: Uint8Array, l4: number, total: number): number {
  const end = Math.min(total, l4 + (ip[l4 + 12] >> 4) * 4);
  for (let o = l4 + 20; o < end;) {
    const kind = ip[o];
    if (kind === 0) return -1;
    if (kind === 1) { o++; continue; }
    if (o + 1 >= end || ip[o + 1] < 2 || o + ip[o + 1] > end) return -1;
    if (kind === 2) return ip[o + 1] === 4 ? r16(ip, o + 2) : -1;
    o += ip[o + 1];
  }
  return -1;
}

function sameExceptTtl(a: Uint8Array, b: Uint8Array, hl: number): boolean {
  const n = r16(b, 2);
  for (let i = 0; i < n; i++) {
    if (i === 8 || i === 10 || i === 11) continue;
    if (a[i] !== b[i]) return false;
  }
  return hl > 0;
}

export function protoName(p: number): string {
  return p === TCP ? 'TCP' : p === UDP ? 'UDP' : p === ICMP ? 'ICMP' : p === GRE ? 'GRE' : p === ESP ? 'ESP' : `protocol ${p}`;
}
