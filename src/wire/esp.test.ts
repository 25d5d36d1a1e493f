import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AhHeader, ESP_ERR_TRUNCATED, ESP_OK, EspHeader } from './esp';

/** Byte layouts of RFC 4303 §2 (ESP) and RFC 4302 §2 (AH). */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
/** ESP: SPI 0x5b5a3100, sequence 3, then an opaque IV and ciphertext. */
const ESP_PKT = hex('5b5a3100 00000003 0011223344556677 8899aabbccddeeff');
/** AH: next header 4 (IPv4), payload length 4 (6 words, a 96-bit ICV), SPI 0x00000abc, sequence 1, ICV. */
const AH_PKT = hex('04040000 00000abc 00000001 aaaaaaaaaaaaaaaaaaaaaaaa');

describe('EspHeader and AhHeader', () => {
  it('read the SPI and sequence number', () => {
    const e = new EspHeader();
    assert.equal(e.parse(ESP_PKT, 0, ESP_PKT.length), ESP_OK);
    assert.deepEqual([e.spi >>> 0, e.seq], [0x5b5a3100, 3]);
    const a = new AhHeader();
    assert.equal(a.parse(AH_PKT, 0, AH_PKT.length), ESP_OK);
    assert.deepEqual([a.nextHeader, a.hdrLen, a.spi, a.seq], [4, 24, 0xabc, 1]);
  });

  it('reads a high-bit SPI as int32 (the tables key on int32 words)', () => {
    const e = new EspHeader();
    e.parse(hex('c0ffee01 00000001'), 0, 8);
    assert.equal(e.spi, 0xc0ffee01 | 0);
  });

  it('need SPI and sequence (ESP) and the fixed 12 bytes (AH)', () => {
    assert.equal(new EspHeader().parse(ESP_PKT, 0, 7), ESP_ERR_TRUNCATED);
    assert.equal(new AhHeader().parse(AH_PKT, 0, 11), ESP_ERR_TRUNCATED);
  });
});
