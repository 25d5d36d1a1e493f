/**
 * What the packet path decides for a packet, one code space shared by NAPT
 * and every helper: a pass verdict (negative) or the drop reason it is
 * counted under (>= 0, the index of its counter). Numeric codes on the
 * packet path, names for logs, metrics and the CLI.
 */
export const Verdict = {
  /** Translated in place; send it (counted as translated traffic). */
  TRANSLATED: -1,
  /** Kept back (a fragment waiting for its first one, a segment waiting for its predecessor); nothing to send now. */
  HELD: -2,
  /** Shared-address mode: the box's own packet, written back unchanged for the kernel to deliver locally. */
  TO_KERNEL: -3,
  /** A session helper refuses the TCP connection: the segment is replaced by resets to both ends (counted as REFUSED). */
  RESET: -4,
} as const;

export const Drop = {
  VNET_TRUNCATED: 0,
  IP_TRUNCATED: 1,
  IP_VERSION: 2,
  IP_BAD_IHL: 3,
  IP_BAD_TOTAL_LEN: 4,
  IP_BAD_CHECKSUM: 5,
  L4_TRUNCATED: 6,
  L4_BAD_CHECKSUM: 7,
  UNKNOWN_PROTOCOL: 8,
  NOT_OURS: 9,
  NO_MAPPING: 10,
  FILTERED: 11,
  TABLE_FULL: 12,
  PORTS_EXHAUSTED: 13,
  ICMP_UNSUPPORTED: 14,
  ICMP_ERROR_NO_MAPPING: 15,
  ICMP_ERROR_BAD_CHECKSUM: 16,
  ICMP_ERROR_MALFORMED: 17,
  FRAGMENT_HOLD_FULL: 18,
  FRAGMENT_TIMEOUT: 19,
  FRAGMENT_TOO_BIG: 20,
  AH_REFUSED: 21,
  ESP_ZERO_SPI: 22,
  ESP_BLOCKED: 23,
  ESP_SQUELCHED: 24,
  ESP_NO_MAPPING: 25,
  ISAKMP_COLLISION: 26,
  ISAKMP_NO_MAPPING: 27,
  GRE_NOT_PPTP: 28,
  GRE_NO_MAPPING: 29,
  ESP_RESERVED_SPI: 30,
  PPTP_OUT_OF_ORDER: 31,
  /** A TCP connection a helper could not track was reset instead of passing uninspected. */
  REFUSED: 32,
  /** A retransmission reaching back past the rewrites still remembered (long acknowledged). */
  PPTP_STALE_DUPLICATE: 33,
  /** More rewritten bytes in flight than remembered for one direction; the sender resends later. */
  PPTP_REWRITE_BACKLOG: 34,
  /** A Call ID field cut by the segment boundary whose first byte cannot be decided alone. */
  PPTP_SPLIT_FIELD: 35,
  /** A fragment of a datagram that was reassembled and sent already. */
  FRAGMENT_DUPLICATE: 36,
  /** The LAN host holds its limit of sessions (limits.hostSessions). */
  HOST_SESSION_LIMIT: 37,
  /** The LAN host opens new sessions faster than limits.hostNewPerSecond. */
  HOST_RATE_LIMIT: 38,
  /** Port overlapping: the LAN endpoint's public port already carries this remote endpoint for another LAN endpoint. */
  MAPPING_CONFLICT: 39,
  /** A segment to a session taken over from a closed one that belongs to the old connection. */
  STALE_SEGMENT: 40,
  /** The remote holds its limit of unanswered inbound sessions (limits.remoteUnanswered). */
  UNANSWERED_LIMIT: 41,
  /**
   * The source does not belong to the side the packet entered from: a LAN
   * address from the WAN, or a non-LAN address from the LAN (RFC 2827
   * ingress filtering; core/side.ts). Nothing is created for it.
   */
  SPOOFED_SOURCE: 42,
  /** The source holds its share of the fragment pool already (limits.fragmentsPerSource). */
  FRAGMENT_SOURCE_LIMIT: 43,
} as const;

export type DropCode = (typeof Drop)[keyof typeof Drop];
/** A pass verdict or a drop reason. */
export type Verdict = (typeof Verdict)[keyof typeof Verdict] | DropCode;

/** Names indexed by code, kebab-case as shown to operators. */
export const DROP_NAMES: readonly string[] = (() => {
  const names: string[] = [];
  for (const [k, v] of Object.entries(Drop)) names[v] = k.toLowerCase().replace(/_/g, '-');
  return names;
})();

export const DROP_REASON_COUNT = DROP_NAMES.length;

/** Drop counters as a typed array indexed by code. */
export class DropCounters {
  readonly counts = new Float64Array(DROP_REASON_COUNT);

  byName(): Record<string, number> {
    const out: Record<string, number> = {};
    for (let i = 0; i < DROP_REASON_COUNT; i++) out[DROP_NAMES[i]] = this.counts[i];
    return out;
  }

  total(): number {
    let t = 0;
    for (let i = 0; i < DROP_REASON_COUNT; i++) t += this.counts[i];
    return t;
  }
}
