/**
 * Router plumbing for vpnmasq, done through rtnetlink (the `netlink` package)
 * and /proc/sys only — no `ip` child processes.
 *
 * Data path this sets up (IPv4 only):
 *
 *   LAN host --(lan iface)--> policy rule `from PREFIX iif IFACE lookup TABLE`
 *            --> TABLE: `default dev TUN` --> daemon reads, translates, writes back
 *            --> kernel routes the translated packet out via the main table.
 *   WAN host --ARP who-has PUBLIC--> proxy neighbour on WAN iface answers
 *            --> main: `PUBLIC/32 dev TUN` --> daemon translates, writes back --> LAN.
 *
 * The `local` table rule (priority 0) stays in front of ours, so traffic from
 * the LAN to the router's own addresses is still delivered locally.
 *
 * Netlink sockets are bound to the network namespace of the process that
 * opens them; run this inside the router's namespace.
 */
import { promises as fsp } from 'fs';
import { createRtNetlink, FlagsNew, RtNetlinkSocket, rt } from 'netlink';
import { formatIPv4, isIPv4, parseCidr, parseIPv4 } from '../../core/ipv4-addr';

/** Route / rule / proxy-neighbour originator tag used for everything we add. */
export const VPNMASQ_RTPROT = 247;
/** The typings only list well-known RTPROT_* values; the wire field is a plain u8. */
const RTPROT_VPNMASQ = VPNMASQ_RTPROT as rt.RouteProtocol;

const AF_INET = 2;
const RT_TABLE_MAIN = 254;
const REQ_TIMEOUT_MS = 5000;
/** errno names that mean "already gone" during removal. */
const GONE = new Set(['ENOENT', 'ESRCH', 'ENODEV']);

export interface RouterNetSetupOptions {
  /** Existing TUN device owned by the daemon. */
  tunName: string;
  mtu: number;
  /** Policy routing table id, e.g. 7100. */
  table: number;
  /** Priority of the policy rules, e.g. 7100 (must be 1..32765). */
  rulePriority: number;
  lanInterfaces: string[];
  /** LAN source prefixes in CIDR notation. */
  lanPrefixes: string[];
  /**
   * The NAT's public IPv4 address (not assigned to any interface), or null in
   * shared-address mode, where shared-mode.ts steers the inbound packets instead.
   */
  publicAddress: string | null;
  /** Dedicated mode with several public addresses: all of them, each routed and proxied like publicAddress (default [publicAddress]). */
  publicAddresses?: string[];
  wanInterface: string;
}

export interface LeftoverCounts {
  rules: number;
  routes: number;
  proxyNeighbours: number;
}

type Added =
  | { kind: 'rule'; priority: number; src: Uint8Array; srcLen: number; iifname: string; table: number }
  | { kind: 'route'; table: number; dst: Uint8Array; dstLen: number; oif: number; dev: string }
  | { kind: 'proxyNeigh'; ifindex: number; dst: Uint8Array; dev: string };

/** Extracts the errno name from an error thrown by the `netlink` package ("Request rejected: EEXIST"). */
export function netlinkErrno(e: unknown): string | undefined {
  const msg = e instanceof Error ? e.message : String(e);
  const m = /Request rejected: ([A-Z0-9_]+)/.exec(msg);
  if (m) return m[1];
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function describe(a: Added): string {
  switch (a.kind) {
    case 'rule':
      return `rule pref ${a.priority} from ${formatIPv4(a.src)}/${a.srcLen} iif ${a.iifname} lookup ${a.table}`;
    case 'route':
      return `route ${a.dstLen === 0 ? 'default' : `${formatIPv4(a.dst)}/${a.dstLen}`} dev ${a.dev} table ${a.table}`;
    case 'proxyNeigh':
      return `neigh proxy ${formatIPv4(a.dst)} dev ${a.dev}`;
  }
}

function keyOf(a: Added): string {
  return describe(a);
}

/** Interface names may contain '.', which /proc/sys spells as '/'. */
function sysctlIfName(ifname: string): string {
  if (!ifname || ifname.includes('/') || ifname === '.' || ifname === '..') {
    throw new Error(`invalid interface name ${JSON.stringify(ifname)}`);
  }
  return ifname.replace(/\./g, '/');
}

function buf(a: Uint8Array): Buffer {
  return Buffer.from(a);
}

/** Header `table` is a u8 in both rtmsg and fib_rule_hdr; larger ids go in the TABLE attribute only. */
function headerTable(table: number): number | undefined {
  return table > 0 && table < 256 ? table : undefined;
}

function validateTable(table: number): void {
  if (!Number.isInteger(table) || table < 1 || table > 0xffffffff || table === 253 || table === 254 || table === 255) {
    throw new Error(`invalid routing table id ${table} (reserved or out of range)`);
  }
}

export class RouterNet {
  private closed = false;
  private readonly added = new Map<string, Added>();
  /** sysctl path -> value before our first write (insertion order = write order). */
  private readonly savedSysctls = new Map<string, string>();
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(private readonly sock: RtNetlinkSocket) {}

  /** Opens an rtnetlink socket in the current process' network namespace. */
  static async open(): Promise<RouterNet> {
    return new RouterNet(createRtNetlink());
  }

  /** Releases the netlink socket. Does not tear anything down. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sock.socket.close();
  }

  /** Human-readable list of what setup has added so far (for logs / tests). */
  recorded(): { entries: string[]; sysctls: Record<string, string> } {
    return {
      entries: [...this.added.values()].map(describe),
      sysctls: Object.fromEntries(this.savedSysctls),
    };
  }

  /** Serialises setup/teardown calls on one instance. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private ensureOpen(): void {
    if (this.closed) throw new Error('RouterNet: socket is closed');
  }

  /**
   * Installs the router plumbing (see module comment). Idempotent: routes and
   * the proxy neighbour use NLM_F_REPLACE, rules use NLM_F_EXCL with EEXIST
   * ignored, sysctl previous values are captured only on the first write.
   * If setup throws midway, whatever was added so far is recorded: call
   * teardown() to roll it back.
   */
  async setup(o: RouterNetSetupOptions): Promise<void> {
    return this.serial(() => this.doSetup(o));
  }

  private async doSetup(o: RouterNetSetupOptions): Promise<void> {
    this.ensureOpen();
    // ---- validate everything before touching the system ----
    if (!o.tunName) throw new Error('RouterNet.setup: tunName is required');
    if (!o.wanInterface) throw new Error('RouterNet.setup: wanInterface is required');
    if (!Number.isInteger(o.mtu) || o.mtu < 68 || o.mtu > 65535) throw new Error(`RouterNet.setup: invalid mtu ${o.mtu}`);
    validateTable(o.table);
    if (!Number.isInteger(o.rulePriority) || o.rulePriority < 1 || o.rulePriority > 32765) {
      throw new Error(`RouterNet.setup: rulePriority ${o.rulePriority} must be within 1..32765 (after 'local' at 0, before 'main' at 32766)`);
    }
    const publics = o.publicAddress === null ? [] : o.publicAddresses ?? [o.publicAddress];
    for (const a of publics) if (!isIPv4(a)) throw new Error(`RouterNet.setup: invalid publicAddress ${a}`);
    const prefixes = o.lanPrefixes.map((p) => parseCidr(p));
    sysctlIfName(o.tunName);
    sysctlIfName(o.wanInterface);
    for (const i of o.lanInterfaces) if (!i) throw new Error('RouterNet.setup: empty LAN interface name');

    const tunIndex = await this.ifindex(o.tunName);
    const wanIndex = await this.ifindex(o.wanInterface);

    // ---- sysctls (previous values remembered once) ----
    await this.writeSysctl('/proc/sys/net/ipv4/ip_forward', '1');
    await this.writeSysctl('/proc/sys/net/ipv4/conf/all/rp_filter', '0');
    await this.writeSysctl(`/proc/sys/net/ipv4/conf/${sysctlIfName(o.tunName)}/rp_filter`, '0');
    // Answer proxied ARP immediately instead of after a random 0..800 ms delay.
    await this.writeSysctl(`/proc/sys/net/ipv4/neigh/${sysctlIfName(o.wanInterface)}/proxy_delay`, '0');

    // ---- TUN: mtu + up ----
    await this.req('set link mtu/up', () =>
      this.sock.setLink({ index: tunIndex, flags: { up: true }, change: { up: true } }, { mtu: o.mtu }, { timeout: REQ_TIMEOUT_MS }),
    );

    // ---- table: default dev TUN ----
    await this.addRoute({ kind: 'route', table: o.table, dst: new Uint8Array(4), dstLen: 0, oif: tunIndex, dev: o.tunName });
    for (const a of publics) {
      const pub = parseIPv4(a);
      // ---- main: PUBLIC/32 dev TUN ----
      await this.addRoute({ kind: 'route', table: RT_TABLE_MAIN, dst: pub, dstLen: 32, oif: tunIndex, dev: o.tunName });
      // ---- proxy ARP for PUBLIC on WAN ----
      await this.addProxyNeigh({ kind: 'proxyNeigh', ifindex: wanIndex, dst: pub, dev: o.wanInterface });
    }
    // ---- policy rules (last: only steer traffic once the table is populated) ----
    for (const iif of o.lanInterfaces) {
      for (const p of prefixes) {
        await this.addRule({ kind: 'rule', priority: o.rulePriority, src: p.network, srcLen: p.prefixLen, iifname: iif, table: o.table });
      }
    }
  }

  /**
   * Removes exactly what setup added (rules first, then routes, proxy
   * neighbours), then restores sysctls. Entries that are already gone are
   * ignored; other failures are collected and thrown together at the end
   * after everything else was attempted.
   */
  async teardown(): Promise<void> {
    return this.serial(() => this.doTeardown());
  }

  private async doTeardown(): Promise<void> {
    this.ensureOpen();
    const errors: Error[] = [];
    const entries = [...this.added.entries()].reverse();
    const order: Added['kind'][] = ['rule', 'route', 'proxyNeigh'];
    for (const kind of order) {
      for (const [key, a] of entries) {
        if (a.kind !== kind) continue;
        try {
          await this.remove(a);
          this.added.delete(key);
        } catch (e) {
          if (GONE.has(netlinkErrno(e) ?? '')) this.added.delete(key);
          else errors.push(new Error(`RouterNet.teardown: removing ${describe(a)} failed: ${(e as Error).message}`, { cause: e }));
        }
      }
    }
    for (const [path, prev] of [...this.savedSysctls.entries()].reverse()) {
      try {
        await fsp.writeFile(path, `${prev}\n`);
        this.savedSysctls.delete(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') this.savedSysctls.delete(path);
        else errors.push(new Error(`RouterNet.teardown: restoring ${path}=${prev} failed: ${(e as Error).message}`, { cause: e }));
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `RouterNet.teardown: ${errors.length} errors`);
  }

  /**
   * Crash recovery: removes every IPv4 rule that points to `table` or carries
   * protocol 247, every IPv4 route (any table) with protocol 247 and every
   * proxy neighbour tagged with protocol 247. sysctls cannot be recovered
   * (their previous values died with the crashed process).
   */
  static async cleanupLeftovers(table: number): Promise<LeftoverCounts> {
    validateTable(table);
    const rn = await RouterNet.open();
    try {
      return await rn.doCleanup(table);
    } finally {
      rn.close();
    }
  }

  private async doCleanup(table: number): Promise<LeftoverCounts> {
    const counts: LeftoverCounts = { rules: 0, routes: 0, proxyNeighbours: 0 };
    const opts = { timeout: REQ_TIMEOUT_MS };
    const ignoreGone = async (what: string, f: () => Promise<unknown>): Promise<boolean> => {
      try {
        await f();
        return true;
      } catch (e) {
        if (GONE.has(netlinkErrno(e) ?? '')) return false;
        throw new Error(`RouterNet.cleanupLeftovers: ${what}: ${(e as Error).message}`, { cause: e });
      }
    };

    const rules = await this.sock.getRules({ family: AF_INET }, {}, opts);
    for (const r of rules) {
      const t = r.attrs.table ?? r.data.table;
      if (t !== table && r.attrs.protocol !== VPNMASQ_RTPROT) continue;
      if (r.data.flags?.permanent) continue;
      const attrs: rt.RuleAttrs = { table: t };
      if (r.attrs.priority !== undefined) attrs.priority = r.attrs.priority;
      if (r.attrs.src) attrs.src = r.attrs.src;
      if (r.attrs.dst) attrs.dst = r.attrs.dst;
      if (r.attrs.iifname !== undefined) attrs.iifname = r.attrs.iifname;
      if (r.attrs.oifname !== undefined) attrs.oifname = r.attrs.oifname;
      if (r.attrs.fwmark !== undefined) attrs.fwmark = r.attrs.fwmark;
      if (r.attrs.fwmask !== undefined) attrs.fwmask = r.attrs.fwmask;
      if (r.attrs.protocol !== undefined) attrs.protocol = r.attrs.protocol;
      const data: rt.Rule = { family: AF_INET, srcLen: r.data.srcLen, dstLen: r.data.dstLen, tos: r.data.tos, action: r.data.action };
      const ht = headerTable(t ?? 0);
      if (ht !== undefined) data.table = ht;
      if (await ignoreGone('delete rule', () => this.sock.delRule(data, attrs, opts))) counts.rules++;
    }

    const routes = await this.sock.getRoutes({ family: AF_INET }, {}, opts);
    for (const r of routes) {
      if ((r.data.protocol as unknown) !== VPNMASQ_RTPROT) continue;
      const t = r.attrs.table ?? r.data.table;
      const attrs: rt.RouteAttrs = { table: t };
      if (r.attrs.dst) attrs.dst = r.attrs.dst;
      if (r.attrs.src) attrs.src = r.attrs.src;
      if (r.attrs.oif !== undefined) attrs.oif = r.attrs.oif;
      if (r.attrs.gateway) attrs.gateway = r.attrs.gateway;
      if (r.attrs.priority !== undefined) attrs.priority = r.attrs.priority;
      const data: rt.Route = {
        family: AF_INET, dstLen: r.data.dstLen, srcLen: r.data.srcLen, tos: r.data.tos,
        protocol: RTPROT_VPNMASQ, scope: 'NOWHERE', type: r.data.type,
      };
      const ht = headerTable(t ?? 0);
      if (ht !== undefined) data.table = ht;
      if (await ignoreGone('delete route', () => this.sock.delRoute(data, attrs, opts))) counts.routes++;
    }

    const neighs = await this.sock.getNeighbors({ family: AF_INET, flags: { proxy: true } }, {}, opts);
    for (const n of neighs) {
      if (!n.data.flags?.proxy || !n.attrs.dst) continue;
      const proto = n.attrs.protocol;
      if (!proto || proto.length < 1 || proto[0] !== VPNMASQ_RTPROT) continue;
      const ok = await ignoreGone('delete proxy neighbour', () =>
        this.sock.delNeighbor({ family: AF_INET, ifindex: n.data.ifindex, flags: { proxy: true } }, { dst: n.attrs.dst }, opts),
      );
      if (ok) counts.proxyNeighbours++;
    }
    return counts;
  }

  /** IPv4 addresses (dotted quads, no prefix length) configured on `ifname`. */
  async addressesOf(ifname: string): Promise<string[]> {
    this.ensureOpen();
    const index = await this.ifindex(ifname);
    const addrs = await this.sock.getAddresses({ family: AF_INET }, {}, { timeout: REQ_TIMEOUT_MS });
    const out: string[] = [];
    for (const a of addrs) {
      if (a.data.index !== index || a.data.family !== AF_INET) continue;
      const raw = a.attrs.local ?? a.attrs.address;
      if (raw && raw.length === 4) out.push(formatIPv4(raw));
    }
    return out;
  }

  // ---------------------------------------------------------------- internals

  private async ifindex(ifname: string): Promise<number> {
    let links: rt.LinkMessage[];
    try {
      links = await this.sock.getLink({}, { ifname }, { timeout: REQ_TIMEOUT_MS });
    } catch (e) {
      if (netlinkErrno(e) === 'ENODEV') throw new Error(`RouterNet: interface ${ifname} does not exist`, { cause: e });
      throw e;
    }
    const idx = links[0]?.data.index;
    if (!idx) throw new Error(`RouterNet: interface ${ifname} not found`);
    return idx;
  }

  private async req<T>(what: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw new Error(`RouterNet: ${what} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  private async writeSysctl(path: string, value: string): Promise<void> {
    if (!this.savedSysctls.has(path)) {
      const prev = (await fsp.readFile(path, 'utf8')).trim();
      this.savedSysctls.set(path, prev);
    }
    await fsp.writeFile(path, `${value}\n`);
  }

  private record(a: Added): void {
    this.added.set(keyOf(a), a);
  }

  private routeMsg(a: Extract<Added, { kind: 'route' }>, forDelete: boolean): { data: rt.Route; attrs: rt.RouteAttrs } {
    const data: rt.Route = {
      family: AF_INET,
      dstLen: a.dstLen,
      protocol: RTPROT_VPNMASQ,
      // iproute2 semantics: a gateway-less unicast route is scope link; on delete, NOWHERE = "any scope".
      scope: forDelete ? 'NOWHERE' : 'LINK',
      type: 'UNICAST',
    };
    const ht = headerTable(a.table);
    if (ht !== undefined) data.table = ht;
    const attrs: rt.RouteAttrs = { table: a.table, oif: a.oif };
    if (a.dstLen > 0) attrs.dst = buf(a.dst);
    return { data, attrs };
  }

  private async addRoute(a: Extract<Added, { kind: 'route' }>): Promise<void> {
    const { data, attrs } = this.routeMsg(a, false);
    // NLM_F_CREATE|NLM_F_REPLACE == `ip route replace`: idempotent.
    await this.req(`add ${describe(a)}`, () =>
      this.sock.newRoute(data, attrs, { flags: FlagsNew.CREATE | FlagsNew.REPLACE, timeout: REQ_TIMEOUT_MS }),
    );
    this.record(a);
  }

  private ruleMsg(a: Extract<Added, { kind: 'rule' }>): { data: rt.Rule; attrs: rt.RuleAttrs } {
    const data: rt.Rule = { family: AF_INET, srcLen: a.srcLen, action: 'toTbl' };
    const ht = headerTable(a.table);
    if (ht !== undefined) data.table = ht;
    const attrs: rt.RuleAttrs = {
      priority: a.priority,
      table: a.table,
      iifname: a.iifname,
      protocol: VPNMASQ_RTPROT,
    };
    if (a.srcLen > 0) attrs.src = buf(a.src);
    return { data, attrs };
  }

  private async addRule(a: Extract<Added, { kind: 'rule' }>): Promise<void> {
    const { data, attrs } = this.ruleMsg(a);
    // fib rules have no REPLACE; without EXCL the kernel happily adds duplicates.
    // `ip rule add` uses CREATE|EXCL; an identical existing rule yields EEXIST, which is fine.
    try {
      await this.sock.newRule(data, attrs, { flags: FlagsNew.CREATE | FlagsNew.EXCL, timeout: REQ_TIMEOUT_MS });
    } catch (e) {
      if (netlinkErrno(e) !== 'EEXIST') throw new Error(`RouterNet: add ${describe(a)} failed: ${(e as Error).message}`, { cause: e });
    }
    this.record(a);
  }

  private async addProxyNeigh(a: Extract<Added, { kind: 'proxyNeigh' }>): Promise<void> {
    // == `ip neigh replace proxy PUBLIC dev WAN protocol 247`
    await this.req(`add ${describe(a)}`, () =>
      this.sock.newNeighbor(
        { family: AF_INET, ifindex: a.ifindex, flags: { proxy: true }, state: { permanent: true } },
        { dst: buf(a.dst), protocol: Buffer.from([VPNMASQ_RTPROT]) },
        { flags: FlagsNew.CREATE | FlagsNew.REPLACE, timeout: REQ_TIMEOUT_MS },
      ),
    );
    this.record(a);
  }

  private async remove(a: Added): Promise<void> {
    const opts = { timeout: REQ_TIMEOUT_MS };
    switch (a.kind) {
      case 'rule': {
        const { data, attrs } = this.ruleMsg(a);
        await this.sock.delRule(data, attrs, opts);
        return;
      }
      case 'route': {
        const { data, attrs } = this.routeMsg(a, true);
        await this.sock.delRoute(data, attrs, opts);
        return;
      }
      case 'proxyNeigh':
        await this.sock.delNeighbor({ family: AF_INET, ifindex: a.ifindex, flags: { proxy: true } }, { dst: buf(a.dst) }, opts);
        return;
    }
  }
}

