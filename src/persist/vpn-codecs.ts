/**
 * Codecs of the VPN tables for the state store (see the codec interface in
 * store.ts): ISAKMP entries (journal table 2), ESP entries (3) and PPTP calls
 * (4), so cookies, SPI pairings and Call IDs survive kill -9, a restart and a
 * reboot (vpn-masquerade-spec §11 item 20: pending ESP entries whose deadline
 * passed are dropped). Times are the wall clock of the packet path, so the
 * stored deadlines count the time the router was down.
 *
 * Nothing here runs per packet: the tables push NEW/DESTROY to the journal,
 * and the update flush finds changed rows by comparing the fields that change
 * (deadline, state, learnt cookie or Call ID) with what was last written.
 */
import { SessionTable } from '../nat/sessions';
import { ESP_FREE, IpsecMasq, TABLE_ESP, TABLE_ISAKMP } from '../helpers/ipsec/ipsec';
import { CALL_CLEARING, CALL_CONFIRMED, CALL_REQUESTED, PptpCalls, TABLE_GRE_CALLS } from '../helpers/pptp/calls';
import { addressKept, DirtyScan, RestoreContext, TableCodec } from './store';

/** ISAKMP entries: cookies, the LAN host and whether it is the forwarded server. */
export class IsakmpCodec implements TableCodec {
  readonly id = TABLE_ISAKMP;
  readonly sqlTable = 'isakmp';
  readonly columns = ['serial', 'lan', 'rem', 'pub_addr', 'icookie0', 'icookie1', 'rcookie0', 'rcookie1',
    'has_rcookie', 'server', 'expires'] as const;
  readonly updateColumns = ['pub_addr', 'rcookie0', 'rcookie1', 'has_rcookie', 'server', 'expires'] as const;
  /** kExpires and (has_rcookie | server << 1) as last written; NaN forces a rewrite. */
  private readonly writtenExpires: Float64Array;
  private readonly writtenFlags: Uint8Array;
  private readonly scan: DirtyScan;

  constructor(private readonly m: IpsecMasq, private readonly t: SessionTable) {
    const cap = m.opts.capacity;
    this.writtenExpires = new Float64Array(cap);
    this.writtenFlags = new Uint8Array(cap);
    this.scan = new DirtyScan(cap, (k) => m.kInUse[k] === 1 && (m.kExpires[k] !== this.writtenExpires[k] || this.flags(k) !== this.writtenFlags[k]));
  }

  private flags(k: number): number {
    return this.m.kHasRc[k] | (this.m.kServer[k] << 1);
  }

  row(k: number, serial: number, out: unknown[]): boolean {
    const m = this.m;
    if (m.kInUse[k] === 0 || m.kSerial[k] !== serial) return false;
    out[0] = serial;
    out[1] = m.kLan[k];
    out[2] = m.kRem[k];
    out[3] = this.t.publicAddr;
    out[4] = m.kIc0[k];
    out[5] = m.kIc1[k];
    out[6] = m.kRc0[k];
    out[7] = m.kRc1[k];
    out[8] = m.kHasRc[k];
    out[9] = m.kServer[k];
    out[10] = m.kExpires[k];
    return true;
  }

  update(k: number, out: unknown[]): void {
    const m = this.m;
    out[0] = this.t.publicAddr;
    out[1] = m.kRc0[k];
    out[2] = m.kRc1[k];
    out[3] = m.kHasRc[k];
    out[4] = m.kServer[k];
    out[5] = m.kExpires[k];
    out[6] = m.kSerial[k];
  }

  dirty(out: Int32Array, max: number): number {
    return this.scan.next(out, max);
  }

  written(k: number): void {
    this.writtenExpires[k] = this.m.kExpires[k];
    this.writtenFlags[k] = this.flags(k);
  }

  liveCount(): number {
    return this.m.isakmpCount;
  }

  forEachLive(fn: (index: number, serial: number) => void): void {
    const m = this.m;
    for (let k = 0; k < m.opts.capacity; k++) if (m.kInUse[k] === 1) fn(k, m.kSerial[k]);
  }

  restore(v: unknown[], ctx: RestoreContext): boolean {
    const expires = v[10] as number;
    if (expires <= ctx.now || !addressKept(v[3] as number, ctx)) return false;
    const k = this.m.restoreIsakmp(v[1] as number, v[2] as number, v[4] as number, v[5] as number, v[6] as number, v[7] as number,
      v[8] === 1, v[9] === 1, expires, v[0] as number);
    if (k < 0) return false;
    // A moved row is rewritten with the new address on the next update flush.
    if (v[3] === ctx.publicAddr) this.written(k);
    else this.writtenExpires[k] = NaN;
    return true;
  }
}

/** ESP entries: the SPI pairing and its state (pending, established, squelched). */
export class EspCodec implements TableCodec {
  readonly id = TABLE_ESP;
  readonly sqlTable = 'esp';
  readonly columns = ['serial', 'lan', 'rem', 'pub_addr', 'out_spi', 'in_spi', 'state', 'blocking', 'retries',
    'created', 'expires', 'pkts_out', 'pkts_in'] as const;
  readonly updateColumns = ['pub_addr', 'in_spi', 'state', 'blocking', 'retries', 'expires', 'pkts_out', 'pkts_in'] as const;
  private readonly writtenExpires: Float64Array;
  private readonly writtenState: Uint8Array;
  private readonly scan: DirtyScan;

  constructor(private readonly m: IpsecMasq, private readonly t: SessionTable) {
    const cap = m.opts.capacity;
    this.writtenExpires = new Float64Array(cap);
    this.writtenState = new Uint8Array(cap);
    this.scan = new DirtyScan(cap, (e) => m.eState[e] !== ESP_FREE && (m.eExpires[e] !== this.writtenExpires[e] || m.eState[e] !== this.writtenState[e]));
  }

  row(e: number, serial: number, out: unknown[]): boolean {
    const m = this.m;
    if (m.eState[e] === ESP_FREE || m.eSerial[e] !== serial) return false;
    out[0] = serial;
    out[1] = m.eLan[e];
    out[2] = m.eRem[e];
    out[3] = this.t.publicAddr;
    out[4] = m.eOutSpi[e];
    out[5] = m.eInSpi[e];
    out[6] = m.eState[e];
    out[7] = m.eBlocking[e];
    out[8] = m.eRetries[e];
    out[9] = m.eCreated[e];
    out[10] = m.eExpires[e];
    out[11] = m.ePktsOut[e];
    out[12] = m.ePktsIn[e];
    return true;
  }

  update(e: number, out: unknown[]): void {
    const m = this.m;
    out[0] = this.t.publicAddr;
    out[1] = m.eInSpi[e];
    out[2] = m.eState[e];
    out[3] = m.eBlocking[e];
    out[4] = m.eRetries[e];
    out[5] = m.eExpires[e];
    out[6] = m.ePktsOut[e];
    out[7] = m.ePktsIn[e];
    out[8] = m.eSerial[e];
  }

  dirty(out: Int32Array, max: number): number {
    return this.scan.next(out, max);
  }

  written(e: number): void {
    this.writtenExpires[e] = this.m.eExpires[e];
    this.writtenState[e] = this.m.eState[e];
  }

  liveCount(): number {
    const c = this.m.espCountByState;
    return c[1] + c[2] + c[3];
  }

  forEachLive(fn: (index: number, serial: number) => void): void {
    const m = this.m;
    for (let e = 0; e < m.opts.capacity; e++) if (m.eState[e] !== ESP_FREE) fn(e, m.eSerial[e]);
  }

  /** Spec §11 item 20: an entry past its deadline (a pending one above all) is dropped. */
  restore(v: unknown[], ctx: RestoreContext): boolean {
    const expires = v[10] as number;
    if (expires <= ctx.now || !addressKept(v[3] as number, ctx)) return false;
    const m = this.m;
    const e = m.restoreEsp(v[1] as number, v[2] as number, v[4] as number, v[5] as number, v[6] as number, v[7] === 1,
      v[8] as number, v[9] as number, expires, v[0] as number);
    if (e < 0) return false;
    m.ePktsOut[e] = v[11] as number;
    m.ePktsIn[e] = v[12] as number;
    if (v[3] === ctx.publicAddr) this.written(e);
    else this.writtenExpires[e] = NaN;
    return true;
  }
}

/**
 * PPTP calls: the Call IDs (LAN, public, remote), role and state. A call
 * names its control connection by the session's serial; a call whose control
 * connection was not restored is dropped unless it is already clearing.
 */
export class GreCallCodec implements TableCodec {
  readonly id = TABLE_GRE_CALLS;
  readonly sqlTable = 'gre_calls';
  readonly columns = ['serial', 'lan', 'rem', 'pub_addr', 'lan_call_id', 'pub_call_id', 'rem_call_id', 'role', 'state',
    'ctl_serial', 'expires', 'last_seen', 'pkts_out', 'pkts_in'] as const;
  readonly updateColumns = ['pub_addr', 'rem_call_id', 'state', 'expires', 'last_seen', 'pkts_out', 'pkts_in'] as const;
  private readonly writtenSeen: Float64Array;
  private readonly writtenExpires: Float64Array;
  private readonly writtenRem: Int32Array;
  private readonly scan: DirtyScan;
  /** Session index by serial, built on the first restored call and dropped when restore ends. */
  private ctlBySerial: Map<number, number> | null = null;

  constructor(private readonly g: PptpCalls, private readonly t: SessionTable) {
    this.writtenSeen = new Float64Array(g.capacity);
    this.writtenExpires = new Float64Array(g.capacity);
    this.writtenRem = new Int32Array(g.capacity);
    this.scan = new DirtyScan(g.capacity, (c) => g.inUse[c] === 1 &&
      (g.lastSeen[c] !== this.writtenSeen[c] || g.expires[c] !== this.writtenExpires[c] || g.remId[c] !== this.writtenRem[c]));
  }

  row(c: number, serial: number, out: unknown[]): boolean {
    const g = this.g;
    if (g.inUse[c] === 0 || g.serial[c] !== serial) return false;
    out[0] = serial;
    out[1] = g.lan[c];
    out[2] = g.rem[c];
    out[3] = this.t.publicAddr;
    out[4] = g.lanId[c];
    out[5] = g.pubId[c];
    out[6] = g.remId[c];
    out[7] = g.role[c];
    out[8] = g.state[c];
    out[9] = g.ctlSerial[c];
    out[10] = g.expires[c];
    out[11] = g.lastSeen[c];
    out[12] = g.pktsOut[c];
    out[13] = g.pktsIn[c];
    return true;
  }

  update(c: number, out: unknown[]): void {
    const g = this.g;
    out[0] = this.t.publicAddr;
    out[1] = g.remId[c];
    out[2] = g.state[c];
    out[3] = g.expires[c];
    out[4] = g.lastSeen[c];
    out[5] = g.pktsOut[c];
    out[6] = g.pktsIn[c];
    out[7] = g.serial[c];
  }

  dirty(out: Int32Array, max: number): number {
    return this.scan.next(out, max);
  }

  written(c: number): void {
    const g = this.g;
    this.writtenSeen[c] = g.lastSeen[c];
    this.writtenExpires[c] = g.expires[c];
    this.writtenRem[c] = g.remId[c];
  }

  liveCount(): number {
    return this.g.count;
  }

  forEachLive(fn: (index: number, serial: number) => void): void {
    const g = this.g;
    for (let c = 0; c < g.capacity; c++) if (g.inUse[c] === 1) fn(c, g.serial[c]);
  }

  restore(v: unknown[], ctx: RestoreContext): boolean {
    const expires = v[10] as number;
    const state = v[8] as number;
    if (expires <= ctx.now || !addressKept(v[3] as number, ctx)) return false;
    if (state !== CALL_REQUESTED && state !== CALL_CONFIRMED && state !== CALL_CLEARING) return false;
    if (this.ctlBySerial === null) {
      const t = this.t;
      const bySerial = new Map<number, number>();
      t.forEachSession((s) => bySerial.set(t.sSerial[s], s));
      this.ctlBySerial = bySerial;
    }
    const ctlSerial = v[9] as number;
    const ctl = this.ctlBySerial.get(ctlSerial);
    if (ctl === undefined && state !== CALL_CLEARING) return false;
    const c = this.g.restore(v[1] as number, v[2] as number, v[4] as number, v[5] as number, v[6] as number, v[7] as number,
      state, expires, ctl ?? 0, ctlSerial, v[0] as number, v[11] as number);
    if (c < 0) return false;
    this.g.pktsOut[c] = v[12] as number;
    this.g.pktsIn[c] = v[13] as number;
    if (v[3] === ctx.publicAddr) this.written(c);
    else this.writtenSeen[c] = NaN;
    return true;
  }

  restored(): void {
    this.ctlBySerial = null;
  }
}
