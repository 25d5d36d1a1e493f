import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  cidrContains,
  formatCidr,
  formatIPv4,
  ipv4Equal,
  ipv4ToNumber,
  isIPv4,
  numberToIPv4,
  parseCidr,
  parseIPv4,
  prefixMask,
} from '../../src/core/ipv4-addr';

describe('ipv4-addr', () => {
  test('parseIPv4 / formatIPv4 round trip', () => {
    for (const s of ['0.0.0.0', '10.77.0.1', '198.18.0.2', '255.255.255.255', '1.2.3.4']) {
      const b = parseIPv4(s);
      assert.equal(b.length, 4);
      assert.equal(formatIPv4(b), s);
    }
    assert.deepEqual([...parseIPv4('198.18.0.2')], [198, 18, 0, 2]);
  });

  test('parseIPv4 rejects malformed input', () => {
    for (const s of ['', '1.2.3', '1.2.3.4.5', '256.0.0.1', '01.2.3.4', '1.2.3.-1', '1.2.3.4 ', ' 1.2.3.4', 'a.b.c.d', '1..3.4', '1.2.3.4/24', '::1']) {
      assert.throws(() => parseIPv4(s), /invalid IPv4/, s);
      assert.equal(isIPv4(s), false, s);
    }
    assert.equal(isIPv4('10.0.0.1'), true);
  });

  test('formatIPv4 accepts Buffers and rejects wrong lengths', () => {
    assert.equal(formatIPv4(Buffer.from([10, 77, 0, 11])), '10.77.0.11');
    assert.throws(() => formatIPv4(new Uint8Array(3)), /4 bytes/);
    assert.throws(() => formatIPv4(new Uint8Array(16)), /4 bytes/);
  });

  test('number conversions', () => {
    assert.equal(ipv4ToNumber('0.0.0.0'), 0);
    assert.equal(ipv4ToNumber('255.255.255.255'), 0xffffffff);
    assert.equal(ipv4ToNumber('198.18.0.2'), 0xc6120002);
    assert.equal(formatIPv4(numberToIPv4(0xc6120002)), '198.18.0.2');
    assert.equal(formatIPv4(numberToIPv4(0xffffffff)), '255.255.255.255');
    assert.throws(() => numberToIPv4(-1));
    assert.throws(() => numberToIPv4(2 ** 32));
    assert.throws(() => numberToIPv4(1.5));
  });

  test('prefixMask', () => {
    assert.equal(prefixMask(0), 0);
    assert.equal(prefixMask(8), 0xff000000);
    assert.equal(prefixMask(24), 0xffffff00);
    assert.equal(prefixMask(31), 0xfffffffe);
    assert.equal(prefixMask(32), 0xffffffff);
    assert.throws(() => prefixMask(33));
    assert.throws(() => prefixMask(-1));
  });

  test('parseCidr clears host bits and keeps the written address', () => {
    const c = parseCidr('10.77.0.5/24');
    assert.equal(formatIPv4(c.network), '10.77.0.0');
    assert.equal(formatIPv4(c.address), '10.77.0.5');
    assert.equal(c.prefixLen, 24);
    assert.equal(formatCidr(c), '10.77.0.0/24');
    assert.equal(formatCidr(parseCidr('0.0.0.0/0')), '0.0.0.0/0');
    assert.equal(formatCidr(parseCidr('1.2.3.4/0')), '0.0.0.0/0');
    assert.equal(formatCidr(parseCidr('198.18.0.2')), '198.18.0.2/32');
    assert.equal(formatCidr(parseCidr('172.16.255.255/12')), '172.16.0.0/12');
  });

  test('parseCidr rejects malformed input', () => {
    for (const s of ['10.0.0.0/33', '10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/024', '10.0.0/8', '10.0.0.0/8/8', '/8', 'x/8', '10.0.0.0/ 8']) {
      assert.throws(() => parseCidr(s), /invalid CIDR/, s);
    }
  });

  test('cidrContains', () => {
    assert.equal(cidrContains('10.77.0.0/24', '10.77.0.11'), true);
    assert.equal(cidrContains('10.77.0.0/24', '10.77.1.11'), false);
    assert.equal(cidrContains('0.0.0.0/0', '203.0.113.9'), true);
    assert.equal(cidrContains('198.18.0.2/32', '198.18.0.2'), true);
    assert.equal(cidrContains('198.18.0.2/32', '198.18.0.3'), false);
    assert.equal(cidrContains(parseCidr('128.0.0.0/1'), parseIPv4('200.1.1.1')), true);
    assert.equal(cidrContains('128.0.0.0/1', '127.255.255.255'), false);
  });

  test('ipv4Equal', () => {
    assert.equal(ipv4Equal(parseIPv4('1.2.3.4'), Uint8Array.of(1, 2, 3, 4)), true);
    assert.equal(ipv4Equal(parseIPv4('1.2.3.4'), Uint8Array.of(1, 2, 3, 5)), false);
    assert.equal(ipv4Equal(new Uint8Array(3), new Uint8Array(3)), false);
  });
});
