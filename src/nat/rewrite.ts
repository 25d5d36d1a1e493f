/**
 * In-place rewriting of addresses, ports and their checksums, shared by NAPT
 * and the helpers: incremental updates (RFC 1624), and for CHECKSUM_PARTIAL
 * packets only the pseudo-header part (the kernel sums the rest later).
 * Allocation-free.
 */
import { partialUpdate32, read16, update16, update32, write16, write32 } from '../wire/checksum';
import { IPV4_CSUM, IPV4_DST, IPV4_SRC, IPV4_TTL } from '../wire/ipv4';
import { UDP_CSUM, UDP_DPORT, UDP_SPORT } from '../wire/udp';

/** Replaces an IPv4 address field and updates the header checksum (RFC 1624). */
export function setAddress(buf: Uint8Array, ipOff: number, field: number, oldAddr: number, newAddr: number): void {
  write32(buf, ipOff + field, newAddr);
  write16(buf, ipOff + IPV4_CSUM, update32(read16(buf, ipOff + IPV4_CSUM), oldAddr, newAddr));
}

/** Sets source and destination (each only if it changes) with the header checksum. */
export function setAddresses(buf: Uint8Array, ipOff: number, src: number, dst: number, newSrc: number, newDst: number): void {
  if (newSrc !== src) setAddress(buf, ipOff, IPV4_SRC, src, newSrc);
  if (newDst !== dst) setAddress(buf, ipOff, IPV4_DST, dst, newDst);
}

/**
 * The kernel decremented the TTL when it forwarded the packet into the TUN
 * and will again when it forwards the translated packet out; give one back
 * so the router counts as a single hop (RFC 1812 §5.3.1).
 */
export function restoreHop(buf: Uint8Array, ipOff: number): void {
  const ttl = buf[ipOff + IPV4_TTL];
  if (ttl === 255) return;
  const oldWord = read16(buf, ipOff + IPV4_TTL);
  buf[ipOff + IPV4_TTL] = ttl + 1;
  write16(buf, ipOff + IPV4_CSUM, update16(read16(buf, ipOff + IPV4_CSUM), oldWord, oldWord + 0x100));
}

/**
 * Rewrites one address and one port of a TCP or UDP packet and its
 * checksums. With a partial checksum only the address (pseudo-header) part
 * is applied, uncomplemented; a UDP checksum of 0 means "none" and stays 0,
 * and a computed 0 is sent as 0xffff (RFC 768).
 */
export function rewriteTransport(
  buf: Uint8Array, ipOff: number, addrField: number, oldAddr: number, newAddr: number,
  portOff: number, oldPort: number, newPort: number, csumOff: number, partial: boolean, isUdp: boolean,
): void {
  setAddress(buf, ipOff, addrField, oldAddr, newAddr);
  write16(buf, portOff, newPort);
  const old = read16(buf, csumOff);
  let c: number;
  if (partial) {
    c = partialUpdate32(old, oldAddr, newAddr);
  } else {
    if (isUdp && old === 0) return;
    c = update16(update32(old, oldAddr, newAddr), oldPort, newPort);
    if (isUdp && c === 0) c = 0xffff;
  }
  write16(buf, csumOff, c);
}

/** Rewrites one address of a UDP datagram whose ports stay (ISAKMP keeps 500, spec Rule I-1). */
export function setUdpAddress(buf: Uint8Array, ipOff: number, udpOff: number, field: number, oldAddr: number, newAddr: number,
  partial: boolean): void {
  const portOff = udpOff + (field === IPV4_SRC ? UDP_SPORT : UDP_DPORT);
  const port = read16(buf, portOff);
  rewriteTransport(buf, ipOff, field, oldAddr, newAddr, portOff, port, port, udpOff + UDP_CSUM, partial, true);
}
