/**
 * What the fail-closed lab tests look at on a router namespace: its kernel
 * plumbing and host settings as one text, and a TCP probe that tells a reset
 * from a silent drop.
 */

/** Host-wide sysctls vpnmasq may change (not the TUN's own, which die with it). */
export const SYSCTLS = ['net/ipv4/ip_forward', 'net/ipv4/conf/all/rp_filter', 'net/ipv4/conf/wan0/rp_filter', 'net/ipv4/neigh/wan0/proxy_delay',
  'net/ipv4/ip_local_port_range', 'net/ipv4/ip_local_reserved_ports'];

/** argv: HOST PORT TIMEOUT. Prints connected, refused (a RST came), timeout (nothing came) or error ERRNO. */
export const TCP_PROBE = `
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except ConnectionRefusedError: print("refused")
except socket.timeout: print("timeout")
except OSError as e: print("error %d" % e.errno)
`;

/** Rules, routes of every table, proxy neighbours and SYSCTLS of namespace `ns`, through `sh`. */
export async function hostSnapshot(sh: (ns: string, argv: string[]) => Promise<string>, ns: string): Promise<string> {
  const parts = [await sh(ns, ['ip', 'rule', 'show']), await sh(ns, ['ip', 'route', 'show', 'table', 'all']), await sh(ns, ['ip', 'neigh', 'show', 'proxy'])];
  for (const s of SYSCTLS) parts.push(`${s}=${(await sh(ns, ['cat', `/proc/sys/${s}`])).trim()}`);
  return parts.join('\n');
}
