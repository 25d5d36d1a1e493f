/**
 * Shared-address mode: the router's own WAN address is also the NAT's public
 * address. The kernel keeps that address for the router's own traffic;
 * vpnmasq owns a port range (taken out of net.ipv4.ip_local_port_range and
 * listed in ip_local_reserved_ports) and the VPN protocols, and policy rules
 * (FRA_IP_PROTO + FRA_DPORT_RANGE/FRA_SPORT_RANGE, Linux >= 4.17) send exactly
 * those inbound packets to the TUN table before the kernel could answer them
 * with a reset or a port-unreachable:
 *
 *   pref 50   to WAN/32 ipproto tcp dport LO-HI         lookup TABLE
 *   pref 50   to WAN/32 ipproto udp dport LO-HI         lookup TABLE
 *   pref 50   to WAN/32 ipproto udp sport 500 dport 500 lookup TABLE  (IKE, spec §3)
 *   pref 50   to WAN/32 ipproto esp | gre              lookup TABLE
 *   pref 50   to WAN/32 ipproto tcp|udp dport FORWARD   lookup TABLE
 *   pref 50   to WAN/32 ipproto icmp                    lookup TABLE
 *   pref 100  lookup local        (moved here from pref 0, which matches first)
 *   pref 7100 from LAN iif LAN lookup TABLE            (router-net.ts)
 *
 * The `local` rule must follow ours (it matches every local address) but
 * precede the LAN rule, so LAN traffic to the router itself is still
 * delivered. ICMP identifiers cannot be matched by a rule, so all ICMP to the
 * WAN address goes to vpnmasq, which writes what belongs to no mapping (the
 * box's own pings and errors) back unchanged; a rule ahead of the steering
 * ones delivers what comes out of the TUN to a local address instead of
 * steering it in again:
 *
 *   pref 49   iif TUN lookup local
 * Translated packets carry the router's own address as source,
 * so the TUN accepts local sources (accept_local). Previous sysctl values are
 * kept in a file so a crashed run's changes are undone at the next start.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { createRtNetlink, FlagsNew, RtNetlinkSocket, rt } from 'netlink';
import type { Forward, PortRange } from '../../core/forward';
import { parseIPv4 } from '../../core/ipv4-addr';
import { netlinkErrno, VPNMASQ_RTPROT } from './router-net';

/** `iif TUN lookup local`: packets vpnmasq hands back to the box are not steered again. */
export const TUN_LOCAL_PRIORITY = 49;
export const STEER_PRIORITY = 50;
export const LOCAL_PRIORITY = 100;

const AF_INET = 2;
const RT_TABLE_LOCAL = 255;
const RTPROT_KERNEL = 2;
const IPPROTO_ICMP = 1;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IPPROTO_GRE = 47;
const IPPROTO_ESP = 50;
const IKE_PORT = 500;
const REQ_TIMEOUT_MS = 5000;
const OPTS = { timeout: REQ_TIMEOUT_MS };
const GONE = new Set(['ENOENT', 'ESRCH']);

const PORT_RANGE = '/proc/sys/net/ipv4/ip_local_port_range';
const RESERVED_PORTS = '/proc/sys/net/ipv4/ip_local_reserved_ports';

export interface SharedModeOptions {
  tunName: string;
  /** The WAN interface's address = the NAT's public address. */
  publicAddress: string;
  /** Policy table holding `default dev TUN`. */
  table: number;
  portRange: PortRange;
  forwards: Forward[];
  /** Where previous sysctl values are kept (the runtime directory). */
  savePath: string;
}

interface Steer { ipProto: number; dport?: PortRange; sport?: PortRange }

/**
 * The part of ports.range a rule can match: the kernel rejects port ranges
 * ending at 65535 (fib_rule_port_range_valid(): end != 0xffff), so in shared
 * mode vpnmasq does not hand out port 65535.
 */
export function steerableRange(range: PortRange): PortRange {
  return [range[0], Math.min(range[1], 0xfffe)];
}

/** The steering rules for a port range and forwards (without address). */
export function steeringRules(configured: PortRange, forwards: Forward[]): Steer[] {
  const range = steerableRange(configured);
  const rules: Steer[] = [
    { ipProto: IPPROTO_TCP, dport: range },
    { ipProto: IPPROTO_UDP, dport: range },
    { ipProto: IPPROTO_UDP, sport: [IKE_PORT, IKE_PORT], dport: [IKE_PORT, IKE_PORT] },
    { ipProto: IPPROTO_ESP },
    { ipProto: IPPROTO_GRE },
    { ipProto: IPPROTO_ICMP },
  ];
  for (const f of forwards) {
    if ((f.proto !== 'tcp' && f.proto !== 'udp') || f.publicPort === 0xffff) continue;
    if (f.publicPort >= range[0] && f.publicPort <= range[1]) continue;
    rules.push({ ipProto: f.proto === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP, dport: [f.publicPort, f.publicPort] });
  }
  return rules;
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

export class SharedMode {
  private steering: rt.RuleAttrs[] = [];
  private tunLocal: rt.RuleAttrs | null = null;
  private localMoved = false;
  private closed = false;

  private constructor(private readonly sock: RtNetlinkSocket, private readonly o: SharedModeOptions) {}

  /** Installs sysctls and rules (see module comment). Call teardown() also if it throws. */
  static async setup(o: SharedModeOptions): Promise<SharedMode> {
    const sm = new SharedMode(createRtNetlink(), o);
    await sm.saveAndWriteSysctls();
    await sm.addTunLocal();
    await sm.addSteering(o.publicAddress, steeringRules(o.portRange, o.forwards));
    await sm.moveLocalRule();
    return sm;
  }

  /** The WAN address changed: point the steering rules at `address`. */
  async retarget(address: string): Promise<void> {
    // New rules first, so no packet for the new address meets the kernel in between.
    const old = this.steering;
    this.steering = [];
    this.o.publicAddress = address;
    await this.addSteering(address, steeringRules(this.o.portRange, this.o.forwards));
    await this.removeRules(old);
  }

  /** New forwards after a reload or `forwards add|remove`. */
  async setForwards(forwards: Forward[]): Promise<void> {
    this.o.forwards = forwards;
    await this.replaceSteering();
  }

  /**
   * A reload's ports.range: the box's ephemeral range and reserved ports are
   * recomputed from the values found at start (a range that would leave the
   * box no ephemeral ports throws before anything changes), then the
   * steering rules follow: the new range's go in before the old range's
   * come out.
   */
  async setPortRange(range: PortRange): Promise<void> {
    const saved = JSON.parse(await fsp.readFile(this.o.savePath, 'utf8')) as Record<string, string>;
    const [lo, hi] = saved[PORT_RANGE].split(/\s+/).map(Number) as PortRange;
    const narrowed = narrowPortRange([lo, hi], range);
    const ours = `${range[0]}-${range[1]}`;
    await fsp.writeFile(RESERVED_PORTS, saved[RESERVED_PORTS] ? `${saved[RESERVED_PORTS]},${ours}\n` : `${ours}\n`);
    await fsp.writeFile(PORT_RANGE, `${narrowed[0]} ${narrowed[1]}\n`);
    this.o.portRange = range;
    await this.replaceSteering();
  }

  /** The steering rules for the current range and forwards: the missing ones are added first, then the stale ones removed. */
  private async replaceSteering(): Promise<void> {
    const key = (a: rt.RuleAttrs) => JSON.stringify([a.ipProto, a.dportRange, a.sportRange]);
    const wanted = steeringRules(this.o.portRange, this.o.forwards).map((r) => this.ruleAttrs(this.o.publicAddress, r));
    const have = new Set(this.steering.map(key));
    const want = new Set(wanted.map(key));
    for (const attrs of wanted) if (!have.has(key(attrs))) await addRule(this.sock, attrs, 32);
    const stale = this.steering.filter((attrs) => !want.has(key(attrs)));
    this.steering = wanted;
    await this.removeRules(stale);
  }

  /** Restores the local rule, removes the steering rules, restores sysctls. Idempotent. */
  async teardown(): Promise<void> {
    if (this.closed) return;
    if (this.localMoved) {
      await restoreLocalRule(this.sock);
      await delRule(this.sock, { priority: LOCAL_PRIORITY, table: RT_TABLE_LOCAL, protocol: VPNMASQ_RTPROT });
      this.localMoved = false;
    }
    await this.removeRules(this.steering);
    this.steering = [];
    if (this.tunLocal) await delRule(this.sock, this.tunLocal);
    this.tunLocal = null;
    await restoreSysctls(this.o.savePath);
    this.sock.socket.close();
    this.closed = true;
  }

  /**
   * Crash recovery, before anything else touches rules: puts `lookup local`
   * back at priority 0, removes the moved local rule, the TUN rule and the steering rules, and
   * restores the sysctls a crashed run saved. Returns how many rules it removed.
   */
  static async cleanupLeftovers(savePath: string): Promise<number> {
    const sock = createRtNetlink();
    try {
      const rules = await sock.getRules({ family: AF_INET }, {}, OPTS);
      const ours = rules.filter((r) => r.attrs.protocol === VPNMASQ_RTPROT &&
        (r.attrs.priority === LOCAL_PRIORITY || r.attrs.priority === STEER_PRIORITY || r.attrs.priority === TUN_LOCAL_PRIORITY));
      if (ours.length > 0) await restoreLocalRule(sock);
      for (const r of ours) await delRule(sock, { ...r.attrs });
      await restoreSysctls(savePath);
      return ours.length;
    } finally {
      sock.socket.close();
    }
  }

  // ---------------------------------------------------------------- internals

  private async saveAndWriteSysctls(): Promise<void> {
    const o = this.o;
    const accept = `/proc/sys/net/ipv4/conf/${o.tunName.replace(/\./g, '/')}/accept_local`;
    const saved: Record<string, string> = {};
    for (const p of [PORT_RANGE, RESERVED_PORTS, accept]) saved[p] = (await fsp.readFile(p, 'utf8')).trim();
    const [lo, hi] = saved[PORT_RANGE].split(/\s+/).map(Number) as PortRange;
    const narrowed = narrowPortRange([lo, hi], o.portRange);
    await fsp.mkdir(path.dirname(o.savePath), { recursive: true });
    // Written before the first change, so a crash after it can always be undone.
    await fsp.writeFile(o.savePath, JSON.stringify(saved));
    const ours = `${o.portRange[0]}-${o.portRange[1]}`;
    await fsp.writeFile(RESERVED_PORTS, saved[RESERVED_PORTS] ? `${saved[RESERVED_PORTS]},${ours}\n` : `${ours}\n`);
    await fsp.writeFile(PORT_RANGE, `${narrowed[0]} ${narrowed[1]}\n`);
    await fsp.writeFile(accept, '1\n');
  }

  private ruleAttrs(address: string, r: Steer): rt.RuleAttrs {
    const attrs: rt.RuleAttrs = {
      priority: STEER_PRIORITY, table: this.o.table, dst: Buffer.from(parseIPv4(address)), protocol: VPNMASQ_RTPROT, ipProto: r.ipProto,
    };
    if (r.dport) attrs.dportRange = { start: r.dport[0], end: r.dport[1] };
    if (r.sport) attrs.sportRange = { start: r.sport[0], end: r.sport[1] };
    return attrs;
  }

  private async addSteering(address: string, rules: Steer[]): Promise<void> {
    for (const r of rules) {
      const attrs = this.ruleAttrs(address, r);
      await addRule(this.sock, attrs, 32);
      this.steering.push(attrs);
    }
  }

  /** Added before the ICMP steering rule, so nothing vpnmasq hands back can loop. */
  private async addTunLocal(): Promise<void> {
    const attrs: rt.RuleAttrs = { priority: TUN_LOCAL_PRIORITY, table: RT_TABLE_LOCAL, iifname: this.o.tunName, protocol: VPNMASQ_RTPROT };
    this.tunLocal = attrs;
    await addRule(this.sock, attrs, 0);
  }

  private async moveLocalRule(): Promise<void> {
    this.localMoved = true;
    await addRule(this.sock, { priority: LOCAL_PRIORITY, table: RT_TABLE_LOCAL, protocol: VPNMASQ_RTPROT }, 0);
    await delRule(this.sock, { priority: 0, table: RT_TABLE_LOCAL });
  }

  private async removeRules(rules: rt.RuleAttrs[]): Promise<void> {
    for (const attrs of rules) await delRule(this.sock, attrs);
  }
}

function ruleData(attrs: rt.RuleAttrs, dstLen: number): rt.Rule {
  const t = attrs.table ?? 0;
  return { family: AF_INET, dstLen, action: 'toTbl', ...(t > 0 && t < 256 ? { table: t } : {}) };
}

/** `ip rule add` (CREATE|EXCL; an identical rule is fine). */
async function addRule(sock: RtNetlinkSocket, attrs: rt.RuleAttrs, dstLen: number): Promise<void> {
  try {
    await sock.newRule(ruleData(attrs, dstLen), attrs, { flags: FlagsNew.CREATE | FlagsNew.EXCL, ...OPTS });
  } catch (e) {
    if (netlinkErrno(e) !== 'EEXIST') throw new Error(`SharedMode: adding rule ${JSON.stringify(attrs)} failed: ${(e as Error).message}`, { cause: e });
  }
}

async function delRule(sock: RtNetlinkSocket, attrs: rt.RuleAttrs): Promise<void> {
  try {
    await sock.delRule(ruleData(attrs, attrs.dst ? 32 : 0), attrs, OPTS);
  } catch (e) {
    if (!GONE.has(netlinkErrno(e) ?? '')) throw new Error(`SharedMode: deleting rule ${JSON.stringify(attrs)} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** `ip rule add pref 0 lookup local` unless it is there. */
async function restoreLocalRule(sock: RtNetlinkSocket): Promise<void> {
  await addRule(sock, { priority: 0, table: RT_TABLE_LOCAL, protocol: RTPROT_KERNEL }, 0);
}

async function restoreSysctls(savePath: string): Promise<void> {
  let saved: Record<string, string>;
  try {
    saved = JSON.parse(await fsp.readFile(savePath, 'utf8')) as Record<string, string>;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  for (const [p, v] of Object.entries(saved)) {
    await fsp.writeFile(p, `${v}\n`).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
  }
  await fsp.unlink(savePath);
}
