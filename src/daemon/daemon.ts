/**
 * `vpnmasq run`: wires the edges (TUN addon, netlink, control socket, timers)
 * around the pure packet path and keeps them in order on start and stop.
 */
import { Config } from '../config/schema';
import { configDiff } from './reload';
import { MetricsServer, MetricsSource, startMetricsServer } from './metrics';
import { mssClampValue } from '../nat/mss-clamp';
import { NetSpec, tunDeviceNames } from '../edge/netlink/plan';
import { HostState, hostStatePath } from '../edge/netlink/host-state';
import { WanState, WanWatch } from '../edge/netlink/wan-watch';
import { capacityStats, hostLimits, logOffenders, tableSetup } from './capacity';
import { ControlReply, ControlRequest, ControlServer, lookupGroup, startControlServer } from './control';
import { ControlCommands } from './control-commands';
import { Logger } from './log';
import { Datapath, rxSlotSize } from '../nat/datapath';
import { Journal, JournalListener } from '../core/journal';
import { SessionTable, SLOT_ICMP, SLOT_TCP, SLOT_UDP, TABLE_SESSIONS } from '../nat/sessions';
import { allRows, ConnRow, ConnTables, rowOf } from '../query/rows';
import { JournalFeed, JournalObserver } from '../query/journal-feed';
import { IdIndex, IdSource } from '../query/id-index';
import { Drop } from '../core/verdict';
import { T_BYTES_IN, T_BYTES_OUT, T_PKTS_IN, T_PKTS_OUT } from '../nat/napt';
import { RouterNet, SafetyNetStatus } from '../edge/netlink/router-net';
import { int32ToIpv4, ipv4ToInt32, ipv4ToNumber, parseCidr, prefixMask } from '../core/ipv4-addr';
import { ringBytes, type TunDevice, type TunEvent, type TunFactory } from '../edge/tun/device';
import { NativeTun } from '../edge/tun/native-tun';
import { Stat } from '../edge/tun/native';
import { BatchFaults } from '../edge/tun/batch-faults';
import { Store } from '../persist/store';
import { EspCodec, GreCallCodec, IsakmpCodec, SessionCodec } from '../persist/tables';
import { DbHealth } from '../persist/health';
import { Forwards } from '../nat/forwards';
import { PptpCounter } from '../helpers/pptp/counters';
import { PptpMasq } from '../helpers/pptp/pptp';
import { TABLE_GRE_CALLS } from '../helpers/pptp/calls';
import { IPSEC_EVENT_NAMES, IpsecMasq, MIN_LIFETIME_MS, TABLE_ESP, TABLE_ISAKMP } from '../helpers/ipsec/ipsec';
import { attachIpsec } from '../helpers/ipsec/nat';

/** Receive slots per TUN queue: a whole 64 KiB super-packet each with offloads, an MTU without. */
const RING_SLOTS_OFFLOADS = 256;
const RING_SLOTS_MTU = 1024;
/** Queues of each TUN device (IFF_MULTI_QUEUE above 1), each with its reader and writer thread. */
const TUN_QUEUES = 1;
/** TUN devices: one per side (core/side.ts). */
const TUN_DEVICES = 2;
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
  /** Drop.SPOOFED_SOURCE as last logged. */
  private spoofsLogged = 0;
  private pptpSweptAt = 0;

  constructor(public config: Config, private readonly log: Logger, opts: DaemonOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.persist = opts.persist ?? true;
    this.onStatus = opts.onStatus ?? (() => undefined);
    this.openTun = opts.openTun ?? ((o) => NativeTun.open(o));
    this.onFatal = opts.onFatal ?? (() => undefined);
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
        rxSlots: TUN_DEVICES * TUN_QUEUES * this.ringSlots(),
        batch: BATCH,
        holdSlots: cfg.limits.maxHeldFragments,
        holdSlotSize: rxSlotSize(false, cfg.tun.mtu),
      },
      Math.max(1024, cfg.limits.maxHeldFragments * 4),
      {
        lanPrefixes: cfg.lan.prefixes.map((p) => {
          const c = parseCidr(p);
          return [ipv4ToNumber(c.network) | 0, prefixMask(c.prefixLen) | 0] as [number, number];
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
        refuseWithIcmp: cfg.limits.refuse === 'icmp',
      },
    );
    const napt = this.datapath.napt;
    this.forwards = new Forwards(this.table, cfg.forwards);
    this.pptp = new PptpMasq(PPTP_CALLS, this.table, this.table.journal);
    this.pptp.calls.graceMs = t.pptpGrace * 1000;
    this.pptp.gre.allowNonPptp = cfg.pptp.nonPptpGre === 'address-only';
    this.pptp.attach(napt);
    napt.forwards = this.forwards;
    napt.sharedAddress = cfg.wan.mode === 'shared';
    this.ipsec = new IpsecMasq({
      lifetimeMs: Math.max(MIN_LIFETIME_MS, t.ipsec * 1000),
      pendingMs: t.espPending * 1000,
      squelchMs: t.espSquelch * 1000,
      retries: cfg.ipsec.retries,
      parallel: cfg.ipsec.parallel,
      guessing: cfg.ipsec.guessing,
      guessMax: cfg.ipsec.guessMax,
      capacity: IPSEC_ENTRIES,
    });
    attachIpsec(napt, this.ipsec);
    this.ipsec.serials = this.table.serials;
    this.ipsec.journal = this.table.journal;
    this.ids = new IdIndex(() => this.idSources());
    this.feed.add(this.ids);
    this.journalListeners.push(this.feed);
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
    this.control = await startControlServer(cfg.control.socket, controlGroup, (req) => this.handleControl(req));
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
    };
  }

  private async installSafetyNet(address: string | null): Promise<void> {
    const spec = this.specOf(address);
    const changes = await (this.net as RouterNet).installSafetyNet(spec);
    this.spec = spec;
    await this.inspectNet();
    if (changes.added.length + changes.removed.length > 0) this.log.info('safety net installed', { added: changes.added.length, removed: changes.removed.length });
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
    const tun = this.openTun({ names: [...tunDeviceNames(cfg.tun.name)], offloads: cfg.tun.offloads, queues: TUN_QUEUES, io: cfg.tun.io });
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
    const store = new Store(this.config.state, this.log, { now: this.now });
    store.registerTable(new SessionCodec(this.table));
    // After the sessions: a PPTP call refers to its control connection's session.
    store.registerTable(new IsakmpCodec(this.ipsec, this.table));
    store.registerTable(new EspCodec(this.ipsec, this.table));
    store.registerTable(new GreCallCodec(this.pptp.calls, this.table));
    store.restore({ now: this.now(), isPublic: (a) => this.table.publicIndexOf(a) >= 0, onAddressChange: this.config.wan.onAddressChange });
    // Restored entries come without table events: the id index is rebuilt at its first lookup, off the start path.
    this.ids.lost();
    this.addJournalListener(store);
    store.start();
    this.store = store;
  }

  private sweep(budget: number): void {
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
      for (const [name, i] of Object.entries(Stat)) tunStats[name.toLowerCase()] = counters[i];
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
      limit: t.capacity,
      drops: napt.drops.byName(),
      ipsec: this.ipsec.stats(),
      pptp: this.pptp.stats(),
      capacity: capacityStats(t, napt),
      tun: tunStats,
    };
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
      sessions: this.table.sessionCount,
      limit: this.table.capacity,
      state: this.store ? { path: this.store.path, ...this.store.health() } : null,
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

  /** SIGHUP: applies a validated config that reloadable() accepted; every mapping stays. */
  async reload(next: Config): Promise<void> {
    const prev = this.config;
    this.config = next;
    this.datapath.napt.mssClamp = mssClampValue(next.mssClamp, next.tun.mtu);
    this.table.hosts.limits = hostLimits(next);
    this.datapath.napt.refusals.icmp = next.limits.refuse === 'icmp';
    const changed = configDiff(prev, next);
    if (changed.includes('forwards')) {
      const dropped = this.forwards.configure(next.forwards);
      if (dropped.length > 0) this.log.warn('runtime forwards dropped: the reloaded config claims their ports', { forwards: JSON.stringify(dropped) });
      await this.forwardsChanged();
    }
    if (changed.some((field) => field === 'metrics' || field.startsWith('metrics.'))) {
      await this.metrics?.close();
      this.metrics = next.metrics ? await startMetricsServer(next.metrics.listen, this, this.log) : null;
    }
  }

  mappingsByProto(): Record<string, number> {
    const c = this.table.countBySlot;
    return { tcp: c[SLOT_TCP], udp: c[SLOT_UDP], icmp: c[SLOT_ICMP] };
  }

  tableLimit(): number {
    return this.table.capacity;
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
