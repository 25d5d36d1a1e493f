/**
 * Inbound ICMP that belongs to no mapping: in shared-address mode it is the
 * box's own and goes back to the kernel unchanged (but for the hop given
 * back); in dedicated mode it is dropped. Mapped ICMP translates in both.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  Drop, ICMP, NatHarness, PUBLIC, UDP, ascii, checksumProblems, fragment, icmpEcho, icmpError, icmpPacket, parse, pattern, udpPacket,
} from './packet-builder';
import { T_PKTS_IN } from '../../src/nat/napt';

const A = '10.77.0.10';
const R1 = '203.0.113.5';
const ROUTER_LAN = '10.77.0.1';
const DATA = ascii('ping');

/** Packets that match no mapping, as they arrive in the TUN (TTL already decremented by the kernel). */
const unmapped: Array<[string, Uint8Array, number]> = [
  ['echo request to the box', icmpPacket(R1, PUBLIC, icmpEcho({ id: 4444, payload: DATA }), { ttl: 63 }), Drop.NO_MAPPING],
  ['echo reply to the box\'s own ping', icmpPacket(R1, PUBLIC, icmpEcho({ type: 0, id: 555, payload: DATA }), { ttl: 63 }), Drop.NO_MAPPING],
  ['port unreachable about the box\'s own UDP', icmpPacket(R1, PUBLIC, icmpError(3, 3, udpPacket(PUBLIC, R1, { sport: 33000, dport: 53 })), { ttl: 63 }),
    Drop.ICMP_ERROR_NO_MAPPING],
];

for (const vnetLen of [10, 0]) {
  describe(`unmapped inbound ICMP with vnetLen ${vnetLen}`, () => {
    const nat = (shared: boolean): NatHarness => {
      const h = new NatHarness({ vnetLen });
      h.napt.sharedAddress = shared;
      return h;
    };

    for (const [name, pkt, drop] of unmapped) {
      it(`${name}: shared mode hands it to the kernel unchanged, dedicated mode drops it`, () => {
        const s = nat(true);
        const back = s.one(pkt);
        const ttl = pkt.slice();
        ttl[8]++;
        assert.deepEqual(parse(back), parse(ttl), 'only the hop given back differs');
        assert.deepEqual(checksumProblems(back), []);
        assert.equal(s.napt.traffic[T_PKTS_IN], 0, 'not counted as translated');
        assert.equal(s.table.sessionCount, 0);
        nat(false).dropped(drop, pkt);
      });
    }

    it('a fragmented echo request to the box: every fragment goes to the kernel, also one that came first', () => {
      const frags = fragment(icmpPacket(R1, PUBLIC, icmpEcho({ id: 9, payload: pattern(3000) }), { ttl: 63 }), 1480);
      assert.equal(frags.length, 3);
      const s = nat(true);
      assert.deepEqual(s.send(frags[2]), [], 'held until the first fragment');
      const first = s.send(frags[0]);
      assert.deepEqual(first.map((f) => f.length).sort(), [frags[0].length, frags[2].length].sort(), 'the first and the held one');
      assert.deepEqual(first.map((f) => parse(f).dst), [PUBLIC, PUBLIC]);
      assert.deepEqual(s.one(frags[1]).subarray(20), frags[1].subarray(20));
      assert.deepEqual(s.table.sessionCount, 0);
      nat(false).dropped(Drop.ICMP_UNSUPPORTED, frags[0]);
    });

    it('mapped ICMP still translates in shared mode (RFC 5508 unchanged)', () => {
      const h = nat(true);
      const sent = h.one(icmpPacket(A, R1, icmpEcho({ id: 7, payload: DATA })));
      const pubId = parse(sent).icmpId ?? -1;
      const reply = h.one(icmpPacket(R1, PUBLIC, icmpEcho({ type: 0, id: pubId, payload: DATA })));
      assert.equal(parse(reply).dst, A);
      assert.equal(parse(reply).icmpId, 7);
      const u = h.one(udpPacket(A, R1, { sport: 5000, dport: 53, payload: DATA }));
      const err = h.one(icmpPacket(R1, PUBLIC, icmpError(3, 3, u)));
      assert.equal(parse(err).dst, A);
      assert.equal(parse(err).inner?.sport, 5000);
    });

    for (const shared of [true, false]) {
      it(`${shared ? 'shared' : 'dedicated'}: the router's own frag-needed, sent from its LAN address, reaches the LAN host`, () => {
        const h = nat(shared);
        const sent = h.one(udpPacket(A, R1, { sport: 5000, dport: 53, payload: pattern(1450) }, { flags: 0x4000 }));
        const err = h.one(icmpPacket(ROUTER_LAN, PUBLIC, icmpError(3, 4, sent, 576, 1400)));
        const p = parse(err);
        assert.equal(p.src, ROUTER_LAN);
        assert.equal(p.dst, A);
        assert.equal(p.mtu, 1400);
        assert.equal(p.inner?.src, A);
        assert.equal(p.inner?.sport, 5000);
        assert.equal(p.proto, ICMP);
        assert.equal(p.inner?.proto, UDP);
        assert.deepEqual(checksumProblems(err), []);
      });
    }
  });
}
