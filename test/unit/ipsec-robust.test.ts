/**
 * IPsec masquerade under real-world conditions: ICMP errors about ISAKMP,
 * ESP and GRE in both directions, guessing ties, responder-cookie retries,
 * two answers to one remote-initiated exchange, serialization with
 * ipsec.parallel off, crossed SPI pairs after simultaneous rekeys, and
 * fragmented IKE. Crafted packets through the real engine, checked on the
 * bytes that leave it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  Drop, NatHarness, PUBLIC, checksumsValid, fragment, icmpError, icmpPacket, parse, r16, r32, reassemble,
} from './packet-builder';
import { IpsecOptions } from '../../src/helpers/ipsec/ipsec';
import { PptpMasq } from '../../src/helpers/pptp/pptp';
import { grePacket, pptpMsg } from './pptp-builder';
import { ACK, PSH, SYN, TCP, tcpPacket } from './packet-builder';
import { L1, L2, L3, MIN, R, ZERO, dests, esp, ike, ipsecHarness } from './ipsec-builder';

const ROUTER = '198.18.0.1';

const setup = (over: Partial<IpsecOptions> = {}, shared = false): NatHarness => ipsecHarness(over, 32, shared);

const events = (h: NatHarness): Record<string, number> => h.ipsec!.stats().events as Record<string, number>;

for (const shared of [false, true]) {
  describe(`ICMP errors about IPsec traffic (${shared ? 'shared' : 'dedicated'} address)`, () => {
    it('a frag-needed quoting outbound ISAKMP reaches the host of that exchange, found by its cookies', () => {
      const h = setup({ guessing: false }, shared);
      h.one(ike(L1, R, '1010101010101010', ZERO));
      const sent2 = h.one(ike(L2, R, '2020202020202020', ZERO, 2, 1200));
      const err = icmpPacket(ROUTER, PUBLIC, icmpError(3, 4, sent2, 576, 1280));
      const o = h.one(err);
      const q = parse(o);
      assert.deepEqual([q.dst, q.inner?.src, q.inner?.sport, q.inner?.dport, q.mtu], [L2, L2, 500, 500, 1280]);
      assert.ok(checksumsValid(o));
    });

    it('with only 8 bytes quoted, the host that spoke IKE with the remote last', () => {
      const h = setup({ guessing: false }, shared);
      h.one(ike(L1, R, '3030303030303030', ZERO));
      h.now += 1000;
      const sent = h.one(ike(L3, R, '4040404040404040', ZERO));
      assert.equal(parse(h.one(icmpPacket(ROUTER, PUBLIC, icmpError(3, 4, sent, 28, 1280)))).dst, L3);
    });

    it('errors a LAN host sends about inbound ISAKMP, ESP and GRE go out to the remote translated', () => {
      const h = setup({ guessing: false }, shared);
      const pptp = new PptpMasq(16, h.table, h.journal);
      pptp.attach(h.napt);
      // ISAKMP
      h.one(ike(L1, R, '5050505050505050', ZERO));
      const inIke = h.one(ike(R, PUBLIC, '5050505050505050', '6060606060606060'));
      let q = parse(h.one(icmpPacket(L1, R, icmpError(3, 3, inIke))));
      assert.deepEqual([q.src, q.dst, q.inner?.src, q.inner?.dst, q.inner?.dport], [PUBLIC, R, R, PUBLIC, 500]);
      // ESP
      h.one(esp(L1, R, 0x1111));
      const inEsp = h.one(esp(R, PUBLIC, 0x2222));
      const oe = h.one(icmpPacket(L1, R, icmpError(3, 2, inEsp, 28)));
      q = parse(oe);
      assert.deepEqual([q.src, q.inner?.dst, r32(q.inner!.l4, 0)], [PUBLIC, PUBLIC, 0x2222]);
      assert.ok(checksumsValid(oe));
      // GRE: the quoted Call ID goes back to the public one the remote knows.
      const c = ctl(h, L2);
      const pub = r16(c.out(pptpMsg(7, 0x0a0a)), 12);
      c.in(pptpMsg(8, 0x0b0b, pub, 1));
      const inGre = h.one(grePacket(R, PUBLIC, pub, 1, null));
      assert.equal(r16(parse(inGre).l4, 6), 0x0a0a);
      const og = h.one(icmpPacket(L2, R, icmpError(3, 2, inGre, 28)));
      q = parse(og);
      assert.deepEqual([q.src, q.inner?.dst, r16(q.inner!.l4, 6)], [PUBLIC, PUBLIC, pub]);
      assert.ok(checksumsValid(og));
      // Not about the sender's own traffic: dropped.
      h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(L3, R, icmpError(3, 2, inEsp, 28)));
    });
  });
}

/** A PPTP control connection L -> R:1723; out/in return the payload that left. */
function ctl(h: NatHarness, lan: string) {
  let o = 1000;
  let i = 5000;
  h.one(tcpPacket(lan, R, { sport: 41000, dport: 1723, flags: SYN, seq: o - 1 }));
  const pub = h.pubPort(TCP, lan, 41000, R, 1723);
  h.one(tcpPacket(R, PUBLIC, { sport: 1723, dport: pub, flags: SYN | ACK, seq: i - 1, ack: o }));
  const pay = (p: Uint8Array) => { const q = parse(p); return q.l4.subarray((q.l4[12] >>> 4) * 4); };
  return {
    out(m: Uint8Array) { const r = pay(h.one(tcpPacket(lan, R, { sport: 41000, dport: 1723, flags: ACK | PSH, seq: o, ack: i, payload: m }))); o += m.length; return r; },
    in(m: Uint8Array) { const r = pay(h.one(tcpPacket(R, PUBLIC, { sport: 1723, dport: pub, flags: ACK | PSH, seq: i, ack: o, payload: m }))); i += m.length; return r; },
  };
}

describe('guessing (spec §4.3 step 4)', () => {
  it('hosts whose last IKE has the same timestamp all get a copy', () => {
    const h = setup();
    for (const [l, c] of [[L1, 'a1'], [L2, 'a2'], [L3, 'a3']]) h.one(ike(l, R, c.repeat(8), ZERO));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x7777)).sort(), [L1, L2, L3]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'b4b4b4b4b4b4b4b4', ZERO)).sort(), [L1, L2, L3]);
  });
});

describe('ISAKMP exchanges (spec §3, Rule I-4)', () => {
  it('a retry with a new responder cookie is learnt while the LAN host has not used the first one', () => {
    const h = setup({ guessing: false });
    h.one(ike(L1, R, 'c5c5c5c5c5c5c5c5', ZERO));
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'c5c5c5c5c5c5c5c5', '1111111111111111')), [L1]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'c5c5c5c5c5c5c5c5', '2222222222222222')), [L1], 'the retry');
    h.one(ike(L1, R, 'c5c5c5c5c5c5c5c5', '2222222222222222'));
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'c5c5c5c5c5c5c5c5', '2222222222222222', 32)), [L1]);
    h.dropped(Drop.ISAKMP_NO_MAPPING, ike(R, PUBLIC, 'c5c5c5c5c5c5c5c5', '1111111111111111'));
    h.dropped(Drop.ISAKMP_NO_MAPPING, ike(R, PUBLIC, 'c5c5c5c5c5c5c5c5', '3333333333333333'));
  });

  it('two LAN hosts answering one remote-initiated exchange: the first keeps it, the second collides', () => {
    const h = setup();
    h.one(ike(L1, R, 'd1d1d1d1d1d1d1d1', ZERO));
    h.one(ike(L2, R, 'd2d2d2d2d2d2d2d2', ZERO));
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'e0e0e0e0e0e0e0e0', ZERO)).sort(), [L1, L2]);
    assert.equal(parse(h.one(ike(L1, R, 'e0e0e0e0e0e0e0e0', 'f1f1f1f1f1f1f1f1'))).src, PUBLIC);
    h.dropped(Drop.ISAKMP_COLLISION, ike(L2, R, 'e0e0e0e0e0e0e0e0', 'f2f2f2f2f2f2f2f2'));
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'e0e0e0e0e0e0e0e0', 'f1f1f1f1f1f1f1f1', 5)), [L1]);
    assert.equal(events(h)['isakmp-collision'], 1);
  });

  it('fragmented IKE (certificates) is reassembled: guessed copies get every fragment', () => {
    const h = setup();
    h.one(ike(L1, R, 'a9a9a9a9a9a9a9a9', ZERO));
    h.one(ike(L2, R, 'b9b9b9b9b9b9b9b9', ZERO));
    const big = ike(R, PUBLIC, 'c9c9c9c9c9c9c9c9', ZERO, 2, 3000);
    const frags = fragment(big, 1480);
    const out = frags.flatMap((f) => h.send(f));
    assert.equal(out.length, frags.length * 2, 'a full set of fragments per guessed host');
    for (const host of [L1, L2]) {
      const mine = out.filter((o) => parse(o).dst === host);
      assert.equal(mine.length, frags.length);
      const whole = reassemble(mine);
      assert.ok(checksumsValid(whole), `${host}: the reassembled datagram checks`);
      assert.deepEqual(parse(whole).l4.subarray(8), parse(big).l4.subarray(8));
    }
  });
});

describe('ESP serialization and ipsec.parallel (spec §4.2, §4.4)', () => {
  for (const parallel of [true, false]) {
    it(`parallel ${parallel}: after the pending host is squelched the next host in line gets the slot`, () => {
      const h = setup({ parallel, guessing: false });
      h.one(esp(L1, R, 0x3001));
      h.dropped(Drop.ESP_BLOCKED, esp(L2, R, 0x3002));
      for (let i = 0; i < 5; i++) h.one(esp(L1, R, 0x3001, 2 + i));
      h.dropped(Drop.ESP_SQUELCHED, esp(L1, R, 0x3001, 9));
      assert.equal(parse(h.one(esp(L2, R, 0x3002, 2))).src, PUBLIC, 'L2 is pending now');
      assert.deepEqual(dests(h, esp(R, PUBLIC, 0x4002)), [L2]);
      assert.equal((h.ipsec!.stats().esp as Record<string, number>).established, 1);
    });
  }

  it('parallel false: a remote with an established SA of one host refuses another host\'s new SPI', () => {
    const h = setup({ parallel: false, guessing: false });
    h.one(esp(L1, R, 0x5001));
    h.one(esp(R, PUBLIC, 0x6001));
    h.dropped(Drop.ESP_BLOCKED, esp(L2, R, 0x5002));
    assert.equal(events(h)['esp-blocked-parallel'], 1);
    assert.equal(parse(h.one(esp(L1, R, 0x5003))).src, PUBLIC, 'the owner may open more');
  });
});

describe('crossed SPI pairs after simultaneous rekeys (spec §4.4)', () => {
  /** Each host's new SA: its outbound SPI (the remote's) and the inbound SPI the remote uses for it. */
  const HOSTS = [[L1, 0x1001, 0x9001], [L2, 0x1002, 0x9002], [L3, 0x1003, 0x9003]] as const;

  it('two hosts paired with each other\'s inbound SPI are re-paired by who answers whom', () => {
    const h = setup({ guessing: false });
    // L1's new SPI is pending; the remote's first new inbound SPI is L2's: crossed.
    h.one(esp(L1, R, 0x1001));
    h.dropped(Drop.ESP_BLOCKED, esp(L2, R, 0x1002));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9002)), [L1]);
    h.one(esp(L2, R, 0x1002, 2));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9001)), [L2]);
    // Traffic: each host's packet is answered by the remote in that host's own inbound SPI.
    let fixedAfter = -1;
    for (let round = 0; round < 10 && fixedAfter < 0; round++) {
      for (const [lan, out, inn] of HOSTS.slice(0, 2)) {
        h.one(esp(lan, R, out, 10 + round));
        h.now += 5;
        const got = dests(h, esp(R, PUBLIC, inn, 10 + round));
        h.now += 400;
        if (round > 0 && got[0] === lan && fixedAfter < 0 && lan === L2) fixedAfter = round;
      }
    }
    assert.ok(fixedAfter >= 0, 'recovered');
    for (const [lan, out, inn] of HOSTS.slice(0, 2)) {
      h.one(esp(lan, R, out, 99));
      assert.deepEqual(dests(h, esp(R, PUBLIC, inn, 99)), [lan], `${lan} gets its own traffic`);
    }
    assert.equal(events(h)['esp-repaired'], 1);
  });

  it('three hosts crossed in a cycle recover, each with its own pair', () => {
    const h = setup({ guessing: false });
    // Pending in turn, each completed by the next host's inbound SPI.
    for (let i = 0; i < 3; i++) {
      const [lan, out] = HOSTS[i];
      h.one(esp(lan, R, out, 1));
      assert.deepEqual(dests(h, esp(R, PUBLIC, HOSTS[(i + 1) % 3][2])), [lan]);
    }
    for (let round = 0; round < 20; round++) {
      for (const [lan, out, inn] of HOSTS) {
        h.one(esp(lan, R, out, 10 + round));
        h.now += 5;
        h.send(esp(R, PUBLIC, inn, 10 + round));
        h.now += 400;
      }
    }
    for (const [lan, out, inn] of HOSTS) {
      h.one(esp(lan, R, out, 99));
      assert.deepEqual(dests(h, esp(R, PUBLIC, inn, 99)), [lan], `${lan} gets its own traffic`);
    }
    assert.equal(events(h)['esp-repaired'], 2);
  });

  it('hosts sending close together are never re-paired on answers that could be either\'s', () => {
    const h = setup({ guessing: false });
    for (const [lan, out, inn] of HOSTS.slice(0, 2)) {
      h.one(esp(lan, R, out, 1));
      h.one(esp(R, PUBLIC, inn, 1));
    }
    // Each round: L1 sends, L2 sends 10 ms later, then L1's answer, then L2's: every answer follows the other's packet.
    for (let i = 0; i < 20; i++) {
      h.one(esp(L1, R, 0x1001, 10 + i));
      h.now += 10;
      h.one(esp(L2, R, 0x1002, 10 + i));
      h.now += 5;
      assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9001, 10 + i)), [L1]);
      assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9002, 10 + i)), [L2]);
      h.now += 20;
    }
    assert.equal(events(h)['esp-repaired'], 0);
  });

  it('an established pair is never re-paired after the watch window, nor when its own SPI answers', () => {
    const h = setup({ guessing: false });
    for (const [lan, out, inn] of HOSTS.slice(0, 2)) {
      h.one(esp(lan, R, out, 1));
      h.one(esp(R, PUBLIC, inn, 1));
    }
    h.now += 3 * MIN;
    for (let i = 0; i < 10; i++) {
      h.one(esp(L1, R, 0x1001, 10 + i));
      h.now += 5;
      assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9002, 10 + i)), [L2]);
    }
    assert.equal(events(h)['esp-repaired'], 0);
  });
});
