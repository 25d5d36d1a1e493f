import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  IPV4_ERR_CHECKSUM, IPV4_ERR_IHL, IPV4_ERR_TOTAL_LEN, IPV4_ERR_TRUNCATED, IPV4_ERR_VERSION, IPV4_OK, Ipv4Header, PROTO_TCP,
} from './ipv4';

/** Captured from Linux on a veth pair; TCP and UDP checksums, left to the NIC by offload, completed as it would. */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
/** TCP SYN 192.0.2.1:54436 -> 192.0.2.2:1723 with MSS, SACK-permitted, timestamps, window scale. */
const TCP_SYN_PKT = hex(`
  4500003c d9504000 4006dd67 c0000201 c0000202
  d4a406bb 73f6e5fb 00000000 a002faf0 e6520000 020405b4 0402080a 1f208e43 00000000 0103030a`);
/** Port unreachable (RFC 792) quoting the DNS query's IP header and first 8 bytes. */
const ICMP_PORT_UNREACH_PKT = hex(`
  45c00038 1b2c0000 4001dad5 c0000202 c0000201
  030362d9 00000000
  45000039 94694000 40112247 c0000201 c0000202 89bc0035 0025100d`);

describe('Ipv4Header', () => {
  it('reads a captured header (RFC 791 §3.1)', () => {
    const ip = new Ipv4Header();
    assert.equal(ip.parse(TCP_SYN_PKT, 0, TCP_SYN_PKT.length, true, true), IPV4_OK);
    assert.deepEqual([ip.hdrLen, ip.totalLen, ip.proto, ip.id, ip.fragField], [20, 60, PROTO_TCP, 0xd950, 0x4000]);
    assert.deepEqual([ip.src >>> 0, ip.dst >>> 0], [0xc0000201, 0xc0000202]);
    assert.deepEqual([ip.isFragment, ip.isLaterFragment, ip.payloadOff, ip.payloadLen], [false, false, 20, 40]);
  });

  it('works at an offset inside a larger buffer', () => {
    const buf = new Uint8Array(100);
    buf.set(TCP_SYN_PKT, 17);
    const ip = new Ipv4Header();
    assert.equal(ip.parse(buf, 17, TCP_SYN_PKT.length, true, true), IPV4_OK);
    assert.equal(ip.payloadOff, 37);
  });

  it('rejects what does not fit or is not IPv4', () => {
    const ip = new Ipv4Header();
    const p = (b: Uint8Array, avail = b.length, whole = true) => ip.parse(b, 0, avail, true, whole);
    assert.equal(p(TCP_SYN_PKT, 19), IPV4_ERR_TRUNCATED);
    const v6 = TCP_SYN_PKT.slice(); v6[0] = 0x65;
    assert.equal(p(v6), IPV4_ERR_VERSION);
    const ihl4 = TCP_SYN_PKT.slice(); ihl4[0] = 0x44;
    assert.equal(p(ihl4), IPV4_ERR_IHL);
    const ihlBig = TCP_SYN_PKT.slice(0, 24); ihlBig[0] = 0x47;
    assert.equal(p(ihlBig), IPV4_ERR_IHL);
    assert.equal(p(TCP_SYN_PKT, 59), IPV4_ERR_TOTAL_LEN, 'total length beyond the bytes present');
    const bad = TCP_SYN_PKT.slice(); bad[11] ^= 1;
    assert.equal(p(bad), IPV4_ERR_CHECKSUM);
    assert.equal(ip.parse(bad, 0, bad.length, false, true), IPV4_OK, 'checksum not verified when asked not to');
  });

  it('accepts the truncated copy an ICMP error quotes (whole = false)', () => {
    const inner = ICMP_PORT_UNREACH_PKT.subarray(28);
    const ip = new Ipv4Header();
    assert.equal(ip.parse(inner, 0, inner.length, true, true), IPV4_ERR_TOTAL_LEN);
    assert.equal(ip.parse(inner, 0, inner.length, true, false), IPV4_OK);
    assert.equal(ip.totalLen, 57);
  });

  it('tells first and later fragments apart', () => {
    const ip = new Ipv4Header();
    const frag = (field: number) => {
      const b = hex('4500001c 00010000 40110000 0a000001 0a000002 00000000 00000000');
      b[6] = field >>> 8; b[7] = field & 0xff;
      assert.equal(ip.parse(b, 0, b.length, false, true), IPV4_OK);
      return [ip.isFragment, ip.isLaterFragment];
    };
    assert.deepEqual(frag(0x2000), [true, false], 'MF, offset 0');
    assert.deepEqual(frag(0x0001), [true, true], 'last fragment');
    assert.deepEqual(frag(0x4000), [false, false], 'DF only');
  });
});
