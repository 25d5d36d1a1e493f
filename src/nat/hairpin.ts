/**
 * Hairpinning of the VPN protocols (ESP, GRE, ISAKMP 500 <-> 500): a LAN
 * host that addresses a public address reaches the LAN server behind the
 * forward for that protocol, and the server's answers to that public
 * address go back to the LAN host that last reached it. The VPN trackers
 * key their state by remote, and both ends of such a flow see the same
 * remote (the public address), so these packets are translated by address
 * only, outside the trackers: one LAN client per protocol and server at a
 * time. Entries are few and expire; nothing allocates.
 */
import { TupleIndex } from '../core/tuple-index';

const SLOTS = 256;
/** How long a server's answers find their client after the client's last packet. */
const PEER_MS = 300_000;
const NONE = -1;

export class HairpinPeers {
  private readonly index = new TupleIndex(SLOTS);
  private readonly proto = new Int32Array(SLOTS);
  private readonly server = new Int32Array(SLOTS);
  private readonly client = new Int32Array(SLOTS);
  private readonly expires = new Float64Array(SLOTS);
  private next = 0;

  /** LAN host `client` just reached `server` by protocol `proto` (an IP protocol, or the UDP port pair's port << 8). */
  remember(proto: number, server: number, client: number, now: number): void {
    let i = this.index.get(server, proto, 0, 0);
    if (i === NONE) {
      i = this.next;
      this.next = (i + 1) % SLOTS;
      if (this.expires[i] !== 0) this.index.deleteIf(this.server[i], this.proto[i], 0, 0, i);
      this.proto[i] = proto;
      this.server[i] = server;
      this.index.set(server, proto, 0, 0, i);
    }
    this.client[i] = client;
    this.expires[i] = now + PEER_MS;
  }

  /** The LAN host that last reached `server` by `proto`, or -1 (255.255.255.255, never a LAN host). */
  clientOf(proto: number, server: number, now: number): number {
    const i = this.index.get(server, proto, 0, 0);
    return i === NONE || this.expires[i] <= now ? NONE : this.client[i];
  }
}
