/**
 * PPTP masquerade under real-world conditions (retransmissions, fragments,
 * exhaustion, floods, control-connection state, forwarded servers), driven
 * through the real engine with crafted packets and checked on the bytes
 * that leave it. Every test also checks the wire rule: a Call ID a LAN host
 * sent never leaves towards the server as some other host's public ID, and
 * no LAN Call ID leaves untranslated.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  ACK, FIN, NatHarness, PSH, RST, SYN, TCP, checksumsValid, concat, fragment, parse, r16, reassemble, tcpPacket,
} from './packet-builder';
import { Drop } from '../../src/core/verdict';
import { grePacket, ipInt, pptpHarness, pptpMsg } from './pptp-builder';
import { PptpCalls, REFUSED_CALL_ID } from '../../src/helpers/pptp/calls';
import { Serials } from '../../src/core/table';

const L1 = '10.77.0.11';
const L2 = '10.77.0.12';
const SERVER = '198.18.0.20';
const PUBLIC = '198.18.0.2';

/** TCP payload of a packet that left the engine, after checking every checksum. */
function payloadOf(p: Uint8Array): Uint8Array {
  assert.ok(checksumsValid(p), 'checksums');
  const q = parse(p);
  return q.l4.subarray((q.l4[12] >>> 4) * 4);
}

/**
 * A control connection through the engine with both sides' sequence and
 * acknowledgment numbers kept as TCP would. `out`/`in` send the next bytes
 * (or, with `seq`, bytes at an older position: a retransmission).
 */
function control(h: NatHarness, lan = L1, sport = 40000, server = SERVER, serverPort = 1723) {
  let outSeq = 1000;
  let inSeq = 9000;
  h.one(tcpPacket(lan, server, { sport, dport: serverPort, flags: SYN, seq: outSeq - 1 }));
  const pub = h.pubPort(TCP, lan, sport, server, serverPort);
  h.one(tcpPacket(server, PUBLIC, { sport: serverPort, dport: pub, flags: SYN | ACK, seq: inSeq - 1, ack: outSeq }));
  const wire: Uint8Array[] = [];
  const c = {
    pub,
    /** Payloads the server received, in order. */
    wire,
    get outSeq() { return outSeq; },
    get inSeq() { return inSeq; },
    out(payload: Uint8Array, seq = outSeq, flags = ACK | PSH): Uint8Array[] {
      if (seq === outSeq) outSeq = (outSeq + payload.length) | 0;
      const r = h.send(tcpPacket(lan, server, { sport, dport: serverPort, flags, seq, ack: inSeq, payload }));
      for (const o of r) if (parse(o).dst === server) wire.push(payloadOf(o));
      return r;
    },
    in(payload: Uint8Array, seq = inSeq, flags = ACK | PSH): Uint8Array[] {
      if (seq === inSeq) inSeq = (inSeq + payload.length) | 0;
      return h.send(tcpPacket(server, PUBLIC, { sport: serverPort, dport: pub, flags, seq, ack: outSeq, payload }));
    },
  };
  return c;
}

/** The Call IDs at offset 12 of the OCRQs the server received. */
function ocrqIds(wire: Uint8Array[]): number[] {
  const ids: number[] = [];
  const all = concat(...wire);
  for (let o = 0; o + 12 <= all.length; o += r16(all, o)) if (r16(all, o + 8) === 7) ids.push(r16(all, o + 12));
  return ids;
}

describe('PPTP retransmissions (issue: a resent OCRQ left with the LAN Call ID)', () => {
  it('an old OCRQ resent after 6 calls leaves exactly as the first time, also cut differently', () => {
    const { h, calls } = pptpHarness();
    const c = control(h);
    const starts: number[] = [];
    const sent: Uint8Array[] = [];
    for (let i = 0; i < 6; i++) {
      starts.push(c.outSeq);
      const msg = pptpMsg(7, 0x1101 + i);
      sent.push(payloadOf(c.out(msg)[0]));
      c.in(pptpMsg(8, 0x5000 + i, r16(sent[i], 12), 1));
    }
    const pubs = sent.map((m) => r16(m, 12));
    assert.equal(new Set(pubs).size, 6);
    for (let i = 0; i < 6; i++) assert.notEqual(pubs[i], 0x1101 + i, 'rewritten');
    // The first OCRQ again, as it was.
    assert.deepEqual(payloadOf(c.out(pptpMsg(7, 0x1101), starts[0])[0]), sent[0]);
    // A coalesced resend of calls 2-4, cut in the middle of call 2's Call ID.
    const span = concat(pptpMsg(7, 0x1102), pptpMsg(7, 0x1103), pptpMsg(7, 0x1104));
    const again = concat(payloadOf(c.out(span.subarray(0, 13), starts[1])[0]), payloadOf(c.out(span.subarray(13), starts[1] + 13)[0]));
    assert.deepEqual(again, concat(sent[1], sent[2], sent[3]));
    assert.equal(calls.count, 6);
  });

  it('a resend reaching back past the remembered rewrites is dropped, never sent unrewritten', () => {
    const { h } = pptpHarness();
    const c = control(h);
    const first = c.outSeq;
    payloadOf(c.out(pptpMsg(7, 0x2100))[0]);
    // Many more rewrites, all acknowledged by the server, push the first one out of memory.
    for (let i = 1; i < 80; i++) {
      c.out(pptpMsg(12, 0x2100));
      c.in(pptpMsg(5));
    }
    h.dropped(Drop.PPTP_STALE_DUPLICATE, tcpPacket(L1, SERVER, { sport: 40000, dport: 1723, flags: ACK, seq: first, ack: c.inSeq, payload: pptpMsg(7, 0x2100) }));
  });

  it('a segment beyond a gap waits for the gap, then both leave rewritten in order', () => {
    const { h } = pptpHarness();
    const c = control(h);
    const a = pptpMsg(7, 0x2201);
    const b = pptpMsg(7, 0x2202);
    const at = c.outSeq;
    assert.deepEqual(c.out(b, at + a.length), []);
    const out = c.out(a, at);
    assert.equal(out.length, 2);
    const [pa, pb] = out.map(payloadOf);
    assert.notEqual(r16(pa, 12), 0x2201);
    assert.notEqual(r16(pb, 12), 0x2202);
    assert.equal(r16(pb, 12) >>> 8, 0x22);
  });
});

describe('PPTP over IP fragments (issue: a fragmented segment wedged the connection)', () => {
  for (const order of ['in order', 'last fragment first'] as const) {
    it(`a fragmented OCRQ is reassembled, rewritten, sent as its fragments (${order}); the connection goes on`, () => {
      const { h, calls } = pptpHarness();
      const c = control(h);
      // 24 bytes of echo, then the OCRQ: the Call ID sits in the second fragment.
      const seg = tcpPacket(L1, SERVER, { sport: 40000, dport: 1723, flags: ACK | PSH, seq: c.outSeq, ack: c.inSeq, payload: concat(pptpMsg(5), pptpMsg(7, 0x3301)) });
      const frags = fragment(seg, 40);
      assert.ok(frags.length >= 3);
      const sendOrder = order === 'in order' ? frags : [...frags].reverse();
      const out: Uint8Array[] = [];
      for (const f of sendOrder) out.push(...h.send(f));
      assert.equal(out.length, frags.length, 'every fragment leaves once the datagram is whole');
      for (const o of out) assert.equal(parse(o).src, PUBLIC);
      const whole = reassemble(out);
      const pay = payloadOf(whole);
      const call = calls.findLan(ipInt(L1), ipInt(SERVER), 0x3301);
      assert.ok(call >= 0);
      assert.equal(r16(pay, 16 + 12), calls.pubId[call]);
      // Not wedged: the next segment is inspected in sequence.
      const next = c.out(pptpMsg(7, 0x3302), c.outSeq + 16 + 168);
      assert.equal(next.length, 1);
      assert.notEqual(r16(payloadOf(next[0]), 12), 0x3302);
    });
  }
});

describe('PPTP Call IDs (issue: the 256th call went out untranslated)', () => {
  it('300 calls to one server: distinct public IDs, none a LAN ID of another call, GRE to each', () => {
    const h = new NatHarness({ capacity: 4096 });
    const { calls } = pptpHarnessWith(h, 512);
    const c = control(h);
    const pubs = new Set<number>();
    for (let i = 0; i < 300; i++) {
      const o = payloadOf(c.out(pptpMsg(7, 0x4000 + i))[0]);
      pubs.add(r16(o, 12));
      c.in(pptpMsg(8, 0x6000 + i, r16(o, 12), 1));
    }
    assert.equal(pubs.size, 300);
    assert.ok(!pubs.has(REFUSED_CALL_ID));
    assert.equal(calls.count, 300);
    assert.deepEqual(ocrqIds(c.wire), [...pubs], 'the server saw public IDs only');
    // A second host calling with the first one's LAN IDs: its public IDs are nobody's LAN ID.
    const c2 = control(h, L2, 40001);
    for (let i = 0; i < 3; i++) {
      const pub = r16(payloadOf(c2.out(pptpMsg(7, 0x4000 + i))[0]), 12);
      assert.ok(!pubs.has(pub) && (pub < 0x4000 || pub >= 0x4000 + 300), `public ${pub.toString(16)} is not a LAN ID in use`);
    }
    for (const p of [0, 150, 299]) {
      const pub = [...pubs][p];
      const g = parse(h.one(grePacket(SERVER, PUBLIC, pub, 1, null)));
      assert.equal(g.dst, L1);
      assert.equal(r16(g.l4, 6), 0x4000 + p);
    }
  });

  it('allocation uses the whole 16-bit space and refuses only when it is truly exhausted', () => {
    const serials = new Serials();
    const calls = new PptpCalls(70000, serials, null);
    const rem = ipInt(SERVER);
    let made = 0;
    for (let i = 0; i < 70000; i++) if (calls.create(ipInt(L1), rem, 0x0101, 1, 0, 0, 0) >= 0) made++;
    // 65535 IDs minus 0 and the LAN ID 0x0101 itself.
    assert.equal(made, 65534);
    assert.equal(calls.allocate(rem, 0x0202, 0x02), -1);
    assert.ok(calls.create(ipInt(L1), ipInt('198.18.0.21'), 0x0101, 1, 0, 0, 0) >= 0, 'another server has its own space');
  });

  it('with no public ID left the call is refused: Call ID 0 on the wire, the PNS sees a failed call', () => {
    const { h, calls } = pptpHarness();
    const c = control(h);
    for (let i = 0; i < 64; i++) payloadOf(c.out(pptpMsg(7, 0x5000 + i))[0]);
    assert.equal(calls.count, 64, 'the call table is full');
    const o = payloadOf(c.out(pptpMsg(7, 0x5100))[0]);
    assert.equal(r16(o, 12), REFUSED_CALL_ID, 'never the LAN Call ID');
    const reply = payloadOf(c.in(pptpMsg(8, 0x7777, REFUSED_CALL_ID, 1))[0]);
    assert.equal(r16(reply, 14), 0x5100, 'the reply names the PNS\'s own call');
    assert.equal(reply[16], 2, 'and reports a general error');
    h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, REFUSED_CALL_ID, 1, null));
  });
});

/** A PPTP harness over a given NatHarness with a larger call table. */
function pptpHarnessWith(h: NatHarness, capacity: number) {
  const { PptpMasq } = require('../../src/helpers/pptp/pptp') as typeof import('../../src/helpers/pptp/pptp');
  const pptp = new PptpMasq(capacity, h.table, h.journal);
  pptp.attach(h.napt);
  return { calls: pptp.calls, ctl: pptp.control, pptp };
}

describe('PPTP control-connection table (issue: it failed open)', () => {
  it('SYNs that never complete a handshake take no record', () => {
    const { h, ctl } = pptpHarness();
    for (let i = 0; i < 200; i++) h.one(tcpPacket(L2, SERVER, { sport: 20000 + i, dport: 1723, flags: SYN, seq: i }));
    assert.equal(ctl.count, 0);
    const c = control(h, L1, 40000);
    assert.notEqual(r16(payloadOf(c.out(pptpMsg(7, 0x6601))[0]), 12), 0x6601);
    assert.equal(ctl.count, 1);
  });

  it('when the table is full a new control connection is reset both ways, never passed uninspected', () => {
    const { h, ctl, pptp } = pptpHarness();
    for (let i = 0; i < 64; i++) control(h, L2, 30000 + i).out(pptpMsg(1));
    assert.equal(ctl.count, 64);
    assert.deepEqual(pptp.stats().controlStates, { none: 0, requested: 64, confirmed: 0, stopping: 0 });
    const c = control(h, L1, 40000);
    const before = Float64Array.from(h.napt.drops.counts);
    const out = c.out(pptpMsg(7, 0x6602));
    assert.deepEqual(h.dropDelta(before), { refused: 1 });
    assert.equal(out.length, 2);
    const [fwd, back] = out.map(parse);
    assert.deepEqual([fwd.src, fwd.dst, fwd.dport, (fwd.tcpFlags ?? 0) & RST], [PUBLIC, SERVER, 1723, RST]);
    assert.deepEqual([back.src, back.dst, back.sport, back.dport, (back.tcpFlags ?? 0) & RST], [SERVER, L1, 1723, 40000, RST]);
    assert.equal(r16(fwd.l4, 12) >>> 12, 5, 'no payload, no options');
    assert.ok(out.every(checksumsValid));
    assert.equal((pptp.stats().events as Record<string, number>)['control-table-full'], 1);
  });
});

describe('PPTP control-connection state (issue: GRE flowed 4.5 min after the control connection closed)', () => {
  /** One connected call on a fresh connection: [connection, public ID, server ID]. */
  function call(h: NatHarness, lan = L1, sport = 40000): [ReturnType<typeof control>, number] {
    const c = control(h, lan, sport);
    c.out(pptpMsg(1));
    const pub = r16(payloadOf(c.out(pptpMsg(7, 0x7701))[0]), 12);
    c.in(pptpMsg(8, 0x7a01, pub, 1));
    assert.equal(parse(h.one(grePacket(SERVER, PUBLIC, pub, 1, null))).dst, lan);
    return [c, pub];
  }

  it('Stop-Control-Connection ends the calls at once', () => {
    const { h, calls } = pptpHarness();
    const [c, pub] = call(h);
    c.out(pptpMsg(3));
    assert.equal(calls.count, 1, 'still up while the stop is pending');
    c.in(pptpMsg(4));
    assert.equal(calls.count, 0);
    h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, pub, 2, null));
  });

  it('FIN in both directions, or a RST, ends the calls at once', () => {
    for (const how of ['fin', 'rst'] as const) {
      const { h, calls } = pptpHarness();
      const [c, pub] = call(h);
      if (how === 'fin') {
        c.out(new Uint8Array(0), c.outSeq, FIN | ACK);
        assert.equal(calls.count, 1, 'half-closed');
        c.in(new Uint8Array(0), c.inSeq, FIN | ACK);
      } else {
        c.in(new Uint8Array(0), c.inSeq, RST);
      }
      assert.equal(calls.count, 0, how);
      h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, pub, 2, null));
      h.dropped(Drop.GRE_NO_MAPPING, grePacket(L1, SERVER, 0x7a01, 2, null));
    }
  });

  it('Call-Disconnect-Notify ends its call at once; its sibling keeps going', () => {
    const { h, calls } = pptpHarness();
    const [c, pub] = call(h);
    const pub2 = r16(payloadOf(c.out(pptpMsg(7, 0x7702))[0]), 12);
    c.in(pptpMsg(8, 0x7a02, pub2, 1));
    c.in(pptpMsg(13, 0x7a01));
    assert.equal(calls.count, 1);
    h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, pub, 3, null));
    assert.equal(parse(h.one(grePacket(SERVER, PUBLIC, pub2, 1, null))).dst, L1);
  });
});

describe('a PAC behind a forward to another LAN port (issue: not inspected outbound)', () => {
  it('its own Call IDs are masqueraded both ways and its GRE maps back by them', () => {
    const PAC = '10.77.0.13';
    const { h, calls } = pptpHarness([{ proto: 'tcp', publicPort: 1723, lanAddress: PAC, lanPort: 1800 }, { proto: 'gre', lanAddress: PAC }]);
    const CLIENT = '198.18.0.30';
    let cs = 5000;
    let ss = 7000;
    h.one(tcpPacket(CLIENT, PUBLIC, { sport: 41000, dport: 1723, flags: SYN, seq: cs - 1 }));
    h.one(tcpPacket(PAC, CLIENT, { sport: 1800, dport: 41000, flags: SYN | ACK, seq: ss - 1, ack: cs }));
    const send = (from: 'client' | 'pac', payload: Uint8Array): Uint8Array => {
      const p = from === 'client'
        ? tcpPacket(CLIENT, PUBLIC, { sport: 41000, dport: 1723, flags: ACK | PSH, seq: cs, ack: ss, payload })
        : tcpPacket(PAC, CLIENT, { sport: 1800, dport: 41000, flags: ACK | PSH, seq: ss, ack: cs, payload });
      if (from === 'client') cs += payload.length; else ss += payload.length;
      return payloadOf(h.one(p));
    };
    send('client', pptpMsg(1));
    send('pac', pptpMsg(2));
    send('client', pptpMsg(7, 0x0100));
    const reply = send('pac', pptpMsg(8, 0x0900, 0x0100, 1));
    const pub = r16(reply, 12);
    assert.notEqual(pub, 0x0900, 'the PAC\'s own Call ID is masqueraded outbound');
    const c = calls.findPub(ipInt(CLIENT), pub);
    assert.ok(c >= 0);
    assert.equal(calls.lan[c], ipInt(PAC));
    const g = parse(h.one(grePacket(CLIENT, PUBLIC, pub, 1, null)));
    assert.deepEqual([g.dst, r16(g.l4, 6)], [PAC, 0x0900]);
  });
});
