/**
 * PPTP counters (spec §10 sniff points and log events), one set shared by
 * the call table, the GRE tracker and the control-connection tracker: data
 * for `vpnmasq stats` and the metrics, and the source of the rate-limited
 * log lines.
 */
export const PptpCounter = {
  CALLS_CREATED: 0,
  CALLS_REFUSED: 1,
  CALLS_CLEARED: 2,
  GRE_OUT: 3,
  GRE_IN: 4,
  GRE_NO_MAPPING_IN: 5,
  GRE_NO_MAPPING_OUT: 6,
  GRE_NOT_PPTP: 7,
  MESSAGES: 8,
  REWRITES: 9,
  MALFORMED: 10,
  LOST_CALL: 11,
  OUT_OF_ORDER: 12,
  NO_CALL_SLOT: 13,
} as const;

export const PPTP_COUNTER_NAMES: readonly string[] = Object.keys(PptpCounter).map((k) => k.toLowerCase().replace(/_/g, '-'));

export class PptpCounters {
  readonly counts = new Float64Array(PPTP_COUNTER_NAMES.length);

  byName(): Record<string, number> {
    const out: Record<string, number> = {};
    for (let i = 0; i < PPTP_COUNTER_NAMES.length; i++) out[PPTP_COUNTER_NAMES[i]] = this.counts[i];
    return out;
  }
}
