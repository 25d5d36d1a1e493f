import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fold, pseudoHeaderSum, sumBytes } from './checksum';
import { TCP_ACK_FLAG, TCP_ERR_DATA_OFFSET, TCP_ERR_TRUNCATED, TCP_OK, TCP_PSH, TCP_SYN, TcpHeader } from './tcp';

/** Captured from Linux on a veth pair; TCP and UDP checksums, left to the NIC by offload, completed as it would. */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const TCP_DATA_PKT = hex(`
  45000040 d9524000 4006dd61 c0000201 c0000202
  d4a406bb 73f6e5fc 71469f42 8018003f fff50000 0101080a 1f208e43 343cf821 787878787878787878787878`);
/** TCP SYN 192.0.2.1:54436 -> 192.0.2.2:1723 with MSS, SACK-permitted, timestamps, window scale. */
const TCP_SYN_PKT = hex(`
  4500003c d9504000 4006dd67 c0000201 c0000202
  d4a406bb 73f6e5fb 00000000 a002faf0 e6520000 020405b4 0402080a 1f208e43 00000000 0103030a`);

const L4 = 20;

describe('TcpHeader', () => {
  it('reads a captured SYN with options (RFC 9293 §3.1)', () => {
    const t = new TcpHeader();
    assert.equal(t.parse(TCP_SYN_PKT, L4, 40, false), TCP_OK);
    assert.deepEqual([t.sport, t.dport, t.seq >>> 0, t.ack, t.flags, t.window, t.hdrLen], [54436, 1723, 0x73f6e5fb, 0, TCP_SYN, 64240, 40]);
    assert.deepEqual([t.dataOff, t.dataLen, t.csumOff, t.sportOff, t.dportOff], [60, 0, 36, 20, 22]);
    const pseudo = pseudoHeaderSum(0xc0000201 | 0, 0xc0000202 | 0, 6, 40);
    assert.equal(fold(sumBytes(TCP_SYN_PKT, L4, 40, pseudo)), 0xffff, 'checksum of the vector');
  });

  it('finds the payload after the options', () => {
    const t = new TcpHeader();
    assert.equal(t.parse(TCP_DATA_PKT, L4, TCP_DATA_PKT.length - L4, false), TCP_OK);
    assert.deepEqual([t.flags, t.hdrLen, t.dataOff, t.dataLen, t.ack >>> 0], [TCP_PSH | TCP_ACK_FLAG, 32, 52, 12, 0x71469f42]);
    assert.equal(TCP_DATA_PKT[t.dataOff], 0x78);
  });

  it('rejects a short header and a bad data offset', () => {
    const t = new TcpHeader();
    assert.equal(t.parse(TCP_SYN_PKT, L4, 19, false), TCP_ERR_TRUNCATED);
    const low = TCP_SYN_PKT.slice(); low[L4 + 12] = 0x40;
    assert.equal(t.parse(low, L4, 40, false), TCP_ERR_DATA_OFFSET, 'data offset 4 words');
    assert.equal(t.parse(TCP_SYN_PKT, L4, 30, false), TCP_ERR_DATA_OFFSET, 'options past the segment');
  });

  it('a first fragment may end inside the options: the header is cut to what is present, no data', () => {
    const t = new TcpHeader();
    assert.equal(t.parse(TCP_SYN_PKT, L4, 24, true), TCP_OK);
    assert.deepEqual([t.hdrLen, t.dataLen], [24, 0]);
  });
});
