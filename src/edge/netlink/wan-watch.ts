/**
 * Follows the WAN interface by name through rtnetlink notifications (links,
 * RTNLGRP_LINK, and IPv4 addresses, RTNLGRP_IPV4_IFADDR): an interface that
 * appears late (PPPoE's ppp0, a USB modem), comes back with a new index, or
 * gets its address from a slow DHCP server. After a burst of notifications
 * settles it reads the interface again and reports the state when it changed.
 */
import { createRtNetlink, RtNetlinkSocket } from 'netlink';
import { formatIPv4 } from '../../core/ipv4-addr';
import { netlinkErrno } from './errno';

const AF_INET = 2;
const OPTS = { timeout: 5000 };
/** Address changes come in bursts (add new, delete old): act once they settle. */
const SETTLE_MS = 200;

/** The interface's index and IPv4 addresses (primary first), or null while it does not exist. */
export type WanState = { index: number; addresses: string[] } | null;

export class WanWatch {
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private last = '';

  private constructor(
    private readonly sock: RtNetlinkSocket,
    private readonly ifname: string,
    private readonly onChange: (state: WanState) => void,
    private readonly onError: (e: Error) => void,
  ) {
    sock.addMembership('LINK');
    sock.addMembership('IPV4_IFADDR');
    sock.on('message', (msg) => {
      if (msg.some((m) => m.kind === 'link' || m.kind === 'address')) this.schedule();
    });
  }

  /**
   * Starts watching `ifname` and returns its state now. Subscribed before the
   * first read, so no change between the two is missed; `onChange` is called
   * for every later change.
   */
  static async start(ifname: string, onChange: (state: WanState) => void, onError: (e: Error) => void): Promise<{ watch: WanWatch; state: WanState }> {
    const watch = new WanWatch(createRtNetlink(), ifname, onChange, onError);
    try {
      const state = await WanWatch.read(watch.sock, ifname);
      watch.last = JSON.stringify(state);
      return { watch, state };
    } catch (e) {
      watch.close();
      throw e;
    }
  }

  /** The state of `ifname` through `sock`. */
  static async read(sock: RtNetlinkSocket, ifname: string): Promise<WanState> {
    let index: number | undefined;
    try {
      index = (await sock.getLink({}, { ifname }, OPTS))[0]?.data.index;
    } catch (e) {
      if (netlinkErrno(e) === 'ENODEV') return null;
      throw e;
    }
    if (!index) return null;
    const addrs = (await sock.getAddresses({ family: AF_INET }, {}, OPTS)).filter((a) => a.data.index === index);
    const addresses = [...addrs.filter((a) => !a.data.flags?.secondary), ...addrs.filter((a) => a.data.flags?.secondary)]
      .map((a) => a.attrs.local ?? a.attrs.address)
      .filter((raw): raw is Buffer => raw !== undefined && raw.length === 4)
      .map((raw) => formatIPv4(raw));
    return { index, addresses };
  }

  /** One-off read in the current network namespace. */
  static async query(ifname: string): Promise<WanState> {
    const sock = createRtNetlink();
    try {
      return await WanWatch.read(sock, ifname);
    } finally {
      sock.socket.close();
    }
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
    const state = await WanWatch.read(this.sock, this.ifname);
    const text = JSON.stringify(state);
    if (this.closed || text === this.last) return;
    this.last = text;
    this.onChange(state);
  }
}
