/**
 * Forwards to servers on the LAN as the config states them, the vocabulary
 * shared by the NAT (src/nat/forwards.ts), shared-address steering
 * (src/edge/netlink/shared-mode.ts) and the config's checks.
 */

/** Inclusive [low, high] port range. */
export type PortRange = [number, number];

export interface PortForward { proto: 'tcp' | 'udp'; publicPort: number; lanAddress: string; lanPort: number }
export interface ProtocolForward { proto: 'esp' | 'gre'; lanAddress: string }
export type Forward = PortForward | ProtocolForward;

/** What a forward owns, e.g. `tcp port 8443` or `esp`: two forwards with one claim conflict. */
export function forwardClaim(f: Forward): string {
  return 'publicPort' in f ? `${f.proto} port ${f.publicPort}` : f.proto;
}
