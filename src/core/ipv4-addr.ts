/**
 * Small, pure IPv4 helpers (no I/O). Addresses are represented either as
 * dotted-quad strings or as 4-byte Uint8Arrays in network byte order, which
 * is what rtnetlink attributes (RTA_DST, FRA_SRC, NDA_DST, IFA_ADDRESS) carry.
 */

export interface Cidr {
  /** Network address (host bits cleared), 4 bytes, network byte order. */
  network: Uint8Array;
  /** Prefix length 0..32. */
  prefixLen: number;
  /** The address exactly as written (host bits possibly set). */
  address: Uint8Array;
}

const OCTET = /^(0|[1-9][0-9]{0,2})$/;

/** True if `s` is a canonical dotted-quad IPv4 address ("10.0.0.1"). */
export function isIPv4(s: string): boolean {
  return tryParseIPv4(s) !== null;
}

function tryParseIPv4(s: string): Uint8Array | null {
  if (typeof s !== 'string') return null;
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!OCTET.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

/** "a.b.c.d" -> Uint8Array(4). Throws on anything that is not a strict dotted quad. */
export function parseIPv4(s: string): Uint8Array {
  const r = tryParseIPv4(s);
  if (r === null) throw new Error(`invalid IPv4 address: ${JSON.stringify(s)}`);
  return r;
}

/** Uint8Array(4) (or any 4-byte array-like, e.g. a Buffer) -> "a.b.c.d". */
export function formatIPv4(b: Uint8Array | ArrayLike<number>): string {
  if (b.length !== 4) throw new Error(`IPv4 address must be 4 bytes, got ${b.length}`);
  for (let i = 0; i < 4; i++) {
    const v = b[i]!;
    if (!Number.isInteger(v) || v < 0 || v > 255) throw new Error(`invalid IPv4 byte ${v}`);
  }
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** Address -> unsigned 32-bit integer (host arithmetic value). */
export function ipv4ToNumber(a: string | Uint8Array): number {
  const b = typeof a === 'string' ? parseIPv4(a) : a;
  if (b.length !== 4) throw new Error('IPv4 address must be 4 bytes');
  return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
}

/** Unsigned 32-bit integer -> Uint8Array(4). */
export function numberToIPv4(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`invalid IPv4 number ${n}`);
  return Uint8Array.of((n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
}

/** Netmask for a prefix length as an unsigned 32-bit integer. */
export function prefixMask(prefixLen: number): number {
  if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32) {
    throw new Error(`invalid prefix length ${prefixLen}`);
  }
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/**
 * Parses "a.b.c.d/len" (or a bare address, treated as /32). The returned
 * `network` has the host bits cleared, which is what the kernel expects for
 * FRA_SRC / RTA_DST.
 */
export function parseCidr(s: string): Cidr {
  if (typeof s !== 'string') throw new Error('CIDR must be a string');
  const slash = s.indexOf('/');
  const addrPart = slash < 0 ? s : s.slice(0, slash);
  let prefixLen = 32;
  if (slash >= 0) {
    const lenPart = s.slice(slash + 1);
    if (!/^(0|[1-9][0-9]?)$/.test(lenPart)) throw new Error(`invalid CIDR prefix length: ${JSON.stringify(s)}`);
    prefixLen = Number(lenPart);
    if (prefixLen > 32) throw new Error(`invalid CIDR prefix length: ${JSON.stringify(s)}`);
  }
  const address = tryParseIPv4(addrPart);
  if (address === null) throw new Error(`invalid CIDR address: ${JSON.stringify(s)}`);
  const network = numberToIPv4((ipv4ToNumber(address) & prefixMask(prefixLen)) >>> 0);
  return { network, prefixLen, address };
}

/** Canonical "network/len" string for a CIDR (host bits cleared). */
export function formatCidr(c: { network: Uint8Array; prefixLen: number }): string {
  return `${formatIPv4(c.network)}/${c.prefixLen}`;
}

/** True if `addr` lies within `cidr` (string or parsed). */
export function cidrContains(cidr: string | Cidr, addr: string | Uint8Array): boolean {
  const c = typeof cidr === 'string' ? parseCidr(cidr) : cidr;
  const mask = prefixMask(c.prefixLen);
  return ((ipv4ToNumber(addr) & mask) >>> 0) === ((ipv4ToNumber(c.network) & mask) >>> 0);
}

/** Byte-wise equality of two addresses. */
export function ipv4Equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === 4 && b.length === 4 && a[0] === b[0] && a[1] === b[1] && a[2] === b[2] && a[3] === b[3];
}

/** "a.b.c.d" -> int32, the form the packet path keeps addresses in. */
export function ipv4ToInt32(s: string): number {
  return ipv4ToNumber(s) | 0;
}

/** An int32 (or unsigned 32-bit) address -> "a.b.c.d". */
export function int32ToIpv4(n: number): string {
  return formatIPv4(numberToIPv4(n >>> 0));
}

/** Prefixes ("a.b.c.d/len") as [network, mask] int32 pairs, the form the packet path and restore test addresses with. */
export function prefixPairs(prefixes: readonly string[]): Array<[number, number]> {
  return prefixes.map((p) => {
    const c = parseCidr(p);
    return [ipv4ToNumber(c.network) | 0, prefixMask(c.prefixLen) | 0];
  });
}
