/** Test helpers for IPsec: ISAKMP headers, IKE and ESP packets, a Napt with the IPsec modules attached. */
import assert from 'node:assert/strict';
import { NatHarness, checksumsValid, ipv4, parse, udpPacket, w32 } from './packet-builder';
import { IpsecMasq, IpsecOptions } from '../../src/helpers/ipsec/ipsec';
import { attachIpsec } from '../../src/helpers/ipsec/nat';

export const ESP = 50;
export const AH = 51;
export const R = '198.18.0.20';
export const L1 = '10.77.0.11';
export const L2 = '10.77.0.12';
export const L3 = '10.77.0.13';
export const MIN = 60_000;
export const ZERO = '0000000000000000';

/** A harness with IPsec attached (spec defaults, small table, injected time). */
export function ipsecHarness(over: Partial<IpsecOptions> = {}, holdSlots = 16, shared = false): NatHarness {
  const h = new NatHarness({ holdSlots });
  h.ipsec = new IpsecMasq({
    lifetimeMs: 30 * MIN, pendingMs: 2 * MIN, squelchMs: 30_000, retries: 5,
    parallel: true, guessing: true, guessMax: 5, capacity: 256, ...over,
  });
  attachIpsec(h.napt, h.ipsec);
  h.napt.sharedAddress = shared;
  return h;
}

/** An ISAKMP header (cookies as 16 hex digits) with an opaque body. */
export function isakmp(icookie: string, rcookie: string, exchange = 2, body = 40): Uint8Array {
  const b = new Uint8Array(28 + body);
  b.set(Buffer.from(icookie, 'hex'), 0);
  b.set(Buffer.from(rcookie, 'hex'), 8);
  b[16] = 1;
  b[17] = 0x10;
  b[18] = exchange;
  w32(b, 24, b.length);
  return b;
}

/** IKE on UDP 500 <-> 500. */
export const ike = (src: string, dst: string, ic: string, rc: string, exchange = 2, body = 40): Uint8Array =>
  udpPacket(src, dst, { sport: 500, dport: 500, payload: isakmp(ic, rc, exchange, body) });

export function esp(src: string, dst: string, spi: number, seq = 1, body = 64): Uint8Array {
  const p = new Uint8Array(8 + body);
  w32(p, 0, spi);
  w32(p, 4, seq);
  return ipv4({ src, dst, proto: ESP, payload: p });
}

/** Destinations of the packets a packet turns into, every checksum checked. */
export function dests(h: NatHarness, p: Uint8Array): string[] {
  return h.send(p).map((o) => {
    assert.ok(checksumsValid(o), 'checksums valid');
    return parse(o).dst;
  });
}
