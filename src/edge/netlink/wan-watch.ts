/**
 * Follows the WAN interface's IPv4 addresses through rtnetlink address
 * notifications (RTNLGRP_IPV4_IFADDR), for DHCP renewals and PPPoE redials
 * in shared-address mode. After a burst of notifications settles, it reads
 * the interface's addresses and reports when the one in use is gone.
 */
import { createRtNetlink, RtNetlinkSocket } from 'netlink';
import { formatIPv4 } from '../../core/ipv4-addr';

const AF_INET = 2;
/** Address changes come in bursts (add new, delete old): act once they settle. */
const SETTLE_MS = 200;

/** Called with the new address, or null when the interface has none left. */
export type AddressChangeHandler = (newAddress: string | null, oldAddress: string) => void;

export class WanWatch {
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(
    private readonly sock: RtNetlinkSocket,
    private readonly ifindex: number,
    private current: string,
    private readonly onChange: AddressChangeHandler,
    private readonly onError: (e: Error) => void,
  ) {
    sock.addMembership('IPV4_IFADDR');
    sock.on('message', (msg) => {
      if (msg.some((m) => m.kind === 'address' && m.data.index === ifindex)) this.schedule();
    });
  }

  /** Starts watching `ifname`, whose address in use is `current`. */
  static async start(ifname: string, current: string, onChange: AddressChangeHandler, onError: (e: Error) => void): Promise<WanWatch> {
    const sock = createRtNetlink();
    const links = await sock.getLink({}, { ifname }, { timeout: 5000 });
    const index = links[0]?.data.index;
    if (!index) throw new Error(`WAN interface ${ifname} not found`);
    return new WanWatch(sock, index, current, onChange, onError);
  }

  /** The IPv4 addresses of an interface, primary first. */
  static async addresses(sock: RtNetlinkSocket, ifindex: number): Promise<string[]> {
    const addrs = await sock.getAddresses({ family: AF_INET }, {}, { timeout: 5000 });
    return addrs
      .filter((a) => a.data.index === ifindex && !a.data.flags?.secondary)
      .concat(addrs.filter((a) => a.data.index === ifindex && a.data.flags?.secondary))
      .map((a) => a.attrs.local ?? a.attrs.address)
      .filter((raw): raw is Buffer => raw !== undefined && raw.length === 4)
      .map((raw) => formatIPv4(raw));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.sock.socket.close();
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.check().catch((e: Error) => this.onError(e));
    }, SETTLE_MS);
  }

  private async check(): Promise<void> {
    if (this.closed) return;
    const addrs = await WanWatch.addresses(this.sock, this.ifindex);
    if (addrs.includes(this.current)) return;
    const old = this.current;
    const next = addrs[0] ?? null;
    if (next !== null) this.current = next;
    this.onChange(next, old);
  }
}
