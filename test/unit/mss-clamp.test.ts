/**
 * MSS clamping (src/nat/mss-clamp.ts) on crafted SYN and SYN-ACK segments,
 * alone and through the NAPT engine: the MSS option is lowered, the TCP
 * checksum stays valid (also for an option at an odd offset), partial
 * checksums are left alone and other segments are untouched.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { clampMss, mssClampValue } from '../../src/nat/mss-clamp';
import {
  ACK, NatHarness, PUBLIC, SYN, TCP, asPartial, checksumProblems, completePartial, ipv4, parse, r16, tcp,
} from './packet-builder';

const LAN = '10.77.0.11';
const REM = '198.18.0.11';
const MSS_1460 = [2, 4, 0x05, 0xb4];

function segment(flags: number, options: number[], src = LAN, dst = REM): Uint8Array {
  return ipv4({ src, dst, proto: TCP, payload: tcp({ sport: 40000, dport: 443, flags, options: Uint8Array.from(options) }, src, dst) });
}

/** Offset of the MSS value inside an IPv4 packet with a 20-byte header, found by walking the options. */
function mssOf(p: Uint8Array): number {
  const l4 = parse(p).hdrLen;
  const hl = (p[l4 + 12] >>> 4) * 4;
  for (let o = l4 + 20; o < l4 + hl;) {
    if (p[o] === 0) break;
    if (p[o] === 1) { o++; continue; }
    if (p[o] === 2) return r16(p, o + 2);
    o += p[o + 1];
  }
  return -1;
}

function clampCopy(p: Uint8Array, max: number, partial = false): { changed: boolean; out: Uint8Array } {
  const out = p.slice();
  const l4 = parse(out).hdrLen;
  const changed = clampMss(out, l4, out.length - l4, max, l4 + 16, partial);
  return { changed, out };
}

describe('mssClampValue', () => {
  it('maps the config setting to a clamp value', () => {
    assert.equal(mssClampValue(null, 1500), 0);
    assert.equal(mssClampValue('auto', 1400), 1360);
    assert.equal(mssClampValue(1200, 1500), 1200);
  });
});

describe('clampMss', () => {
  it('lowers the MSS of a SYN and keeps the checksum valid', () => {
    const { changed, out } = clampCopy(segment(SYN, [...MSS_1460, 1, 3, 3, 7]), 1360);
    assert.equal(changed, true);
    assert.equal(mssOf(out), 1360);
    assert.deepEqual(checksumProblems(out), []);
  });

  it('handles an MSS option at an odd offset (after a single NOP)', () => {
    const { changed, out } = clampCopy(segment(SYN | ACK, [1, ...MSS_1460, 1, 1, 1]), 1200);
    assert.equal(changed, true);
    assert.equal(mssOf(out), 1200);
    assert.deepEqual(checksumProblems(out), []);
  });

  it('leaves a smaller MSS, a non-SYN and a SYN without MSS alone', () => {
    for (const p of [segment(SYN, [2, 4, 0x04, 0x00]), segment(ACK, MSS_1460), segment(SYN, [1, 1, 4, 2])]) {
      const { changed, out } = clampCopy(p, 1360);
      assert.equal(changed, false);
      assert.deepEqual(out, p);
    }
  });

  it('stops at malformed options without touching the segment', () => {
    for (const opts of [[2, 0, 0x05, 0xb4], [8, 40, 0, 0], [2, 3, 0x05, 0xb4]]) {
      const p = segment(SYN, opts);
      const { changed, out } = clampCopy(p, 1360);
      assert.equal(changed, false);
      assert.deepEqual(out, p);
    }
  });

  it('does not touch a partial checksum (the kernel sums the header later)', () => {
    const p = asPartial(segment(SYN, [...MSS_1460]));
    const l4 = parse(p).hdrLen;
    const before = r16(p, l4 + 16);
    const { changed, out } = clampCopy(p, 1360, true);
    assert.equal(changed, true);
    assert.equal(r16(out, l4 + 16), before);
    assert.deepEqual(checksumProblems(completePartial(out, l4, 16)), []);
  });
});

describe('MSS clamping through the NAPT engine', () => {
  it('clamps an outbound SYN and the inbound SYN-ACK, translating both', () => {
    const h = new NatHarness();
    h.napt.mssClamp = 1360;
    const syn = h.one(segment(SYN, MSS_1460));
    assert.equal(mssOf(syn), 1360);
    assert.deepEqual(checksumProblems(syn), []);
    const pubPort = r16(syn, 20);
    const synAck = ipv4({
      src: REM, dst: PUBLIC, proto: TCP,
      payload: tcp({ sport: 443, dport: pubPort, flags: SYN | ACK, ack: 1001, options: Uint8Array.from([1, 1, 1, ...MSS_1460, 0, 0, 0]) }, REM, PUBLIC),
    });
    const back = h.one(synAck);
    assert.equal(mssOf(back), 1360);
    assert.deepEqual(checksumProblems(back), []);
  });

  it('does nothing when clamping is off', () => {
    const h = new NatHarness();
    const syn = h.one(segment(SYN, MSS_1460));
    assert.equal(mssOf(syn), 1460);
  });
});
