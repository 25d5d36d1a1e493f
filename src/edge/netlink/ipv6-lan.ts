/**
 * lan.ipv6 "drop", the IPv6 part of the safety net: vpnmasq translates IPv4
 * only, so IPv6 from the LAN is refused where it arrives rather than routed
 * around the NAT untranslated:
 *
 *   ip -6 rule add pref 7100 iif LAN prohibit protocol 247      (per LAN interface)
 *
 * The rule follows the `local` rule (pref 0), so IPv6 to the box itself
 * (link-local, neighbour discovery and router solicitation multicast, its
 * own addresses) is still delivered; everything it would forward gets ICMPv6
 * destination unreachable, administratively prohibited (RFC 4443 §3.1 code 1),
 * so a dual-stack host falls back to IPv4 at once (RFC 8305 §5) instead of
 * waiting for a timeout. "route" installs nothing: the kernel's IPv6 routing
 * and the operator's ip6 firewall decide.
 *
 * Like the IPv4 safety net the rules do not depend on the daemon: installed
 * with it (router-net.ts installSafetyNet), kept while it is down, removed
 * only by `vpnmasq teardown`. A kernel without IPv6 (EAFNOSUPPORT) forwards
 * none: "drop" holds by itself.
 */
import { FlagsNew, RtNetlinkSocket, rt } from 'netlink';
import { netlinkErrno } from './errno';
import { PRIO_LAN6, RTPROT_VPNMASQ } from './plan';

const AF_INET6 = 10;
const OPTS = { timeout: 5000 };
const NO_IPV6 = 'the kernel has no IPv6: nothing from the LAN is forwarded as IPv6';

function ruleMsg(iifname: string): { data: rt.Rule; attrs: rt.RuleAttrs } {
  return {
    data: { family: AF_INET6, srcLen: 0, dstLen: 0, action: 'prohibit' },
    attrs: { priority: PRIO_LAN6, iifname, protocol: RTPROT_VPNMASQ },
  };
}

/** A refusal rule as `ip -6 rule` prints it. */
export function ipv6RuleText(iifname: string): string {
  return `${PRIO_LAN6}: from all iif ${iifname} prohibit`;
}

/** vpnmasq's IPv6 rules (protocol 247); null when the kernel has no IPv6. */
async function dump(sock: RtNetlinkSocket): Promise<rt.RuleMessage[] | null> {
  try {
    return (await sock.getRules({ family: AF_INET6 }, {}, OPTS)).filter((r) => r.attrs.protocol === RTPROT_VPNMASQ);
  } catch (e) {
    if (netlinkErrno(e) === 'EAFNOSUPPORT') return null;
    throw e;
  }
}

function describe(r: rt.RuleMessage): string {
  return r.data.action === 'prohibit' && r.attrs.priority === PRIO_LAN6 && r.attrs.iifname !== undefined
    ? ipv6RuleText(r.attrs.iifname) : `${r.attrs.priority ?? 0}: ${r.data.action ?? 'rule'} (IPv6)`;
}

async function del(sock: RtNetlinkSocket, r: rt.RuleMessage): Promise<void> {
  await sock.delRule({ ...r.data }, { priority: r.attrs.priority, iifname: r.attrs.iifname, protocol: r.attrs.protocol }, OPTS).catch((e: unknown) => {
    if (netlinkErrno(e) !== 'ENOENT') throw e;
  });
}

/**
 * Refuses forwarded IPv6 from each of `iifs` (empty: lan.ipv6 "route"):
 * the missing rules are added first, then vpnmasq's IPv6 rules that are not
 * wanted any more are removed, so no LAN interface is open in between.
 */
export async function installIpv6Refusal(sock: RtNetlinkSocket, iifs: readonly string[]): Promise<{ added: string[]; removed: string[]; note?: string }> {
  const have = await dump(sock);
  if (have === null) return { added: [], removed: [], ...(iifs.length > 0 ? { note: NO_IPV6 } : {}) };
  const added: string[] = [];
  const removed: string[] = [];
  const present = new Set(have.map(describe));
  for (const iif of iifs) {
    if (present.has(ipv6RuleText(iif))) continue;
    const { data, attrs } = ruleMsg(iif);
    try {
      await sock.newRule(data, attrs, { ...OPTS, flags: FlagsNew.CREATE | FlagsNew.EXCL });
    } catch (e) {
      if (netlinkErrno(e) !== 'EEXIST') throw new Error(`lan.ipv6 drop: ip -6 rule add pref ${PRIO_LAN6} iif ${iif} prohibit failed: ${(e as Error).message}`, { cause: e });
    }
    added.push(`${ipv6RuleText(iif)} (IPv6)`);
  }
  const wanted = new Set(iifs.map(ipv6RuleText));
  for (const r of have) {
    if (wanted.has(describe(r))) continue;
    await del(sock, r);
    removed.push(`${describe(r)} (IPv6)`);
  }
  return { added, removed };
}

/** The IPv6 rules in place, as `ip -6 rule` prints them (status; empty without IPv6). */
export async function ipv6Refusals(sock: RtNetlinkSocket): Promise<string[]> {
  return ((await dump(sock)) ?? []).map(describe);
}

/** `vpnmasq teardown`: removes every IPv6 rule vpnmasq added; returns how many. */
export async function removeIpv6Refusal(sock: RtNetlinkSocket): Promise<number> {
  const have = (await dump(sock)) ?? [];
  for (const r of have) await del(sock, r);
  return have.length;
}
