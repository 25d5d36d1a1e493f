/**
 * Applies plan.ts to the kernel through rtnetlink (the `netlink` package) and
 * /proc/sys, with no `ip` child processes, and takes it away again on an
 * explicit teardown. Everything added carries protocol 247.
 *
 * Installing is a reconciliation against what the kernel holds: missing
 * rules and routes are added first, then what an earlier run (another LAN,
 * WAN, mode or public address) left and the spec no longer wants is removed,
 * so the box is never open in between. Stopping the daemon removes nothing:
 * closing the TUN takes its routes with it and the safety net stays.
 *
 * Netlink sockets belong to the network namespace of the process that opens
 * them; run this inside the router's namespace.
 */
import { createRtNetlink, FlagsNew, RtNetlinkSocket, rt } from 'netlink';
import { formatIPv4, parseIPv4 } from '../../core/ipv4-addr';
import { HostState } from './host-state';
import { netlinkErrno } from './errno';
import { installIpv6Refusal, ipv6Refusals, removeIpv6Refusal } from './ipv6-lan';
import {
  NetSpec, OUR_TABLES, PRIO_LOCAL, dedicatedAddresses, ipv6Refused, RT_TABLE_LOCAL, RTPROT_VPNMASQ, RouteSpec, RuleSpec, SYSCTL, ruleText,
  safetyNet, safetyNetSysctls, sysctlPaths, tunDeviceNames, tunDeviceSysctls, tunRoutes, tunSysctls, wanSysctls,
} from './plan';

export { netlinkErrno };

const AF_INET = 2;
const RTPROT_KERNEL = 2;
const REQ_TIMEOUT_MS = 5000;
const OPTS = { timeout: REQ_TIMEOUT_MS };
/** errno names that mean "already gone" during removal. */
const GONE = new Set(['ENOENT', 'ESRCH', 'ENODEV']);

/** What one installation changed, as `ip rule` / `ip route` would print it. */
export interface NetChanges {
  added: string[];
  removed: string[];
  /** Something worth a log line about what could not be installed and why that is fine (no IPv6 in the kernel). */
  note?: string;
}

/** What the kernel holds of vpnmasq's plumbing (for `vpnmasq status`, no privileges needed). */
export interface SafetyNetStatus {
  /** Rules with protocol 247 or pointing at vpnmasq's tables. */
  rules: string[];
  /** Tables that hold a blackhole default (the safety net). */
  blackholes: number[];
  /** Tables whose default goes to a device (the TUN: something translates). */
  tunRoutes: number[];
  /** The IPv6 rules (lan.ipv6 "drop"), as `ip -6 rule` prints them. */
  ipv6Rules: string[];
}

export interface TeardownReport {
  rules: number;
  routes: number;
  proxyNeighbours: number;
  /** `lookup local` put back at pref 0. */
  localRule: boolean;
  /** Sysctls written back, path (under /proc/sys) and value. */
  sysctls: Array<[string, string]>;
}

/** FRA_SUPPRESS_PREFIXLEN as the kernel dumps it when the rule has none (-1). */
const NO_SUPPRESS = 0xffffffff;

/** Header `table` is a u8 in both rtmsg and fib_rule_hdr; larger ids go in the TABLE attribute only. */
function headerTable(table: number): number | undefined {
  return table > 0 && table < 256 ? table : undefined;
}

function errorOf(what: string, e: unknown): Error {
  return new Error(`${what}: ${(e as Error).message}`, { cause: e });
}

/** A dumped rule in plan form (null for rules that are not a table lookup). */
function ruleOf(r: rt.RuleMessage): RuleSpec | null {
  if (r.data.action !== 'toTbl') return null;
  const a = r.attrs;
  const spec: RuleSpec = {
    priority: a.priority ?? 0,
    table: a.table ?? r.data.table ?? 0,
    src: a.src ? formatIPv4(a.src) : '0.0.0.0',
    srcLen: r.data.srcLen ?? 0,
    dst: a.dst ? formatIPv4(a.dst) : '0.0.0.0',
    dstLen: r.data.dstLen ?? 0,
  };
  if (a.iifname !== undefined) spec.iifname = a.iifname;
  if (a.ipProto !== undefined) spec.ipProto = a.ipProto;
  if (a.sportRange) spec.sport = [a.sportRange.start ?? 0, a.sportRange.end ?? 0];
  if (a.dportRange) spec.dport = [a.dportRange.start ?? 0, a.dportRange.end ?? 0];
  const suppress = a.suppressPrefixlen && a.suppressPrefixlen.length >= 4 ? a.suppressPrefixlen.readUInt32LE(0) : NO_SUPPRESS;
  if (suppress !== NO_SUPPRESS) spec.suppressPrefixLength = suppress;
  return spec;
}

function ruleMsg(r: RuleSpec, protocol: number): { data: rt.Rule; attrs: rt.RuleAttrs } {
  const data: rt.Rule = { family: AF_INET, srcLen: r.srcLen, dstLen: r.dstLen, action: 'toTbl' };
  const ht = headerTable(r.table);
  if (ht !== undefined) data.table = ht;
  const attrs: rt.RuleAttrs = { priority: r.priority, table: r.table, protocol };
  if (r.srcLen > 0) attrs.src = Buffer.from(parseIPv4(r.src));
  if (r.dstLen > 0) attrs.dst = Buffer.from(parseIPv4(r.dst));
  if (r.iifname !== undefined) attrs.iifname = r.iifname;
  if (r.ipProto !== undefined) attrs.ipProto = r.ipProto;
  if (r.sport) attrs.sportRange = { start: r.sport[0], end: r.sport[1] };
  if (r.dport) attrs.dportRange = { start: r.dport[0], end: r.dport[1] };
  if (r.suppressPrefixLength !== undefined) {
    // FRA_SUPPRESS_PREFIXLEN: a u32 in host order.
    const b = Buffer.alloc(4);
    b.writeUInt32LE(r.suppressPrefixLength, 0);
    attrs.suppressPrefixlen = b;
  }
  return { data, attrs };
}

const LOCAL_AT_0: RuleSpec = { priority: 0, table: RT_TABLE_LOCAL, src: '0.0.0.0', srcLen: 0, dst: '0.0.0.0', dstLen: 0 };

interface KernelRoute { msg: rt.RouteMessage; table: number; text: string }

function routeTable(r: rt.RouteMessage): number {
  return r.attrs.table ?? r.data.table ?? 0;
}

/** Rules in plan form, with whether vpnmasq owns them (protocol 247 or one of its tables). */
async function dumpRules(sock: RtNetlinkSocket): Promise<Array<{ spec: RuleSpec; ours: boolean }>> {
  const out: Array<{ spec: RuleSpec; ours: boolean }> = [];
  for (const r of await sock.getRules({ family: AF_INET }, {}, OPTS)) {
    const spec = ruleOf(r);
    if (spec === null || r.data.flags?.permanent) continue;
    out.push({ spec, ours: r.attrs.protocol === RTPROT_VPNMASQ || OUR_TABLES.has(spec.table) });
  }
  return out;
}

/** Every IPv4 route with protocol 247, described like routeText() ("default blackhole table 7100 metric 4294967295"). */
async function dumpRoutes(sock: RtNetlinkSocket): Promise<KernelRoute[]> {
  const names = new Map<number, string>();
  for (const l of await sock.getLinks({}, {}, OPTS)) if (l.attrs.ifname) names.set(l.data.index ?? 0, l.attrs.ifname);
  const out: KernelRoute[] = [];
  for (const r of await sock.getRoutes({ family: AF_INET }, {}, OPTS)) {
    if ((r.data.protocol as unknown) !== RTPROT_VPNMASQ) continue;
    const table = routeTable(r);
    const dst = r.data.dstLen === 0 ? 'default' : `${formatIPv4(r.attrs.dst ?? Buffer.alloc(4))}/${r.data.dstLen}`;
    const dev = r.data.type === 'BLACKHOLE' ? 'blackhole' : `dev ${names.get(r.attrs.oif ?? 0) ?? String(r.attrs.oif)}`;
    out.push({ msg: r, table, text: `${dst} ${dev} table ${table} metric ${r.attrs.priority ?? 0}` });
  }
  return out;
}

/** A planned route in the same words as dumpRoutes(). */
function routeText(r: RouteSpec): string {
  return `default ${r.type === 'blackhole' ? 'blackhole' : `dev ${r.dev}`} table ${r.table} metric ${r.metric}`;
}

export class RouterNet {
  private spec: NetSpec | null = null;
  /** The attached TUN devices' interface indexes, by name. */
  private tuns: Map<string, number> | null = null;

  private constructor(private readonly sock: RtNetlinkSocket, private readonly host: HostState) {}

  /** Opens an rtnetlink socket in the current network namespace; `host` remembers what gets replaced. */
  static open(host: HostState): RouterNet {
    return new RouterNet(createRtNetlink(), host);
  }

  /** Releases the socket. Tears nothing down. */
  close(): void {
    this.sock.socket.close();
  }

  /**
   * Installs the safety net of `spec` (plan.ts) and removes what an earlier
   * spec left: rules and blackholes first, then the local rule's move, then
   * stale entries, then the sysctls (ip_forward goes on only once LAN traffic
   * has its blackhole). Idempotent; the spec is saved before the first change.
   */
  async installSafetyNet(spec: NetSpec): Promise<NetChanges> {
    const changes: NetChanges = { added: [], removed: [] };
    this.host.saveSpec(spec);
    this.spec = spec;
    const net = safetyNet(spec);
    const wantRoutes = new Set(net.blackholes.map(routeText));
    const kernelRoutes = await dumpRoutes(this.sock);
    const haveRoutes = new Set(kernelRoutes.map((r) => r.text));
    for (const r of net.blackholes) {
      if (haveRoutes.has(routeText(r))) continue;
      await this.addRoute(r);
      changes.added.push(routeText(r));
    }
    const rules = await dumpRules(this.sock);
    const have = new Set(rules.map((r) => ruleText(r.spec)));
    for (const r of net.rules) {
      if (have.has(ruleText(r))) continue;
      await this.addRule(r);
      changes.added.push(ruleText(r));
    }
    // IPv6 from the LAN: added, and the stale rules removed, like the IPv4 rules.
    const v6 = await installIpv6Refusal(this.sock, ipv6Refused(spec));
    changes.added.push(...v6.added);
    changes.removed.push(...v6.removed);
    if (v6.note !== undefined) changes.note = v6.note;
    const localAt0 = have.has(ruleText(LOCAL_AT_0));
    if (net.localMoved) {
      if (localAt0) {
        this.host.recordLocalRule(true);
        await this.delRule(LOCAL_AT_0);
        changes.removed.push(ruleText(LOCAL_AT_0));
      } else {
        this.host.recordLocalRule(false);
      }
    } else if (rules.some((r) => r.ours && r.spec.priority === PRIO_LOCAL && r.spec.table === RT_TABLE_LOCAL)) {
      // Back from shared mode: `lookup local` returns to pref 0 before the moved one goes.
      if (!localAt0 && this.host.localRule !== false) await this.restoreLocalRule();
      this.host.clearLocalRule();
    }
    const wanted = new Set(net.rules.map(ruleText));
    for (const r of rules) {
      if (!r.ours || wanted.has(ruleText(r.spec))) continue;
      await this.delRule(r.spec);
      changes.removed.push(ruleText(r.spec));
    }
    const tunDevs = tunDeviceNames(spec.tunName).map((name) => ` dev ${name} `);
    for (const r of kernelRoutes) {
      // The TUNs' own routes are attachTun()'s and go with the devices; any other route of ours is left over.
      if (wantRoutes.has(r.text) || tunDevs.some((d) => r.text.includes(d))) continue;
      await this.delRoute(r.msg);
      changes.removed.push(r.text);
    }
    const proxied = new Set(dedicatedAddresses(spec));
    changes.removed.push(...await this.removeProxyNeighbours((dst) => !proxied.has(dst)));
    this.host.apply(safetyNetSysctls(spec));
    this.host.restoreExcept(sysctlPaths(spec));
    return changes;
  }

  /**
   * Brings the TUN devices (tunDeviceNames() of the spec, both opened by the
   * caller) up and routes the tables to them (after installSafetyNet).
   */
  async attachTun(mtu: number): Promise<void> {
    const spec = this.mustSpec();
    const tuns = new Map<string, number>();
    for (const name of tunDeviceNames(spec.tunName)) {
      const index = await this.ifindex(name);
      if (index === null) throw new Error(`TUN device ${name} does not exist`);
      try {
        await this.sock.setLink({ index, flags: { up: true }, change: { up: true } }, { mtu }, OPTS);
      } catch (e) {
        throw errorOf(`setting ${name} up with mtu ${mtu}`, e);
      }
      tuns.set(name, index);
    }
    for (const [p, v] of tunDeviceSysctls(spec)) this.host.writeDevice(p, v);
    this.host.apply(tunSysctls());
    this.tuns = tuns;
    for (const r of tunRoutes(spec)) await this.addRoute(r);
  }

  /**
   * Dedicated mode: answers ARP for the public address on the WAN interface
   * (proxy neighbour). Returns false when the interface does not exist (yet).
   */
  async attachWan(): Promise<boolean> {
    const spec = this.mustSpec();
    const index = await this.ifindex(spec.wanInterface);
    if (index === null) return false;
    this.host.apply(wanSysctls(spec));
    const addresses = dedicatedAddresses(spec);
    for (const a of addresses) {
      try {
        // == `ip neigh replace proxy PUBLIC dev WAN protocol 247`
        await this.sock.newNeighbor(
          { family: AF_INET, ifindex: index, flags: { proxy: true }, state: { permanent: true } },
          { dst: Buffer.from(parseIPv4(a)), protocol: Buffer.from([RTPROT_VPNMASQ]) },
          { flags: FlagsNew.CREATE | FlagsNew.REPLACE, ...OPTS },
        );
      } catch (e) {
        throw errorOf(`adding proxy neighbour ${a} on ${spec.wanInterface}`, e);
      }
    }
    await this.removeProxyNeighbours((dst, ifindex) => !addresses.includes(dst) || ifindex !== index);
    return true;
  }

  /** The devices are gone (closed): their routes went with them. */
  detachTun(): void {
    this.tuns = null;
  }

  /** What the kernel of this namespace holds of vpnmasq's plumbing. */
  static async inspect(): Promise<SafetyNetStatus> {
    const sock = createRtNetlink();
    try {
      const rules = (await dumpRules(sock)).filter((r) => r.ours).map((r) => ruleText(r.spec));
      const routes = await sock.getRoutes({ family: AF_INET }, {}, OPTS);
      const blackholes = new Set<number>();
      const tunRoutesSeen = new Set<number>();
      for (const r of routes) {
        const t = routeTable(r);
        if (!OUR_TABLES.has(t) || r.data.dstLen !== 0) continue;
        if (r.data.type === 'BLACKHOLE') blackholes.add(t);
        else if (r.attrs.oif !== undefined) tunRoutesSeen.add(t);
      }
      return { rules, blackholes: [...blackholes].sort(), tunRoutes: [...tunRoutesSeen].sort(), ipv6Rules: await ipv6Refusals(sock) };
    } finally {
      sock.socket.close();
    }
  }

  /**
   * `vpnmasq teardown`: ip_forward back first (so nothing is forwarded while
   * the rules go), then every rule, route and proxy neighbour vpnmasq added,
   * `lookup local` back at pref 0, and every other saved sysctl. The record
   * is deleted when all of it worked.
   */
  static async teardown(host: HostState): Promise<TeardownReport> {
    const rn = new RouterNet(createRtNetlink(), host);
    try {
      return await rn.doTeardown();
    } finally {
      rn.close();
    }
  }

  // ---------------------------------------------------------------- internals

  private async doTeardown(): Promise<TeardownReport> {
    const host = this.host;
    const report: TeardownReport = { rules: 0, routes: 0, proxyNeighbours: 0, localRule: false, sysctls: [] };
    const keepAllBut = (p: string) => new Set(Object.keys(host.sysctls).filter((k) => k !== p));
    report.sysctls.push(...host.restoreExcept(keepAllBut(SYSCTL.ipForward)));
    const rules = await dumpRules(this.sock);
    const have = new Set(rules.map((r) => ruleText(r.spec)));
    const moved = rules.some((r) => r.ours && r.spec.priority === PRIO_LOCAL && r.spec.table === RT_TABLE_LOCAL);
    if (moved && !have.has(ruleText(LOCAL_AT_0)) && host.localRule !== false) {
      await this.restoreLocalRule();
      report.localRule = true;
    }
    for (const r of rules) {
      if (!r.ours) continue;
      await this.delRule(r.spec);
      report.rules++;
    }
    report.rules += await removeIpv6Refusal(this.sock);
    for (const r of await dumpRoutes(this.sock)) {
      await this.delRoute(r.msg);
      report.routes++;
    }
    report.proxyNeighbours = (await this.removeProxyNeighbours(() => true)).length;
    host.clearLocalRule();
    report.sysctls.push(...host.restoreExcept(new Set()));
    host.remove();
    return report;
  }

  private mustSpec(): NetSpec {
    if (this.spec === null) throw new Error('RouterNet: installSafetyNet() must come first');
    return this.spec;
  }

  private async ifindex(ifname: string): Promise<number | null> {
    try {
      const links = await this.sock.getLink({}, { ifname }, OPTS);
      return links[0]?.data.index ?? null;
    } catch (e) {
      if (netlinkErrno(e) === 'ENODEV') return null;
      throw errorOf(`looking up interface ${ifname}`, e);
    }
  }

  private async addRoute(r: RouteSpec): Promise<void> {
    const data: rt.Route = {
      family: AF_INET, dstLen: 0, protocol: RTPROT_VPNMASQ as rt.RouteProtocol,
      // iproute2's scopes: a device route without gateway is scope link, a blackhole scope universe.
      scope: r.type === 'tun' ? 'LINK' : 'UNIVERSE',
      type: r.type === 'tun' ? 'UNICAST' : 'BLACKHOLE',
    };
    const ht = headerTable(r.table);
    if (ht !== undefined) data.table = ht;
    const attrs: rt.RouteAttrs = { table: r.table, priority: r.metric };
    if (r.type === 'tun') {
      const oif = r.dev === undefined ? undefined : this.tuns?.get(r.dev);
      if (oif === undefined) throw new Error(`RouterNet: TUN ${r.dev} not attached`);
      attrs.oif = oif;
    }
    try {
      // NLM_F_CREATE|NLM_F_REPLACE == `ip route replace`: idempotent (same table, prefix and metric).
      await this.sock.newRoute(data, attrs, { flags: FlagsNew.CREATE | FlagsNew.REPLACE, ...OPTS });
    } catch (e) {
      throw errorOf(`adding route ${routeText(r)}`, e);
    }
  }

  private async delRoute(r: rt.RouteMessage): Promise<void> {
    const t = routeTable(r);
    const attrs: rt.RouteAttrs = { table: t };
    if (r.attrs.dst) attrs.dst = r.attrs.dst;
    if (r.attrs.oif !== undefined) attrs.oif = r.attrs.oif;
    if (r.attrs.priority !== undefined) attrs.priority = r.attrs.priority;
    const data: rt.Route = {
      family: AF_INET, dstLen: r.data.dstLen, srcLen: r.data.srcLen, tos: r.data.tos,
      protocol: RTPROT_VPNMASQ as rt.RouteProtocol, scope: 'NOWHERE', type: r.data.type,
    };
    const ht = headerTable(t);
    if (ht !== undefined) data.table = ht;
    await this.ignoreGone(`deleting route in table ${t}`, () => this.sock.delRoute(data, attrs, OPTS));
  }

  private async addRule(r: RuleSpec): Promise<void> {
    const { data, attrs } = ruleMsg(r, RTPROT_VPNMASQ);
    // fib rules have no REPLACE; without EXCL the kernel adds duplicates. An identical rule (EEXIST) is fine.
    try {
      await this.sock.newRule(data, attrs, { flags: FlagsNew.CREATE | FlagsNew.EXCL, ...OPTS });
    } catch (e) {
      if (netlinkErrno(e) !== 'EEXIST') throw errorOf(`adding rule ${ruleText(r)}`, e);
    }
  }

  /** `ip rule add pref 0 lookup local` as the kernel makes it. */
  private async restoreLocalRule(): Promise<void> {
    const { data, attrs } = ruleMsg(LOCAL_AT_0, RTPROT_KERNEL);
    try {
      await this.sock.newRule(data, attrs, { flags: FlagsNew.CREATE | FlagsNew.EXCL, ...OPTS });
    } catch (e) {
      if (netlinkErrno(e) !== 'EEXIST') throw errorOf('restoring rule 0: from all lookup local', e);
    }
  }

  private async delRule(r: RuleSpec): Promise<void> {
    const { data, attrs } = ruleMsg(r, 0);
    delete attrs.protocol;
    await this.ignoreGone(`deleting rule ${ruleText(r)}`, () => this.sock.delRule(data, attrs, OPTS));
  }

  /** Removes proxy neighbours with protocol 247 for which `drop` says so; returns their descriptions. */
  private async removeProxyNeighbours(drop: (dst: string, ifindex: number) => boolean): Promise<string[]> {
    const removed: string[] = [];
    for (const n of await this.sock.getNeighbors({ family: AF_INET, flags: { proxy: true } }, {}, OPTS)) {
      const proto = n.attrs.protocol;
      if (!n.data.flags?.proxy || !n.attrs.dst || !proto || proto[0] !== RTPROT_VPNMASQ) continue;
      const dst = formatIPv4(n.attrs.dst);
      const ifindex = n.data.ifindex ?? 0;
      if (!drop(dst, ifindex)) continue;
      await this.ignoreGone(`deleting proxy neighbour ${dst}`, () =>
        this.sock.delNeighbor({ family: AF_INET, ifindex, flags: { proxy: true } }, { dst: n.attrs.dst }, OPTS));
      removed.push(`neigh proxy ${dst} ifindex ${ifindex}`);
    }
    return removed;
  }

  private async ignoreGone(what: string, f: () => Promise<unknown>): Promise<void> {
    try {
      await f();
    } catch (e) {
      if (!GONE.has(netlinkErrno(e) ?? '')) throw errorOf(what, e);
    }
  }
}

