/**
 * IPsec through NAPT: the trackers the engine calls for ISAKMP (UDP 500 <->
 * 500, spec §3), ESP (IP 50, spec §4) and AH (IP 51, refused, spec §4.5).
 * They read the packet through the wire views, ask the association tracker
 * (ipsec.ts) where it goes, and rewrite the addresses: ISAKMP keeps port 500
 * on both sides (Rule I-1) and fixes the UDP checksum; ESP has none.
 */
import { IPV4_DST, IPV4_SRC, PROTO_AH, PROTO_ESP, PROTO_UDP } from '../../wire/ipv4';
import { ESP_OK, EspHeader } from '../../wire/esp';
import { ISAKMP_HDR, ISAKMP_OK, ISAKMP_PORT, IsakmpHeader } from '../../wire/isakmp';
import { Drop, Verdict } from '../../core/verdict';
import { NO_FORWARD } from '../../nat/forwards';
import { setAddress, setUdpAddress } from '../../nat/rewrite';
import { Packet, Tracker } from '../../nat/tracker';
import type { Napt } from '../../nat/napt';
import { IpsecMasq } from './ipsec';

const TRANSLATED = Verdict.TRANSLATED;

/** ISAKMP: demultiplexed by cookie instead of by port. */
export class IsakmpNat implements Tracker {
  private readonly ike = new IsakmpHeader();

  constructor(private readonly m: IpsecMasq) {}

  outbound(p: Packet): Verdict {
    const ike = this.ike;
    if (ike.parse(p.buf, p.udp.payloadOff, p.udp.payloadLen) !== ISAKMP_OK) return Drop.L4_TRUNCATED;
    const ip = p.ip;
    const lan = p.src;
    const r = this.m.outIsakmp(lan, p.dst, ike.icookie0, ike.icookie1, ike.rcookie0, ike.rcookie1, p.now);
    if (r === TRANSLATED) setUdpAddress(p.buf, ip.off, p.udp.off, IPV4_SRC, lan, p.publicAddr, p.partial);
    return r;
  }

  inbound(p: Packet): Verdict {
    const ike = this.ike;
    if (ike.parse(p.buf, p.udp.payloadOff, p.udp.payloadLen) !== ISAKMP_OK) return Drop.L4_TRUNCATED;
    const server = p.forwards === null ? NO_FORWARD : p.forwards.isakmpServer();
    return this.m.inIsakmp(p.src, ike.icookie0, ike.icookie1, ike.rcookie0, ike.rcookie1, p.now, server, p.to);
  }

  /** The destination becomes the LAN host; the UDP checksum follows (the port stays 500). */
  deliver(buf: Uint8Array, ipOff: number, l4Off: number, pub: number, lan: number, partial: boolean): void {
    setUdpAddress(buf, ipOff, l4Off, IPV4_DST, pub, lan, partial);
  }

  icmpErrorIn(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  icmpErrorOut(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  sessionRemoved(): void { /* no sessions */ }
}

/** ESP: paired by SPI through per-remote serialization. */
export class EspNat implements Tracker {
  private readonly esp = new EspHeader();

  constructor(private readonly m: IpsecMasq) {}

  outbound(p: Packet): Verdict {
    const ip = p.ip;
    if (this.esp.parse(p.buf, ip.payloadOff, ip.payloadLen) !== ESP_OK) return Drop.L4_TRUNCATED;
    const lan = p.src;
    const r = this.m.outEsp(lan, p.dst, this.esp.spi, p.now);
    if (r === TRANSLATED) setAddress(p.buf, ip.off, IPV4_SRC, lan, p.publicAddr);
    return r;
  }

  inbound(p: Packet): Verdict {
    const ip = p.ip;
    if (this.esp.parse(p.buf, ip.payloadOff, ip.payloadLen) !== ESP_OK) return Drop.L4_TRUNCATED;
    const forward = p.forwards === null ? NO_FORWARD : p.forwards.protoForward(PROTO_ESP);
    return this.m.inEsp(p.src, this.esp.spi, p.now, forward, p.to);
  }

  deliver(buf: Uint8Array, ipOff: number, _l4Off: number, pub: number, lan: number): void {
    setAddress(buf, ipOff, IPV4_DST, pub, lan);
  }

  /** An error quoting our outbound ESP (inner P -> R, SPI = out-SPI) goes back to its sender (spec §9.14). */
  icmpErrorIn(p: Packet): Verdict {
    const inner = p.inner;
    this.esp.parse(p.buf, inner.payloadOff, 8);
    const e = this.m.espByOutSpi(inner.dst, this.esp.spi, p.now);
    if (e < 0) return Drop.ICMP_ERROR_NO_MAPPING;
    p.to.one(this.m.eLan[e]);
    return TRANSLATED;
  }

  icmpErrorOut(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  sessionRemoved(): void { /* no sessions */ }
}

/** AH signs the addresses, so it can never be translated (spec §4.5); logged once per flow. */
export class AhNat implements Tracker {
  constructor(private readonly m: IpsecMasq) {}

  outbound(p: Packet): Verdict { return this.refuse(p); }
  inbound(p: Packet): Verdict { return this.refuse(p); }
  deliver(): void { /* never delivered */ }
  icmpErrorIn(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  icmpErrorOut(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  sessionRemoved(): void { /* no sessions */ }

  private refuse(p: Packet): Verdict {
    this.m.ahRefused(p.src, p.dst);
    return Drop.AH_REFUSED;
  }
}

/** Plugs the IPsec trackers into the engine. */
export function attachIpsec(napt: Napt, m: IpsecMasq): void {
  napt.registerPortPair(PROTO_UDP, ISAKMP_PORT, new IsakmpNat(m), ISAKMP_HDR);
  napt.registerProtocol(PROTO_ESP, new EspNat(m));
  napt.registerProtocol(PROTO_AH, new AhNat(m));
}
