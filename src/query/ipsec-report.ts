/**
 * `vpnmasq ipsec`: the IPsec tables per remote, in the spirit of `swanctl
 * --list-sas` (docs/cli-json-schema.json "ipsecRemote"). Per remote: its IKE
 * peers (ISAKMP entries), its SPI pairs with their state, the pending queue
 * (the one unresolved new SPI a remote may have, spec §4.2 step 3, and the
 * hosts turned away behind it), squelched entries, the hosts a guess would
 * reach (spec §4.3 step 4), and for every LAN host that is not through, the
 * reason it waits. Read from the tables' arrays; not the packet path.
 */
import { int32ToIpv4 } from '../core/ipv4-addr';
import { Targets } from '../core/targets';
import { hex32, hex64, IpsecEvent } from '../helpers/ipsec/events';
import { ESP_ESTABLISHED, ESP_PENDING, ESP_SQUELCHED, ESP_STATE_NAMES, IpsecMasq } from '../helpers/ipsec/ipsec';

export interface IkePeer {
  id: number;
  lan: string;
  icookie: string;
  /** null until the remote answered (UNREPLIED). */
  rcookie: string | null;
  state: 'REPLIED' | 'UNREPLIED';
  /** The exchange belongs to the udp/500 forward's server (spec §6). */
  server: boolean;
  expiresInSeconds: number;
  packets: { out: number; in: number };
}

export interface SpiPair {
  id: number;
  lan: string;
  spiOut: string;
  spiIn: string | null;
  state: 'pending' | 'established' | 'squelched';
  ageSeconds: number;
  expiresInSeconds: number;
  /** Pending: other hosts were turned away while it waited; it counts retries then. */
  blocking: boolean;
  retries: number;
  packets: { out: number; in: number };
}

export interface TurnedAway {
  lan: string;
  /** The refused SPI (esp-blocked*) or the initiator cookie's high word (isakmp-collision). */
  spi: string;
  reason: 'esp-blocked' | 'esp-blocked-self' | 'esp-blocked-parallel' | 'isakmp-collision';
  /** The host whose pending SPI, live ESP (parallel off) or unanswered exchange is in the way. */
  by: string;
  secondsAgo: number;
}

export interface IpsecRemote {
  remote: string;
  ike: IkePeer[];
  esp: SpiPair[];
  /** The remote's pending new SPI (at most one, spec §4.2 step 3) and the hosts turned away behind it. */
  queue: { pending: SpiPair | null; turnedAway: TurnedAway[] };
  squelched: SpiPair[];
  /** Hosts an unknown inbound SPI or cookie from this remote would be copied to now (most recent IKE first). */
  guesses: { enabled: boolean; candidates: string[] };
  /** One line per LAN host that is not through, saying why. */
  waiting: Array<{ lan: string; reason: string }>;
}

const TURN_REASON: Record<number, TurnedAway['reason']> = {
  [IpsecEvent.ESP_BLOCKED]: 'esp-blocked',
  [IpsecEvent.ESP_BLOCKED_SELF]: 'esp-blocked-self',
  [IpsecEvent.ESP_BLOCKED_PARALLEL]: 'esp-blocked-parallel',
  [IpsecEvent.ISAKMP_COLLISION]: 'isakmp-collision',
};

const secs = (ms: number): number => Math.max(0, Math.round(ms / 1000));

function spiPair(m: IpsecMasq, e: number, now: number): SpiPair {
  const st = m.eState[e];
  return {
    id: m.eSerial[e], lan: int32ToIpv4(m.eLan[e]), spiOut: `0x${hex32(m.eOutSpi[e])}`,
    spiIn: st === ESP_ESTABLISHED ? `0x${hex32(m.eInSpi[e])}` : null,
    state: ESP_STATE_NAMES[st] as SpiPair['state'],
    ageSeconds: secs(now - m.eCreated[e]), expiresInSeconds: secs(m.eExpires[e] - now),
    blocking: m.eBlocking[e] === 1, retries: m.eRetries[e], packets: { out: m.ePktsOut[e], in: m.ePktsIn[e] },
  };
}

function ikePeer(m: IpsecMasq, k: number, now: number): IkePeer {
  const has = m.kHasRc[k] === 1;
  return {
    id: m.kSerial[k], lan: int32ToIpv4(m.kLan[k]), icookie: hex64(m.kIc0[k], m.kIc1[k]),
    rcookie: has ? hex64(m.kRc0[k], m.kRc1[k]) : null, state: has ? 'REPLIED' : 'UNREPLIED', server: m.kServer[k] === 1,
    expiresInSeconds: secs(m.kExpires[k] - now), packets: { out: m.kPktsOut[k], in: m.kPktsIn[k] },
  };
}

/** Why each host of this remote that is not through waits, from its entries and the turned-away hosts. */
function reasons(r: IpsecRemote, m: IpsecMasq): Array<{ lan: string; reason: string }> {
  const o = m.opts;
  const out: Array<{ lan: string; reason: string }> = [];
  const p = r.queue.pending;
  if (p !== null) {
    out.push({
      lan: p.lan,
      reason: `SPI ${p.spiOut} sent ${p.ageSeconds}s ago awaits the remote's first ESP to pair with (spec §4.2); ` +
        (p.blocking ? `others wait behind it: retry ${p.retries} of ${o.retries} before it is squelched`
          : `gives up in ${p.expiresInSeconds}s`),
    });
  }
  for (const t of r.queue.turnedAway) {
    const why = t.reason === 'esp-blocked' ? `its new SPI ${t.spi} was refused ${t.secondsAgo}s ago: ${t.by}'s SPI is pending with this remote (one new SPI per remote at a time, spec §4.2 step 3); it is let through once that pairs, squelches or expires`
      : t.reason === 'esp-blocked-self' ? `its second new SPI ${t.spi} was refused ${t.secondsAgo}s ago: its own earlier SPI is still pending with this remote`
        : t.reason === 'esp-blocked-parallel' ? `its new SPI ${t.spi} was refused ${t.secondsAgo}s ago: ipsec.parallel is false and ${t.by} has live ESP with this remote`
          : `its IKE exchange (initiator cookie ${t.spi}...) was refused ${t.secondsAgo}s ago: ${t.by}'s exchange with the same cookie awaits the remote's reply (Rule I-4)`;
    out.push({ lan: t.lan, reason: why });
  }
  for (const s of r.squelched) {
    out.push({ lan: s.lan, reason: `SPI ${s.spiOut} squelched after ${s.retries} unanswered retries while others waited; its ESP is dropped for ${s.expiresInSeconds}s more` });
  }
  for (const k of r.ike) {
    if (k.state === 'UNREPLIED') out.push({ lan: k.lan, reason: `IKE exchange ${k.icookie} has no answer from the remote yet (${k.packets.out} sent, ${k.packets.in} received)` });
  }
  return out;
}

/** The report of every remote with an ISAKMP or ESP entry (or only `only`), remotes in address order. */
export function ipsecReport(m: IpsecMasq, now: number, only: number | null = null): IpsecRemote[] {
  const byRem = new Map<number, IpsecRemote>();
  const of = (rem: number): IpsecRemote => {
    let r = byRem.get(rem);
    if (r === undefined) {
      r = { remote: int32ToIpv4(rem), ike: [], esp: [], queue: { pending: null, turnedAway: [] }, squelched: [], guesses: { enabled: m.opts.guessing, candidates: [] }, waiting: [] };
      byRem.set(rem, r);
    }
    return r;
  };
  const cap = m.opts.capacity;
  for (let k = 0; k < cap; k++) if (m.kInUse[k] === 1 && (only === null || m.kRem[k] === only)) of(m.kRem[k]).ike.push(ikePeer(m, k, now));
  const created = new Map<string, number>();
  for (let e = 0; e < cap; e++) {
    if (m.eInUse[e] !== 1 || (only !== null && m.eRem[e] !== only)) continue;
    const r = of(m.eRem[e]);
    const pair = spiPair(m, e, now);
    r.esp.push(pair);
    if (m.eState[e] === ESP_SQUELCHED) r.squelched.push(pair);
    if (m.eState[e] === ESP_PENDING && m.pendingOf(m.eRem[e]) === e) r.queue.pending = pair;
    const key = `${m.eRem[e]}/${m.eLan[e]}`;
    created.set(key, Math.max(created.get(key) ?? -Infinity, m.eCreated[e]));
  }
  const to = new Targets();
  for (const [rem, r] of byRem) {
    // A refusal counts while the host could still be retransmitting and it has no entry made since.
    m.turnedAway(rem, now - m.opts.pendingMs, (lan, id, why, by, at) => {
      if ((created.get(`${rem}/${lan}`) ?? -Infinity) >= at) return;
      r.queue.turnedAway.push({ lan: int32ToIpv4(lan), spi: `0x${hex32(id)}`, reason: TURN_REASON[why], by: int32ToIpv4(by), secondsAgo: secs(now - at) });
    });
    r.queue.turnedAway.sort((a, b) => a.secondsAgo - b.secondsAgo);
    const n = m.guessCandidates(rem, now, to);
    for (let i = 0; i < n; i++) r.guesses.candidates.push(int32ToIpv4(to.addr[i]));
    r.ike.sort((a, b) => a.id - b.id);
    r.esp.sort((a, b) => a.id - b.id);
    r.waiting = reasons(r, m);
  }
  return [...byRem.entries()].sort((a, b) => (a[0] >>> 0) - (b[0] >>> 0)).map(([, r]) => r);
}
