/**
 * `vpnmasq firewall`: an nftables ruleset (table inet vpnmasq) that lets
 * the paths through the TUN pass an ordinary router firewall.
 *
 * Traffic vpnmasq translates crosses the kernel's forward hook twice: once
 * into the TUN (LAN -> TUN outbound, WAN -> TUN inbound) and once out of it
 * (TUN -> WAN, TUN -> LAN). A forward rule such as `iifname "lan0" oifname
 * "eth0" accept` matches neither crossing, and in shared-address mode the
 * box's own ICMP that vpnmasq hands back reaches the input hook from the
 * TUN, not from the WAN interface. An accept in one nftables table does not
 * stop another table's drop (every base chain of a hook sees the packet;
 * nft(8) "VERDICT STATEMENT"), so this table accepts nothing on its own: it
 * runs before the filter priority and sets a mark bit on exactly those
 * crossings, and the operator's own default-drop chains accept that bit with
 * one rule each (README "Firewall"). The mark leaves the packet's other bits
 * alone. Pure text; nothing here touches the system.
 */

export interface FirewallOptions {
  /** Every TUN device vpnmasq uses (one today; the LAN and WAN ingress devices once they differ). */
  tuns: string[];
  lanInterfaces: string[];
  lanPrefixes: string[];
  wanInterface: string;
  mode: 'shared' | 'dedicated';
  /** The public address when it is known (dedicated mode, or shared mode with wan.publicAddress). */
  publicAddress: string | null;
  /** The mark bit(s) set on the TUN paths. */
  mark: number;
  /** Where the options came from, for the header comment. */
  source: string;
}

/** Default mark bit: clear of the marks Kubernetes (0x4000, 0x8000), WireGuard (0xca6c) and Tailscale (0xff0000) use. */
export const DEFAULT_FIREWALL_MARK = 0x10000000;

/** nft runs base chains in ascending priority: ours ahead of `priority filter` (0), where the operator's chains usually are. */
const PRIORITY = 'filter - 10';

const q = (name: string): string => `"${name}"`;
/** One name as is, several as an anonymous set. */
const names = (xs: string[]): string => {
  const u = [...new Set(xs)];
  return u.length === 1 ? q(u[0]) : `{ ${u.map(q).join(', ')} }`;
};
const addrs = (xs: string[]): string => (xs.length === 1 ? xs[0] : `{ ${xs.join(', ')} }`);
export const hexMark = (m: number): string => `0x${(m >>> 0).toString(16).padStart(8, '0')}`;

/** The rule an operator's own default-drop chain needs to let the marked paths through. */
export function acceptRule(mark: number): string {
  return `meta mark & ${hexMark(mark)} == ${hexMark(mark)} accept`;
}

/**
 * The ruleset as `nft -f` input. It replaces a previous `inet vpnmasq`
 * table in the same transaction (declare, delete, define: idempotent, never
 * a moment without the rules).
 */
export function firewallRuleset(o: FirewallOptions): string {
  if (o.tuns.length === 0) throw new Error('firewall: no TUN device');
  if (!Number.isInteger(o.mark) || o.mark <= 0 || o.mark > 0xffffffff) throw new Error(`firewall: mark must be 1..0xffffffff, not ${o.mark}`);
  const tun = names(o.tuns);
  const lan = names(o.lanInterfaces);
  const wan = q(o.wanInterface);
  const prefixes = addrs(o.lanPrefixes);
  const pub = o.publicAddress;
  const set = `meta mark set meta mark | ${hexMark(o.mark)}`;
  const rule = (match: string, why: string): string => `    ${match} ${set} comment ${q(why)}`;
  const forward = [
    rule(`iifname ${lan} oifname ${tun} ip saddr ${prefixes}`, 'LAN -> TUN: LAN traffic on its way to vpnmasq'),
    rule(`iifname ${tun} oifname ${wan}${pub ? ` ip saddr ${pub}` : ''}`, 'TUN -> WAN: translated by vpnmasq'),
    rule(`iifname ${wan} oifname ${tun}${pub ? ` ip daddr ${pub}` : ''}`, 'WAN -> TUN: to the public address, on its way to vpnmasq'),
    rule(`iifname ${tun} oifname ${lan} ip daddr ${prefixes}`, 'TUN -> LAN: translated back by vpnmasq'),
  ];
  const input = o.mode === 'shared'
    ? [rule(`iifname ${tun}${pub ? ` ip daddr ${pub}` : ''} ip protocol icmp`,
      'the box\'s own ICMP, handed back by vpnmasq: input sees the TUN, not the WAN interface')]
    : ['    # dedicated mode: vpnmasq hands nothing to the box itself'];
  return [
    `# vpnmasq firewall: the TUN paths of ${o.source}`,
    `# (TUN ${o.tuns.join(', ')}; LAN ${o.lanInterfaces.join(', ')} ${o.lanPrefixes.join(', ')}; WAN ${o.wanInterface}; ${o.mode} mode${pub ? `, public address ${pub}` : ''}).`,
    '# This table only marks those packets; a default-drop chain of your own accepts them with:',
    `#     ${acceptRule(o.mark)}`,
    '# Load with: vpnmasq firewall | nft -f -   (replaces the previous inet vpnmasq table atomically)',
    'table inet vpnmasq',
    'delete table inet vpnmasq',
    'table inet vpnmasq {',
    '  chain forward {',
    `    type filter hook forward priority ${PRIORITY}; policy accept;`,
    ...forward,
    '  }',
    '',
    '  chain input {',
    `    type filter hook input priority ${PRIORITY}; policy accept;`,
    ...input,
    '  }',
    '}',
    '',
  ].join('\n');
}
