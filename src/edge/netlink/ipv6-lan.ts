/**
 * lan.ipv6 "drop": vpnmasq translates IPv4 only, so IPv6 from the LAN is
 * refused where it arrives rather than routed around the NAT untranslated:
 *
 *   ip -6 rule add pref 7100 iif LAN prohibit protocol 247      (per LAN interface)
 *
 * The rule follows the `local` rule (pref 0), so IPv6 to the box itself
 * (link-local, neighbour discovery and router solicitation multicast, its
 * own addresses) is still delivered; everything it would forward gets ICMPv6
 * destination unreachable, administratively prohibited (RFC 4443 §3.1 code 1),
 * so a dual-stack host falls back to IPv4 at once (RFC 8305 §5) instead of
 * waiting for a timeout. "route" installs nothing: the kernel's IPv6 routing
 * and the operator's ip6 firewall decide. Tagged with protocol 247 like the
 * IPv4 plumbing, so a crashed run's rules are removed at the next start.
 */
import { createRtNetlink, FlagsNew, RtNetlinkSocket, rt } from 'netlink';
import { netlinkErrno, VPNMASQ_RTPROT } from './router-net';

const AF_INET6 = 10;

/** The config's lan.ipv6 (src/config/schema.ts), declared here too: edge imports no config. */
export type LanIpv6Policy = 'drop' | 'route';
export const IPV6_LAN_RULE_PRIORITY = 7100;
const OPTS = { timeout: 5000 };

function ruleMsg(iifname: string): { data: rt.Rule; attrs: rt.RuleAttrs } {
  return {
    data: { family: AF_INET6, srcLen: 0, dstLen: 0, action: 'prohibit' },
    attrs: { priority: IPV6_LAN_RULE_PRIORITY, iifname, protocol: VPNMASQ_RTPROT },
  };
}

export class Ipv6LanPolicy {
  private constructor(private readonly sock: RtNetlinkSocket | null, private readonly installed: string[], readonly note: string | null) {}

  /**
   * Removes an earlier run's IPv6 rules, then installs the policy's. A
   * kernel without IPv6 (EAFNOSUPPORT) forwards none: "drop" holds by
   * itself, said in `note`.
   */
  static async apply(policy: LanIpv6Policy, lanInterfaces: string[]): Promise<Ipv6LanPolicy> {
    const sock = createRtNetlink();
    try {
      let rules: rt.RuleMessage[];
      try {
        rules = await sock.getRules({ family: AF_INET6 }, {}, OPTS);
      } catch (e) {
        if (netlinkErrno(e) !== 'EAFNOSUPPORT') throw e;
        sock.socket.close();
        return new Ipv6LanPolicy(null, [], 'the kernel has no IPv6: nothing from the LAN is forwarded as IPv6');
      }
      for (const r of rules) {
        if (r.attrs.protocol !== VPNMASQ_RTPROT) continue;
        await sock.delRule({ ...r.data }, { priority: r.attrs.priority, iifname: r.attrs.iifname, protocol: r.attrs.protocol }, OPTS).catch((e: unknown) => {
          if (netlinkErrno(e) !== 'ENOENT') throw e;
        });
      }
      const installed: string[] = [];
      const self = new Ipv6LanPolicy(sock, installed, null);
      if (policy === 'drop') {
        for (const iif of lanInterfaces) {
          const { data, attrs } = ruleMsg(iif);
          try {
            await sock.newRule(data, attrs, { ...OPTS, flags: FlagsNew.CREATE | FlagsNew.EXCL });
          } catch (e) {
            if (netlinkErrno(e) !== 'EEXIST') throw new Error(`lan.ipv6 drop: ip -6 rule add pref ${IPV6_LAN_RULE_PRIORITY} iif ${iif} prohibit failed: ${(e as Error).message}`, { cause: e });
          }
          installed.push(iif);
        }
      }
      return self;
    } catch (e) {
      sock.socket.close();
      throw e;
    }
  }

  /** The rules in place, as `ip -6 rule` prints them (status). */
  describe(): string[] {
    return this.installed.map((iif) => `${IPV6_LAN_RULE_PRIORITY}: from all iif ${iif} prohibit`);
  }

  /** Removes the installed rules and closes the socket. Idempotent. */
  async remove(): Promise<void> {
    const sock = this.sock;
    if (sock === null) return;
    try {
      for (const iif of this.installed.splice(0)) {
        const { data, attrs } = ruleMsg(iif);
        await sock.delRule(data, attrs, OPTS).catch((e: unknown) => {
          if (netlinkErrno(e) !== 'ENOENT') throw e;
        });
      }
    } finally {
      sock.socket.close();
    }
  }
}
