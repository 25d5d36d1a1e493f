import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fold, pseudoHeaderSum, sumBytes } from './checksum';
import { UDP_ERR_TRUNCATED, UDP_OK, UdpHeader } from './udp';

/** Captured from Linux on a veth pair; TCP and UDP checksums, left to the NIC by offload, completed as it would. */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
/** UDP DNS query for example.com A, 192.0.2.1:35260 -> 192.0.2.2:53. */
const UDP_DNS_PKT = hex(`
  45000039 94694000 40112247 c0000201 c0000202
  89bc0035 0025100d 12340100 00010000 00000000 07657861 6d706c65 03636f6d 00000100 01`);

describe('UdpHeader', () => {
  it('reads a captured DNS query (RFC 768)', () => {
    const u = new UdpHeader();
    assert.equal(u.parse(UDP_DNS_PKT, 20, 37), UDP_OK);
    assert.deepEqual([u.sport, u.dport, u.length, u.checksum, u.payloadOff, u.payloadLen], [35260, 53, 37, 0x100d, 28, 29]);
    assert.deepEqual([u.sportOff, u.dportOff, u.csumOff], [20, 22, 26]);
    assert.equal(fold(sumBytes(UDP_DNS_PKT, 20, 37, pseudoHeaderSum(0xc0000201 | 0, 0xc0000202 | 0, 17, 37))), 0xffff);
  });

  it('needs the 8-byte header', () => {
    assert.equal(new UdpHeader().parse(UDP_DNS_PKT, 20, 7), UDP_ERR_TRUNCATED);
  });
});
