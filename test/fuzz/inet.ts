/**
 * The fuzzer's own Internet checksum code (RFC 1071), written differently
 * from src/wire/checksum.ts on purpose (even and odd bytes summed apart, then
 * folded), so an output is judged by arithmetic it does not share with the
 * code that produced it.
 */

export const r16 = (b: Uint8Array, o: number): number => b[o] * 256 + b[o + 1];
export const r32 = (b: Uint8Array, o: number): number => b[o] * 16777216 + b[o + 1] * 65536 + b[o + 2] * 256 + b[o + 3];
export function w16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
export function w32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** Folds any non-negative sum to 16 bits, one's-complement style. */
export function fold16(s: number): number {
  while (s > 0xffff) s = (s % 65536) + Math.floor(s / 65536);
  return s;
}

/** Folded one's-complement sum of `len` bytes at `off` (an odd last byte is padded with zero) plus `init`. */
export function onesSum(b: Uint8Array, off: number, len: number, init = 0): number {
  let hi = 0;
  let lo = 0;
  const end = off + len;
  for (let i = off; i < end; i += 2) hi += b[i];
  for (let i = off + 1; i < end; i += 2) lo += b[i];
  return fold16(hi * 256 + lo + init);
}

/** Sum of the TCP/UDP pseudo-header (RFC 793 §3.1, RFC 768), addresses as unsigned 32-bit numbers. */
export function pseudoSum(src: number, dst: number, proto: number, l4Len: number): number {
  return fold16(Math.floor(src / 65536) + (src % 65536) + Math.floor(dst / 65536) + (dst % 65536) + proto + l4Len);
}

/** One's-complement equality: 0 and 0xffff are the same number. */
export function onesEqual(a: number, b: number): boolean {
  return a === b || (a === 0 && b === 0xffff) || (a === 0xffff && b === 0);
}

/** a - b in one's complement (a + ~b). */
export function onesSub(a: number, b: number): number {
  return fold16(a + (0xffff - b));
}

/** The complemented checksum to store for `len` bytes whose checksum field is zero. */
export function checksumOf(b: Uint8Array, off: number, len: number, init = 0): number {
  return 0xffff - onesSum(b, off, len, init);
}
