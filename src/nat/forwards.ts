/**
 * Forwards for servers on the LAN (spec §6): TCP/UDP port forwards and the
 * ESP / GRE protocol forwards.
 *
 * API (all hot-path safe: no allocation, numbers only):
 *  - `protoForward(proto)`: the LAN address inbound ESP (50) or GRE (47) goes
 *    to when nothing else claims it (the last resort of spec §6: established
 *    -> pending -> guessing -> forward rule -> drop), or NO_FORWARD.
 *  - `portForward(proto, pubPort)`: the LAN address of a TCP/UDP port forward,
 *    or NO_FORWARD; `portForwardLanPort(proto, pubPort)` its LAN port.
 *  - `isakmpServer()`: the LAN IPsec server that owns IKE exchanges started
 *    from outside (a udp/500 forward to port 500), or NO_FORWARD.
 *  - `inbound(proto, pubPort, rem, remPort, now)`: for an inbound TCP/UDP
 *    packet that matched no mapping, creates the mapping (fixed public port)
 *    and session to the LAN server and returns the session, or a negative
 *    number (NO_FORWARD when no forward exists, -2/-3 when the table is full
 *    or the port is taken).
 * Runtime forwards (`vpnmasq forwards add|remove`, not on the packet path)
 * sit next to the config's; the daemon checks them like the config's before
 * adding them. They are never written to the config file and end with the
 * daemon.
 * Hairpinning needs nothing extra: a LAN client's packet to the public
 * address runs the inbound half after its outbound translation and lands here.
 */
import { Forward, forwardClaim } from '../core/forward';
import { PROTO_ESP, PROTO_GRE, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { ISAKMP_PORT } from '../wire/isakmp';
import { SessionTable } from './sessions';
import { ipv4ToInt32 } from '../core/ipv4-addr';

/** Returned when there is no forward. As an address it is 255.255.255.255, never a LAN host. */
export const NO_FORWARD = -1;

export class Forwards {
  private readonly tcpLan = new Int32Array(65536).fill(NO_FORWARD);
  private readonly udpLan = new Int32Array(65536).fill(NO_FORWARD);
  private readonly tcpLanPort = new Uint16Array(65536);
  private readonly udpLanPort = new Uint16Array(65536);
  private espLan = NO_FORWARD;
  private greLan = NO_FORWARD;
  /** Number of TCP/UDP port forwards (0 lets the packet path skip the lookup cheaply). */
  portCount = 0;

  private configured: readonly Forward[] = [];
  private runtime: Forward[] = [];

  constructor(private readonly table: SessionTable, forwards: readonly Forward[] = []) {
    this.configure(forwards);
  }

  /**
   * Replaces the config's rules (on start and on config reload). Runtime
   * forwards stay unless the new config claims their port or protocol: those
   * are dropped and returned. Existing sessions are kept.
   */
  configure(forwards: readonly Forward[]): Forward[] {
    this.configured = forwards;
    const claimed = new Set(forwards.map(forwardClaim));
    const kept: Forward[] = [];
    const dropped: Forward[] = [];
    for (const f of this.runtime) {
      const claim = forwardClaim(f);
      if (claimed.has(claim)) {
        dropped.push(f);
      } else {
        claimed.add(claim);
        kept.push(f);
      }
    }
    this.runtime = kept;
    this.apply();
    return dropped;
  }

  /** Adds a runtime forward, already checked like an entry of the config's "forwards"; throws if its port or protocol is taken. */
  add(f: Forward): Forward {
    const claim = forwardClaim(f);
    if (this.all().some((g) => forwardClaim(g) === claim)) throw new Error(`${claim} is already forwarded`);
    this.runtime.push(f);
    this.apply();
    return f;
  }

  /** Removes a runtime forward: tcp/udp by public port, esp/gre by protocol. Config forwards live in the file. */
  remove(proto: string, publicPort: number | undefined): Forward {
    const ported = proto === 'tcp' || proto === 'udp';
    if (ported && publicPort === undefined) throw new Error(`${proto} forwards are named by their public port`);
    const what = ported ? `${proto} port ${publicPort}` : proto;
    const match = (f: Forward) => f.proto === proto && (!ported || ('publicPort' in f && f.publicPort === publicPort));
    const i = this.runtime.findIndex(match);
    if (i < 0) {
      if (this.configured.some(match)) throw new Error(`the ${what} forward comes from the config file: edit "forwards" there and reload`);
      throw new Error(`no runtime ${what} forward`);
    }
    const [f] = this.runtime.splice(i, 1);
    this.apply();
    return f;
  }

  /** Every forward in effect, the config's first. */
  all(): Forward[] {
    return [...this.configured, ...this.runtime];
  }

  /** Every forward in effect with where it comes from (`forwards list`). */
  list(): Array<Forward & { source: 'config' | 'runtime' }> {
    return [
      ...this.configured.map((f) => ({ ...f, source: 'config' as const })),
      ...this.runtime.map((f) => ({ ...f, source: 'runtime' as const })),
    ];
  }

  private apply(): void {
    this.tcpLan.fill(NO_FORWARD);
    this.udpLan.fill(NO_FORWARD);
    this.espLan = NO_FORWARD;
    this.greLan = NO_FORWARD;
    this.portCount = 0;
    for (const f of this.all()) {
      const lan = ipv4ToInt32(f.lanAddress);
      if (f.proto === 'esp') this.espLan = lan;
      else if (f.proto === 'gre') this.greLan = lan;
      else if ('publicPort' in f) {
        const tcp = f.proto === 'tcp';
        (tcp ? this.tcpLan : this.udpLan)[f.publicPort] = lan;
        (tcp ? this.tcpLanPort : this.udpLanPort)[f.publicPort] = f.lanPort;
        this.portCount++;
      }
    }
  }

  /** LAN address for inbound packets of IP protocol 50 (ESP) or 47 (GRE) with no other owner, or NO_FORWARD. */
  protoForward(proto: number): number {
    return proto === PROTO_ESP ? this.espLan : proto === PROTO_GRE ? this.greLan : NO_FORWARD;
  }

  /** LAN address a TCP/UDP public port is forwarded to, or NO_FORWARD. */
  portForward(proto: number, pubPort: number): number {
    return proto === PROTO_TCP ? this.tcpLan[pubPort] : proto === PROTO_UDP ? this.udpLan[pubPort] : NO_FORWARD;
  }

  portForwardLanPort(proto: number, pubPort: number): number {
    return proto === PROTO_TCP ? this.tcpLanPort[pubPort] : this.udpLanPort[pubPort];
  }

  /**
   * The LAN server of a udp/500 forward that keeps port 500, or NO_FORWARD.
   * UDP 500 <-> 500 runs through ISAKMP masquerade, which keeps the port
   * (spec Rule I-1, §6 "portfw, keeping 500"); there this server takes every
   * exchange a remote starts. A udp/500 forward to another LAN port is not
   * used for ISAKMP.
   */
  isakmpServer(): number {
    return this.udpLanPort[ISAKMP_PORT] === ISAKMP_PORT ? this.udpLan[ISAKMP_PORT] : NO_FORWARD;
  }

  /**
   * Creates the mapping LAN server -> fixed public port (unless the server's
   * endpoint already has exactly that mapping) and a session with the remote.
   * The caller refreshes the session's state and timer as for any inbound packet.
   */
  inbound(proto: number, pubPort: number, rem: number, remPort: number, now: number): number {
    if (this.portCount === 0) return NO_FORWARD;
    const lan = this.portForward(proto, pubPort);
    if (lan === NO_FORWARD) return NO_FORWARD;
    const t = this.table;
    const lanPort = this.portForwardLanPort(proto, pubPort);
    let m = t.findMapping(proto, lan, lanPort);
    if (m >= 0 && t.mPubPort[m] !== pubPort) return -3;
    if (m < 0) m = t.createMapping(proto, lan, lanPort, pubPort);
    if (m < 0) return m === -1 ? -2 : -3;
    const s = t.createSession(m, rem, remPort, now, 0, now);
    return s < 0 ? -2 : s;
  }
}
