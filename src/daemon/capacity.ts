/**
 * The NAT table's capacity settings from the config (public addresses,
 * ports, per-host and inbound budgets), and what the daemon reports and
 * logs about them.
 */
import type { Config } from '../config/schema';
import type { Logger } from './log';
import { int32ToIpv4, ipv4ToInt32 } from '../core/ipv4-addr';
import { steerableRange } from '../edge/netlink/plan';
import type { Napt } from '../nat/napt';
import { Drop, DROP_NAMES } from '../core/verdict';
import { PortPolicy, SessionTable, SessionTableOptions } from '../nat/sessions';

export interface TableSetup {
  /** Shared mode: one address, the WAN interface's, set at start (0.0.0.0 until then). */
  publicAddrs: number[];
  ports: PortPolicy;
  options: SessionTableOptions;
}

/** How the session table is built for `cfg`. */
export function tableSetup(cfg: Config): TableSetup {
  const shared = cfg.wan.mode === 'shared';
  const lim = cfg.limits;
  return {
    publicAddrs: shared ? [ipv4ToInt32(cfg.wan.publicAddress ?? '0.0.0.0')] : cfg.wan.publicAddresses.map(ipv4ToInt32),
    ports: portPolicy(cfg),
    options: {
      exclusivePorts: cfg.filtering === 'endpoint-independent',
      hostLimits: hostLimits(cfg),
      hostCapacity: hostCapacity(cfg),
      inboundLimits: { perTarget: lim.forwardUnanswered, perRemote: lim.remoteUnanswered, unansweredMs: cfg.timeouts.unanswered * 1000 },
    },
  };
}

/** Public ports for new mappings (applied again on reload; shared mode leaves out 65535: no rule can steer it). */
export function portPolicy(cfg: Config): PortPolicy {
  const p = cfg.ports;
  return { range: cfg.wan.mode === 'shared' ? steerableRange(p.range) : p.range, lowRange: p.lowRange, preserve: p.preserve };
}

/** Per-LAN-host limits (applied again on reload). */
export function hostLimits(cfg: Config): { maxSessions: number; ratePerSecond: number; burst: number } {
  const rate = cfg.limits.hostNewPerSecond;
  return { maxSessions: cfg.limits.hostSessions, ratePerSecond: rate, burst: rate };
}

/** As many host records as the LAN prefixes have addresses, at most 65536 (and at least 256). */
function hostCapacity(cfg: Config): number {
  let n = 0;
  for (const prefix of cfg.lan.prefixes) n += 2 ** (32 - Number(prefix.split('/')[1]));
  return Math.max(256, Math.min(65536, n));
}

/** The `capacity` part of `vpnmasq stats`. */
export function capacityStats(t: SessionTable, napt: Napt): Record<string, unknown> {
  const b = t.inbound;
  return {
    publicAddresses: Array.from(t.publicAddrs, int32ToIpv4),
    hosts: t.hosts.count,
    takeovers: t.takeovers,
    refusals: { icmpSent: napt.refusals.sent, icmpRateLimited: napt.refusals.limited },
    inbound: { evicted: b.evicted, refusedRemote: b.refusedRemote, refusedFull: b.refusedFull },
  };
}

/** One line per LAN host that hit a limit, at most once a minute per host (from the sweep timer). */
export function logOffenders(t: SessionTable, log: Logger, now: number): void {
  t.hosts.drainOffenders(now, (lan, sessions, refusedSessions, refusedRate) => {
    const host = int32ToIpv4(lan);
    const why = [
      refusedSessions > 0 ? `${refusedSessions} at its limit of ${t.hosts.limits.maxSessions} sessions` : '',
      refusedRate > 0 ? `${refusedRate} over ${t.hosts.limits.ratePerSecond} new sessions/s` : '',
    ].filter((x) => x !== '').join(', ');
    log.warn(`LAN host ${host} refused new flows: ${why}`, { event: 'host-limit', host, sessions, refusedSessions, refusedRate });
  });
  if (t.hosts.offendersLost > 0) {
    log.warn('more LAN hosts hit their limits than are reported one by one', { event: 'host-limit', unreported: t.hosts.offendersLost });
    t.hosts.offendersLost = 0;
  }
}

/** The drop reasons that are caps: a limit reached, not a bad packet (the per-host limits have lines of their own). */
const CAPS = [Drop.TABLE_FULL, Drop.PORTS_EXHAUSTED, Drop.UNANSWERED_LIMIT, Drop.FRAGMENT_HOLD_FULL, Drop.FRAGMENT_SOURCE_LIMIT] as const;
/** At most one line per this long while caps go on being hit; the first one at once. */
const CAP_REPORT_MS = 60_000;

/** One warning line, at most once a minute, naming every cap that refused packets since the last one, with counts. */
export class CapReport {
  private readonly reported = new Float64Array(CAPS.length);
  private at = -Infinity;

  report(counts: Float64Array, log: Logger, now: number): void {
    if (now - this.at < CAP_REPORT_MS) return;
    const moved: Record<string, number> = {};
    CAPS.forEach((d, i) => {
      const n = counts[d] - this.reported[i];
      if (n > 0) moved[DROP_NAMES[d]] = n;
      this.reported[i] = counts[d];
    });
    const names = Object.keys(moved);
    if (names.length === 0) return;
    this.at = now;
    log.warn(`limits reached, packets refused since the last report: ${names.map((k) => `${k} ${moved[k]}`).join(', ')}`, { event: 'limit', ...moved });
  }
}
