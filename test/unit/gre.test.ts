/** Enhanced GRE recognition (spec §2, §9.10, §9.11) and the non-PPTP GRE policy. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse, w16 } from './packet-builder';
import { isPptpGre } from '../../src/wire/gre';
import { Drop } from '../../src/core/verdict';
import { grePacket, pptpHarness } from './pptp-builder';

test('libalias mask: K, version 1, 0x880B; S and A ignored; C, R, s, version 0 or other protocols refused', () => {
  const g = (b0: number, b1: number, proto = 0x880b): Uint8Array => Uint8Array.from([b0, b1, proto >>> 8, proto & 0xff, 0, 0, 0, 1]);
  assert.ok(isPptpGre(g(0x30, 0x81), 0, 8));
  assert.ok(isPptpGre(g(0x20, 0x81), 0, 8), 'ack-only');
  assert.ok(isPptpGre(g(0x20, 0x01), 0, 8));
  assert.ok(!isPptpGre(g(0x30, 0x80), 0, 8), 'version 0');
  assert.ok(!isPptpGre(g(0x10, 0x01), 0, 8), 'no key');
  assert.ok(!isPptpGre(g(0xb0, 0x01), 0, 8), 'checksum present');
  assert.ok(!isPptpGre(g(0x30, 0x01, 0x0800), 0, 8), 'not PPP');
  assert.ok(!isPptpGre(g(0x30, 0x01), 0, 7), 'truncated');
});

function ciscoGre(src: string, dst: string): Uint8Array {
  const p = grePacket(src, dst, 0, null, null);
  w16(p, 20, 0); w16(p, 22, 0x0800); // version 0, IPv4 payload
  return p;
}

test('non-PPTP GRE: dropped by default; address-only NAT for one LAN host per remote when allowed', () => {
  const { h, gre } = pptpHarness();
  h.dropped(Drop.GRE_NOT_PPTP, ciscoGre('10.77.0.11', '198.18.0.30'));
  gre.allowNonPptp = true;
  assert.equal(parse(h.one(ciscoGre('10.77.0.11', '198.18.0.30'))).src, '198.18.0.2');
  assert.equal(parse(h.one(ciscoGre('198.18.0.30', '198.18.0.2'))).dst, '10.77.0.11');
  h.dropped(Drop.GRE_NOT_PPTP, ciscoGre('10.77.0.12', '198.18.0.30'));
});

test('GRE forward: inbound GRE with no call goes to the forwarded PPTP server, its replies leave', () => {
  const { h } = pptpHarness([{ proto: 'gre', lanAddress: '10.77.0.13' }]);
  assert.equal(parse(h.one(grePacket('198.18.0.11', '198.18.0.2', 0x0101, 1, null))).dst, '10.77.0.13');
  assert.equal(parse(h.one(grePacket('10.77.0.13', '198.18.0.11', 0x0202, 1, null))).src, '198.18.0.2');
});
