import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  OUT_CALL_REPLY, OUT_CALL_REQUEST, PPTP_ERR_CTRL_TYPE, PPTP_ERR_LENGTH, PPTP_ERR_MAGIC, PPTP_ERR_MSG_TYPE, PPTP_ERR_TRUNCATED,
  PPTP_OK, PptpMessage, START_CTRL_REQUEST, checkPptp, isPptpFramed,
} from './pptp';

/** Byte layouts of RFC 2637 §2.1 (SCCRQ), §2.7 (OCRQ) and §2.8 (OCRP). */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const zeros = (n: number): string => '00'.repeat(n);
/** Start-Control-Connection-Request: version 1.0, framing and bearer capabilities 1, firmware 1, empty host and vendor names. */
const SCCRQ = hex(`009c 0001 1a2b3c4d 0001 0000 0100 0000 00000001 00000001 0000 0001 ${zeros(64)} ${zeros(64)}`);
/** Outgoing-Call-Request: Call ID 0x1101, serial 1, 300..100000000 bps, bearer and framing 3, window 64, no phone number. */
const OCRQ = hex(`00a8 0001 1a2b3c4d 0007 0000 1101 0001 0000012c 05f5e100 00000003 00000003 0040 0000 0000 0000 ${zeros(64)} ${zeros(64)}`);
/** Outgoing-Call-Reply: Call ID 0x5a00, Peer's Call ID 0x1130, result 1 (connected), speed 100000000, window 64. */
const OCRP = hex('0020 0001 1a2b3c4d 0008 0000 5a00 1130 01 00 0000 05f5e100 0040 0000 00000000');

describe('PptpMessage', () => {
  it('reads SCCRQ, OCRQ and OCRP', () => {
    const m = new PptpMessage();
    assert.equal(m.parse(SCCRQ, 0, SCCRQ.length), PPTP_OK);
    assert.deepEqual([m.length, m.ctrlType], [156, START_CTRL_REQUEST]);
    assert.equal(m.parse(OCRQ, 0, OCRQ.length), PPTP_OK);
    assert.deepEqual([m.length, m.ctrlType, m.callId], [168, OUT_CALL_REQUEST, 0x1101]);
    assert.equal(m.parse(OCRP, 0, OCRP.length), PPTP_OK);
    assert.deepEqual([m.ctrlType, m.callId, m.peerCallId, m.result], [OUT_CALL_REPLY, 0x5a00, 0x1130, 1]);
    assert.ok(isPptpFramed(OCRP, 0, OCRP.length));
  });

  it('checks type, magic, control type and the fixed length of the type', () => {
    const m = new PptpMessage();
    const with_ = (at: number, v: number) => { const b = OCRP.slice(); b[at] = v; return b; };
    assert.equal(m.parse(with_(3, 2), 0, 32), PPTP_ERR_MSG_TYPE, 'management message');
    assert.equal(m.parse(with_(7, 0x4e), 0, 32), PPTP_ERR_MAGIC);
    assert.equal(m.parse(with_(9, 16), 0, 32), PPTP_ERR_CTRL_TYPE);
    assert.equal(m.parse(with_(1, 0x21), 0, 33), PPTP_ERR_LENGTH, 'length not the fixed size of OCRP');
    assert.equal(m.parse(OCRP, 0, 31), PPTP_ERR_TRUNCATED);
    assert.equal(m.parse(OCRP, 0, 11), PPTP_ERR_TRUNCATED);
    assert.equal(checkPptp(OCRP, 0, 221), PPTP_ERR_LENGTH);
    assert.ok(!isPptpFramed(with_(7, 0x4e), 0, 32));
  });
});
