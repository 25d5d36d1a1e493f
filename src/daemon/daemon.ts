/**
 * `vpnmasq run`: wires the edges (TUN addon, netlink, control socket, timers)
 * around the pure packet path and keeps them in order on start and stop.
 */
import { Config } from './config';
import { MetricsServer, MetricsSource, startMetricsServer } from './metrics';
import { mssClampValue } from '../nat/mss-clamp';
import { NetSpec, steerableRange } from '../edge/netlink/plan';
import { HostState, hostStatePath } from '../edge/netlink/host-state';
import { WanState, WanWatch } from '../edge/netlink/wan-watch';
import { ControlReply, ControlRequest, ControlServer, lookupGroup, startControlServer } from './control';
import { ControlCommands } from './control-commands';
import { Logger } from './log';
import { Datapath, rxSlotSize } from '../nat/datapath';
import { Journal } from '../core/journal';
import { SessionTable, SLOT_ICMP, SLOT_TCP, SLOT_UDP, TABLE_SESSIONS } from '../nat/sessions';
import { ConnRow, sessionRow } from '../query/rows';
import { Drop } from '../core/verdict';
import { T_BYTES_IN, T_BYTES_OUT, T_PKTS_IN, T_PKTS_OUT } from '../nat/napt';
import { RouterNet, SafetyNetStatus } from '../edge/netlink/router-net';
import { int32ToIpv4, ipv4ToInt32, ipv4ToNumber, parseCidr, prefixMask } from '../core/ipv4-addr';
import { TunDevice } from '../edge/tun/tun-device';
import { Stat } from '../edge/tun/native';
import { SessionCodec, Store } from '../persist/store';
import { EspCodec, GreCallCodec, IsakmpCodec } from '../persist/vpn-codecs';
import { DbHealth } from '../persist/health';
import { Forwards } from '../nat/forwards';
import { GC_CALLS_CLEARED, GC_CALLS_CREATED, GC_CALLS_REFUSED, GC_NO_MAPPING_IN, GC_NO_MAPPING_OUT, GC_NOT_PPTP, PptpCalls, greConnRow, TABLE_GRE_CALLS } from '../helpers/pptp/calls';
import { PC_LOST_CALL, PC_MALFORMED, PptpControl } from '../helpers/pptp/control';
import { IpsecMasq, MIN_LIFETIME_MS } from '../helpers/ipsec/ipsec';

const RX_SLOTS = 64;
const SWEEP_INTERVAL_MS = 100;
/** Capacity of the PPTP call and control-connection tables. */
const PPTP_CALLS = 4096;
/** Capacity of each IPsec table (ISAKMP entries, ESP entries, remotes). */
const IPSEC_ENTRIES = 16384;
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
  /** Persist the tables in the state store (default true; the benchmark measures without). */
  persist?: boolean;
  /** What the daemon is doing, for systemd's STATUS= (forwarding, or what it waits for). */
  onStatus?: (status: string) => void;
  /** A failure after start() returned (the TUN could not be opened once the WAN came): the process should exit. */
  onFatal?: (e: Error) => void;
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
  private readonly onFatal: (e: Error) => void;
  private metrics: MetricsServer | null = null;
  private readonly now: () => number;
  readonly startedAt: number;
  readonly table: SessionTable;
  readonly forwarder: Datapath;
  private tun: TunDevice | null = null;
  private net: RouterNet | null = null;
  private control: ControlServer | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopping: Promise<void> | null = null;
  private readonly journalListeners: JournalListener[] = [];
  private readonly persist: boolean;
  /** The state store, once started with persistence. */
  store: Store | null = null;
  private readonly commands: ControlCommands;
  readonly forwards: Forwards;
  /** PPTP calls (journal table 4) and the control-channel inspector. */
  readonly greCalls: PptpCalls;
  readonly pptpControl: PptpControl;
  /** IPsec masquerade: ISAKMP by cookie on port 500, ESP by SPI (spec §3, §4). */
  readonly ipsec: IpsecMasq;
  private readonly pptpLogged = new Float64Array(8);
  private pptpSweptAt = 0;

  constructor(public config: Config, private readonly log: Logger, opts: DaemonOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.persist = opts.persist ?? true;
    this.onStatus = opts.onStatus ?? (() => undefined);
    this.onFatal = opts.onFatal ?? (() => undefined);
    this.startedAt = this.now();
    this.commands = new ControlCommands(this, this.now);
    const cfg = config;
    const ports = cfg.ports;
    this.table = new SessionTable(
      cfg.limits.maxSessions,
      // Shared mode: the WAN interface's address, read in start().
      ipv4ToInt32(cfg.wan.publicAddress ?? '0.0.0.0'),
      { range: cfg.wan.mode === 'shared' ? steerableRange(ports.range) : ports.range, lowRange: ports.lowRange, preserve: ports.preserve },
      new Journal(),
    );
    const t = cfg.timeouts;
    this.forwarder = new Datapath(
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
    const napt = this.forwarder.napt;
    this.forwards = new Forwards(this.table, cfg.forwards);
    this.greCalls = new PptpCalls(PPTP_CALLS, this.table, this.forwards, this.table.journal);
    this.greCalls.graceMs = t.pptpGrace * 1000;
    this.greCalls.allowNonPptp = cfg.pptp.nonPptpGre === 'address-only';
    this.pptpControl = new PptpControl(PPTP_CALLS, this.table, this.greCalls);
    napt.forwards = this.forwards;
    napt.gre = this.greCalls;
    napt.pptp = this.pptpControl;
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
    napt.ipsec = this.ipsec;
    this.ipsec.serials = this.table.serials;
    this.ipsec.journal = this.table.journal;
  }

  /** PPTP/GRE upkeep once a second: expire calls, free control state, log spec §10 events (rate-limited). */
  private pptpTick(now: number): void {
    this.greCalls.sweep(now);
    this.pptpControl.sweep();
    const g = this.greCalls.counters;
    const p = this.pptpControl.counters;
    const seen = [g[GC_CALLS_CREATED], g[GC_CALLS_REFUSED], g[GC_CALLS_CLEARED], g[GC_NO_MAPPING_IN], g[GC_NO_MAPPING_OUT], g[GC_NOT_PPTP], p[PC_LOST_CALL], p[PC_MALFORMED]];
    const names = ['pptp-call', 'pptp-refused', 'pptp-disconnect', 'gre-no-entry-in', 'gre-no-entry-out', 'gre-not-pptp', 'pptp-lost-call', 'pptp-malformed'];
    for (let i = 0; i < seen.length; i++) {
      const n = seen[i] - this.pptpLogged[i];
      if (n > 0) this.log.event(names[i], `${names[i]}: ${n} since last report`, { count: n, calls: this.greCalls.count });
      this.pptpLogged[i] = seen[i];
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
      (state) => void this.serial(() => this.wanChanged(state)).catch((e: Error) => this.onFatal(e)),
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
    };
  }

  private async installSafetyNet(address: string | null): Promise<void> {
    const spec = this.specOf(address);
    const changes = await (this.net as RouterNet).installSafetyNet(spec);
    this.spec = spec;
    if (changes.added.length + changes.removed.length > 0) this.log.info('safety net installed', { added: changes.added.length, removed: changes.removed.length });
    for (const r of changes.removed) this.log.debug('removed stale plumbing', { entry: r });
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
    const tun = TunDevice.open(cfg.tun.name, { offloads: cfg.tun.offloads });
    this.tun = tun;
    if (cfg.tun.offloads && tun.offloadError) this.log.warn('TUN offloads unavailable, running without them', { reason: tun.offloadError });
    await net.attachTun(tun.name, cfg.tun.mtu);
    await net.attachWan();
    this.forwarder.napt.mssClamp = mssClampValue(cfg.mssClamp, cfg.tun.mtu);
    const fw = this.forwarder;
    const journal = this.table.journal as Journal;
    tun.start(fw.arena, fw.layout.slotSize, fw.layout.rxSlots, fw.rxLens, fw.tx.list, (n) => {
      const count = fw.processBatch(n, this.now());
      if (journal.length > 0) this.drainJournal();
      return count;
    });
    const budget = Math.max(1024, Math.ceil(this.table.capacity / SWEEPS_PER_PASS));
    this.sweepTimer = setInterval(() => this.sweep(budget), SWEEP_INTERVAL_MS);
    this.translating = true;
    this.log.info('vpnmasq running', {
      tun: tun.name,
      offloads: `0x${tun.offloads.toString(16)}`,
      mode: cfg.wan.mode,
      public: this.publicAddress(),
      lan: cfg.lan.prefixes.join(','),
    });
  }

  /** Opens the state store and rebuilds the tables from it before the TUN starts, so no packet meets an empty table. */
  private openStore(): void {
    const store = new Store(this.config.state, this.log, { now: this.now });
    store.registerTable(new SessionCodec(this.table));
    // After the sessions: a PPTP call refers to its control connection's session.
    store.registerTable(new IsakmpCodec(this.ipsec, this.table));
    store.registerTable(new EspCodec(this.ipsec, this.table));
    store.registerTable(new GreCallCodec(this.greCalls, this.table));
    store.restore({ now: this.now(), publicAddr: this.table.publicAddr, onAddressChange: this.config.wan.onAddressChange });
    this.addJournalListener(store);
    store.start();
    this.store = store;
  }

  private sweep(budget: number): void {
    const now = this.now();
    this.table.sweep(now, budget);
    const timedOut = this.forwarder.frags.sweep(now);
    if (timedOut > 0) this.forwarder.napt.drops.counts[Drop.FRAGMENT_TIMEOUT] += timedOut;
    this.ipsec.sweep(now, budget);
    this.ipsec.drainEvents((kind, msg, fields) => this.log.event(kind, msg, fields));
    if (now - this.pptpSweptAt >= 1000) {
      this.pptpSweptAt = now;
      this.pptpTick(now);
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
  *rows(): Iterable<ConnRow> {
    const t = this.table;
    const now = this.now();
    for (let s = 0; s < t.capacity; s++) if (t.sInUse[s] === 1) yield sessionRow(t, s, now);
    for (const r of this.greCalls.rows(now)) yield greConnRow(r, t.publicAddr);
    yield* this.ipsec.rows(now, t.publicAddr);
  }

  rowOf(table: number, index: number, serial: number): ConnRow | null {
    const t = this.table;
    const now = this.now();
    switch (table) {
      case TABLE_SESSIONS:
        return t.sSerial[index] === serial ? sessionRow(t, index, now) : null;
      case TABLE_GRE_CALLS:
        return this.greCalls.serial[index] === serial ? greConnRow(this.greCalls.row(index, now), t.publicAddr) : null;
      default:
        return this.ipsec.rowOf(table, index, serial, now, t.publicAddr);
    }
  }

  /**
   * Deletes the rows with these ids from every table (`conns delete|flush`)
   * as their expiry would: the next outbound packet creates a new entry, an
   * inbound one finds none. Returns how many.
   */
  deleteConns(ids: ReadonlySet<number>): number {
    const deleted = this.table.deleteSerials(ids) + this.greCalls.deleteSerials(ids) + this.ipsec.deleteSerials(ids);
    this.drainJournal();
    return deleted;
  }

  /** After `forwards add|remove` or a reload: shared mode steers the forwards' ports to the TUN. */
  async forwardsChanged(): Promise<void> {
    if (this.config.wan.mode !== 'shared' || this.spec === null) return;
    const address = this.spec.publicAddress;
    await this.serial(() => this.installSafetyNet(address));
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
      ipsec: this.ipsec.stats(),
      tun: tunStats,
    };
  }

  async status(): Promise<Record<string, unknown>> {
    return {
      running: true,
      translating: this.translating,
      waitingFor: this.translating ? null : this.waitingFor,
      statusText: this.statusLine(),
      safetyNet: await RouterNet.inspect().catch((e: Error): SafetyNetStatus | { error: string } => ({ error: e.message })),
      pid: process.pid,
      uptimeSeconds: Math.round((this.now() - this.startedAt) / 1000),
      tun: this.tun ? { name: this.tun.name, offloads: this.tun.offloads } : null,
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
      const sessions: number[] = [];
      this.table.forEachSession((s) => sessions.push(s));
      for (const s of sessions) this.table.removeSession(s);
      dropped = sessions.length;
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
    this.forwarder.napt.mssClamp = mssClampValue(next.mssClamp, next.tun.mtu);
    if (JSON.stringify(prev.forwards) !== JSON.stringify(next.forwards)) {
      const dropped = this.forwards.configure(next.forwards);
      if (dropped.length > 0) this.log.warn('runtime forwards dropped: the reloaded config claims their ports', { forwards: JSON.stringify(dropped) });
      await this.forwardsChanged();
    }
    if (JSON.stringify(prev.metrics) !== JSON.stringify(next.metrics)) {
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
    return this.forwarder.napt.drops.byName();
  }

  traffic(): { packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number } {
    const t = this.forwarder.napt.traffic;
    return { packetsOut: t[T_PKTS_OUT], packetsIn: t[T_PKTS_IN], bytesOut: t[T_BYTES_OUT], bytesIn: t[T_BYTES_IN] };
  }

  vpnEvents(): Record<string, number> {
    return {};
  }

  private handleControl(req: ControlRequest): ControlReply | Promise<ControlReply> {
    return this.commands.handle(req);
  }
}
