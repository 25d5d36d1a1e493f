/**
 * Enhanced GRE of PPTP calls through NAPT (spec §5.3, §9.10, §9.11, §9.14),
 * the tracker the engine calls for IP protocol 47. GRE carries the
 * receiver's Call ID: outbound GRE (to the remote's ID) only changes its
 * source address; inbound GRE (to the public ID) goes back to the LAN host
 * with its own Call ID (GRE with C = 0 has no checksum to fix). Non-PPTP GRE
 * gets address-only NAT for one LAN host per remote when allowed, else is
 * dropped; a GRE forward takes what no call claims (spec §6).
 */
import { write16 } from '../../wire/checksum';
import { GRE_ERR_TRUNCATED, GRE_PPTP, GreHeader } from '../../wire/gre';
import { IPV4_DST, IPV4_SRC, PROTO_GRE } from '../../wire/ipv4';
import { Drop, Verdict } from '../../core/verdict';
import { FlowIndex } from '../../core/flow-index';
import { NO_FORWARD } from '../../nat/forwards';
import { setAddress } from '../../nat/rewrite';
import { Packet, Tracker } from '../../nat/tracker';
import { PptpCalls } from './calls';
import { PptpCounter } from './counters';

const NONE = -1;
const TRANSLATED = Verdict.TRANSLATED;
/** Address-only GRE entries, reused round-robin. */
const RAW_SLOTS = 1024;
/** 2.0's GRE timeout without Call-ID masquerade, used for address-only GRE. */
const RAW_MS = 300_000;

export class GreNat implements Tracker {
  private readonly gre = new GreHeader();
  /** Non-PPTP GRE (address-only NAT): remote -> entry, its LAN host and deadline. */
  private readonly rawIndex = new FlowIndex(RAW_SLOTS);
  private readonly rawLan = new Int32Array(RAW_SLOTS);
  private readonly rawRem = new Int32Array(RAW_SLOTS);
  private readonly rawExpires = new Float64Array(RAW_SLOTS);
  private rawNext = 0;
  /** pptp.nonPptpGre "address-only". */
  allowNonPptp = false;

  constructor(private readonly calls: PptpCalls) {}

  /** Outbound GRE (LAN -> remote): only the source address changes (the Call ID is the remote's). */
  outbound(p: Packet): Verdict {
    const ip = p.ip;
    const g = this.gre;
    const kind = g.parse(p.buf, ip.payloadOff, ip.payloadLen);
    const lan = p.src;
    let r: Verdict;
    if (kind === GRE_PPTP) r = this.callOut(p, lan, p.dst, g.callId);
    else if (kind === GRE_ERR_TRUNCATED) r = this.notPptp();
    else r = this.rawOut(lan, p.dst, p.now);
    if (r === TRANSLATED) setAddress(p.buf, ip.off, IPV4_SRC, lan, p.publicAddr);
    return r;
  }

  private callOut(p: Packet, lan: number, rem: number, callId: number): Verdict {
    const calls = this.calls;
    const c = calls.findRem(rem, callId);
    if (c === NONE || calls.lan[c] !== lan) {
      // A forwarded PPTP server answers calls it was not seen to set up (spec §6).
      if (p.forwards !== null && p.forwards.protoForward(PROTO_GRE) === lan) return TRANSLATED;
      calls.counters.counts[PptpCounter.GRE_NO_MAPPING_OUT]++;
      return Drop.GRE_NO_MAPPING;
    }
    calls.lastSeen[c] = p.now;
    calls.pktsOut[c]++;
    calls.counters.counts[PptpCounter.GRE_OUT]++;
    return TRANSLATED;
  }

  /** Inbound GRE: the public Call ID leads to the LAN host, whose own Call ID is written back. */
  inbound(p: Packet): Verdict {
    const ip = p.ip;
    const g = this.gre;
    const kind = g.parse(p.buf, ip.payloadOff, ip.payloadLen);
    if (kind === GRE_ERR_TRUNCATED) return this.notPptp();
    if (kind !== GRE_PPTP) return this.rawIn(p, p.src);
    const calls = this.calls;
    const c = calls.findPub(p.src, g.callId);
    if (c === NONE) return this.forwardIn(p);
    write16(p.buf, g.callIdOff, calls.lanId[c]);
    calls.lastSeen[c] = p.now;
    calls.pktsIn[c]++;
    calls.counters.counts[PptpCounter.GRE_IN]++;
    p.to.one(calls.lan[c]);
    return TRANSLATED;
  }

  deliver(buf: Uint8Array, ipOff: number, _l4Off: number, pub: number, lan: number): void {
    setAddress(buf, ipOff, IPV4_DST, pub, lan);
  }

  /** An ICMP error quoting GRE we sent to a remote: the quoted Call ID is the remote's (spec §9.14). */
  icmpErrorIn(p: Packet): Verdict {
    const inner = p.inner;
    const g = this.gre;
    const c = g.parse(p.buf, inner.payloadOff, 8) === GRE_PPTP ? this.calls.findRem(inner.dst, g.callId) : NONE;
    if (c !== NONE) {
      p.to.one(this.calls.lan[c]);
      return TRANSLATED;
    }
    const f = p.forwards === null ? NO_FORWARD : p.forwards.protoForward(PROTO_GRE);
    if (f === NO_FORWARD) return Drop.ICMP_ERROR_NO_MAPPING;
    p.to.one(f);
    return TRANSLATED;
  }

  icmpErrorOut(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  sessionRemoved(): void { /* GRE has no sessions; calls end with their control connection (control.ts) */ }

  private notPptp(): Verdict {
    this.calls.counters.counts[PptpCounter.GRE_NOT_PPTP]++;
    return Drop.GRE_NOT_PPTP;
  }

  private forwardIn(p: Packet): Verdict {
    const f = p.forwards === null ? NO_FORWARD : p.forwards.protoForward(PROTO_GRE);
    if (f === NO_FORWARD) {
      this.calls.counters.counts[PptpCounter.GRE_NO_MAPPING_IN]++;
      return Drop.GRE_NO_MAPPING;
    }
    p.to.one(f);
    return TRANSLATED;
  }

  /** Non-PPTP GRE, address-only NAT when allowed (spec §9.11): the first LAN host to use a remote owns it while active. */
  private rawOut(src: number, dst: number, now: number): Verdict {
    if (!this.allowNonPptp) return this.notPptp();
    let r = this.rawIndex.get(dst, 0, 0, 0);
    if (r !== NONE && this.rawExpires[r] <= now) { this.rawIndex.delete(dst, 0, 0, 0); r = NONE; }
    if (r === NONE) {
      r = this.rawNext;
      if (this.rawExpires[r] > now) { this.calls.counters.counts[PptpCounter.GRE_NOT_PPTP]++; return Drop.TABLE_FULL; }
      if (this.rawExpires[r] !== 0 && this.rawIndex.get(this.rawRem[r], 0, 0, 0) === r) this.rawIndex.delete(this.rawRem[r], 0, 0, 0);
      this.rawNext = (r + 1) & (RAW_SLOTS - 1);
      this.rawLan[r] = src;
      this.rawRem[r] = dst;
      this.rawIndex.set(dst, 0, 0, 0, r);
    } else if (this.rawLan[r] !== src) {
      return this.notPptp();
    }
    this.rawExpires[r] = now + RAW_MS;
    return TRANSLATED;
  }

  private rawIn(p: Packet, src: number): Verdict {
    if (!this.allowNonPptp) return this.notPptp();
    const r = this.rawIndex.get(src, 0, 0, 0);
    if (r === NONE || this.rawExpires[r] <= p.now) return this.forwardIn(p);
    this.rawExpires[r] = p.now + RAW_MS;
    p.to.one(this.rawLan[r]);
    return TRANSLATED;
  }

  /** Ends every address-only GRE entry (a WAN address change under "drop"). */
  removeAll(): void {
    this.rawIndex.clear();
    this.rawExpires.fill(0);
  }
}
