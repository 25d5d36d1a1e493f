/**
 * `vpnmasq run`: wires the edges (TUN addon, netlink, control socket, timers)
 * around the pure packet path and keeps them in order on start and stop.
 */
import * as path from 'node:path';
import { Config } from '../config/schema';
import { reloadPlan, RestartNeeded, restartMessage, sectionsOf } from './reload';
import { MetricsServer, MetricsSource, startMetricsServer } from './metrics';
import { mssClampValue } from '../nat/mss-clamp';
import { SharedMode, steerableRange } from '../edge/netlink/shared-mode';
import { WanWatch } from '../edge/netlink/wan-watch';
import { ControlReply, ControlRequest, ControlServer, lookupGroup, startControlServer } from './control';
import { ControlCommands } from './control-commands';
import { Logger } from './log';
import { DebugLog } from './debug-log';
import { Datapath, rxSlotSize } from '../nat/datapath';
import type { NatTimers } from '../nat/napt';
import { NO_FORWARD } from '../nat/forwards';
import { Journal, JournalListener } from '../core/journal';
import { PortPolicy, SessionTable, SLOT_ICMP, SLOT_TCP, SLOT_UDP, TABLE_SESSIONS } from '../nat/sessions';
import { PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { allRows, ConnRow, ConnTables, rowOf } from '../query/rows';
import { IpsecRemote, ipsecReport } from '../query/ipsec-report';
import { JournalFeed, JournalObserver } from '../query/journal-feed';
import { IdIndex, IdSource } from '../query/id-index';
import { Drop } from '../core/verdict';
import { T_BYTES_IN, T_BYTES_OUT, T_PKTS_IN, T_PKTS_OUT } from '../nat/napt';
import { RouterNet } from '../edge/netlink/router-net';
import { Ipv6LanPolicy } from '../edge/netlink/ipv6-lan';
import { int32ToIpv4, ipv4ToInt32, ipv4ToNumber, parseCidr, prefixMask } from '../core/ipv4-addr';
import type { TunDevice, TunEvent, TunFactory } from '../edge/tun/device';
import { NativeTun } from '../edge/tun/native-tun';
import { Stat } from '../edge/tun/native';
import { BatchFaults } from '../edge/tun/batch-faults';
import { Store } from '../persist/store';
import { EspCodec, GreCallCodec, IsakmpCodec, SessionCodec } from '../persist/tables';
import { DbHealth } from '../persist/health';
import { Forwards } from '../nat/forwards';
import { PPTP_COUNTER_NAMES, PptpCounter } from '../helpers/pptp/counters';
import { PptpMasq } from '../helpers/pptp/pptp';
import { TABLE_GRE_CALLS } from '../helpers/pptp/calls';
import {
  ESP_ESTABLISHED, ESP_PENDING, ESP_SQUELCHED, IPSEC_EVENT_NAMES, IpsecMasq, IpsecOptions, MIN_LIFETIME_MS, TABLE_ESP, TABLE_ISAKMP,
} from '../helpers/ipsec/ipsec';
import { attachIpsec } from '../helpers/ipsec/nat';

/** Policy routing table and rule priority the daemon owns. */
export const ROUTE_TABLE = 7100;
export const RULE_PRIORITY = 7100;

const RX_SLOTS = 64;
const SWEEP_INTERVAL_MS = 100;
/** Capacity of the PPTP call and control-connection tables. */
const PPTP_CALLS = 4096;
/** Capacity of each IPsec table (ISAKMP entries, ESP entries, remotes). */
const IPSEC_ENTRIES = 16384;
/** PPTP counters of traffic volume, left out of the VPN events. */
const PPTP_VOLUME_COUNTERS: ReadonlySet<string> = new Set(['gre-out', 'gre-in', 'messages', 'rewrites']);
/** Sweep the whole table about every 10 s whatever its size. */
const SWEEPS_PER_PASS = 100;

/** PPTP counters logged once a second when they moved (spec §10), with their log event names. */
const PPTP_LOGGED: ReadonlyArray<[number, string]> = [
  [PptpCounter.CALLS_CREATED, 'pptp-call'], [PptpCounter.CALLS_REFUSED, 'pptp-refused'],
  [PptpCounter.CALLS_CLEARED, 'pptp-disconnect'], [PptpCounter.GRE_NO_MAPPING_IN, 'gre-no-entry-in'],
  [PptpCounter.GRE_NO_MAPPING_OUT, 'gre-no-entry-out'], [PptpCounter.GRE_NOT_PPTP, 'gre-not-pptp'],
  [PptpCounter.LOST_CALL, 'pptp-lost-call'], [PptpCounter.MALFORMED, 'pptp-malformed'],
];

/** What a reload did: the runtime fields it applied, or why it was rejected (the running config kept). */
export type ReloadOutcome = { ok: true; applied: string[]; warnings: string[] } | { ok: false; error: string };

/** How the daemon applies the changed fields of one config section on reload; null: the section has no runtime field. */
type Applier = ((next: Config, prev: Config) => void | Promise<void>) | null;

/** NAPT timers of a config, in ms. */
function natTimers(cfg: Config): NatTimers {
  const t = cfg.timeouts;
  return {
    tcpEstablishedMs: t.tcpEstablished * 1000,
    tcpTransitoryMs: t.tcpTransitory * 1000,
    udpMs: t.udp * 1000,
    icmpMs: t.icmp * 1000,
    fragmentMs: t.fragment * 1000,
  };
}

/** IPsec masquerade options of a config (the table capacity is the daemon's). */
function ipsecOptions(cfg: Config): Omit<IpsecOptions, 'capacity'> {
  const t = cfg.timeouts;
  return {
    lifetimeMs: Math.max(MIN_LIFETIME_MS, t.ipsec * 1000),
    pendingMs: t.espPending * 1000,
    squelchMs: t.espSquelch * 1000,
    retries: cfg.ipsec.retries,
    parallel: cfg.ipsec.parallel,
    guessing: cfg.ipsec.guessing,
    guessMax: cfg.ipsec.guessMax,
  };
}

/** Public ports for new mappings (shared mode leaves out 65535: no rule can steer it). */
function portPolicy(cfg: Config): PortPolicy {
  const ports = cfg.ports;
  return { range: cfg.wan.mode === 'shared' ? steerableRange(ports.range) : ports.range, lowRange: ports.lowRange, preserve: ports.preserve };
}

export interface DaemonOptions {
  /** Wall-clock milliseconds; injectable for tests. */
  now?: () => number;
  /** Persist the tables in the state store (default true; the benchmark measures without). */
  persist?: boolean;
  /** Opens the TUN device (default: the kernel device through the addon); tests pass a FakeTun. */
  openTun?: TunFactory;
  /**
   * Called once when forwarding cannot go on: the TUN device failed or was
   * deleted, or the packet path keeps throwing (BatchFaults). The reason is
   * already logged; the caller stops the daemon, which flushes the state
   * store, and exits non-zero for the service manager to restart it.
   */
  onFatal?: (reason: Error) => void;
  /** `vpnmasq reload` over the control socket: reads the config file and reloads it (the lifecycle's, serialised with SIGHUP). */
  reloadFromFile?: () => Promise<ReloadOutcome>;
}

export class Daemon implements MetricsSource {
  private shared: SharedMode | null = null;
  private wanWatch: WanWatch | null = null;
  private metrics: MetricsServer | null = null;
  private readonly now: () => number;
  readonly startedAt: number;
  readonly table: SessionTable;
  readonly datapath: Datapath;
  private tun: TunDevice | null = null;
  private readonly openTun: TunFactory;
  private readonly onFatal: (reason: Error) => void;
  /** Why forwarding stopped for good, once it has. */
  private fatal: Error | null = null;
  /** Exceptions on the packet path: logged, counted, fatal when they repeat. */
  readonly faults: BatchFaults;
  private net: RouterNet | null = null;
  /** lan.ipv6: the IPv6 rules for the LAN interfaces (src/edge/netlink/ipv6-lan.ts). */
  private ipv6: Ipv6LanPolicy | null = null;
  private control: ControlServer | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopping: Promise<void> | null = null;
  /** Write-ahead listeners: they see every table event before the batch is written (the store). */
  private readonly journalListeners: JournalListener[] = [];
  /** Observers (`conns watch`, the id index) get the events after the batch was written. */
  private readonly feed = new JournalFeed();
  /** Where each id lives, for `conns show|delete ID`. */
  private readonly ids: IdIndex;
  private readonly persist: boolean;
  /** The state store, once started with persistence. */
  store: Store | null = null;
  private readonly commands: ControlCommands;
  readonly forwards: Forwards;
  /** PPTP calls (journal table 4), their GRE and the control-channel tracker. */
  readonly pptp: PptpMasq;
  /** IPsec masquerade: ISAKMP by cookie on port 500, ESP by SPI (spec §3, §4). */
  readonly ipsec: IpsecMasq;
  private readonly pptpLogged = new Float64Array(PPTP_LOGGED.length);
  private pptpSweptAt = 0;
  /** Shared mode's saved sysctls, next to the control socket the daemon started with. */
  private readonly sharedSave: string;
  readonly reloadFromFile: () => Promise<ReloadOutcome>;
  /** Debug lines of table events and drops, an observer while log.level is debug. */
  private readonly debugLog: DebugLog;
  private debugging = false;
  /** Reloads applied, rejected. */
  private readonly reloadCount = [0, 0];
  /** The last reload (status). */
  private lastReload: { at: number; ok: boolean; applied?: string[]; error?: string } | null = null;
  /**
   * Per config section, how a reload applies its runtime fields (the
   * schema's RELOAD says which fields are runtime). Each applier sets the
   * live state from the new config, for the entries that exist too.
   */
  private readonly appliers: { readonly [S in keyof Config]: Applier } = {
    tun: null,
    lan: null,
    // wan.onAddressChange is read when the address changes.
    wan: () => undefined,
    ports: (next) => this.applyPorts(next),
    timeouts: (next) => this.applyTimers(next),
    limits: (next) => {
      this.table.limit = next.limits.maxSessions;
      this.datapath.frags.holdLimit = next.limits.maxHeldFragments;
    },
    filtering: (next) => this.applyTimers(next),
    ipsec: (next) => this.ipsec.configure(ipsecOptions(next)),
    pptp: (next) => { this.pptp.gre.allowNonPptp = next.pptp.nonPptpGre === 'address-only'; },
    forwards: async (next) => {
      const dropped = this.forwards.configure(next.forwards);
      if (dropped.length > 0) this.log.warn('runtime forwards dropped: the reloaded config claims their ports', { forwards: JSON.stringify(dropped) });
      await this.forwardsChanged();
    },
    mssClamp: (next) => { this.datapath.napt.mssClamp = mssClampValue(next.mssClamp, next.tun.mtu); },
    state: (next) => this.store?.configure(next.state),
    log: (next) => {
      this.log.configure(next.log);
      this.syncDebugLog();
    },
    metrics: async (next) => {
      await this.metrics?.close();
      this.metrics = null;
      if (next.metrics) this.metrics = await startMetricsServer(next.metrics.listen, this, this.log);
    },
    control: async (next) => {
      const group = lookupGroup(next.control.group);
      if (group === null) this.log.warn('control group not found: the control socket is open to root only', { group: next.control.group });
      await this.control?.move(next.control.socket, group);
    },
  };

  constructor(public config: Config, private readonly log: Logger, opts: DaemonOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.persist = opts.persist ?? true;
    this.openTun = opts.openTun ?? ((o) => NativeTun.open(o.name, { offloads: o.offloads }));
    this.onFatal = opts.onFatal ?? (() => undefined);
    this.reloadFromFile = opts.reloadFromFile ?? (() => Promise.resolve({ ok: false, error: 'this daemon was started without a config file to reload' }));
    this.sharedSave = path.join(path.dirname(config.control.socket), 'shared-mode-sysctls.json');
    this.faults = new BatchFaults(log, (reason) => this.fail(reason), this.now);
    this.startedAt = this.now();
    this.commands = new ControlCommands(this, this.now);
    const cfg = config;
    this.table = new SessionTable(
      cfg.limits.maxSessions,
      // Shared mode: the WAN interface's address, read in start().
      ipv4ToInt32(cfg.wan.publicAddress ?? '0.0.0.0'),
      portPolicy(cfg),
      new Journal(),
    );
    const t = cfg.timeouts;
    this.datapath = new Datapath(
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
          return [ipv4ToNumber(c.network) | 0, prefixMask(c.prefixLen) | 0] as [number, number];
        }),
        timers: natTimers(cfg),
        endpointIndependentFiltering: cfg.filtering === 'endpoint-independent',
        vnetLen: 10,
      },
    );
    const napt = this.datapath.napt;
    this.forwards = new Forwards(this.table, cfg.forwards);
    this.pptp = new PptpMasq(PPTP_CALLS, this.table, this.table.journal);
    this.pptp.calls.setGrace(t.pptpGrace * 1000);
    this.pptp.gre.allowNonPptp = cfg.pptp.nonPptpGre === 'address-only';
    this.pptp.attach(napt);
    napt.forwards = this.forwards;
    napt.sharedAddress = cfg.wan.mode === 'shared';
    this.ipsec = new IpsecMasq({ ...ipsecOptions(cfg), capacity: IPSEC_ENTRIES });
    attachIpsec(napt, this.ipsec);
    this.ipsec.serials = this.table.serials;
    this.ipsec.journal = this.table.journal;
    this.ids = new IdIndex(() => this.idSources());
    this.feed.add(this.ids);
    this.journalListeners.push(this.feed);
    this.debugLog = new DebugLog(log, (table, index, serial) => this.rowOf(table, index, serial));
    this.syncDebugLog();
  }

  /** The debug observer follows the log level. */
  private syncDebugLog(): void {
    const on = this.log.enabled('debug');
    if (on === this.debugging) return;
    this.debugging = on;
    if (on) {
      this.debugLog.startDrops(this.datapath.napt.drops.counts);
      this.addObserver(this.debugLog);
    } else {
      this.removeObserver(this.debugLog);
    }
  }

  /** Every table's records and serials, for the id index. */
  private idSources(): IdSource[] {
    const t = this.table;
    const g = this.pptp.calls;
    const m = this.ipsec;
    return [
      { table: TABLE_SESSIONS, capacity: t.capacity, inUse: t.sInUse, serial: t.sSerial },
      { table: TABLE_GRE_CALLS, capacity: g.capacity, inUse: g.inUse, serial: g.serial },
      { table: TABLE_ISAKMP, capacity: m.opts.capacity, inUse: m.kInUse, serial: m.kSerial },
      { table: TABLE_ESP, capacity: m.opts.capacity, inUse: m.eInUse, serial: m.eSerial },
    ];
  }

  /** PPTP/GRE upkeep once a second: expire calls, log spec §10 events (rate-limited). */
  private pptpTick(now: number): void {
    this.pptp.sweep(now);
    const counts = this.pptp.counters.counts;
    for (let i = 0; i < PPTP_LOGGED.length; i++) {
      const [counter, name] = PPTP_LOGGED[i];
      const n = counts[counter] - this.pptpLogged[i];
      if (n > 0) this.log.event(name, `${name}: ${n} since last report`, { count: n, calls: this.pptp.calls.count });
      this.pptpLogged[i] = counts[counter];
    }
  }

  async start(): Promise<void> {
    const cfg = this.config;
    // Shared mode moves the `local` rule: put it back before anything else removes rules.
    const sharedLeft = await SharedMode.cleanupLeftovers(this.sharedSave);
    if (sharedLeft > 0) this.log.warn('restored the local rule and sysctls of an earlier shared-mode run', { rules: sharedLeft });
    if (cfg.wan.mode === 'shared') this.table.publicAddr = ipv4ToInt32(await this.wanAddress());
    const leftovers = await RouterNet.cleanupLeftovers(ROUTE_TABLE);
    if (leftovers.rules + leftovers.routes + leftovers.proxyNeighbours > 0) {
      this.log.warn('removed leftovers of an earlier run', { ...leftovers });
    }
    if (this.persist) this.openStore();
    const tun = this.openTun({ name: cfg.tun.name, offloads: cfg.tun.offloads });
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
      publicAddress: cfg.wan.mode === 'shared' ? null : cfg.wan.publicAddress,
      wanInterface: cfg.wan.interface,
    });
    this.ipv6 = await Ipv6LanPolicy.apply(cfg.lan.ipv6, cfg.lan.interfaces);
    if (this.ipv6.note !== null) this.log.info(this.ipv6.note);
    if (cfg.wan.mode === 'shared') await this.startShared(tun.name);
    this.startPacketLoop(tun);
    const controlGroup = lookupGroup(cfg.control.group);
    if (controlGroup === null) this.log.warn('control group not found: the control socket is open to root only', { group: cfg.control.group });
    this.control = await startControlServer(cfg.control.socket, controlGroup, (req) => this.handleControl(req));
    const budget = Math.max(1024, Math.ceil(this.table.capacity / SWEEPS_PER_PASS));
    this.sweepTimer = setInterval(() => this.sweep(budget), SWEEP_INTERVAL_MS);
    if (cfg.metrics) this.metrics = await startMetricsServer(cfg.metrics.listen, this, this.log);
    this.log.info('vpnmasq running', {
      tun: tun.name,
      offloads: `0x${tun.offloads.toString(16)}`,
      mode: cfg.wan.mode,
      public: this.publicAddress(),
      lan: cfg.lan.prefixes.join(','),
    });
  }

  /**
   * Starts translating on `tun`: once per batch the packets are translated in
   * place, the journal is drained (new mappings committed before their first
   * packet is written) and the translated packets are handed back to write.
   * start() calls this once routing is up; tests run it on a FakeTun.
   */
  startPacketLoop(tun: TunDevice): void {
    this.tun = tun;
    this.datapath.napt.mssClamp = mssClampValue(this.config.mssClamp, this.config.tun.mtu);
    const fw = this.datapath;
    const journal = this.table.journal as Journal;
    const faults = this.faults;
    const onError = (e: unknown, index: number): void => faults.packet(e, index);
    tun.start({ arena: fw.arena, slotSize: fw.layout.slotSize, rxSlots: fw.layout.rxSlots, rxLens: fw.rxLens, txList: fw.tx.list }, {
      onBatch: (n) => {
        const count = fw.processBatch(n, this.now(), onError);
        faults.batchDone(n);
        if (journal.length > 0) this.drainJournal();
        return count;
      },
      onEvent: (event) => this.tunEvent(tun, event),
    });
  }

  private tunEvent(tun: TunDevice, event: TunEvent): void {
    if (event.kind === 'callback-error') {
      this.faults.batch(event.error, event.dropped);
      return;
    }
    const what = event.code === 'EBADFD' ? 'is gone (deleted or detached)' : 'failed';
    this.fail(new Error(`TUN ${tun.name} ${what}: ${event.message} (${event.code}); forwarding has stopped`));
  }

  /** Forwarding cannot go on: logged once, then onFatal (the lifecycle stops and exits non-zero). */
  private fail(reason: Error): void {
    if (this.fatal !== null) return;
    this.fatal = reason;
    this.log.error(reason.message, { fatal: true });
    this.onFatal(reason);
  }

  /** Opens the state store and rebuilds the tables from it before the TUN starts, so no packet meets an empty table. */
  private openStore(): void {
    const store = new Store(this.config.state, this.log, { now: this.now });
    store.registerTable(new SessionCodec(this.table));
    // After the sessions: a PPTP call refers to its control connection's session.
    store.registerTable(new IsakmpCodec(this.ipsec, this.table));
    store.registerTable(new EspCodec(this.ipsec, this.table));
    store.registerTable(new GreCallCodec(this.pptp.calls, this.table));
    // The VPN counters continue where the last run left them (stats, vpnmasq_vpn_events_total).
    store.registerCounters(IPSEC_EVENT_NAMES.map((n) => `ipsec-${n}`), this.ipsec.eventCounts);
    store.registerCounters(PPTP_COUNTER_NAMES.map((n) => `pptp-${n}`), this.pptp.counters.counts);
    store.restore({ now: this.now(), publicAddr: this.table.publicAddr, onAddressChange: this.config.wan.onAddressChange });
    // Restored entries come without table events; restored counters are not news for the log.
    this.ids.rebuild();
    PPTP_LOGGED.forEach(([counter], i) => { this.pptpLogged[i] = this.pptp.counters.counts[counter]; });
    this.addJournalListener(store);
    store.start();
    this.store = store;
  }

  private sweep(budget: number): void {
    const now = this.now();
    this.table.sweep(now, budget);
    const timedOut = this.datapath.frags.sweep(now);
    if (timedOut > 0) this.datapath.napt.drops.counts[Drop.FRAGMENT_TIMEOUT] += timedOut;
    this.ipsec.sweep(now, budget);
    this.ipsec.events.drain((kind, msg, fields) => this.log.event(kind, msg, fields));
    if (now - this.pptpSweptAt >= 1000) {
      this.pptpSweptAt = now;
      this.pptpTick(now);
      if (this.debugging) this.debugLog.drops(this.datapath.napt.drops.counts);
    }
    this.drainJournal();
  }

  addJournalListener(listener: JournalListener): void {
    this.journalListeners.push(listener);
  }

  removeJournalListener(listener: JournalListener): void {
    const i = this.journalListeners.indexOf(listener);
    if (i >= 0) this.journalListeners.splice(i, 1);
  }

  /**
   * Hands pending table events to every listener, then lets each flush: the
   * store commits (write-ahead), the feed schedules the observers for after
   * the batch is written.
   */
  private drainJournal(): void {
    const journal = this.table.journal as Journal;
    const listeners = this.journalListeners;
    const lost = journal.lost;
    if (lost > 0) {
      journal.lost = 0;
      this.store?.resync();
      this.feed.lose(lost);
      // Logged after the batch, like every other report.
      setImmediate(() => this.log.warn('table events were lost: the state database is rewritten, watchers are told', { lost }));
    }
    if (journal.length === 0) return;
    journal.drain((kind, table, index, serial) => {
      for (const l of listeners) l.event(kind, table, index, serial);
    });
    for (const l of listeners) l.flush();
  }

  addObserver(o: JournalObserver): void {
    this.feed.add(o);
  }

  removeObserver(o: JournalObserver): void {
    this.feed.remove(o);
  }

  /** Stops forwarding and removes everything the daemon added. Idempotent. */
  stop(): Promise<void> {
    if (this.stopping === null) this.stopping = this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.stopAppliance();
    await this.control?.close().catch(() => undefined);
    this.tun?.close();
    this.store?.close();
    await this.ipv6?.remove().catch((e: Error) => this.log.error('removing the IPv6 rules failed', { error: e.message }));
    if (this.net) {
      await this.net.teardown().catch((e: Error) => this.log.error('teardown failed', { error: e.message }));
      this.net.close();
    }
    this.log.info('vpnmasq stopped');
  }

  // ---- control socket ----------------------------------------------------

  /** Rows of the connection table, built one at a time so a listing streams. */
  rows(): Iterable<ConnRow> {
    return allRows(this.connTables(), this.now());
  }

  rowOf(table: number, index: number, serial: number): ConnRow | null {
    return rowOf(this.connTables(), table, index, serial, this.now());
  }

  private connTables(): ConnTables {
    return { sessions: this.table, ipsec: this.ipsec, calls: this.pptp.calls };
  }

  /**
   * Deletes the rows with these ids from every table (`conns delete|flush`)
   * as their expiry would: the next outbound packet creates a new entry, an
   * inbound one finds none. Returns how many.
   */
  deleteConns(ids: ReadonlySet<number>): number {
    this.feed.deliver();
    const t = this.table;
    const g = this.pptp.calls;
    const vpn = new Set<number>();
    let deleted = 0;
    for (const id of ids) {
      const at = this.ids.find(id);
      if (at === null) continue;
      if (at.table === TABLE_SESSIONS) {
        if (t.sInUse[at.index] === 1 && t.sSerial[at.index] === id) { t.removeSession(at.index); deleted++; }
      } else if (at.table === TABLE_GRE_CALLS) {
        if (g.inUse[at.index] === 1 && g.serial[at.index] === id) { g.remove(at.index); deleted++; }
      } else {
        vpn.add(id);
      }
    }
    if (vpn.size > 0) deleted += this.ipsec.deleteSerials(vpn);
    this.drainJournal();
    return deleted;
  }

  /** The row with this id: one index lookup (the feed is delivered first, so a new entry is found). */
  connById(id: number): ConnRow | null {
    this.feed.deliver();
    const at = this.ids.find(id);
    return at === null ? null : this.rowOf(at.table, at.index, id);
  }

  /** After `forwards add|remove` or a reload: shared mode steers the forwards' ports to the TUN. */
  async forwardsChanged(): Promise<void> {
    await this.shared?.setForwards(this.forwards.all());
  }

  stats(): Record<string, unknown> {
    const napt = this.datapath.napt;
    const t = this.table;
    const tunStats: Record<string, number> = {};
    const tun = this.tun;
    if (tun) for (const [name, i] of Object.entries(Stat)) tunStats[name.toLowerCase()] = tun.stats[i];
    const f = this.faults;
    tunStats.packet_errors = f.packetErrors;
    tunStats.batch_errors = f.batchErrors;
    tunStats.batch_dropped = f.batchDropped;
    return {
      packets: { out: napt.traffic[T_PKTS_OUT], in: napt.traffic[T_PKTS_IN] },
      bytes: { out: napt.traffic[T_BYTES_OUT], in: napt.traffic[T_BYTES_IN] },
      mappings: { tcp: t.countBySlot[SLOT_TCP], udp: t.countBySlot[SLOT_UDP], icmp: t.countBySlot[SLOT_ICMP] },
      sessions: t.sessionCount,
      limit: t.limit,
      drops: napt.drops.byName(),
      ipsec: this.ipsec.stats(),
      pptp: this.pptp.stats(),
      tun: tunStats,
    };
  }

  ipsecRemotes(remote: number | null): IpsecRemote[] {
    return ipsecReport(this.ipsec, this.now(), remote);
  }

  status(): Record<string, unknown> {
    return {
      running: this.fatal === null,
      ...(this.fatal !== null ? { failed: this.fatal.message } : {}),
      pid: process.pid,
      uptimeSeconds: Math.round((this.now() - this.startedAt) / 1000),
      tun: this.tun ? { name: this.tun.name, offloads: this.tun.offloads } : null,
      mode: this.config.wan.mode,
      publicAddress: this.publicAddress(),
      lanPrefixes: this.config.lan.prefixes,
      lanIpv6: { policy: this.config.lan.ipv6, rules: this.ipv6?.describe() ?? [] },
      sessions: this.table.sessionCount,
      limit: this.table.limit,
      state: this.store ? { path: this.store.path, ...this.store.health() } : null,
      control: this.control?.path ?? this.config.control.socket,
      lastReload: this.lastReload === null ? null : { ...this.lastReload, at: new Date(this.lastReload.at).toISOString() },
    };
  }

  /** State database health for status and metrics (healthy and empty when persistence is off). */
  db(): DbHealth {
    return this.store?.health() ?? {
      healthy: true, pendingWrites: 0, lastError: null, lastErrorAt: null, rowsRestored: 0, rowsDiscarded: 0, movedAside: null,
    };
  }

  // ---- appliance: shared-address mode, WAN address changes, reload, metrics ----

  publicAddress(): string {
    return int32ToIpv4(this.table.publicAddr);
  }

  /** Shared mode: the configured address if set, else the WAN interface's primary address. */
  private async wanAddress(): Promise<string> {
    const cfg = this.config;
    const rn = await RouterNet.open();
    try {
      const addrs = await rn.addressesOf(cfg.wan.interface);
      const chosen = cfg.wan.publicAddress ?? addrs[0];
      if (!chosen || !addrs.includes(chosen)) {
        throw new Error(`wan.mode "shared": ${cfg.wan.interface} has no IPv4 address${cfg.wan.publicAddress ? ` ${cfg.wan.publicAddress}` : ''}`);
      }
      return chosen;
    } finally {
      rn.close();
    }
  }

  private async startShared(tunName: string): Promise<void> {
    const cfg = this.config;
    this.shared = await SharedMode.setup({
      tunName, publicAddress: this.publicAddress(), table: ROUTE_TABLE, portRange: cfg.ports.range,
      forwards: cfg.forwards, savePath: this.sharedSave,
    });
    this.wanWatch = await WanWatch.start(cfg.wan.interface, this.publicAddress(),
      (next, old) => void this.wanAddressChanged(next, old),
      (e) => this.log.error('watching WAN addresses failed', { error: e.message }));
  }

  /** DHCP renew / PPPoE redial: mappings move to the new address or are dropped (wan.onAddressChange). */
  private async wanAddressChanged(next: string | null, old: string): Promise<void> {
    const policy = this.config.wan.onAddressChange;
    let dropped = 0;
    if (policy === 'drop' || next === null) {
      // Every table: NAPT sessions (and with them their PPTP control state), calls, ISAKMP and ESP entries.
      dropped = this.table.removeAll() + this.pptp.removeAll() + this.ipsec.removeAll();
    }
    if (next !== null) {
      this.table.publicAddr = ipv4ToInt32(next);
      await this.shared?.retarget(next).catch((e: Error) => this.log.error('retargeting shared-mode rules failed', { error: e.message }));
    }
    this.drainJournal();
    this.log.warn('WAN address changed', { old, new: next ?? 'none', policy, dropped, kept: this.table.sessionCount });
  }

  /**
   * Reload (SIGHUP, `vpnmasq reload`): applies every changed runtime field of
   * `next` to the running daemon, the existing entries included, and keeps
   * every mapping; rejects the whole config, keeping the running one, when a
   * field that needs a restart changed (the schema's RELOAD) or a limit was
   * raised above what the tables were allocated with.
   */
  async reload(next: Config, warnings: string[] = []): Promise<ReloadOutcome> {
    const prev = this.config;
    const plan = reloadPlan(prev, next);
    const blocked = [...plan.restart, ...this.beyondAllocation(next)];
    if (blocked.length > 0) return this.reloaded({ ok: false, error: restartMessage(blocked) });
    this.config = next;
    const failed: string[] = [];
    for (const section of sectionsOf(plan.apply) as Array<keyof Config>) {
      try {
        await (this.appliers[section] as NonNullable<Applier>)(next, prev);
      } catch (e) {
        failed.push(`${section}: ${(e as Error).message}`);
      }
    }
    this.drainJournal();
    if (failed.length > 0) {
      return this.reloaded({ ok: false, error: `applying the reloaded config failed (the other changes are applied):\n${failed.join('\n')}` });
    }
    return this.reloaded({ ok: true, applied: plan.apply, warnings });
  }

  private reloaded(outcome: ReloadOutcome): ReloadOutcome {
    this.reloadCount[outcome.ok ? 0 : 1]++;
    this.lastReload = outcome.ok ? { at: this.now(), ok: true, applied: outcome.applied } : { at: this.now(), ok: false, error: outcome.error };
    return outcome;
  }

  /** Config sections whose runtime fields a reload applies (every section with one, tested against the schema). */
  reloadSections(): string[] {
    return Object.entries(this.appliers).filter(([, a]) => a !== null).map(([section]) => section);
  }

  /** Limits above what the tables were allocated with at start: raising them needs a restart. */
  private beyondAllocation(next: Config): RestartNeeded[] {
    const out: RestartNeeded[] = [];
    const sessions = next.limits.maxSessions;
    if (sessions > this.table.capacity) {
      out.push({ field: 'limits.maxSessions', why: `${sessions} is above the ${this.table.capacity} sessions the table was allocated with at start; lowering works at runtime` });
    }
    const slots = this.datapath.layout.holdSlots;
    if (next.limits.maxHeldFragments > slots) {
      out.push({ field: 'limits.maxHeldFragments', why: `${next.limits.maxHeldFragments} is above the ${slots} hold slots allocated at start; lowering works at runtime` });
    }
    return out;
  }

  /** Timeouts and filtering, for new entries and the existing ones (their deadlines move with the change). */
  private applyTimers(next: Config): void {
    this.datapath.napt.configure(natTimers(next), next.filtering === 'endpoint-independent');
    this.ipsec.configure(ipsecOptions(next));
    this.pptp.calls.setGrace(next.timeouts.pptpGrace * 1000);
    // Deadlines moved without a packet: the stored rows are rewritten.
    this.store?.markAllDirty();
  }

  /**
   * The port range for new mappings. Shared mode also moves the steering
   * rules and the box's ephemeral range, and removes the mappings left
   * outside the new range (the box may now use those ports itself, and no
   * rule steers their replies any more); a forward's port stays. Dedicated
   * mode keeps such mappings until they expire: the whole address is ours.
   */
  private async applyPorts(next: Config): Promise<void> {
    const policy = portPolicy(next);
    if (this.shared !== null) await this.shared.setPortRange(next.ports.range);
    this.table.ports = policy;
    if (this.shared === null) return;
    const [lo, hi] = policy.range;
    const fw = this.forwards;
    const removed = this.table.removeUnless((slot, port) => (port >= lo && port <= hi) ||
      fw.portForward(slot === SLOT_TCP ? PROTO_TCP : PROTO_UDP, port) !== NO_FORWARD);
    if (removed > 0) this.log.warn('sessions outside the new port range removed', { range: `${lo}-${hi}`, removed });
  }

  private async stopAppliance(): Promise<void> {
    this.wanWatch?.close();
    await this.metrics?.close().catch(() => undefined);
    await this.shared?.teardown().catch((e: Error) => this.log.error('shared-mode teardown failed', { error: e.message }));
  }

  mappingsByProto(): Record<string, number> {
    const c = this.table.countBySlot;
    const e = this.ipsec.espCountByState;
    return {
      tcp: c[SLOT_TCP], udp: c[SLOT_UDP], icmp: c[SLOT_ICMP],
      isakmp: this.ipsec.isakmpCount, esp: e[ESP_PENDING] + e[ESP_ESTABLISHED] + e[ESP_SQUELCHED], gre: this.pptp.calls.count,
    };
  }

  vpnEntries(): Record<string, Record<string, number>> {
    const m = this.ipsec;
    const replied = m.isakmpReplied();
    const e = m.espCountByState;
    return {
      isakmp: { replied, unreplied: m.isakmpCount - replied },
      esp: { pending: e[ESP_PENDING], established: e[ESP_ESTABLISHED], squelched: e[ESP_SQUELCHED] },
      gre: this.pptp.calls.countByState(),
    };
  }

  tables(): Record<string, { entries: number; capacity: number }> {
    const t = this.table;
    const m = this.ipsec;
    const f = this.datapath.frags;
    const e = m.espCountByState;
    return {
      sessions: { entries: t.sessionCount, capacity: t.limit },
      mappings: { entries: t.mappingCount, capacity: t.capacity },
      isakmp: { entries: m.isakmpCount, capacity: m.opts.capacity },
      esp: { entries: e[ESP_PENDING] + e[ESP_ESTABLISHED] + e[ESP_SQUELCHED], capacity: m.opts.capacity },
      'ipsec-remotes': { entries: m.remoteCount, capacity: m.opts.capacity },
      'pptp-calls': { entries: this.pptp.calls.count, capacity: this.pptp.calls.capacity },
      'pptp-control': { entries: this.pptp.control.count, capacity: this.pptp.control.capacity },
      'fragments-held': { entries: f.heldCount, capacity: f.holdLimit },
      'fragment-datagrams': { entries: f.datagramCount, capacity: f.datagramCapacity },
    };
  }

  reloads(): Record<string, number> {
    return { applied: this.reloadCount[0], rejected: this.reloadCount[1] };
  }

  nowMs(): number {
    return this.now();
  }

  tableLimit(): number {
    return this.table.limit;
  }

  drops(): Record<string, number> {
    return this.datapath.napt.drops.byName();
  }

  traffic(): { packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number } {
    const t = this.datapath.napt.traffic;
    return { packetsOut: t[T_PKTS_OUT], packetsIn: t[T_PKTS_IN], bytesOut: t[T_BYTES_OUT], bytesIn: t[T_BYTES_IN] };
  }

  /** VPN events for the metrics: every IPsec event count, and the PPTP counters that count events (not packets or messages). */
  vpnEvents(): Record<string, number> {
    const out: Record<string, number> = {};
    const ipsec = this.ipsec.eventCounts;
    IPSEC_EVENT_NAMES.forEach((name, i) => { out[`ipsec-${name}`] = ipsec[i]; });
    for (const [name, n] of Object.entries(this.pptp.counters.byName())) if (!PPTP_VOLUME_COUNTERS.has(name)) out[`pptp-${name}`] = n;
    return out;
  }

  private handleControl(req: ControlRequest): ControlReply | Promise<ControlReply> {
    return this.commands.handle(req);
  }
}
