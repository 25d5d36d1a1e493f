/**
 * Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624),
 * plus the rule for CHECKSUM_PARTIAL packets handed over by the TUN device
 * with VIRTIO_NET_HDR_F_NEEDS_CSUM (linux net/core/utils.c inet_proto_csum_replace4).
 *
 * All functions work on plain numbers; 32-bit values may be signed int32.
 */

/** Folds a 32-bit one's-complement accumulator to 16 bits (not complemented). */
export function fold(sum: number): number {
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** One's-complement sum of `len` bytes at `off` (odd length padded with zero), added to `initial`. Returns the folded, uncomplemented sum. */
export function sumBytes(buf: Uint8Array, off: number, len: number, initial: number): number {
  let sum = initial;
  const end = off + (len & ~1);
  let i = off;
  // 16-bit words; fold every 32 K words so the accumulator stays below 2^31.
  while (i < end) {
    const chunkEnd = Math.min(end, i + 65536);
    for (; i < chunkEnd; i += 2) sum += (buf[i] << 8) | buf[i + 1];
    sum = fold(sum);
  }
  if (len & 1) sum += buf[end] << 8;
  return fold(sum);
}

/** Complemented checksum of `len` bytes, ready to store. */
export function checksum(buf: Uint8Array, off: number, len: number, initial: number): number {
  return ~sumBytes(buf, off, len, initial) & 0xffff;
}

/** Uncomplemented sum of the IPv4 pseudo-header (RFC 793 §3.1, RFC 768). */
export function pseudoHeaderSum(src: number, dst: number, proto: number, l4Len: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + l4Len);
}

/** RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for a 16-bit field change. */
export function update16(hc: number, oldWord: number, newWord: number): number {
  return ~fold((~hc & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff)) & 0xffff;
}

/** RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address) change. */
export function update32(hc: number, oldValue: number, newValue: number): number {
  return ~fold(
    (~hc & 0xffff) +
      (~(oldValue >>> 16) & 0xffff) + (~oldValue & 0xffff) +
      (newValue >>> 16) + (newValue & 0xffff),
  ) & 0xffff;
}

/**
 * A CHECKSUM_PARTIAL L4 field holds the folded, uncomplemented pseudo-header sum.
 * An address change is applied with plain one's-complement arithmetic and no
 * complement before or after; port changes need nothing, the kernel sums the
 * L4 header later (inet_proto_csum_replace4 with pseudohdr = true).
 */
export function partialUpdate32(stored: number, oldValue: number, newValue: number): number {
  return fold(
    stored +
      (~(oldValue >>> 16) & 0xffff) + (~oldValue & 0xffff) +
      (newValue >>> 16) + (newValue & 0xffff),
  );
}

/** Reads a big-endian 16-bit value. */
export function read16(buf: Uint8Array, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}

/** Writes a big-endian 16-bit value. */
export function write16(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 8;
  buf[off + 1] = v;
}

/** Reads a big-endian 32-bit value as int32. */
export function read32(buf: Uint8Array, off: number): number {
  return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3];
}

/** Writes a big-endian 32-bit value. */
export function write32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = v >>> 16;
  buf[off + 2] = v >>> 8;
  buf[off + 3] = v;
}
