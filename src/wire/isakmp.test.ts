import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ISAKMP_ERR_TRUNCATED, ISAKMP_OK, IsakmpHeader } from './isakmp';

/** Byte layouts of RFC 7296 §3.1 (IKEv2) and RFC 2408 §3.1 (IKEv1). */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
/** IKEv2 IKE_SA_INIT request: initiator SPI, zero responder SPI, next payload SA (33), version 2.0, exchange 34, Initiator flag, message ID 0, length 296. */
const IKE_SA_INIT = hex('0123456789abcdef 0000000000000000 21 20 22 08 00000000 00000128');
/** IKEv1 Main Mode reply: both cookies, next payload SA (1), version 1.0, exchange 2, no flags, length 84. */
const MAIN_MODE = hex('c11c11c100000007 1090179c8630d089 01 10 02 00 00000000 00000054');

describe('IsakmpHeader', () => {
  it('reads an IKEv2 IKE_SA_INIT header', () => {
    const h = new IsakmpHeader();
    assert.equal(h.parse(IKE_SA_INIT, 0, IKE_SA_INIT.length), ISAKMP_OK);
    assert.deepEqual([h.icookie0 >>> 0, h.icookie1 >>> 0, h.rcookie0, h.rcookie1], [0x01234567, 0x89abcdef, 0, 0]);
    assert.deepEqual([h.nextPayload, h.majorVersion, h.exchange, h.flags, h.messageId, h.length], [33, 2, 34, 0x08, 0, 296]);
  });

  it('reads an IKEv1 Main Mode header with its responder cookie', () => {
    const h = new IsakmpHeader();
    assert.equal(h.parse(MAIN_MODE, 0, MAIN_MODE.length), ISAKMP_OK);
    assert.deepEqual([h.icookie0 >>> 0, h.icookie1, h.rcookie0, h.rcookie1 >>> 0], [0xc11c11c1, 7, 0x1090179c, 0x8630d089]);
    assert.deepEqual([h.majorVersion, h.exchange, h.length], [1, 2, 84]);
  });

  it('needs the 28-byte header', () => {
    assert.equal(new IsakmpHeader().parse(IKE_SA_INIT, 0, 27), ISAKMP_ERR_TRUNCATED);
  });
});
