import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  checksum, fold, partialUpdate32, pseudoHeaderSum, read16, read32, sumBytes, update16, update32, write16, write32,
} from '../../src/wire/checksum';
import {
  CAPTURED, NatHarness, PUBLIC, UDP, TCP, addr, checksumProblems, checksumsValid, completePartial, hex, inetChecksum, onesSum,
  parse, prng, pseudo, r16, tcpPacket, udp, udpPacket, w16,
} from './packet-builder';

describe('RFC 1071 sums', () => {
  it('RFC 1071 §3 numerical example: 0001 f203 f4f5 f6f7 sums to ddf2', () => {
    const b = hex('00 01 f2 03 f4 f5 f6 f7');
    assert.equal(sumBytes(b, 0, b.length, 0), 0xddf2);
    assert.equal(checksum(b, 0, b.length, 0), 0x220d);
    // Byte-order independence (§2(B)): the swapped sum is the swapped result.
    const swapped = hex('01 00 03 f2 f5 f4 f7 f6');
    assert.equal(sumBytes(swapped, 0, swapped.length, 0), 0xf2dd);
  });

  it('odd length pads the last byte with zero; initial value is added', () => {
    assert.equal(sumBytes(hex('ab'), 0, 1, 0), 0xab00);
    assert.equal(sumBytes(hex('00 01 ab'), 0, 3, 0), 0xab01);
    assert.equal(sumBytes(hex('ff ff'), 0, 2, 1), 0x0001);
    assert.equal(sumBytes(new Uint8Array(0), 0, 0, 0x1234), 0x1234);
  });

  it('well-known IPv4 header 4500 0073 ... c0a8 00c7 has checksum b861', () => {
    const h = hex('4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7');
    assert.equal(checksum(h, 0, 20, 0), 0xb861);
    write16(h, 10, 0xb861);
    assert.equal(sumBytes(h, 0, 20, 0), 0xffff);
  });

  it('fold folds carries twice', () => {
    assert.equal(fold(0), 0);
    assert.equal(fold(0xffff), 0xffff);
    assert.equal(fold(0x1fffe), 0xffff);
    assert.equal(fold(0xffffffff), 0xffff);
    assert.equal(fold(0x12345), 0x2346);
  });

  it('sumBytes agrees with the reference sum on random and worst-case buffers', () => {
    const rnd = prng(7);
    for (let n = 0; n < 200; n++) {
      const len = Math.floor(rnd() * 3000);
      const off = Math.floor(rnd() * 5);
      const b = Uint8Array.from({ length: off + len }, () => Math.floor(rnd() * 256));
      const init = Math.floor(rnd() * 0x10000);
      assert.equal(sumBytes(b, off, len, init), onesSum(b.subarray(off), init), `len ${len} off ${off}`);
    }
    // 64 KiB of 0xff: the accumulator must not overflow between folds.
    const ff = new Uint8Array(65535).fill(0xff);
    assert.equal(sumBytes(ff, 0, ff.length, 0xffff), onesSum(ff, 0xffff));
  });

  it('pseudoHeaderSum matches the reference pseudo-header', () => {
    const rnd = prng(8);
    for (let n = 0; n < 200; n++) {
      const src = (rnd() * 2 ** 32) | 0;
      const dst = (rnd() * 2 ** 32) | 0;
      const len = Math.floor(rnd() * 65536);
      assert.equal(pseudoHeaderSum(src, dst, UDP, len), pseudo(src, dst, UDP, len));
    }
  });

  it('read/write helpers are big-endian and read32 returns int32', () => {
    const b = new Uint8Array(6);
    write32(b, 1, 0xc0a80001);
    assert.deepEqual([...b], [0, 0xc0, 0xa8, 0, 1, 0]);
    assert.equal(read32(b, 1), 0xc0a80001 | 0);
    write16(b, 4, 0xbeef);
    assert.equal(read16(b, 4), 0xbeef);
  });
});

describe('captured packets', () => {
  for (const c of CAPTURED) {
    it(c.name, () => {
      assert.deepEqual(checksumProblems(c.bytes), []);
      assert.ok(checksumsValid(c.bytes));
      const p = parse(c.bytes);
      assert.equal(p.src, c.src);
      assert.equal(p.dst, c.dst);
      assert.equal(p.proto, c.proto);
      assert.equal(sumBytes(c.bytes, 0, p.hdrLen, 0), 0xffff);
      // Any single-bit flip is detected.
      for (const at of [0, 11, 13, 25, c.bytes.length - 1]) {
        const bad = Uint8Array.from(c.bytes);
        bad[at] ^= 0x04;
        assert.equal(checksumsValid(bad), false, `flip at ${at}`);
      }
    });
  }
});

/** A random TCP or UDP packet with a correct checksum. */
function randomPacket(rnd: () => number): { pkt: Uint8Array; proto: number } {
  const proto = rnd() < 0.5 ? TCP : UDP;
  const r32 = () => (rnd() * 2 ** 32) | 0;
  const r16v = () => Math.floor(rnd() * 65536);
  const payload = Uint8Array.from({ length: Math.floor(rnd() * 120) }, () => Math.floor(rnd() * 256));
  const src = r32();
  const dst = r32();
  const pkt = proto === TCP
    ? tcpPacket(src, dst, { sport: r16v(), dport: r16v(), seq: r32() >>> 0, ack: r32() >>> 0, flags: 0x18, payload })
    : udpPacket(src, dst, { sport: r16v(), dport: r16v(), payload });
  return { pkt, proto };
}

describe('incremental updates (RFC 1624)', () => {
  it('update32 + update16 equal full recomputation on 1000 random translations', () => {
    const rnd = prng(1624);
    for (let n = 0; n < 1000; n++) {
      const { pkt, proto } = randomPacket(rnd);
      const csumAt = 20 + (proto === TCP ? 16 : 6);
      // Translate the source (outbound) or the destination (inbound) address and port.
      const addrAt = rnd() < 0.5 ? 12 : 16;
      const portAt = 20 + (addrAt === 12 ? 0 : 2);
      const oldAddr = read32(pkt, addrAt);
      const newAddr = (rnd() * 2 ** 32) | 0;
      const oldPort = read16(pkt, portAt);
      const newPort = Math.floor(rnd() * 65536);
      const oldIpCsum = read16(pkt, 10);
      const oldL4 = read16(pkt, csumAt);

      write32(pkt, addrAt, newAddr);
      write16(pkt, portAt, newPort);
      const incIp = update32(oldIpCsum, oldAddr, newAddr);
      const incL4 = update16(update32(oldL4, oldAddr, newAddr), oldPort, newPort);

      w16(pkt, 10, 0);
      const fullIp = inetChecksum(pkt.subarray(0, 20));
      w16(pkt, csumAt, 0);
      const fullL4 = inetChecksum(pkt.subarray(20), pseudo(read32(pkt, 12), read32(pkt, 16), proto, pkt.length - 20));
      assert.equal(incIp, fullIp, `case ${n}: IP header`);
      assert.equal(incL4, fullL4, `case ${n}: L4`);
      w16(pkt, 10, incIp);
      w16(pkt, csumAt, proto === UDP && incL4 === 0 ? 0xffff : incL4);
      assert.deepEqual(checksumProblems(pkt), [], `case ${n}`);
    }
  });

  it('update16 for the TTL/protocol word (the hop the router gives back)', () => {
    const rnd = prng(42);
    for (let n = 0; n < 1000; n++) {
      const { pkt } = randomPacket(rnd);
      const ttl = Math.floor(rnd() * 255);
      pkt[8] = ttl;
      w16(pkt, 10, 0);
      w16(pkt, 10, inetChecksum(pkt.subarray(0, 20)));
      const oldWord = read16(pkt, 8);
      pkt[8] = ttl + 1;
      w16(pkt, 10, update16(read16(pkt, 10), oldWord, oldWord + 0x100));
      assert.equal(onesSum(pkt.subarray(0, 20)), 0xffff, `ttl ${ttl}`);
    }
  });
});

describe('CHECKSUM_PARTIAL (inet_proto_csum_replace4 with pseudohdr)', () => {
  it('partialUpdate32 turns the old pseudo-header sum into the new one; completing it gives the full checksum (1000 cases)', () => {
    const rnd = prng(4);
    for (let n = 0; n < 1000; n++) {
      const { pkt, proto } = randomPacket(rnd);
      const l4Len = pkt.length - 20;
      const csumAt = 20 + (proto === TCP ? 16 : 6);
      const src = read32(pkt, 12);
      const dst = read32(pkt, 16);
      // As the kernel hands it over: the field holds the folded, uncomplemented pseudo-header sum.
      w16(pkt, csumAt, pseudo(src, dst, proto, l4Len));
      const newSrc = (rnd() * 2 ** 32) | 0;
      const newDst = rnd() < 0.5 ? dst : (rnd() * 2 ** 32) | 0;
      let stored = partialUpdate32(r16(pkt, csumAt), src, newSrc);
      stored = partialUpdate32(stored, dst, newDst);
      assert.equal(stored, pseudo(newSrc, newDst, proto, l4Len), `case ${n}: pseudo-header sum`);
      // A port change needs nothing: the kernel sums the L4 header itself.
      write16(pkt, 20, Math.floor(rnd() * 65536));
      write32(pkt, 12, newSrc);
      write32(pkt, 16, newDst);
      w16(pkt, csumAt, stored);
      const completed = inetChecksum(pkt.subarray(20));
      w16(pkt, csumAt, 0);
      assert.equal(inetChecksum(pkt.subarray(20), stored), completed, `case ${n}: stored value as initial sum`);
      assert.equal(completed, inetChecksum(pkt.subarray(20), pseudo(newSrc, newDst, proto, l4Len)), `case ${n}: full checksum`);
    }
  });

  it('completePartial of a kernel-style TCP packet yields a valid packet', () => {
    const p = tcpPacket('10.77.0.10', '192.0.2.1', { sport: 1, dport: 2, flags: 0x10, payload: hex('01 02 03') });
    w16(p, 36, pseudo('10.77.0.10', '192.0.2.1', TCP, p.length - 20));
    assert.equal(checksumsValid(p), false);
    assert.deepEqual(checksumProblems(completePartial(p, 20, 16)), []);
  });
});

describe('UDP checksum 0 (RFC 768) through the engine', () => {
  const LAN = '10.77.0.10';
  const REM = '203.0.113.9';

  it('a UDP checksum of 0 ("none") stays 0 both ways', () => {
    const h = new NatHarness();
    const o = h.one(udpPacket(LAN, REM, { sport: 5000, dport: 53, payload: hex('aa bb'), noChecksum: true }));
    assert.equal(parse(o).src, PUBLIC);
    assert.equal(parse(o).l4Csum, 0);
    assert.deepEqual(checksumProblems(o), []);
    const i = h.one(udpPacket(REM, PUBLIC, { sport: 53, dport: 5000, payload: hex('cc'), noChecksum: true }));
    assert.equal(parse(i).dst, LAN);
    assert.equal(parse(i).l4Csum, 0);
  });

  it('a translated checksum that computes to 0 is sent as 0xffff', () => {
    const h = new NatHarness();
    // Choose the last payload word so that the translated datagram (public source, port 5000 kept) sums to 0xffff.
    const payload = new Uint8Array(16);
    const probe = udp({ sport: 5000, dport: 53, payload }, PUBLIC, REM);
    w16(probe, 6, 0);
    const s = onesSum(probe, pseudo(PUBLIC, REM, UDP, probe.length));
    w16(payload, 14, 0xffff - s);
    const translated = udp({ sport: 5000, dport: 53, payload }, PUBLIC, REM);
    assert.equal(r16(translated, 6), 0xffff, 'test setup: the translated datagram must compute to 0');
    const original = udpPacket(LAN, REM, { sport: 5000, dport: 53, payload });
    assert.notEqual(r16(original, 26), 0);
    const o = h.one(original);
    assert.equal(parse(o).sport, 5000);
    assert.equal(parse(o).l4Csum, 0xffff);
    assert.deepEqual(checksumProblems(o), []);
    assert.equal(addr(parse(o).src), addr(PUBLIC));
  });
});
