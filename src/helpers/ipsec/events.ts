/**
 * The IPsec log events of spec §10: counted always, queued with their
 * details in a bounded ring on the packet path (four numbers each, no
 * allocation), turned into log lines from a timer.
 */
import { int32ToIpv4 } from '../../core/ipv4-addr';

export const IpsecEvent = {
  ZERO_SPI: 0,
  RESERVED_SPI: 1,
  ZERO_COOKIE: 2,
  ESP_BLOCKED: 3,
  ESP_BLOCKED_SELF: 4,
  ESP_BLOCKED_PARALLEL: 5,
  ESP_RETRY: 6,
  ESP_SQUELCH: 7,
  ESP_ESTABLISHED: 8,
  ESP_GUESS: 9,
  ESP_NO_MAPPING: 10,
  ISAKMP_COLLISION: 11,
  ISAKMP_GUESS: 12,
  ISAKMP_NO_MAPPING: 13,
  AH_REFUSED: 14,
  ISAKMP_FORWARD: 15,
  ESP_SERVER: 16,
  ESP_FORWARD: 17,
} as const;
export const IPSEC_EVENT_NAMES: readonly string[] = Object.keys(IpsecEvent).map((k) => k.toLowerCase().replace(/_/g, '-'));
const EVENT_COUNT = IPSEC_EVENT_NAMES.length;
const RING = 256;

export class IpsecEvents {
  readonly counts = new Float64Array(EVENT_COUNT);
  private readonly kind = new Uint8Array(RING);
  private readonly a = new Int32Array(RING);
  private readonly b = new Int32Array(RING);
  private readonly c = new Int32Array(RING);
  private readonly d = new Int32Array(RING);
  private head = 0;
  private tail = 0;

  /** Counts an event and queues it for the log (dropped from the log, still counted, when the ring is full). */
  push(kind: number, a: number, b: number, c: number, d: number): void {
    this.counts[kind]++;
    const h = this.head;
    if (h - this.tail >= RING) return;
    const i = h & (RING - 1);
    this.kind[i] = kind;
    this.a[i] = a;
    this.b[i] = b;
    this.c[i] = c;
    this.d[i] = d;
    this.head = h + 1;
  }

  /** Counts an event without a log line. */
  count(kind: number): void {
    this.counts[kind]++;
  }

  /** Hands every queued event to `fn` as a log line (for a timer; the caller rate-limits). */
  drain(fn: (kind: string, msg: string, fields: Record<string, unknown>) => void): void {
    while (this.tail < this.head) {
      const i = this.tail & (RING - 1);
      this.tail++;
      const kind = this.kind[i];
      const [msg, fields] = describe(kind, this.a[i], this.b[i], this.c[i], this.d[i]);
      fn(`ipsec-${IPSEC_EVENT_NAMES[kind]}`, msg, fields);
    }
  }

  byName(): Record<string, number> {
    const out: Record<string, number> = {};
    for (let i = 0; i < EVENT_COUNT; i++) out[IPSEC_EVENT_NAMES[i]] = this.counts[i];
    return out;
  }
}

export const hex32 = (v: number): string => (v >>> 0).toString(16).padStart(8, '0');
export const hex64 = (a: number, b: number): string => hex32(a) + hex32(b);

/** Log line for an event, in the words of the 2.0 patch where it had some (spec §10). */
function describe(kind: number, a: number, b: number, c: number, d: number): [string, Record<string, unknown>] {
  const ip = int32ToIpv4;
  switch (kind) {
    case IpsecEvent.ZERO_SPI:
      return ['ESP with zero SPI dropped', { from: ip(a), to: b === 0 ? undefined : ip(b) }];
    case IpsecEvent.RESERVED_SPI:
      return ['inbound ESP with reserved SPI dropped', { remote: ip(a), spi: hex32(c) }];
    case IpsecEvent.ZERO_COOKIE:
      return ['ISAKMP with zero initiator cookie', { from: ip(a), to: b === 0 ? undefined : ip(b) }];
    case IpsecEvent.ESP_BLOCKED:
      return [`ESP from ${ip(a)} temporarily blocked by pending ${ip(d)} init`, { lan: ip(a), remote: ip(b), spi: hex32(c), pendingLan: ip(d) }];
    case IpsecEvent.ESP_BLOCKED_SELF:
      return [`ESP from ${ip(a)} SPI ${hex32(c)} temporarily blocked by its own pending init`, { lan: ip(a), remote: ip(b), spi: hex32(c) }];
    case IpsecEvent.ESP_BLOCKED_PARALLEL:
      return [`ESP from ${ip(a)} refused: ${ip(b)} is in use by ${ip(d)} (parallel sessions off)`, { lan: ip(a), remote: ip(b), spi: hex32(c), owner: ip(d) }];
    case IpsecEvent.ESP_RETRY:
      return ['pending ESP init retransmitted while others wait', { lan: ip(a), remote: ip(b), spi: hex32(c), retries: d }];
    case IpsecEvent.ESP_SQUELCH:
      return [`ESP from ${ip(a)} SPI ${hex32(c)}: no response after ${d} tries, unblocking & squelching`, { lan: ip(a), remote: ip(b), spi: hex32(c), retries: d }];
    case IpsecEvent.ESP_ESTABLISHED:
      return ['ESP association established', { lan: ip(a), remote: ip(b), outSpi: hex32(c), inSpi: hex32(d) }];
    case IpsecEvent.ESP_GUESS:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} guessed to ${d} candidate(s)`, { remote: ip(a), spi: hex32(c), first: ip(b), candidates: d }];
    case IpsecEvent.ESP_NO_MAPPING:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} has no masq table entry`, { remote: ip(a), spi: hex32(c) }];
    case IpsecEvent.ISAKMP_COLLISION:
      return [`ISAKMP from ${ip(a)} collides with the outstanding exchange of ${ip(d)}`, { lan: ip(a), remote: ip(b), icookieHigh: hex32(c), pendingLan: ip(d) }];
    case IpsecEvent.ISAKMP_GUESS:
      return [`ISAKMP from ${ip(a)} with unknown cookie sent to ${d} recent host(s)`, { remote: ip(a), icookieHigh: hex32(c), first: ip(b), candidates: d }];
    case IpsecEvent.ISAKMP_NO_MAPPING:
      return [`inbound ISAKMP from ${ip(a)} has no masq table entry`, { remote: ip(a), icookie: hex64(b, c) }];
    case IpsecEvent.ISAKMP_FORWARD:
      return [`ISAKMP from ${ip(a)} starts an exchange with the forwarded server ${ip(b)}`, { remote: ip(a), server: ip(b), icookie: hex64(c, d) }];
    case IpsecEvent.ESP_SERVER:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} sent to ${ip(b)}, its ISAKMP server`, { remote: ip(a), server: ip(b), spi: hex32(c) }];
    case IpsecEvent.ESP_FORWARD:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} forwarded to ${ip(b)}`, { remote: ip(a), lan: ip(b), spi: hex32(c) }];
    default:
      return ['AH refused: it signs the addresses a NAT must change', { from: ip(a), to: ip(b) }];
  }
}
