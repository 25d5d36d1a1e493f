/**
 * Structure-aware packet generation for the packet-path fuzzer. Traffic
 * comes from a model of LAN hosts and remotes: TCP, UDP and ICMP flows in
 * both directions, IKE exchanges on 500 <-> 500 with their cookies, ESP SAs,
 * PPTP control connections whose byte streams are split at any byte,
 * retransmitted, overlapped and reordered, enhanced GRE with every flag
 * combination, ICMP errors quoting what the router sent or delivered, forwards
 * reached from outside, hairpinned packets. The replies use what the daemon's
 * tables say (public ports, public Call IDs, SPIs), read through a View. Every
 * datagram may then be fragmented and shuffled, mutated, and framed with a
 * plain, partial-checksum, data-valid, GSO or random virtio-net header.
 */
import { Rng } from './rng';
import { r16, w16 } from './inet';
import {
  ACK, AH, DF, ESP, F_DATA_VALID, F_NEEDS_CSUM, FIN, GRE, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_UDP_L4, ICMP, NO_VNET, PSH, RST, SYN,
  TCP, UDP, VNET_LEN, VnetFields, esp, fragments, gre, icmpError, icmpQuery, ipHdrLen, ipHeaderChecksum, ipv4, isakmp, l4Checksum,
  mssOption, partialChecksum, pptpMessage, tcp, udp, withVnet,
} from './craft';
import {
  IPSEC_SERVER, LAN_HOSTS, PPTP_SERVER, PUBLIC, Profile, REMOTES, ROUTERS, ROUTER_LAN, STRANGERS,
} from './world';

/** What the generator may read from the daemon's tables to aim its replies (all addresses unsigned). */
export interface View {
  /** Public port (or ICMP id) of the LAN endpoint's session with the remote endpoint, or -1. */
  pubPortOf(proto: number, lan: number, lanPort: number, rem: number, remPort: number): number;
  /** A live NAPT session, or null. */
  session(rng: Rng): { proto: number; lan: number; lanPort: number; pubPort: number; rem: number; remPort: number } | null;
  /** The public and remote Call IDs of the call a LAN host announced with `lanId`, or null. */
  callOf(lan: number, rem: number, lanId: number): { pubId: number; remId: number } | null;
  /** A live PPTP call, or null. */
  call(rng: Rng): { lan: number; rem: number; lanId: number; pubId: number; remId: number } | null;
  /** A live ESP entry, or null. */
  esp(rng: Rng): { lan: number; rem: number; outSpi: number; inSpi: number } | null;
  /** A live ISAKMP entry's cookies, or null. */
  isakmp(rng: Rng): { lan: number; rem: number; ic: Uint8Array; rc: Uint8Array | null } | null;
}

interface Flow { proto: number; lan: number; lport: number; rem: number; rport: number; seqOut: number; seqIn: number }
interface Exchange { lan: number; rem: number; ic: Uint8Array; rc: Uint8Array | null }
interface Sa { lan: number; rem: number; spiOut: number; spiIn: number; seq: number }

/** One direction of a PPTP control connection's byte stream. */
class Stream {
  /** Sequence number of the first data byte (ISN + 1). */
  first: number;
  /** Bytes sent in order so far. */
  sent = 0;
  /** Bytes queued, not yet sent. */
  queue: number[] = [];
  /** The last bytes sent, for retransmissions: history[i] is stream byte histBase + i. */
  history: number[] = [];
  histBase = 0;

  constructor(isn: number) {
    this.first = (isn + 1) >>> 0;
  }

  seqAt(offset: number): number { return (this.first + offset) >>> 0; }

  take(n: number): number[] {
    const out = this.queue.splice(0, n);
    for (const b of out) this.history.push(b);
    this.sent += out.length;
    if (this.history.length > 4096) {
      const cut = this.history.length - 2048;
      this.history.splice(0, cut);
      this.histBase += cut;
    }
    return out;
  }
}

interface PptpConn {
  lan: number;
  lport: number;
  rem: number;
  rport: number;
  /** The LAN side is the PNS (it called out); else it is a server behind the tcp/1723 forward. */
  lanIsPns: boolean;
  opened: boolean;
  out: Stream;
  in: Stream;
  /** Call IDs the LAN side announced and the remote side announced. */
  lanIds: number[];
  remIds: number[];
}

const POOL = 128;

/** Adds to a bounded pool, replacing a random member once it is full. */
function remember<T>(rng: Rng, pool: T[], item: T, max = POOL): T {
  if (pool.length < max) pool.push(item);
  else pool[rng.int(max)] = item;
  return item;
}

export class PacketGenerator {
  private readonly flows: Flow[] = [];
  private readonly pings: { lan: number; id: number; rem: number; seq: number }[] = [];
  private readonly exchanges: Exchange[] = [];
  private readonly sas: Sa[] = [];
  private readonly conns: PptpConn[] = [];
  /** Recent outputs (IP datagrams) and whether they went to the LAN, for ICMP errors that quote them. */
  private readonly recent: { ip: Uint8Array; toLan: boolean }[] = [];
  /** Frames held back to arrive later (shuffled fragments), due at a packet count. */
  private delayed: { due: number; frame: Uint8Array }[] = [];
  private count = 0;
  private ipId = 1;
  /** Set by superPacket: the datagram gets a GSO header. */
  private superNext = false;
  private readonly hosts: number[];

  constructor(private readonly rng: Rng, private readonly profile: Profile, private readonly view: View) {
    this.hosts = LAN_HOSTS.filter((h) => profile.lan.some(([net, mask]) => ((h & mask) >>> 0) === net));
  }

  /** The output path tells the generator what it sent, so later errors can quote it. */
  observe(ip: Uint8Array, toLan: boolean): void {
    if (this.rng.chance(0.3)) remember(this.rng, this.recent, { ip: ip.slice(0, Math.min(ip.length, 600)), toLan }, 64);
  }

  /** The next frame (virtio-net header + datagram) to inject. */
  next(): Uint8Array {
    this.count++;
    if (this.delayed.length > 0) {
      const i = this.delayed.findIndex((d) => d.due <= this.count);
      if (i >= 0) return this.delayed.splice(i, 1)[0].frame;
    }
    const rng = this.rng;
    if (rng.chance(0.01)) return rng.bytes(rng.skewed(200));
    this.superNext = false;
    let dg = this.datagram();
    const superPacket = this.superNext;
    if (superPacket) return this.frame(dg, true);
    if (rng.chance(0.07)) dg = this.mutate(dg);
    if (rng.chance(0.07) && (dg[0] & 0x0f) >= 5 && dg.length > 36) {
      const frags = this.fragment(dg);
      if (frags.length > 0) return frags[0];
    }
    return this.frame(dg);
  }

  // ---- framing ---------------------------------------------------------------

  /** A virtio-net header for the datagram: mostly plain, else partial checksum, data-valid, GSO, or random. */
  private frame(dg: Uint8Array, superPacket = false): Uint8Array {
    const rng = this.rng;
    const proto = dg.length >= 20 ? dg[9] : 0;
    const hl = dg.length >= 20 ? ipHdrLen(dg) : 20;
    const whole = dg.length >= 20 && (r16(dg, 6) & 0x3fff) === 0 && r16(dg, 2) <= dg.length;
    const l4 = proto === TCP || proto === UDP;
    const k = superPacket ? 1 : rng.weighted([66, 12, 10, 4, 8]);
    if (k === 0) return withVnet(NO_VNET, dg);
    if (k === 1 && l4 && whole) {
      const p = dg.slice();
      partialChecksum(p);
      const tcpHl = proto === TCP && p.length >= hl + 20 ? (p[hl + 12] >> 4) * 4 : 8;
      const gso = superPacket ? (proto === TCP ? GSO_TCPV4 | (rng.chance(0.1) ? GSO_ECN : 0) : GSO_UDP_L4) : GSO_NONE;
      return withVnet({
        flags: F_NEEDS_CSUM | (rng.chance(0.1) ? F_DATA_VALID : 0), gsoType: gso, hdrLen: gso ? hl + tcpHl : 0,
        gsoSize: gso ? rng.pick([536, 1448, 1460, 8948]) : 0, csumStart: hl, csumOffset: proto === TCP ? 16 : 6,
      }, p);
    }
    if (k === 2) return withVnet({ ...NO_VNET, flags: F_DATA_VALID }, dg);
    if (k === 3) {
      const v: VnetFields = {
        flags: rng.pick([F_NEEDS_CSUM, F_DATA_VALID | F_NEEDS_CSUM, 4, 0xff, rng.int(256)]), gsoType: rng.pick([0, 1, 3, 4, 5, 0x81, rng.int(256)]),
        hdrLen: rng.int(65536), gsoSize: rng.int(65536), csumStart: rng.pick([hl, 0, rng.int(65536)]), csumOffset: rng.pick([16, 6, rng.int(65536)]),
      };
      return withVnet(v, dg);
    }
    const f = withVnet(NO_VNET, dg);
    f.set(rng.bytes(VNET_LEN), 0);
    return f;
  }

  /** Cuts the datagram into fragments, shuffled, some duplicated or lost, some held back; returns the first to send now. */
  private fragment(dg: Uint8Array): Uint8Array[] {
    const rng = this.rng;
    const hl = ipHdrLen(dg);
    const payload = r16(dg, 2) - hl;
    if (payload < 16 || r16(dg, 2) > dg.length) return [];
    const p = dg.slice();
    w16(p, 6, r16(p, 6) & ~DF);
    ipHeaderChecksum(p);
    const size = rng.chance(0.5) ? 8 * rng.range(1, 4) : 8 * rng.range(1, Math.max(1, Math.floor(payload / 16)));
    let parts = fragments(p, size);
    const order = rng.int(5);
    if (order === 1) parts.reverse();
    else if (order === 2) rng.shuffle(parts);
    else if (order === 3 && parts.length > 1) parts.push(parts.shift() as Uint8Array);
    if (rng.chance(0.2)) parts = parts.filter(() => rng.chance(0.8));
    if (rng.chance(0.2) && parts.length > 0) parts.push(parts[rng.int(parts.length)]);
    const frames = parts.map((f) => this.frame(f));
    if (frames.length === 0) return [];
    let due = this.count;
    for (let i = 1; i < frames.length; i++) {
      due += rng.chance(0.7) ? rng.int(3) : rng.skewed(400);
      if (this.delayed.length < 2048) this.delayed.push({ due, frame: frames[i] });
    }
    return frames;
  }

  /** One to three random changes; the IP header checksum (and the L4 one) is usually fixed after, so the change goes deeper. */
  private mutate(dg: Uint8Array): Uint8Array {
    const rng = this.rng;
    let p = dg.slice();
    const n = rng.range(1, 3);
    for (let i = 0; i < n && p.length > 0; i++) {
      switch (rng.int(9)) {
        case 0: p[rng.int(p.length)] ^= 1 << rng.int(8); break;
        case 1: p[rng.int(p.length)] = rng.int(256); break;
        case 2: p = p.slice(0, rng.int(p.length)); break;
        case 3: { const q = new Uint8Array(p.length + rng.range(1, 64)); q.set(p); q.set(rng.bytes(q.length - p.length), p.length); p = q; break; }
        case 4: if (p.length >= 4) w16(p, 2, rng.chance(0.5) ? rng.int(65536) : p.length + rng.range(-8, 8)); break;
        case 5: if (p.length >= 1) p[0] = (p[0] & 0xf0) | rng.int(16); break;
        case 6: if (p.length >= 10) p[9] = rng.pick([TCP, UDP, ICMP, GRE, ESP, AH, rng.int(256)]); break;
        case 7: if (p.length >= 8) w16(p, 6, rng.int(65536)); break;
        default: { const hl = p.length >= 20 ? ipHdrLen(p) : 20; if (p.length > hl + 4) p[hl + rng.int(Math.min(40, p.length - hl))] = rng.int(256); }
      }
    }
    if (p.length >= 20 && (p[0] & 0x0f) >= 5 && ipHdrLen(p) <= p.length && rng.chance(0.8)) {
      if (rng.chance(0.5) && r16(p, 2) <= p.length && r16(p, 2) >= ipHdrLen(p)) l4Checksum(p);
      ipHeaderChecksum(p);
    }
    return p;
  }

  // ---- what to send ------------------------------------------------------------

  private datagram(): Uint8Array {
    switch (this.rng.weighted([18, 18, 11, 8, 8, 8, 8, 9, 3, 2])) {
      case 0: return this.udpPacket();
      case 1: return this.tcpPacket();
      case 2: return this.pptpSegment();
      case 3: return this.grePacket();
      case 4: return this.isakmpPacket();
      case 5: return this.espPacket();
      case 6: return this.icmpQueryPacket();
      case 7: return this.icmpErrorPacket();
      case 8: return this.hairpin();
      default: return this.stranger();
    }
  }

  private host(): number { return this.hosts.length > 0 ? this.rng.pick(this.hosts) : this.rng.pick(LAN_HOSTS); }
  private remote(): number { return this.rng.pick(REMOTES); }
  private nextId(): number { this.ipId = (this.ipId + 1) & 0xffff; return this.ipId; }

  private ip(src: number, dst: number, proto: number, payload: Uint8Array, checksum = true): Uint8Array {
    const rng = this.rng;
    const options = rng.chance(0.03) ? Uint8Array.of(1, 1, 1, 0) : undefined;
    const p = ipv4({ src, dst, proto, id: this.nextId(), ttl: rng.chance(0.05) ? rng.pick([1, 255, 0]) : 63, tos: rng.chance(0.05) ? rng.int(256) : 0,
      frag: rng.chance(0.3) ? DF : 0, options }, payload);
    if (checksum && !(proto === UDP && rng.chance(0.1))) l4Checksum(p);
    return p;
  }

  private port(): number {
    const rng = this.rng;
    return rng.weighted([70, 10, 5, 5, 5, 5]) === 0 ? rng.range(1024, 65535) : rng.pick([rng.range(1, 1023), 500, 4500, 1723, 0, 65535]);
  }

  private flow(proto: number): Flow {
    const rng = this.rng;
    const pool = this.flows.filter((f) => f.proto === proto);
    if (pool.length > 0 && rng.chance(0.75)) return rng.pick(pool);
    return remember(rng, this.flows, {
      proto, lan: this.host(), lport: this.port(), rem: this.remote(), rport: rng.pick([53, 80, 443, 7000, 123, 4500, rng.range(1, 65535)]),
      seqOut: rng.u32(), seqIn: rng.u32(),
    });
  }

  private payload(max = 300): Uint8Array {
    return this.rng.bytes(this.rng.skewed(max));
  }

  private udpPacket(): Uint8Array {
    const rng = this.rng;
    const which = rng.weighted([45, 35, 8, 8, 4]);
    if (which === 2 && this.profile.forwards.some((f) => f.proto === 'udp')) {
      const f = rng.pick(this.profile.forwards.filter((x) => x.proto === 'udp'));
      const rem = this.remote();
      if (rng.chance(0.5)) return this.ip(rem, PUBLIC, UDP, udp(rng.range(1024, 65535), f.publicPort ?? 0, this.payload()));
      const s = this.view.session(rng);
      if (s && s.proto === UDP) return this.ip(s.lan, s.rem, UDP, udp(s.lanPort, s.remPort, this.payload()));
    }
    if (which === 3) return this.ip(this.remote(), PUBLIC, UDP, udp(rng.range(1, 65535), rng.range(1, 65535), this.payload()));
    if (which === 4 && this.profile.offloads) return this.superPacket(UDP);
    const f = this.flow(UDP);
    if (which === 1) {
      const pub = this.view.pubPortOf(UDP, f.lan, f.lport, f.rem, f.rport);
      const dport = pub >= 0 ? pub : rng.range(1, 65535);
      const src = rng.chance(0.9) ? f.rem : this.remote();
      return this.ip(src, PUBLIC, UDP, udp(rng.chance(0.95) ? f.rport : rng.range(1, 65535), dport, this.payload()));
    }
    return this.ip(f.lan, f.rem, UDP, udp(f.lport, f.rport, this.payload()));
  }

  private tcpFlags(): number {
    const rng = this.rng;
    return rng.pick([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, ACK, ACK | PSH, rng.int(256)]);
  }

  private tcpPacket(): Uint8Array {
    const rng = this.rng;
    const which = rng.weighted([45, 35, 10, 5]);
    if (which === 2 && this.profile.forwards.some((f) => f.proto === 'tcp')) {
      const f = rng.pick(this.profile.forwards.filter((x) => x.proto === 'tcp'));
      const flags = this.tcpFlags();
      const options = (flags & SYN) !== 0 ? mssOption(rng.pick([1460, 8960, 65495, 500])) : undefined;
      return this.ip(this.remote(), PUBLIC, TCP, tcp({ sport: rng.range(1024, 65535), dport: f.publicPort ?? 0, seq: rng.u32(), flags, options }));
    }
    if (which === 3 && this.profile.offloads) return this.superPacket(TCP);
    const f = this.flow(TCP);
    const flags = this.tcpFlags();
    const options = (flags & SYN) !== 0 && rng.chance(0.8) ? this.tcpOptions() : rng.chance(0.05) ? rng.bytes(rng.range(1, 40)) : undefined;
    const data = (flags & (SYN | RST)) === 0 && rng.chance(0.5) ? this.payload(600) : undefined;
    if (which === 1) {
      const pub = this.view.pubPortOf(TCP, f.lan, f.lport, f.rem, f.rport);
      const seg = tcp({ sport: f.rport, dport: pub >= 0 ? pub : rng.range(1, 65535), seq: f.seqIn, ack: f.seqOut, flags, options, payload: data });
      f.seqIn = (f.seqIn + (data?.length ?? 0) + ((flags & (SYN | FIN)) !== 0 ? 1 : 0)) >>> 0;
      return this.ip(f.rem, PUBLIC, TCP, seg);
    }
    const seg = tcp({ sport: f.lport, dport: f.rport, seq: f.seqOut, ack: f.seqIn, flags, options, payload: data });
    f.seqOut = (f.seqOut + (data?.length ?? 0) + ((flags & (SYN | FIN)) !== 0 ? 1 : 0)) >>> 0;
    return this.ip(f.lan, f.rem, TCP, seg);
  }

  /** Options of a SYN: MSS (often above any clamp, sometimes at an odd offset), window scale, SACK-permitted, timestamps, junk. */
  private tcpOptions(): Uint8Array {
    const rng = this.rng;
    const parts: number[] = [];
    if (rng.chance(0.3)) parts.push(1);
    if (rng.chance(0.9)) parts.push(2, 4, ...(((m) => [m >> 8, m & 0xff])(rng.pick([1460, 8960, 65495, 1200, 536, 100, rng.int(65536)]))));
    if (rng.chance(0.5)) parts.push(3, 3, rng.int(15));
    if (rng.chance(0.5)) parts.push(4, 2);
    if (rng.chance(0.3)) parts.push(8, 10, ...rng.bytes(8));
    if (rng.chance(0.1)) parts.push(rng.int(256), rng.int(10), ...rng.bytes(rng.int(6)));
    if (rng.chance(0.1)) parts.push(0);
    return Uint8Array.from(parts.slice(0, 40));
  }

  /** A GSO super-packet (TSO / USO): up to 64 KiB with a partial checksum, from the LAN or to the public address. */
  private superPacket(proto: number): Uint8Array {
    const rng = this.rng;
    const f = this.flow(proto);
    const size = rng.range(2000, 65535 - 60 - 20);
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i += 97) data[i] = i & 0xff;
    const inbound = rng.chance(0.4);
    const pub = inbound ? this.view.pubPortOf(proto, f.lan, f.lport, f.rem, f.rport) : 0;
    const l4 = proto === TCP
      ? tcp({ sport: inbound ? f.rport : f.lport, dport: inbound ? Math.max(pub, 1) : f.rport, seq: f.seqOut, ack: f.seqIn, flags: ACK | PSH, payload: data })
      : udp(inbound ? f.rport : f.lport, inbound ? Math.max(pub, 1) : f.rport, data);
    const p = inbound ? this.ip(f.rem, PUBLIC, proto, l4, false) : this.ip(f.lan, f.rem, proto, l4, false);
    w16(p, 6, 0);
    ipHeaderChecksum(p);
    this.superNext = true;
    return p;
  }

  private hairpin(): Uint8Array {
    const rng = this.rng;
    const s = this.view.session(rng);
    const src = this.host();
    if (s === null || s.proto === ICMP) {
      const proto = rng.pick([ICMP, ESP, GRE, UDP, TCP]);
      if (proto === ICMP) return this.ip(src, PUBLIC, ICMP, icmpQuery(8, 0, rng.int(65536), 1, this.payload(64)));
      if (proto === ESP) return this.ip(src, PUBLIC, ESP, esp(rng.u32(), 1, this.payload(64)), false);
      if (proto === GRE) return this.ip(src, PUBLIC, GRE, gre({ b0: 0x20, b1: 1, proto: 0x880b, key: rng.int(65536), seq: 0, ack: 0, payload: new Uint8Array(0) }), false);
      return this.ip(src, PUBLIC, UDP, udp(500, 500, isakmp({ ic: rng.bytes(8), rc: new Uint8Array(8), next: 1, version: 0x10, exchange: 2, flags: 0, messageId: 0, body: this.payload(64) })));
    }
    const l4 = s.proto === TCP
      ? tcp({ sport: rng.range(1024, 65535), dport: s.pubPort, seq: rng.u32(), flags: this.tcpFlags() })
      : udp(rng.range(1024, 65535), s.pubPort, this.payload(100));
    return this.ip(src, PUBLIC, s.proto, l4);
  }

  private stranger(): Uint8Array {
    const rng = this.rng;
    const src = rng.chance(0.5) ? rng.pick(STRANGERS) : this.remote();
    const dst = rng.chance(0.5) ? rng.pick(STRANGERS) : this.remote();
    return this.ip(src, dst, rng.pick([UDP, TCP, ICMP, GRE, ESP, 99]), this.payload(100));
  }

  // ---- ICMP ---------------------------------------------------------------------

  private icmpQueryPacket(): Uint8Array {
    const rng = this.rng;
    const which = rng.weighted([40, 35, 10, 10, 5]);
    if (which === 2) return this.ip(this.remote(), PUBLIC, ICMP, icmpQuery(rng.pick([8, 13]), 0, rng.int(65536), rng.int(65536), this.payload(56)));
    if (which === 3) return this.ip(rng.chance(0.5) ? this.host() : this.remote(), rng.chance(0.5) ? PUBLIC : this.remote(), ICMP,
      icmpQuery(rng.pick([5, 9, 10, 15, 17, 42, rng.int(256)]), rng.int(256), rng.int(65536), 0, this.payload(40)));
    if (which === 4) return this.ip(this.host(), this.remote(), ICMP, rng.bytes(rng.range(1, 12)), false);
    let q = this.pings.length > 0 && rng.chance(0.7) ? rng.pick(this.pings) : null;
    if (q === null) q = remember(rng, this.pings, { lan: this.host(), id: rng.int(65536), rem: this.remote(), seq: 0 });
    q.seq = (q.seq + 1) & 0xffff;
    const ts = rng.chance(0.15);
    if (which === 0) return this.ip(q.lan, q.rem, ICMP, icmpQuery(ts ? 13 : 8, 0, q.id, q.seq, this.payload(ts ? 12 : 64)));
    const pub = this.view.pubPortOf(ICMP, q.lan, q.id, q.rem, 0);
    return this.ip(rng.chance(0.9) ? q.rem : this.remote(), PUBLIC, ICMP, icmpQuery(ts ? 14 : 0, 0, pub >= 0 ? pub : rng.int(65536), q.seq, this.payload(ts ? 12 : 64)));
  }

  /**
   * An ICMP error about something the router sent: from a remote or a router
   * on the path (or the router's own LAN address) about a WAN-side output, or
   * from a LAN host about what it was delivered; quotes cut at any length.
   */
  private icmpErrorPacket(): Uint8Array {
    const rng = this.rng;
    const type = rng.pick([3, 3, 3, 11, 12, 4]);
    const code = type === 3 ? rng.pick([0, 1, 3, 4, 4, 13, rng.int(16)]) : rng.int(2);
    const word = type === 3 && code === 4 ? rng.pick([576, 1280, 1400, 68]) : type === 12 ? rng.int(256) << 24 : 0;
    let quoted: Uint8Array;
    let toLan: boolean;
    if (this.recent.length > 0 && rng.chance(0.8)) {
      const r = rng.pick(this.recent);
      quoted = r.ip;
      toLan = r.toLan;
    } else {
      quoted = this.quotable();
      toLan = false;
    }
    const hl = quoted.length >= 20 ? ipHdrLen(quoted) : 20;
    const quoteLen = rng.pick([hl + 8, hl + 8, quoted.length, hl + rng.int(8), hl + 8 + rng.int(64), rng.int(quoted.length + 1)]);
    const body = icmpError(type, code, quoted, quoteLen, word);
    if (rng.chance(0.05)) body[2] ^= 0x40;
    if (toLan) {
      // The LAN host that got the packet reports it to the sender (which, after translation, is the remote).
      return this.ip(r32u(quoted, 16), r32u(quoted, 12), ICMP, body, false);
    }
    const src = rng.weighted([60, 25, 15]);
    const from = src === 0 ? r32u(quoted, 16) : src === 1 ? rng.pick(ROUTERS) : ROUTER_LAN;
    return this.ip(from, PUBLIC, ICMP, body, false);
  }

  /** A packet as the router would have sent it to a remote, to be quoted by an error: UDP, TCP, ICMP echo, ESP, GRE, ISAKMP. */
  private quotable(): Uint8Array {
    const rng = this.rng;
    const s = this.view.session(rng);
    const rem = s?.rem ?? this.remote();
    switch (rng.int(6)) {
      case 0: return this.ip(PUBLIC, rem, UDP, udp(s?.pubPort ?? rng.int(65536), s?.remPort ?? rng.int(65536), this.payload(40)));
      case 1: return this.ip(PUBLIC, rem, TCP, tcp({ sport: s?.pubPort ?? rng.int(65536), dport: s?.remPort ?? 80, seq: rng.u32(), flags: ACK }));
      case 2: return this.ip(PUBLIC, rem, ICMP, icmpQuery(8, 0, s?.pubPort ?? rng.int(65536), 1, this.payload(32)));
      case 3: { const e = this.view.esp(rng); return this.ip(PUBLIC, e?.rem ?? rem, ESP, esp(e?.outSpi ?? rng.u32(), 1, this.payload(40)), false); }
      case 4: { const c = this.view.call(rng); return this.ip(PUBLIC, c?.rem ?? rem, GRE, this.greBody(c?.remId ?? rng.int(65536), true), false); }
      default: {
        const k = this.view.isakmp(rng);
        return this.ip(PUBLIC, k?.rem ?? rem, UDP, udp(500, 500, isakmp({ ic: k?.ic ?? rng.bytes(8), rc: k?.rc ?? new Uint8Array(8), next: 1, version: 0x10, exchange: 2, flags: 0, messageId: 0, body: this.payload(40) })));
      }
    }
  }

  // ---- IPsec ------------------------------------------------------------------

  private isakmpPacket(): Uint8Array {
    const rng = this.rng;
    const which = rng.weighted([35, 35, 10, 8, 7, 5]);
    const serverForward = this.profile.forwards.some((f) => f.proto === 'udp' && f.publicPort === 500);
    if (which === 2) {
      // The remote starts an exchange: to recent ISAKMP hosts (guessing) or the forwarded server.
      const e = remember(rng, this.exchanges, { lan: serverForward ? IPSEC_SERVER : this.host(), rem: this.remote(), ic: rng.bytes(8), rc: null });
      return this.ike(e.rem, PUBLIC, e.ic, new Uint8Array(8));
    }
    if (which === 3) return this.ip(this.host(), this.remote(), UDP, udp(rng.pick([500, 4500, 501]), rng.pick([500, 4500]), this.payload(80)));
    if (which === 4) {
      // Another LAN host with a cookie already in use towards the same remote (Rule I-4 collision).
      const e = this.exchanges.length > 0 ? rng.pick(this.exchanges) : null;
      if (e) return this.ike(this.host(), e.rem, rng.chance(0.8) ? e.ic : new Uint8Array(8), new Uint8Array(8));
    }
    if (which === 5) {
      const k = this.view.isakmp(rng);
      if (k) return this.ike(k.rem, PUBLIC, k.ic, rng.chance(0.7) && k.rc ? k.rc : rng.bytes(8));
    }
    let e = this.exchanges.length > 0 && rng.chance(0.7) ? rng.pick(this.exchanges) : null;
    if (e === null) e = remember(rng, this.exchanges, { lan: this.host(), rem: this.remote(), ic: rng.chance(0.03) ? new Uint8Array(8) : rng.bytes(8), rc: null });
    if (which === 0) return this.ike(e.lan, e.rem, e.ic, e.rc ?? new Uint8Array(8));
    if (e.rc === null && rng.chance(0.9)) e.rc = rng.bytes(8);
    return this.ike(e.rem, PUBLIC, e.ic, e.rc ?? new Uint8Array(8));
  }

  private ike(src: number, dst: number, ic: Uint8Array, rc: Uint8Array): Uint8Array {
    const rng = this.rng;
    const msg = isakmp({ ic, rc, next: rng.pick([1, 33, 46, 0]), version: rng.pick([0x10, 0x20, rng.int(256)]), exchange: rng.pick([2, 4, 5, 34, 35, 37]),
      flags: rng.int(256), messageId: rng.u32(), body: this.payload(rng.chance(0.1) ? 1400 : 200) });
    const cut = rng.chance(0.05) ? msg.subarray(0, rng.int(28)) : msg;
    return this.ip(src, dst, UDP, udp(500, 500, cut));
  }

  private espPacket(): Uint8Array {
    const rng = this.rng;
    const which = rng.weighted([35, 30, 10, 8, 7, 5, 5]);
    const body = (): Uint8Array => this.payload(rng.chance(0.1) ? 1400 : 160);
    if (which === 2) {
      const e = this.view.esp(rng);
      if (e) return this.ip(e.rem, PUBLIC, ESP, esp(rng.chance(0.7) ? e.inSpi : rng.u32(), rng.u32(), body()), false);
    }
    if (which === 3) return this.ip(this.host(), this.remote(), ESP, esp(rng.pick([0, 1, 255, 256]), 1, body()), false);
    if (which === 4) return this.ip(this.remote(), PUBLIC, ESP, esp(rng.chance(0.5) ? rng.u32() : rng.int(256), 1, body()), false);
    if (which === 5) return this.ip(rng.chance(0.5) ? this.host() : this.remote(), rng.chance(0.5) ? PUBLIC : this.remote(), AH, rng.bytes(rng.range(4, 40)), false);
    if (which === 6) return this.ip(this.host(), this.remote(), ESP, rng.bytes(rng.int(8)), false);
    let sa = this.sas.length > 0 && rng.chance(0.75) ? rng.pick(this.sas) : null;
    if (sa === null) {
      const lan = this.profile.forwards.some((f) => f.proto === 'esp') && rng.chance(0.2) ? IPSEC_SERVER : this.host();
      sa = remember(rng, this.sas, { lan, rem: this.remote(), spiOut: rng.u32() | 0x100, spiIn: rng.u32() | 0x100, seq: 0 });
    }
    sa.seq++;
    if (which === 0) return this.ip(sa.lan, sa.rem, ESP, esp(sa.spiOut, sa.seq, body()), false);
    return this.ip(sa.rem, PUBLIC, ESP, esp(sa.spiIn, sa.seq, body()), false);
  }

  // ---- PPTP ---------------------------------------------------------------------

  private greBody(callId: number, pptp: boolean): Uint8Array {
    const rng = this.rng;
    const ackOnly = pptp && rng.chance(0.2);
    const data = ackOnly ? new Uint8Array(0) : this.payload(rng.chance(0.1) ? 1400 : 120);
    let b0 = pptp ? 0x20 | (ackOnly ? 0 : 0x10) : rng.pick([0x00, 0x80, 0x20, 0x30, 0xb0]);
    let b1 = pptp ? 0x01 | (ackOnly || rng.chance(0.4) ? 0x80 : 0) : rng.pick([0x00, 0x01]);
    let proto = pptp ? 0x880b : rng.pick([0x0800, 0x6558, 0x880b, rng.int(65536)]);
    if (rng.chance(0.12)) b0 ^= 1 << rng.int(8);
    if (rng.chance(0.08)) b1 = (b1 & 0x80) | rng.int(128);
    if (rng.chance(0.05)) proto = rng.int(65536);
    const g = gre({ b0, b1, proto, key: ((data.length & 0xffff) << 16) | (callId & 0xffff), seq: rng.u32(), ack: rng.u32(), payload: data });
    return rng.chance(0.04) ? g.subarray(0, rng.int(g.length)) : g;
  }

  private grePacket(): Uint8Array {
    const rng = this.rng;
    const which = rng.weighted([35, 35, 10, 10, 10]);
    if (which <= 1) {
      const c = this.view.call(rng);
      if (c) {
        if (which === 0) return this.ip(c.lan, c.rem, GRE, this.greBody(c.remId >= 0 && rng.chance(0.9) ? c.remId : rng.int(65536), true), false);
        return this.ip(c.rem, PUBLIC, GRE, this.greBody(rng.chance(0.9) ? c.pubId : rng.int(65536), true), false);
      }
    }
    if (which === 2) return this.ip(this.remote(), PUBLIC, GRE, this.greBody(rng.int(65536), true), false);
    if (which === 3) return this.ip(this.host(), this.remote(), GRE, this.greBody(0, false), false);
    return this.ip(this.remote(), PUBLIC, GRE, this.greBody(0, false), false);
  }

  private conn(): PptpConn {
    const rng = this.rng;
    if (this.conns.length > 0 && rng.chance(0.9)) return rng.pick(this.conns);
    const forwarded = this.profile.forwards.some((f) => f.proto === 'tcp' && f.publicPort === 1723) && rng.chance(0.35);
    const c: PptpConn = forwarded
      ? { lan: PPTP_SERVER, lport: 1723, rem: this.remote(), rport: rng.range(1024, 65535), lanIsPns: false, opened: false,
          out: new Stream(rng.u32()), in: new Stream(rng.u32()), lanIds: [], remIds: [] }
      : { lan: this.host(), lport: rng.range(1024, 65535), rem: this.remote(), rport: 1723, lanIsPns: true, opened: false,
          out: new Stream(rng.u32()), in: new Stream(rng.u32()), lanIds: [], remIds: [] };
    return remember(rng, this.conns, c, 8);
  }

  /** The next message a side of the connection sends (RFC 2637 §2), or a malformed one. */
  private message(c: PptpConn, fromLan: boolean): Uint8Array {
    const rng = this.rng;
    const filler = rng.int(256);
    const pns = fromLan === c.lanIsPns;
    const mine = fromLan ? c.lanIds : c.remIds;
    const theirs = fromLan ? c.remIds : c.lanIds;
    const newId = (): number => {
      // The high byte repeats between hosts often, so public IDs collide and get scanned.
      const id = rng.chance(0.5) ? (rng.pick([0x01, 0x40, 0xff]) << 8) | rng.int(256) : rng.int(65536);
      if (mine.length >= 8) mine.shift();
      mine.push(id);
      return id;
    };
    const any = (ids: number[]): number => (ids.length > 0 && rng.chance(0.9) ? rng.pick(ids) : rng.int(65536));
    /** The peer Call ID the remote puts in a message about the LAN side's call: the public one the NAT gave it. */
    const peerOf = (): number => {
      const id = any(theirs);
      if (fromLan) return id;
      const call = this.view.callOf(c.lan, c.rem, id);
      return call && rng.chance(0.9) ? call.pubId : id;
    };
    const k = rng.weighted([8, 14, 12, 8, 8, 6, 6, 6, 4, 3, 3]);
    let m: Uint8Array;
    switch (k) {
      case 0: m = pptpMessage(pns ? 1 : 2, 0, 0, 1, filler); break;
      case 1: m = pns ? pptpMessage(7, newId(), 0, 0, filler) : pptpMessage(8, newId(), peerOf(), rng.chance(0.85) ? 1 : rng.range(2, 7), filler); break;
      case 2: m = pptpMessage(15, 0, peerOf(), 0, filler); break;
      case 3: m = pns ? pptpMessage(12, any(mine), 0, 0, filler) : pptpMessage(13, any(mine), 0, rng.int(4), filler); break;
      case 4: m = pns ? pptpMessage(10, newId(), peerOf(), rng.chance(0.85) ? 1 : 2, filler) : pptpMessage(9, newId(), 0, 0, filler); break;
      case 5: m = pns ? pptpMessage(5, 0, 0, 0, filler) : pptpMessage(11, 0, peerOf(), 0, filler); break;
      case 6: m = pptpMessage(14, 0, peerOf(), 0, filler); break;
      case 7: m = pptpMessage(rng.pick([3, 4, 6]), 0, 0, 1, filler); break;
      case 8: { m = pptpMessage(rng.range(1, 15), rng.int(65536), rng.int(65536), 1, filler); m[rng.range(4, 7)] ^= 0xff; break; }
      case 9: { m = pptpMessage(rng.range(1, 15), rng.int(65536), rng.int(65536), 1, filler); w16(m, 0, rng.pick([0, 11, 12, 13, 221, rng.int(65536)])); break; }
      default: { m = pptpMessage(7, rng.int(65536), 0, 0, filler); w16(m, 8, rng.pick([0, 16, 255, rng.int(65536)])); }
    }
    return m;
  }

  /**
   * A segment of a control connection: the handshake, then new bytes cut at
   * any point, retransmissions (some overlapping new bytes), segments from
   * ahead of the stream (reordering), pure ACKs.
   */
  private pptpSegment(): Uint8Array {
    const rng = this.rng;
    const c = this.conn();
    const fromLan = rng.chance(0.5);
    const s = fromLan ? c.out : c.in;
    const other = fromLan ? c.in : c.out;
    const initiatorIsLan = c.lanIsPns;
    if (!c.opened || rng.chance(0.01)) {
      c.opened = true;
      const synFromLan = initiatorIsLan ? rng.chance(0.7) : rng.chance(0.3);
      const st = synFromLan ? c.out : c.in;
      const flags = synFromLan === initiatorIsLan ? SYN : SYN | ACK;
      return this.pptpTcp(c, synFromLan, tcp({ sport: 0, dport: 0, seq: (st.first - 1) >>> 0, flags, options: mssOption(1460) }));
    }
    while (s.queue.length < 400 && rng.chance(0.8)) for (const b of this.message(c, fromLan)) s.queue.push(b);
    const kind = rng.weighted([60, 15, 8, 7, 10]);
    let from = s.sent;
    let bytes: number[];
    if (kind === 1 && s.sent > s.histBase) {
      // Retransmission, maybe running on into new bytes (overlap).
      const back = Math.min(s.sent - s.histBase, rng.range(1, 300));
      from = s.sent - back;
      const old = s.history.slice(from - s.histBase, from - s.histBase + rng.range(1, back));
      bytes = rng.chance(0.4) ? [...s.history.slice(from - s.histBase), ...s.take(rng.range(1, 40))] : old;
    } else if (kind === 2 && s.queue.length > 4) {
      // From ahead of the stream: a gap the router must not walk over.
      const skip = rng.range(1, Math.min(200, s.queue.length - 1));
      from = s.sent + skip;
      bytes = s.queue.slice(skip, skip + rng.range(1, 60));
    } else if (kind === 3) {
      bytes = [];
    } else {
      const n = rng.chance(0.4) ? rng.range(1, 13) : rng.range(1, 500);
      bytes = s.take(n);
    }
    const seg = tcp({ sport: 0, dport: 0, seq: s.seqAt(from), ack: other.seqAt(other.sent), flags: ACK | (bytes.length > 0 ? PSH : 0),
      options: rng.chance(0.2) ? Uint8Array.of(1, 1, 8, 10, ...rng.bytes(8)) : undefined, payload: Uint8Array.from(bytes) });
    return this.pptpTcp(c, fromLan, seg);
  }

  /** Addresses and ports of a control connection's segment in one direction (inbound to the public port the NAT chose). */
  private pptpTcp(c: PptpConn, fromLan: boolean, seg: Uint8Array): Uint8Array {
    if (fromLan) {
      w16(seg, 0, c.lport);
      w16(seg, 2, c.rport);
      return this.ip(c.lan, c.rem, TCP, seg);
    }
    const pub = c.lanIsPns ? this.view.pubPortOf(TCP, c.lan, c.lport, c.rem, c.rport) : 1723;
    w16(seg, 0, c.rport);
    w16(seg, 2, pub >= 0 ? pub : this.rng.range(1024, 65535));
    return this.ip(c.rem, PUBLIC, TCP, seg);
  }
}

const r32u = (b: Uint8Array, o: number): number => (b.length >= o + 4 ? ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0 : 0);
