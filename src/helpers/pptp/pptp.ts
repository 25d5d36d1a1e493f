/**
 * PPTP masquerade (spec §5): the call table, the GRE tracker and the
 * control-connection tracker with its Call-ID rewriter, put together and
 * plugged into the engine: GRE by IP protocol 47, the control channel as the
 * session helper of TCP 1723.
 */
import { PROTO_GRE, PROTO_TCP } from '../../wire/ipv4';
import { PPTP_PORT } from '../../wire/pptp';
import { Journal } from '../../core/journal';
import type { Napt } from '../../nat/napt';
import { SessionTable } from '../../nat/sessions';
import { PptpCalls } from './calls';
import { PptpControl } from './control';
import { PptpCounters } from './counters';
import { GreNat } from './gre';

export class PptpMasq {
  readonly counters = new PptpCounters();
  readonly calls: PptpCalls;
  readonly gre: GreNat;
  readonly control: PptpControl;

  /** `capacity` calls and as many control connections; serials from the session table (one id space). */
  constructor(capacity: number, sessions: SessionTable, journal: Journal | null) {
    this.calls = new PptpCalls(capacity, sessions.serials, journal, this.counters);
    this.gre = new GreNat(this.calls);
    this.control = new PptpControl(capacity, sessions, this.calls, this.counters);
  }

  attach(napt: Napt): void {
    napt.registerProtocol(PROTO_GRE, this.gre);
    napt.registerSessionHelper(PROTO_TCP, PPTP_PORT, this.control);
  }

  /** Calls past their own deadline (request timer, grace); off the packet path. */
  sweep(now: number): number {
    return this.calls.sweep(now);
  }

  /** Ends every call and address-only GRE entry (a WAN address change under "drop"). */
  removeAll(): number {
    this.gre.removeAll();
    return this.calls.removeAll();
  }

  /** Counters and table sizes for `stats`. */
  stats(): Record<string, unknown> {
    return { calls: this.calls.count, controlConnections: this.control.count, events: this.counters.byName() };
  }
}
