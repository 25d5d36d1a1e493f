/**
 * How the VPN helpers plug into NAPT without NAPT knowing them (netfilter's
 * conntrack helpers and protocol trackers): a helper implements Tracker and
 * registers it by IP protocol (ESP, GRE, AH), by a UDP/TCP port pair it owns
 * instead of NAPT (ISAKMP, UDP 500 <-> 500), or by a TCP/UDP port whose
 * sessions it inspects after NAPT translated them (PPTP control, TCP 1723).
 * Every call gets the one reusable Packet of the engine; nothing is
 * allocated per packet.
 */
import { Ipv4Header } from '../wire/ipv4';
import { TcpHeader } from '../wire/tcp';
import { UdpHeader } from '../wire/udp';
import { VNET_F_NEEDS_CSUM } from '../wire/vnet';
import { Targets } from '../core/targets';
import type { Verdict } from '../core/verdict';
import type { Forwards } from './forwards';

const EMPTY = new Uint8Array(0);

/** Where a session helper's TCP segments wait when they arrive beyond a gap (the engine's hold pool). */
export interface SegmentHolder {
  /** Keeps a copy of the segment in `p` for `owner` (the helper's name for a connection's direction); false: no room. */
  hold(p: Packet, owner: number, outbound: boolean): boolean;
  /** Once the packet being handled is queued, hands `owner`'s held segments back to the helper, lowest sequence first. */
  release(owner: number): void;
  /** Drops `owner`'s held segments (its connection is gone). */
  discard(owner: number): void;
}

/** The packet being translated, as the engine has parsed it. Valid only during the call. */
export class Packet {
  /** The shared arena the packet sits in. */
  buf: Uint8Array = EMPTY;
  readonly ip = new Ipv4Header();
  /** Parsed by NAPT for TCP and UDP packets before a port-registered tracker is called. */
  readonly tcp = new TcpHeader();
  readonly udp = new UdpHeader();
  /** ICMP errors: the quoted datagram (its source is the public address for an error from outside). */
  readonly inner = new Ipv4Header();
  /** Source and destination as the packet arrived (before any rewrite). */
  src = 0;
  dst = 0;
  /** virtio_net_hdr flags (0 without a vnet header). */
  vflags = 0;
  /** Time of the batch (ms). */
  now = 0;
  /**
   * The public address the packet uses: outbound, the LAN host's (paired
   * pooling, hosts.ts); inbound, the destination. `pubIdx` is its index in
   * the session table's list.
   */
  publicAddr = 0;
  pubIdx = 0;
  /** Port forwards for servers on the LAN, or null. */
  forwards: Forwards | null = null;
  /** Session helpers: the TCP/UDP session the segment belongs to (already translated). */
  session = -1;
  /** Session helpers: the segment is one handed back from the hold pool (already translated, walked again now). */
  fromHold = false;
  /** TCP/UDP ports as the packet arrived (set by NAPT). */
  sport = 0;
  dport = 0;
  /** Inbound: where the packet goes, filled by the tracker (several when it guesses). */
  readonly to = new Targets();

  /** ICMP errors: bytes of the quoted datagram's payload present (at least 8, RFC 792). */
  get quotedLen(): number { return this.ip.off + this.ip.totalLen - this.inner.payloadOff; }

  /** The L4 checksum is CHECKSUM_PARTIAL: only its pseudo-header part may be updated. */
  get partial(): boolean { return (this.vflags & VNET_F_NEEDS_CSUM) !== 0; }
}

export interface Tracker {
  /**
   * LAN -> outside. A protocol or port-pair tracker decides and translates
   * the packet in place (the source becomes the public address); a session
   * helper sees the segment after NAPT translated it and may rewrite its
   * payload. Returns the verdict.
   */
  outbound(p: Packet): Verdict;
  /**
   * Outside -> public address. A protocol or port-pair tracker fills p.to
   * with the LAN host(s) and rewrites what is the same for every copy; the
   * engine then calls deliver() once per copy. A session helper is called
   * after NAPT, like outbound.
   */
  inbound(p: Packet): Verdict;
  /** Points the packet (or a copy of it) at `lan`: the destination address and what depends on it. */
  deliver(buf: Uint8Array, ipOff: number, l4Off: number, pub: number, lan: number, partial: boolean): void;
  /**
   * An ICMP error from outside quoting a packet this tracker sent (p.inner:
   * public address -> remote): sets p.to to its LAN host and returns
   * TRANSLATED, or a drop reason. The engine rewrites the addresses.
   */
  icmpErrorIn(p: Packet): Verdict;
  /**
   * An ICMP error a LAN host sends about a packet this tracker delivered
   * (p.inner: remote -> LAN host): returns TRANSLATED after rewriting what it
   * changed in the quoted payload back (a Call ID), or a drop reason. The
   * engine rewrites the addresses.
   */
  icmpErrorOut(p: Packet): Verdict;
  /** The TCP/UDP session `s` (a session helper's master connection) is being removed. */
  sessionRemoved(s: number): void;
}

/** Which tracker handles what; indexes into `list` (0 = none). */
export class TrackerRegistry {
  readonly list: Array<Tracker | null> = [null];
  readonly byProto = new Uint8Array(256);
  /** By slot (0 TCP, 1 UDP) and port: a tracker that owns port <-> same port traffic instead of NAPT. */
  readonly portPair = [new Uint8Array(65536), new Uint8Array(65536)];
  /** Payload bytes a port-pair tracker needs after the UDP/TCP header (checked with the header, before the checksum). */
  readonly pairNeed = [new Uint16Array(65536), new Uint16Array(65536)];
  /** By slot and port: a helper that inspects the sessions on that port after NAPT. */
  readonly helper = [new Uint8Array(65536), new Uint8Array(65536)];

  private index(t: Tracker): number {
    let i = this.list.indexOf(t);
    if (i < 0) {
      if (this.list.length === 256) throw new Error('too many trackers');
      i = this.list.push(t) - 1;
    }
    return i;
  }

  protocol(proto: number, t: Tracker): void {
    this.byProto[proto] = this.index(t);
  }

  pair(slot: number, port: number, t: Tracker, need: number): void {
    this.portPair[slot][port] = this.index(t);
    this.pairNeed[slot][port] = need;
  }

  sessions(slot: number, port: number, t: Tracker): void {
    this.helper[slot][port] = this.index(t);
  }

  at(i: number): Tracker {
    return this.list[i] as Tracker;
  }
}
