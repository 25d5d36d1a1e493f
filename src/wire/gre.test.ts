import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { GRE_ERR_TRUNCATED, GRE_OTHER, GRE_PPTP, GRE_PROTO_PPP, GreHeader, isPptpGre } from './gre';

/** Byte layouts of RFC 2637 §4.1 (enhanced GRE), RFC 2784 and RFC 2890 (key). */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
/** PPTP data: K, S, A; version 1; PPP; payload length 4; Call ID 0x1234; seq 1; ack 7; 4 bytes of PPP. */
const PPTP_DATA = hex('3081880b 00041234 00000001 00000007 ff03c021');
/** PPTP ack-only: K and A, no S, no payload. */
const PPTP_ACK_ONLY = hex('2081880b 00004321 00000009');
/** RFC 2784 GRE carrying IPv4, no options. */
const GRE_V0 = hex('00000800 45000014');
/** RFC 2890 GRE with a key, version 0: not PPTP although K is set. */
const GRE_V0_KEY = hex('20000800 00000007');

describe('GreHeader', () => {
  it('reads PPTP enhanced GRE, data and ack-only', () => {
    const g = new GreHeader();
    assert.equal(g.parse(PPTP_DATA, 0, PPTP_DATA.length), GRE_PPTP);
    assert.deepEqual([g.flags, g.version, g.protocol, g.callId, g.callIdOff], [0x30, 1, GRE_PROTO_PPP, 0x1234, 6]);
    assert.equal(g.parse(PPTP_ACK_ONLY, 0, PPTP_ACK_ONLY.length), GRE_PPTP);
    assert.equal(g.callId, 0x4321);
  });

  it('other GRE is recognised but gives no Call ID', () => {
    const g = new GreHeader();
    assert.equal(g.parse(GRE_V0, 0, GRE_V0.length), GRE_OTHER);
    assert.deepEqual([g.version, g.protocol, g.callId], [0, 0x0800, 0]);
    assert.equal(g.parse(GRE_V0_KEY, 0, GRE_V0_KEY.length), GRE_OTHER);
    assert.equal(g.parse(GRE_V0, 0, 3), GRE_ERR_TRUNCATED);
    assert.equal(g.parse(PPTP_DATA, 0, 7), GRE_OTHER, 'a PPTP header cut before its Call ID is not PPTP');
  });

  it('libalias mask: S and A ignored; C, R, s, version 0 or other protocols refused', () => {
    const b = (b0: number, b1: number, proto = 0x880b): Uint8Array => Uint8Array.from([b0, b1, proto >>> 8, proto & 0xff, 0, 0, 0, 1]);
    assert.ok(isPptpGre(b(0x30, 0x81), 0, 8));
    assert.ok(isPptpGre(b(0x20, 0x01), 0, 8));
    assert.ok(!isPptpGre(b(0xb0, 0x01), 0, 8), 'checksum present');
    assert.ok(!isPptpGre(b(0x60, 0x01), 0, 8), 'routing present');
    assert.ok(!isPptpGre(b(0x28, 0x01), 0, 8), 'strict source route');
    assert.ok(!isPptpGre(b(0x30, 0x00), 0, 8), 'version 0');
    assert.ok(!isPptpGre(b(0x30, 0x01, 0x0800), 0, 8), 'not PPP');
  });
});
