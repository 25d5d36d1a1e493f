/**
 * `vpnmasq run`: wires the edges (TUN addon, netlink, control socket, timers)
 * around the pure packet path and keeps them in order on start and stop.
 */
import { Config } from './config';
import { ControlReply, ControlRequest, ControlServer, startControlServer } from './control';
import { Logger } from './log';
import { Forwarder, rxSlotSize } from '../nat/forwarder';
import { Journal } from '../nat/journal';
import { SessionTable, SLOT_ICMP, SLOT_TCP, SLOT_UDP } from '../nat/sessions';
import { ConnRow, sessionRow } from '../nat/session-rows';
import { Drop } from '../nat/drop-reasons';
import { T_BYTES_IN, T_BYTES_OUT, T_PKTS_IN, T_PKTS_OUT } from '../nat/napt';
import { RouterNet } from '../net/router-net';
import { parseCidr, prefixMask } from '../net/ipv4-addr';
import { TunDevice } from '../tun/tun-device';
import { Stat } from '../tun/native';
import { parseIpv4 } from '../wire/ipv4';

/** Policy routing table and rule priority the daemon owns. */
export const ROUTE_TABLE = 7100;
export const RULE_PRIORITY = 7100;

const RX_SLOTS = 64;
const SWEEP_INTERVAL_MS = 100;
/** Sweep the whole table about every 10 s whatever its size. */
const SWEEPS_PER_PASS = 100;

/**
 * Follows the table journal (state store, `conns watch`). `event` is called
 * for every NEW/UPDATE/DESTROY in order; `flush` once after each drain. The
 * journal is drained at the end of every batch that changed the table, before
 * the batch's packets are written, so a listener that commits in `flush`
 * makes new mappings durable before their first packet leaves (write-ahead).
 */
export interface JournalListener {
  event(kind: number, table: number, index: number, serial: number): void;
  flush(): void;
}

export interface DaemonOptions {
  /** Wall-clock milliseconds; injectable for tests. */
  now?: () => number;
}

export class Daemon {
  private readonly now: () => number;
  readonly startedAt: number;
  readonly table: SessionTable;
  readonly forwarder: Forwarder;
  private tun: TunDevice | null = null;
  private net: RouterNet | null = null;
  private control: ControlServer | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopping: Promise<void> | null = null;
  private readonly journalListeners: JournalListener[] = [];

  constructor(readonly config: Config, private readonly log: Logger, opts: DaemonOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.startedAt = this.now();
    const cfg = config;
    if (cfg.wan.mode !== 'dedicated' || cfg.wan.publicAddress === null) {
      throw new Error('wan.mode "shared" is not available yet: set wan.mode "dedicated" and wan.publicAddress');
    }
    const ports = cfg.ports;
    this.table = new SessionTable(
      cfg.limits.maxSessions,
      parseIpv4(cfg.wan.publicAddress),
      { range: ports.range, lowRange: ports.lowRange, preserve: ports.preserve },
      new Journal(),
    );
    const t = cfg.timeouts;
    this.forwarder = new Forwarder(
      this.table,
      {
        slotSize: rxSlotSize(cfg.tun.offloads, cfg.tun.mtu),
        rxSlots: RX_SLOTS,
        holdSlots: cfg.limits.maxHeldFragments,
        holdSlotSize: rxSlotSize(false, cfg.tun.mtu),
      },
      Math.max(1024, cfg.limits.maxHeldFragments * 4),
      {
        lanPrefixes: cfg.lan.prefixes.map((p) => {
          const c = parseCidr(p);
          return [parseIpv4(p.split('/')[0]), prefixMask(c.prefixLen) | 0] as [number, number];
        }),
        timers: {
          tcpEstablishedMs: t.tcpEstablished * 1000,
          tcpTransitoryMs: t.tcpTransitory * 1000,
          udpMs: t.udp * 1000,
          icmpMs: t.icmp * 1000,
          fragmentMs: t.fragment * 1000,
        },
        endpointIndependentFiltering: cfg.filtering === 'endpoint-independent',
        vnetLen: 10,
      },
    );
  }

  async start(): Promise<void> {
    const cfg = this.config;
    const leftovers = await RouterNet.cleanupLeftovers(ROUTE_TABLE);
    if (leftovers.rules + leftovers.routes + leftovers.proxyNeighbours > 0) {
      this.log.warn('removed leftovers of an earlier run', { ...leftovers });
    }
    const tun = TunDevice.open(cfg.tun.name, { offloads: cfg.tun.offloads });
    this.tun = tun;
    if (cfg.tun.offloads && tun.offloadError) this.log.warn('TUN offloads unavailable, running without them', { reason: tun.offloadError });
    this.net = await RouterNet.open();
    await this.net.setup({
      tunName: tun.name,
      mtu: cfg.tun.mtu,
      table: ROUTE_TABLE,
      rulePriority: RULE_PRIORITY,
      lanInterfaces: cfg.lan.interfaces,
      lanPrefixes: cfg.lan.prefixes,
      publicAddress: cfg.wan.publicAddress as string,
      wanInterface: cfg.wan.interface,
    });
    const fw = this.forwarder;
    const journal = this.table.journal as Journal;
    tun.start(fw.arena, fw.layout.slotSize, fw.layout.rxSlots, fw.rxLens, fw.tx.list, (n) => {
      const count = fw.processBatch(n, this.now());
      if (journal.length > 0) this.drainJournal();
      return count;
    });
    this.control = await startControlServer(cfg.control.socket, null, (req) => this.handleControl(req));
    const budget = Math.max(1024, Math.ceil(this.table.capacity / SWEEPS_PER_PASS));
    this.sweepTimer = setInterval(() => this.sweep(budget), SWEEP_INTERVAL_MS);
    this.log.info('vpnmasq running', {
      tun: tun.name,
      offloads: `0x${tun.offloads.toString(16)}`,
      public: cfg.wan.publicAddress,
      lan: cfg.lan.prefixes.join(','),
    });
  }

  private sweep(budget: number): void {
    const now = this.now();
    this.table.sweep(now, budget);
    const timedOut = this.forwarder.frags.sweep(now);
    if (timedOut > 0) this.forwarder.napt.drops.counts[Drop.FRAGMENT_TIMEOUT] += timedOut;
    this.drainJournal();
  }

  addJournalListener(listener: JournalListener): void {
    this.journalListeners.push(listener);
  }

  removeJournalListener(listener: JournalListener): void {
    const i = this.journalListeners.indexOf(listener);
    if (i >= 0) this.journalListeners.splice(i, 1);
  }

  /** Hands pending table events to every listener, then lets each flush. */
  private drainJournal(): void {
    const journal = this.table.journal as Journal;
    const listeners = this.journalListeners;
    if (journal.length === 0) return;
    journal.drain((kind, table, index, serial) => {
      for (const l of listeners) l.event(kind, table, index, serial);
    });
    for (const l of listeners) l.flush();
  }

  /** Stops forwarding and removes everything the daemon added. Idempotent. */
  stop(): Promise<void> {
    if (this.stopping === null) this.stopping = this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.control?.close().catch(() => undefined);
    this.tun?.close();
    if (this.net) {
      await this.net.teardown().catch((e: Error) => this.log.error('teardown failed', { error: e.message }));
      this.net.close();
    }
    this.log.info('vpnmasq stopped');
  }

  // ---- control socket ----------------------------------------------------

  rows(): ConnRow[] {
    const now = this.now();
    const rows: ConnRow[] = [];
    this.table.forEachSession((s) => rows.push(sessionRow(this.table, s, now)));
    return rows;
  }

  stats(): Record<string, unknown> {
    const napt = this.forwarder.napt;
    const t = this.table;
    const tunStats: Record<string, number> = {};
    const tun = this.tun;
    if (tun) for (const [name, i] of Object.entries(Stat)) tunStats[name.toLowerCase()] = tun.stats[i];
    return {
      packets: { out: napt.traffic[T_PKTS_OUT], in: napt.traffic[T_PKTS_IN] },
      bytes: { out: napt.traffic[T_BYTES_OUT], in: napt.traffic[T_BYTES_IN] },
      mappings: { tcp: t.countBySlot[SLOT_TCP], udp: t.countBySlot[SLOT_UDP], icmp: t.countBySlot[SLOT_ICMP] },
      sessions: t.sessionCount,
      limit: t.capacity,
      drops: napt.drops.byName(),
      tun: tunStats,
    };
  }

  status(): Record<string, unknown> {
    return {
      running: true,
      pid: process.pid,
      uptimeSeconds: Math.round((this.now() - this.startedAt) / 1000),
      tun: this.tun ? { name: this.tun.name, offloads: this.tun.offloads } : null,
      mode: this.config.wan.mode,
      publicAddress: this.config.wan.publicAddress,
      lanPrefixes: this.config.lan.prefixes,
      sessions: this.table.sessionCount,
      limit: this.table.capacity,
    };
  }

  private handleControl(req: ControlRequest): ControlReply {
    switch (req.cmd) {
      case 'status':
        return { result: this.status() };
      case 'stats':
        return { result: this.stats() };
      case 'conns': {
        const rows = this.rows();
        return { rows, result: { count: rows.length } };
      }
      case 'delete': {
        const id = Number(req.id);
        const s = this.table.findBySerial(id);
        if (s < 0) throw new Error(`no connection with id ${req.id}`);
        this.table.removeSession(s);
        return { result: { deleted: 1 } };
      }
      default:
        throw new Error(`unknown command "${req.cmd}"`);
    }
  }
}
