/**
 * What the kernel must hold for vpnmasq, as data: the policy rules, the
 * routes and the sysctl values of a {@link NetSpec}. Pure; router-net.ts
 * applies it through rtnetlink and host-state.ts remembers what it replaced.
 *
 * Two layers:
 *
 * - The safety net, which does not depend on the daemon being alive. It is
 *   installed before the TUN is opened, kept across a crash, a restart and
 *   (through the early `vpnmasq safety-net` stage) a reboot, and removed only
 *   by `vpnmasq teardown`:
 *
 *     pref 48    iif LANIF to PUBLIC lookup LAN                    (dedicated: hairpin)
 *     pref 48    iif LANIF + each steering selector below, lookup LAN  (shared: hairpin)
 *     pref 49    iif TUN_LAN lookup local, iif TUN_WAN lookup local (shared)
 *     pref 50    to PUBLIC lookup WAN                              (dedicated)
 *     pref 50    to WAN/32 ipproto tcp|udp dport RANGE lookup WAN  (shared, and forwarded ports)
 *     pref 50    to WAN/32 ipproto udp sport 500 dport 500 lookup WAN
 *     pref 50    to WAN/32 ipproto esp | gre lookup WAN
 *     pref 50    to WAN/32 ipproto icmp lookup WAN_ICMP
 *     pref 100   lookup local            (shared: moved here from pref 0)
 *     pref 7099  to PREFIX lookup main suppress_prefixlength 0
 *     pref 7100  from PREFIX iif LANIF lookup LAN
 *     table LAN, table WAN:  blackhole default metric 4294967295
 *     IPv6: pref 7100 iif LANIF prohibit                         (lan.ipv6 "drop", ipv6-lan.ts)
 *
 * - The TUN part, bound to the devices and so gone with them:
 *
 *     table LAN: default dev TUN_LAN metric 0
 *     table WAN (and WAN_ICMP in shared mode): default dev TUN_WAN metric 0
 *
 * Direction is by ingress interface, not by address (core/side.ts): table LAN
 * feeds the LAN device and only LAN-ingress rules (pref 48, 7100) look it
 * up; table WAN feeds the WAN device and only the steering (pref 50) looks it
 * up. The packet path creates outbound mappings only for packets read from
 * the LAN device. A LAN host's packet to the public address (hairpin) would
 * match the steering too, so pref 48 sends it to the LAN side first.
 *
 * Pref 7099 keeps traffic between LAN prefixes routed, not masqueraded. With
 * suppress_prefixlength 0 a main-table answer that is only the default route
 * is refused and the lookup goes on to pref 7100: a LAN prefix whose
 * interface is down never leaks to the WAN untranslated.
 *
 * While a TUN exists its route wins (lower metric); once it is gone the
 * blackhole is all the LAN and WAN tables hold, so LAN traffic and inbound
 * traffic for vpnmasq's ports, VPN protocols and forwards are dropped without
 * an answer (a blackhole route on a forwarding device is a silent drop:
 * ip_error() ignores EINVAL). WAN_ICMP has no blackhole on purpose: without
 * the TUN its lookup finds nothing, the rule falls through to `lookup local`
 * and the box answers pings itself. Nothing else about ICMP can open the box:
 * the kernel never answers an ICMP error, and errors or echo replies for LAN
 * flows find no local socket.
 */
import { SIDE_LAN, SIDE_WAN, tunDeviceNames } from '../../core/side';

export { tunDeviceNames };

/** Inclusive [low, high] port range. */
export type PortRange = [number, number];

/** Route / rule / proxy-neighbour originator tag for everything vpnmasq adds. */
export const RTPROT_VPNMASQ = 247;

/** LAN ingress: traffic from the LAN prefixes. */
export const TABLE_LAN = 7100;
/** WAN ingress: traffic for the public address (dedicated) or steered to vpnmasq (shared). */
export const TABLE_WAN = 7101;
/** Shared mode: ICMP to the WAN address; no blackhole, so the box answers pings while vpnmasq is down. */
export const TABLE_WAN_ICMP = 7102;
export const OUR_TABLES: ReadonlySet<number> = new Set([TABLE_LAN, TABLE_WAN, TABLE_WAN_ICMP]);

/** `iif TUN lookup local`: what vpnmasq writes back to the box is not steered again. */
export const PRIO_TUN_LOCAL = 49;
/** LAN ingress to the public address (hairpin): to the LAN device, ahead of the steering. */
export const PRIO_LAN_STEER = 48;
export const PRIO_STEER = 50;
/** Where shared mode moves `lookup local` (it must follow the steering rules, which match local addresses). */
export const PRIO_LOCAL = 100;
/** LAN -> LAN: routed by the main table, ahead of the LAN rule. */
export const PRIO_LAN_ROUTED = 7099;
export const PRIO_LAN = 7100;
/** The IPv6 refusal per LAN interface (lan.ipv6 "drop"). */
export const PRIO_LAN6 = 7100;

/** The TUN route wins while the device exists; the blackhole is what is left without it. */
export const METRIC_TUN = 0;
export const METRIC_BLACKHOLE = 0xffffffff;

export const RT_TABLE_LOCAL = 255;
export const RT_TABLE_MAIN = 254;

const IPPROTO_ICMP = 1;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IPPROTO_GRE = 47;
const IPPROTO_ESP = 50;
const IKE_PORT = 500;

/** Everything the kernel plumbing depends on; saved in the host state, so the early stage can rebuild it. */
export interface NetSpec {
  mode: 'shared' | 'dedicated';
  tunName: string;
  lanInterfaces: string[];
  lanPrefixes: string[];
  wanInterface: string;
  /** Dedicated: the NAT's own address. Shared: the WAN address in use, or the last one known (null: none yet). */
  publicAddress: string | null;
  /** Dedicated mode with several public addresses (wan.publicAddresses): those after publicAddress. */
  otherPublicAddresses?: string[];
  /** Shared mode: vpnmasq's dynamic port range (steered to the TUN and reserved from the box's own ephemeral ports). */
  portRange: PortRange;
  /** Shared mode: forwarded TCP/UDP public ports, steered to the TUN. */
  forwardPorts: Array<{ proto: 'tcp' | 'udp'; port: number }>;
  /** lan.ipv6: "drop" refuses forwarded IPv6 from the LAN interfaces; absent (a spec saved before it existed): "drop". */
  lanIpv6?: 'drop' | 'route';
}

export interface RuleSpec {
  priority: number;
  /** Table to look up. */
  table: number;
  /** Dotted-quad network and prefix length; srcLen 0 = any. */
  src: string;
  srcLen: number;
  dst: string;
  dstLen: number;
  iifname?: string;
  ipProto?: number;
  sport?: PortRange;
  dport?: PortRange;
  /** `suppress_prefixlength N`: a route found with a prefix this short or shorter is refused (the rules go on). */
  suppressPrefixLength?: number;
}

export interface RouteSpec {
  table: number;
  /** 'blackhole': part of the safety net; 'tun': `default dev TUN`, gone with the device. */
  type: 'blackhole' | 'tun';
  metric: number;
  /** 'tun': the device (tunDeviceNames()) the route leads to. */
  dev?: string;
}

export interface SafetyNet {
  rules: RuleSpec[];
  blackholes: RouteSpec[];
  /** Shared mode: `lookup local` moves from pref 0 to {@link PRIO_LOCAL}. */
  localMoved: boolean;
}

/**
 * The part of a port range a rule can match: the kernel rejects port ranges
 * ending at 65535 (fib_rule_port_range_valid(): end != 0xffff), so in shared
 * mode vpnmasq does not hand out port 65535.
 */
export function steerableRange(range: PortRange): PortRange {
  return [range[0], Math.min(range[1], 0xfffe)];
}

/**
 * ip_local_port_range without `ours`: the larger part left over on either
 * side. Throws when nothing is left.
 */
export function narrowPortRange(current: PortRange, ours: PortRange): PortRange {
  if (ours[1] < current[0] || ours[0] > current[1]) return current;
  const below: PortRange = [current[0], ours[0] - 1];
  const above: PortRange = [ours[1] + 1, current[1]];
  const size = (r: PortRange) => r[1] - r[0] + 1;
  const best = size(below) >= size(above) ? below : above;
  if (size(best) < 2) throw new Error(`ports.range ${ours[0]}-${ours[1]} leaves no ephemeral ports in ip_local_port_range ${current[0]}-${current[1]}`);
  return best;
}

function parsePrefix(cidr: string): [string, number] {
  const [net, len] = cidr.split('/');
  return [net, len === undefined ? 32 : Number(len)];
}

/**
 * Shared mode: the inbound packets for `address` that belong to vpnmasq; with
 * `lanIf`, the same selectors for that LAN interface's packets (pref 48, to
 * the LAN device).
 */
function steering(s: NetSpec, address: string, lanIf?: string): RuleSpec[] {
  const range = steerableRange(s.portRange);
  const to = (table: number, ipProto: number, extra: Partial<RuleSpec> = {}): RuleSpec => (lanIf === undefined
    ? { priority: PRIO_STEER, table, src: '0.0.0.0', srcLen: 0, dst: address, dstLen: 32, ipProto, ...extra }
    : { priority: PRIO_LAN_STEER, table: TABLE_LAN, src: '0.0.0.0', srcLen: 0, dst: address, dstLen: 32, iifname: lanIf, ipProto, ...extra });
  const rules = [
    to(TABLE_WAN, IPPROTO_TCP, { dport: range }),
    to(TABLE_WAN, IPPROTO_UDP, { dport: range }),
    // IKE from 500 to 500 keeps port 500 (vpn-masquerade-spec §3).
    to(TABLE_WAN, IPPROTO_UDP, { sport: [IKE_PORT, IKE_PORT], dport: [IKE_PORT, IKE_PORT] }),
    to(TABLE_WAN, IPPROTO_ESP),
    to(TABLE_WAN, IPPROTO_GRE),
  ];
  for (const f of s.forwardPorts) {
    if (f.port === 0xffff || (f.port >= range[0] && f.port <= range[1])) continue;
    rules.push(to(TABLE_WAN, f.proto === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP, { dport: [f.port, f.port] }));
  }
  // ICMP identifiers cannot be matched by a rule: all ICMP to the address goes to vpnmasq while it runs.
  rules.push(to(TABLE_WAN_ICMP, IPPROTO_ICMP));
  return rules;
}

/** Dedicated mode: every public address (steered to the TUN, answered for by proxy ARP); shared mode: none. */
export function dedicatedAddresses(s: NetSpec): string[] {
  if (s.mode !== 'dedicated' || s.publicAddress === null) return [];
  return [s.publicAddress, ...(s.otherPublicAddresses ?? [])];
}

/** The rules and blackholes that keep the box closed while nothing translates (see the module comment). */
export function safetyNet(s: NetSpec): SafetyNet {
  const rules: RuleSpec[] = [];
  const shared = s.mode === 'shared';
  const address = s.publicAddress;
  if (shared) {
    if (address !== null) for (const iif of s.lanInterfaces) rules.push(...steering(s, address, iif));
    for (const tun of tunDeviceNames(s.tunName)) {
      rules.push({ priority: PRIO_TUN_LOCAL, table: RT_TABLE_LOCAL, src: '0.0.0.0', srcLen: 0, dst: '0.0.0.0', dstLen: 0, iifname: tun });
    }
    if (address !== null) rules.push(...steering(s, address));
    rules.push({ priority: PRIO_LOCAL, table: RT_TABLE_LOCAL, src: '0.0.0.0', srcLen: 0, dst: '0.0.0.0', dstLen: 0 });
  } else {
    for (const a of dedicatedAddresses(s)) {
      for (const iif of s.lanInterfaces) {
        rules.push({ priority: PRIO_LAN_STEER, table: TABLE_LAN, src: '0.0.0.0', srcLen: 0, dst: a, dstLen: 32, iifname: iif });
      }
      rules.push({ priority: PRIO_STEER, table: TABLE_WAN, src: '0.0.0.0', srcLen: 0, dst: a, dstLen: 32 });
    }
  }
  for (const p of s.lanPrefixes) {
    const [net, len] = parsePrefix(p);
    rules.push({ priority: PRIO_LAN_ROUTED, table: RT_TABLE_MAIN, src: '0.0.0.0', srcLen: 0, dst: net, dstLen: len, suppressPrefixLength: 0 });
  }
  for (const iif of s.lanInterfaces) {
    for (const p of s.lanPrefixes) {
      const [net, len] = parsePrefix(p);
      rules.push({ priority: PRIO_LAN, table: TABLE_LAN, src: net, srcLen: len, dst: '0.0.0.0', dstLen: 0, iifname: iif });
    }
  }
  const blackholes: RouteSpec[] = [TABLE_LAN, TABLE_WAN].map((table) => ({ table, type: 'blackhole', metric: METRIC_BLACKHOLE }));
  return { rules, blackholes, localMoved: shared };
}

/** The LAN interfaces whose forwarded IPv6 the safety net refuses (ipv6-lan.ts). */
export function ipv6Refused(s: NetSpec): string[] {
  return (s.lanIpv6 ?? 'drop') === 'drop' ? [...s.lanInterfaces] : [];
}

/** `default dev TUN` in every table the mode uses: table LAN to the LAN device, the WAN tables to the WAN one. */
export function tunRoutes(s: NetSpec): RouteSpec[] {
  const dev = tunDeviceNames(s.tunName);
  const tables = s.mode === 'shared' ? [TABLE_LAN, TABLE_WAN, TABLE_WAN_ICMP] : [TABLE_LAN, TABLE_WAN];
  return tables.map((table) => ({ table, type: 'tun', metric: METRIC_TUN, dev: dev[table === TABLE_LAN ? SIDE_LAN : SIDE_WAN] }));
}

export const SYSCTL = {
  ipForward: 'net/ipv4/ip_forward',
  rpFilterAll: 'net/ipv4/conf/all/rp_filter',
  portRange: 'net/ipv4/ip_local_port_range',
  reservedPorts: 'net/ipv4/ip_local_reserved_ports',
  proxyDelay: (ifname: string) => `net/ipv4/neigh/${sysctlIfName(ifname)}/proxy_delay`,
  rpFilter: (ifname: string) => `net/ipv4/conf/${sysctlIfName(ifname)}/rp_filter`,
  acceptLocal: (ifname: string) => `net/ipv4/conf/${sysctlIfName(ifname)}/accept_local`,
} as const;

/** Interface names may contain '.', which /proc/sys spells as '/'. */
export function sysctlIfName(ifname: string): string {
  if (!ifname || ifname.includes('/') || ifname === '.' || ifname === '..') throw new Error(`invalid interface name ${JSON.stringify(ifname)}`);
  return ifname.replace(/\./g, '/');
}

/** Sysctls to set (paths relative to /proc/sys), each value computed from the one vpnmasq found there. */
export type SysctlPlan = Array<[path: string, value: (original: string) => string]>;

/**
 * Host-wide sysctls of the safety net. ip_forward is on because a blackhole
 * drops silently only on a forwarding device (otherwise the kernel answers
 * with host-unreachable); shared mode takes its port range out of the box's
 * ephemeral ports, so the box's own connections never use a steered port.
 */
export function safetyNetSysctls(s: NetSpec): SysctlPlan {
  const plan: SysctlPlan = [[SYSCTL.ipForward, () => '1']];
  if (s.mode === 'shared') {
    const ours = `${s.portRange[0]}-${s.portRange[1]}`;
    plan.push(
      [SYSCTL.portRange, (orig) => {
        const [lo, hi] = orig.trim().split(/\s+/).map(Number);
        return narrowPortRange([lo, hi], s.portRange).join(' ');
      }],
      [SYSCTL.reservedPorts, (orig) => (orig.trim() ? `${orig.trim()},${ours}` : ours)],
    );
  }
  return plan;
}

/** Host-wide sysctls that only matter while the TUN exists; saved and restored like the safety net's. */
export function tunSysctls(): SysctlPlan {
  // Translated inbound packets arrive on the TUN with remote sources: no reverse-path check (effective = max(all, dev)).
  return [[SYSCTL.rpFilterAll, () => '0']];
}

/**
 * Sysctls of the WAN interface (applied once it exists). Strict reverse-path
 * filtering (RFC 3704 §2.2, value 1): a packet that enters from the WAN with
 * a source the box routes elsewhere (a LAN address, the public address in
 * dedicated mode) is dropped by the kernel before any steering. It cannot
 * break the design: vpnmasq sends every translated packet out by the main
 * table, so the replies it waits for come back on the interface the main
 * table routes their source to, the WAN. The kernel makes the reverse lookup
 * as if the reply came in by the interface the forward route leaves by: for
 * a packet to the public address that is a TUN, and no rule sends a remote
 * source anywhere but the main table; for a packet from the WAN to a LAN
 * address it is the LAN interface, whose rule (pref 7100) answers with the
 * LAN table and its TUN, not the WAN, so the box never routes WAN -> LAN
 * directly. The TUNs stay
 * at 0 (translated inbound packets carry remote sources) and so does
 * conf/all (the effective value is the larger of all and the device's);
 * the LAN interfaces keep the operator's setting (routed LAN segments may be
 * asymmetric). The packet path checks the same thing again by device
 * (Drop.SPOOFED_SOURCE), for whatever reaches the WAN device another way.
 */
export function wanSysctls(s: NetSpec): SysctlPlan {
  const plan: SysctlPlan = [[SYSCTL.rpFilter(s.wanInterface), () => '1']];
  // Dedicated mode: proxy ARP for the public address answers at once instead of after 0..800 ms.
  if (s.mode === 'dedicated') plan.push([SYSCTL.proxyDelay(s.wanInterface), () => '0']);
  return plan;
}

/** Per-device sysctls of the TUNs: they die with them, so nothing needs saving. */
export function tunDeviceSysctls(s: NetSpec): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const dev of tunDeviceNames(s.tunName)) {
    out.push([SYSCTL.rpFilter(dev), '0']);
    // Shared mode: translated packets carry the box's own address as source.
    if (s.mode === 'shared') out.push([SYSCTL.acceptLocal(dev), '1']);
  }
  return out;
}

/** Every host-wide sysctl this spec changes: a value saved for any other path is put back. */
export function sysctlPaths(s: NetSpec): Set<string> {
  return new Set([...safetyNetSysctls(s), ...tunSysctls(), ...wanSysctls(s)].map(([p]) => p));
}

const PROTO_NAMES: Record<number, string> = { [IPPROTO_ICMP]: 'icmp', [IPPROTO_TCP]: 'tcp', [IPPROTO_UDP]: 'udp', [IPPROTO_GRE]: 'gre', [IPPROTO_ESP]: 'esp' };

/** A rule as `ip rule show` prints it; also its identity when comparing with what the kernel holds. */
export function ruleText(r: RuleSpec): string {
  const parts = [`${r.priority}:`, 'from', r.srcLen === 0 ? 'all' : r.srcLen === 32 ? r.src : `${r.src}/${r.srcLen}`];
  if (r.dstLen > 0) parts.push('to', r.dstLen === 32 ? r.dst : `${r.dst}/${r.dstLen}`);
  if (r.iifname !== undefined) parts.push('iif', r.iifname);
  if (r.ipProto !== undefined) parts.push('ipproto', PROTO_NAMES[r.ipProto] ?? String(r.ipProto));
  const range = (x: PortRange) => (x[0] === x[1] ? String(x[0]) : `${x[0]}-${x[1]}`);
  if (r.sport) parts.push('sport', range(r.sport));
  if (r.dport) parts.push('dport', range(r.dport));
  parts.push('lookup', r.table === RT_TABLE_LOCAL ? 'local' : r.table === RT_TABLE_MAIN ? 'main' : String(r.table));
  if (r.suppressPrefixLength !== undefined) parts.push('suppress_prefixlength', String(r.suppressPrefixLength));
  return parts.join(' ');
}
