/**
 * `vpnmasq run`: wires the edges (TUN addon, netlink, control socket, timers)
 * around the pure packet path and keeps them in order on start and stop.
 */
import { IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import { Config } from '../config/schema';
import { reloadPlan, RestartNeeded, restartMessage, sectionsOf } from './reload';
import { MetricsServer, MetricsSource, startMetricsServer } from './metrics';
import { mssClampValue } from '../nat/mss-clamp';
import { NetSpec, tunDeviceNames } from '../edge/netlink/plan';
import { HostState, hostStatePath } from '../edge/netlink/host-state';
import { WanState, WanWatch } from '../edge/netlink/wan-watch';
import { capacityStats, hostLimits, logOffenders, portPolicy, tableSetup, CapReport } from './capacity';
import { ControlReply, ControlRequest, ControlServer, lookupGroup, startControlServer } from './control';
import { ControlCommands } from './control-commands';
import { Logger } from './log';
import { DebugLog } from './debug-log';
import { Datapath, rxSlotSize } from '../nat/datapath';
import type { NatTimers } from '../nat/napt';
import { NO_FORWARD } from '../nat/forwards';
import { Journal, JournalListener } from '../core/journal';
import { SessionTable, SLOT_ICMP, SLOT_TCP, SLOT_UDP, TABLE_SESSIONS } from '../nat/sessions';
import { PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { allRows, ConnRow, ConnTables, rowOf } from '../query/rows';
import { IpsecRemote, ipsecReport } from '../query/ipsec-report';
import { JournalFeed, JournalObserver } from '../query/journal-feed';
import { IdIndex, IdSource } from '../query/id-index';
import { Drop } from '../core/verdict';
import { T_BYTES_IN, T_BYTES_OUT, T_PKTS_IN, T_PKTS_OUT } from '../nat/napt';
import { RouterNet, SafetyNetStatus } from '../edge/netlink/router-net';
import { int32ToIpv4, ipv4ToInt32, prefixPairs } from '../core/ipv4-addr';
import { ringBytes, type TunDevice, type TunEvent, type TunFactory } from '../edge/tun/device';
import { NativeTun } from '../edge/tun/native-tun';
import { RX_WAIT_BUCKETS, Stat } from '../edge/tun/native';
import { BatchFaults } from '../edge/tun/batch-faults';
import { Store } from '../persist/store';
import { EspCodec, GreCallCodec, IsakmpCodec, SessionCodec } from '../persist/tables';
import { DbHealth, NOT_PERSISTED } from '../persist/health';
import { Forwards } from '../nat/forwards';
import { PPTP_COUNTER_NAMES, PptpCounter } from '../helpers/pptp/counters';
import { PptpMasq } from '../helpers/pptp/pptp';
import { TABLE_GRE_CALLS } from '../helpers/pptp/calls';
import {
  ESP_ESTABLISHED, ESP_PENDING, ESP_SQUELCHED, IPSEC_EVENT_NAMES, IpsecMasq, IpsecOptions, MIN_LIFETIME_MS, TABLE_ESP, TABLE_ISAKMP,
} from '../helpers/ipsec/ipsec';
import { attachIpsec } from '../helpers/ipsec/nat';

/** Receive slots per TUN queue: a whole 64 KiB super-packet each with offloads, an MTU without. */
const RING_SLOTS_OFFLOADS = 256;
const RING_SLOTS_MTU = 1024;
/** Queues of each TUN device (IFF_MULTI_QUEUE above 1), each with its reader and writer thread. */
const TUN_QUEUES = 1;
/** Packets translated per call into the packet path at most. */
const BATCH = 128;
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
  [PptpCounter.NO_CALL_SLOT, 'pptp-call-without-id'], [PptpCounter.CONTROL_TABLE_FULL, 'pptp-control-table-full'],
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

export interface DaemonOptions {
  /** Wall-clock milliseconds; injectable for tests. */
  now?: () => number;
  /** Persist the tables in the state store (default true; the benchmark measures without). */
  persist?: boolean;
  /** What the daemon is doing, for systemd's STATUS= (forwarding, or what it waits for). */
  onStatus?: (status: string) => void;
  /** Opens the TUN device (default: the kernel device through the addon); tests pass a FakeTun. */
  openTun?: TunFactory;
  /**
   * Called once when forwarding cannot go on: the TUN device failed or was
   * deleted, the packet path keeps throwing (BatchFaults), or translation
   * could not start once the WAN appeared. The reason is already logged; the
   * caller stops the daemon, which flushes the state store and leaves the
   * safety net, and exits non-zero for the service manager to restart it.
   */
  onFatal?: (reason: Error) => void;
  /** A state file of a newer schema version: left untouched (default) or moved aside (`vpnmasq run --force-downgrade`). */
  newerSchema?: 'refuse' | 'move-aside';
  /** `vpnmasq reload` over the control socket: reads the config file and reloads it (the lifecycle's, serialised with SIGHUP). */
  reloadFromFile?: () => Promise<ReloadOutcome>;
}

export class Daemon implements MetricsSource {
  private wanWatch: WanWatch | null = null;
  /** The spec of the safety net in place (plan.ts). */
  private spec: NetSpec | null = null;
  /** What the daemon waits for before it translates (null: translating, or not started). */
  private waitingFor: string | null = 'the safety net';
  private translating = false;
  /** WAN changes, reloads and stop run one at a time. */
  private chain: Promise<unknown> = Promise.resolve();
  private readonly onStatus: (status: string) => void;
  /** What the kernel held of the plumbing after the last change (for status). */
  private netStatus: SafetyNetStatus | { error: string } | null = null;
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
  private control: ControlServer | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private loopDelay: IntervalHistogram | null = null;
  private stopping: Promise<void> | null = null;
  /** Write-ahead listeners: they see every table event before the batch is written (the store). */
  private readonly journalListeners: JournalListener[] = [];
  /** Observers (`conns watch`, the id index) get the events after the batch was written. */
  private readonly feed = new JournalFeed();
  /** Where each id lives, for `conns show|delete ID`. */
  private readonly ids: IdIndex;
  private readonly persist: boolean;
  private readonly newerSchema: 'refuse' | 'move-aside';
  /** The state store, once started with persistence. */
  store: Store | null = null;
  private readonly commands: ControlCommands;
  readonly forwards: Forwards;
  /** PPTP calls (journal table 4), their GRE and the control-channel tracker. */
  readonly pptp: PptpMasq;
  /** IPsec masquerade: ISAKMP by cookie on port 500, ESP by SPI (spec §3, §4). */
  readonly ipsec: IpsecMasq;
  private readonly pptpLogged = new Float64Array(PPTP_LOGGED.length);
  /** Drop.SPOOFED_SOURCE as last logged. */
  private spoofsLogged = 0;
  private readonly caps = new CapReport();
  private pptpSweptAt = 0;
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
    limits: (next) => this.applyLimits(next),
    filtering: null,
    ipsec: (next) => this.ipsec.configure(ipsecOptions(next)),
    pptp: (next) => { this.pptp.gre.allowNonPptp = next.pptp.nonPptpGre === 'address-only'; },
    forwards: async (next) => {
      const dropped = this.forwards.configure(next.forwards);
      if (dropped.length > 0) this.log.warn('runtime forwards dropped: the reloaded config claims their ports', { forwards: JSON.stringify(dropped) });
      // Reloads run in the chain already: the safety net is re-installed here, not through forwardsChanged().
      await this.steerAgain();
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
    this.onStatus = opts.onStatus ?? (() => undefined);
    this.newerSchema = opts.newerSchema ?? 'refuse';
    this.openTun = opts.openTun ?? ((o) => NativeTun.open(o));
    this.onFatal = opts.onFatal ?? (() => undefined);
    this.reloadFromFile = opts.reloadFromFile ?? (() => Promise.resolve({ ok: false, error: 'this daemon was started without a config file to reload' }));
    this.faults = new BatchFaults(log, (reason) => this.fail(reason), this.now);
    this.startedAt = this.now();
    this.commands = new ControlCommands(this, this.now);
    const cfg = config;
    const setup = tableSetup(cfg);
    this.table = new SessionTable(cfg.limits.maxSessions, setup.publicAddrs, setup.ports, new Journal(), Math.random, setup.options);
    const t = cfg.timeouts;
    this.datapath = new Datapath(
      this.table,
      {
        slotSize: rxSlotSize(cfg.tun.offloads, cfg.tun.mtu),
        rxSlots: tunDeviceNames(cfg.tun.name).length * TUN_QUEUES * this.ringSlots(),
        batch: BATCH,
        holdSlots: cfg.limits.maxHeldFragments,
        holdSlotSize: rxSlotSize(false, cfg.tun.mtu),
      },
      Math.max(1024, cfg.limits.maxHeldFragments * 4),
      {
        lanPrefixes: prefixPairs(cfg.lan.prefixes),
        timers: natTimers(cfg),
        endpointIndependentFiltering: cfg.filtering === 'endpoint-independent',
        vnetLen: 10,
        refuseWithIcmp: cfg.limits.refuse === 'icmp',
      },
    );
    const napt = this.datapath.napt;
    this.datapath.frags.perSourceLimit = cfg.limits.fragmentsPerSource;
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

  /**
   * Safety net first (plan.ts: nothing leaks and nothing is answered while
   * no TUN translates), then the control socket, then, once the WAN
   * interface (and in shared mode its address) is there, translation.
   * A missing WAN is waited for through netlink, never a start failure.
   */
  start(): Promise<void> {
    // In the chain, so no WAN notification is handled before the safety net is in place.
    return this.serial(() => this.doStart());
  }

  private async doStart(): Promise<void> {
    const cfg = this.config;
    const host = HostState.load(hostStatePath(cfg.state.path));
    if (host.note?.kind === 'earlier-boot') this.log.info('host state is from an earlier boot: the host settings found now are the ones to restore');
    if (host.note?.kind === 'unreadable') this.log.error('host state unreadable, moved aside; the host settings found now are the ones to restore', { ...host.note });
    const watched = await WanWatch.start(cfg.wan.interface,
      (state) => void this.serial(() => this.wanChanged(state)).catch((e: Error) => this.fail(new Error(`start failed: ${e.message}`, { cause: e }))),
      (e) => this.log.error('watching the WAN interface failed', { error: e.message }));
    this.wanWatch = watched.watch;
    this.net = RouterNet.open(host);
    // Shared mode with no address yet: keep protecting the last one in use (a reboot restores its mappings).
    const saved = host.spec?.mode === cfg.wan.mode && host.spec.wanInterface === cfg.wan.interface ? host.spec.publicAddress : null;
    const address = cfg.wan.mode === 'dedicated' ? cfg.wan.publicAddress : this.pickAddress(watched.state) ?? saved;
    await this.installSafetyNet(address);
    const controlGroup = lookupGroup(cfg.control.group);
    if (controlGroup === null) this.log.warn('control group not found: the control socket is open to root only', { group: cfg.control.group });
    this.control = await startControlServer(cfg.control.socket, controlGroup, (req) => this.handleControl(req), { log: this.log, watch: this.commands.watchers });
    if (cfg.metrics) this.metrics = await startMetricsServer(cfg.metrics.listen, this, this.log);
    await this.wanChanged(watched.state);
  }

  /** One line for systemd's STATUS= and `vpnmasq status`. */
  statusLine(): string {
    if (this.translating) return `forwarding, public address ${this.publicAddress()}`;
    return `waiting for ${this.waitingFor}; safety net in place, nothing translates`;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** The spec the config asks for with `address` as the public one. */
  private specOf(address: string | null): NetSpec {
    const cfg = this.config;
    const ports: NetSpec['forwardPorts'] = [];
    for (const f of this.forwards.all()) if ((f.proto === 'tcp' || f.proto === 'udp') && f.publicPort !== undefined) ports.push({ proto: f.proto, port: f.publicPort });
    return {
      mode: cfg.wan.mode, tunName: cfg.tun.name, lanInterfaces: cfg.lan.interfaces, lanPrefixes: cfg.lan.prefixes,
      wanInterface: cfg.wan.interface, publicAddress: address, portRange: cfg.ports.range, forwardPorts: ports,
      otherPublicAddresses: cfg.wan.mode === 'dedicated' ? cfg.wan.publicAddresses.slice(1) : [],
      lanIpv6: cfg.lan.ipv6,
    };
  }

  private async installSafetyNet(address: string | null): Promise<void> {
    const spec = this.specOf(address);
    const changes = await (this.net as RouterNet).installSafetyNet(spec);
    this.spec = spec;
    await this.inspectNet();
    if (changes.added.length + changes.removed.length > 0) this.log.info('safety net installed', { added: changes.added.length, removed: changes.removed.length });
    if (changes.note !== undefined) this.log.info(changes.note);
    for (const r of changes.removed) this.log.debug('removed stale plumbing', { entry: r });
  }

  private async inspectNet(): Promise<void> {
    this.netStatus = await RouterNet.inspect().catch((e: Error) => ({ error: e.message }));
  }

  /** Shared mode: the address in use if still there, else the configured one if present, else the primary. */
  private pickAddress(state: WanState): string | null {
    if (state === null) return null;
    const current = this.translating ? this.publicAddress() : null;
    if (current !== null && state.addresses.includes(current)) return current;
    const want = this.config.wan.publicAddress;
    if (want !== null) return state.addresses.includes(want) ? want : null;
    return state.addresses[0] ?? null;
  }

  /** The WAN interface appeared, changed or went away (serialised). */
  private async wanChanged(state: WanState): Promise<void> {
    if (this.stopping !== null) return;
    const cfg = this.config;
    const shared = cfg.wan.mode === 'shared';
    const address = shared ? this.pickAddress(state) : cfg.wan.publicAddress;
    if (state === null || address === null) {
      const what = state === null ? `interface ${cfg.wan.interface}` : `an IPv4 address${cfg.wan.publicAddress ? ` ${cfg.wan.publicAddress}` : ''} on ${cfg.wan.interface}`;
      if (this.waitingFor !== what) this.log.warn(`waiting for ${what}`, { translating: this.translating });
      this.waitingFor = what;
      this.onStatus(this.translating ? `forwarding, public address ${this.publicAddress()}; waiting for ${what}` : this.statusLine());
      return;
    }
    this.waitingFor = null;
    if (!this.translating) await this.startTranslating(address);
    else if (shared && address !== this.publicAddress()) await this.wanAddressChanged(address, this.publicAddress());
    else await (this.net as RouterNet).attachWan();
    this.onStatus(this.statusLine());
  }

  /** Restore, TUN, routes: from here on vpnmasq translates. */
  private async startTranslating(address: string): Promise<void> {
    const cfg = this.config;
    const net = this.net as RouterNet;
    if (this.spec?.publicAddress !== address) await this.installSafetyNet(address);
    this.table.publicAddr = ipv4ToInt32(address);
    if (this.persist) this.openStore();
    // Tag = side (core/side.ts): the LAN device first, then the WAN one.
    const tun = this.openTun({ names: [...tunDeviceNames(cfg.tun.name)], offloads: cfg.tun.offloads, queues: TUN_QUEUES, io: cfg.tun.io,
      busyPollUs: cfg.tun.busyPollUs });
    this.tun = tun;
    const tunName = tun.names.join(',');
    if (cfg.tun.offloads && tun.offloadError) this.log.warn('TUN offloads unavailable, running without them', { reason: tun.offloadError });
    await net.attachTun(cfg.tun.mtu);
    await net.attachWan();
    this.startPacketLoop(tun);
    if (tun.io?.fallback) this.log.warn('TUN I/O through threads: io_uring unavailable', { reason: tun.io.fallback });
    await this.inspectNet();
    const budget = Math.max(1024, Math.ceil(this.table.capacity / SWEEPS_PER_PASS));
    this.sweepTimer = setInterval(() => this.sweep(budget), SWEEP_INTERVAL_MS);
    this.translating = true;
    // How late the loop runs from now on (restore and setup are over): what a packet batch can wait behind.
    this.loopDelay = monitorEventLoopDelay({ resolution: 10 });
    this.loopDelay.enable();
    this.log.info('vpnmasq running', {
      tun: tunName,
      offloads: `0x${tun.offloads.toString(16)}`,
      io: tun.io?.mode ?? 'none',
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
    const fw = this.datapath;
    const ringSlots = this.ringSlots();
    if (ringBytes(tun.queues, ringSlots, fw.layout.slotSize) > fw.layout.rxSlots * fw.layout.slotSize) {
      throw new Error(`TUN ${tun.names.join(',')} has ${tun.queues} queues; the arena has receive rings for ${fw.layout.rxSlots / ringSlots}`);
    }
    this.tun = tun;
    fw.napt.mssClamp = mssClampValue(this.config.mssClamp, this.config.tun.mtu);
    const journal = this.table.journal as Journal;
    const faults = this.faults;
    const onError = (e: unknown, index: number): void => faults.packet(e, index);
    tun.start({
      arena: fw.arena, slotSize: fw.layout.slotSize, ringSlots,
      rxOffs: fw.rxOffs, rxLens: fw.rxLens, rxDevs: fw.rxDevs, txList: fw.tx.list, txDevs: fw.tx.dev,
    }, {
      onBatch: (n) => {
        const count = fw.processBatch(n, this.now(), onError);
        faults.batchDone(n);
        if (journal.length > 0) this.drainJournal();
        return count;
      },
      onEvent: (event) => this.tunEvent(tun, event),
    });
  }

  private ringSlots(): number {
    return this.config.tun.offloads ? RING_SLOTS_OFFLOADS : RING_SLOTS_MTU;
  }

  private tunEvent(tun: TunDevice, event: TunEvent): void {
    if (event.kind === 'callback-error') {
      this.faults.batch(event.error, event.dropped);
      return;
    }
    const what = event.code === 'EBADFD' ? 'is gone (deleted or detached)' : 'failed';
    this.fail(new Error(`TUN ${tun.names[event.dev]} ${what}: ${event.message} (${event.code}); forwarding has stopped`));
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
    const store = new Store(this.config.state, this.log, { now: this.now, newerSchema: this.newerSchema });
    store.registerTable(new SessionCodec(this.table));
    // After the sessions: a PPTP call refers to its control connection's session.
    store.registerTable(new IsakmpCodec(this.ipsec, this.table));
    store.registerTable(new EspCodec(this.ipsec, this.table));
    store.registerTable(new GreCallCodec(this.pptp.calls, this.table));
    // The VPN counters continue where the last run left them (stats, vpnmasq_vpn_events_total).
    store.registerCounters(IPSEC_EVENT_NAMES.map((n) => `ipsec-${n}`), this.ipsec.eventCounts);
    store.registerCounters(PPTP_COUNTER_NAMES.map((n) => `pptp-${n}`), this.pptp.counters.counts);
    store.restore({
      now: this.now(), isPublic: (a) => this.table.publicIndexOf(a) >= 0, onAddressChange: this.config.wan.onAddressChange,
      lanPrefixes: prefixPairs(this.config.lan.prefixes),
    });
    // Restored entries come without table events: the id index is rebuilt at its first lookup, off the start path.
    this.ids.lost();
    // Restored counters are not news for the log.
    PPTP_LOGGED.forEach(([counter], i) => { this.pptpLogged[i] = this.pptp.counters.counts[counter]; });
    this.addJournalListener(store);
    store.start();
    this.store = store;
  }

  /**
   * One run of the sweep timer: expiries in every table (at most `budget`
   * slots of each), the fragment pool, VPN event logging, the journal drain.
   * The timer calls it every 100 ms; the fuzzer calls it on its own clock.
   */
  sweep(budget = Math.max(1024, Math.ceil(this.table.capacity / SWEEPS_PER_PASS))): void {
    const now = this.now();
    this.table.sweep(now, budget);
    this.table.hosts.sweep(now, budget);
    const timedOut = this.datapath.frags.sweep(now);
    if (timedOut > 0) this.datapath.napt.drops.counts[Drop.FRAGMENT_TIMEOUT] += timedOut;
    this.ipsec.sweep(now, budget);
    this.ipsec.events.drain((kind, msg, fields) => this.log.event(kind, msg, fields));
    if (now - this.pptpSweptAt >= 1000) {
      this.pptpSweptAt = now;
      this.pptpTick(now);
      logOffenders(this.table, this.log, now);
      this.caps.report(this.datapath.napt.drops.counts, this.log, now);
      if (this.debugging) this.debugLog.drops(this.datapath.napt.drops.counts);
      this.logSpoofs();
    }
    this.drainJournal();
  }

  /** Spoofed sources (napt.ts), at most one line a second while they go on. */
  private logSpoofs(): void {
    const napt = this.datapath.napt;
    const total = napt.drops.counts[Drop.SPOOFED_SOURCE];
    const n = total - this.spoofsLogged;
    if (n <= 0) return;
    this.spoofsLogged = total;
    const side = napt.lastSpoof[1] === 1 ? 'lan' : 'wan';
    const last = int32ToIpv4(napt.lastSpoof[0]);
    this.log.event('spoofed-source', `spoofed-source: ${n} packets dropped since last report, last from ${last} on the ${side} side`, { count: n, total, side, source: last });
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

  /**
   * Stops translating; the safety net stays (closing the TUN takes its routes
   * with it), so until the next start LAN traffic and steered inbound traffic
   * are dropped. `vpnmasq teardown` removes it. Idempotent.
   */
  stop(): Promise<void> {
    if (this.stopping === null) this.stopping = this.serial(() => this.doStop());
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.loopDelay?.disable();
    this.wanWatch?.close();
    await this.metrics?.close().catch(() => undefined);
    await this.control?.close().catch(() => undefined);
    this.tun?.close();
    this.net?.detachTun();
    this.translating = false;
    this.store?.close();
    this.net?.close();
    this.log.info('vpnmasq stopped; the safety net stays in place until "vpnmasq teardown"');
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
    if (this.config.wan.mode !== 'shared' || this.spec === null) return;
    const address = this.spec.publicAddress;
    await this.serial(() => this.installSafetyNet(address));
  }

  stats(): Record<string, unknown> {
    const napt = this.datapath.napt;
    const t = this.table;
    const tunStats: Record<string, number> = {};
    const tun = this.tun;
    if (tun) {
      const counters = tun.stats();
      // The rx-wait counts exist only where a reader thread stamps each packet (tun.io threads), busy polling only with io_uring.
      const threads = tun.io?.mode === 'threads';
      for (const [name, i] of Object.entries(Stat)) {
        if (threads ? !name.startsWith('BUSY_POLL_') : !name.startsWith('RX_WAIT_')) tunStats[name.toLowerCase()] = counters[i];
      }
    }
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
      capacity: capacityStats(t, napt),
      tun: tunStats,
      ...(this.loopDelay ? { eventLoop: { p99Ms: this.loopDelay.percentile(99) / 1e6, maxMs: this.loopDelay.max / 1e6 } } : {}),
    };
  }

  ipsecRemotes(remote: number | null): IpsecRemote[] {
    return ipsecReport(this.ipsec, this.now(), remote);
  }

  status(): Record<string, unknown> {
    return {
      running: this.fatal === null,
      ...(this.fatal !== null ? { failed: this.fatal.message } : {}),
      translating: this.translating,
      waitingFor: this.translating ? null : this.waitingFor,
      statusText: this.statusLine(),
      safetyNet: this.netStatus,
      pid: process.pid,
      uptimeSeconds: Math.round((this.now() - this.startedAt) / 1000),
      tun: this.tun ? { name: this.config.tun.name, devices: [...this.tun.names], offloads: this.tun.offloads, io: this.tun.io?.mode ?? null } : null,
      mode: this.config.wan.mode,
      publicAddress: this.publicAddress(),
      lanPrefixes: this.config.lan.prefixes,
      lanIpv6: { policy: this.config.lan.ipv6, rules: this.netStatus !== null && 'ipv6Rules' in this.netStatus ? this.netStatus.ipv6Rules : [] },
      sessions: this.table.sessionCount,
      limit: this.table.limit,
      state: this.store ? { path: this.store.path, ...this.store.health() } : null,
      control: this.control
        ? { socket: this.control.path, connections: this.control.connections, watchers: this.commands.watching, refused: this.control.refused, thread: this.control.thread }
        : { socket: this.config.control.socket },
      lastReload: this.lastReload === null ? null : { ...this.lastReload, at: new Date(this.lastReload.at).toISOString() },
    };
  }

  /** State database health for status and metrics (healthy and empty when persistence is off). */
  db(): DbHealth {
    return this.store?.health() ?? NOT_PERSISTED;
  }

  // ---- appliance: shared-address mode, WAN address changes, reload, metrics ----

  publicAddress(): string {
    return int32ToIpv4(this.table.publicAddr);
  }

  /** DHCP renew / PPPoE redial: mappings move to the new address or are dropped (wan.onAddressChange). */
  private async wanAddressChanged(next: string, old: string): Promise<void> {
    const policy = this.config.wan.onAddressChange;
    let dropped = 0;
    if (policy === 'drop') {
      // Every table: NAPT sessions (and with them their PPTP control state), calls, ISAKMP and ESP entries.
      dropped = this.table.removeAll() + this.pptp.removeAll() + this.ipsec.removeAll();
    }
    this.table.publicAddr = ipv4ToInt32(next);
    // The new address's steering goes in before the old one's comes out.
    await this.installSafetyNet(next);
    this.drainJournal();
    this.log.warn('WAN address changed', { old, new: next, policy, dropped, kept: this.table.sessionCount });
  }

  /**
   * Reload (SIGHUP, `vpnmasq reload`): applies every changed runtime field of
   * `next` to the running daemon, the existing entries included, and keeps
   * every mapping; rejects the whole config, keeping the running one, when a
   * field that needs a restart changed (the schema's RELOAD) or a limit was
   * raised above what the tables were allocated with.
   */
  reload(next: Config, warnings: string[] = []): Promise<ReloadOutcome> {
    // One at a time with WAN changes and stop: a reload re-installs the safety net.
    return this.serial(() => this.doReload(next, warnings));
  }

  private async doReload(next: Config, warnings: string[]): Promise<ReloadOutcome> {
    if (this.stopping !== null) return this.reloaded({ ok: false, error: 'vpnmasq is stopping' });
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

  /**
   * Limits: lowering maxSessions refuses new sessions while the existing ones
   * stay; the per-host and inbound budgets and the refusal policy apply to
   * the next decision they make.
   */
  private applyLimits(next: Config): void {
    const lim = next.limits;
    this.table.limit = lim.maxSessions;
    this.datapath.frags.holdLimit = lim.maxHeldFragments;
    this.table.hosts.limits = hostLimits(next);
    this.table.inbound.limits = { ...this.table.inbound.limits, perRemote: lim.remoteUnanswered };
    this.datapath.napt.refusals.icmp = lim.refuse === 'icmp';
  }

  /** Timeouts, for new entries and the existing ones (their deadlines move with the change). */
  private applyTimers(next: Config): void {
    // Before the sessions are retimed: an unanswered session's deadline is capped by it.
    this.table.inbound.limits = { ...this.table.inbound.limits, unansweredMs: next.timeouts.unanswered * 1000 };
    this.datapath.napt.configure(natTimers(next));
    this.ipsec.configure(ipsecOptions(next));
    this.pptp.calls.setGrace(next.timeouts.pptpGrace * 1000);
    // Deadlines moved without a packet: the stored rows are rewritten.
    this.store?.markAllDirty();
  }

  /**
   * The port range for new mappings. Shared mode first re-installs the
   * safety net (plan.ts), so the new range is steered to the TUN and taken
   * out of the box's ephemeral ports before a mapping can use it, and the old
   * range's steering goes. The port spaces are then rebuilt for the new range
   * (every existing mapping keeps its port) and, in shared mode, the mappings
   * left outside the range are removed (the box may now use those ports
   * itself, and no rule steers their replies any more); a forward's port
   * stays. Dedicated mode keeps such mappings until they expire: the whole
   * address is ours.
   */
  private async applyPorts(next: Config): Promise<void> {
    await this.steerAgain();
    const policy = portPolicy(next);
    this.table.setPorts(policy);
    if (next.wan.mode !== 'shared') return;
    const [lo, hi] = policy.range;
    const fw = this.forwards;
    const removed = this.table.removeUnless((slot, port) => (port >= lo && port <= hi) ||
      fw.portForward(slot === SLOT_TCP ? PROTO_TCP : PROTO_UDP, port) !== NO_FORWARD);
    if (removed > 0) this.log.warn('sessions outside the new port range removed', { range: `${lo}-${hi}`, removed });
  }

  /** Shared mode, in the chain: the safety net again for the running config (its port range and forwards). */
  private async steerAgain(): Promise<void> {
    if (this.config.wan.mode !== 'shared' || this.spec === null || this.net === null) return;
    await this.installSafetyNet(this.spec.publicAddress);
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

  forwardingWaits(): Record<string, number> {
    const out: Record<string, number> = {};
    const tun = this.tun;
    if (tun?.io?.mode !== 'threads') return out;
    const counters = tun.stats();
    for (const b of RX_WAIT_BUCKETS) out[b.name] = counters[b.stat];
    return out;
  }

  busyPolls(): Record<string, number> {
    const tun = this.tun;
    if (tun?.io?.mode !== 'uring') return {};
    const counters = tun.stats();
    return { hit: counters[Stat.BUSY_POLL_HITS], miss: counters[Stat.BUSY_POLL_MISSES] };
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
