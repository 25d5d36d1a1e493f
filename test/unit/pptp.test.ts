/**
 * PPTP control-channel reassembly and Call-ID rewrite (spec §5.1, §5.2, §9.7-9.10)
 * through the real Napt engine, checked on the bytes that leave it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ACK, NatHarness, PSH, SYN, TCP, checksumsValid, concat, parse, r16, tcpPacket, w16, w32,
} from './packet-builder';
import { Drop } from '../../src/core/verdict';
import { grePacket, ipInt, ipPacket, pptpHarness, pptpMsg } from './pptp-builder';

const LAN = '10.77.0.11';
const LAN2 = '10.77.0.12';
const SERVER = '198.18.0.20';
const PUBLIC = '198.18.0.2';

/** A control connection LAN:sport -> SERVER:1723 after its handshake; returns the send helpers. */
function connect(h: NatHarness, lan = LAN, sport = 40000, tsOption = false) {
  const options = tsOption ? Uint8Array.from([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]) : undefined;
  let outSeq = 1000;
  let inSeq = 9000;
  h.one(tcpPacket(lan, SERVER, { sport, dport: 1723, flags: SYN, seq: outSeq - 1, options }));
  const synAck = h.one(tcpPacket(SERVER, PUBLIC, { sport: 1723, dport: h.pubPort(TCP, lan, sport, SERVER, 1723), flags: SYN | ACK, seq: inSeq - 1, options }));
  assert.equal(parse(synAck).dst, lan);
  const pub = h.pubPort(TCP, lan, sport, SERVER, 1723);
  return {
    pub,
    out(payload: Uint8Array, seq = outSeq): Uint8Array[] {
      if (seq === outSeq) outSeq += payload.length;
      return h.send(tcpPacket(lan, SERVER, { sport, dport: 1723, flags: ACK | PSH, seq, payload, options }));
    },
    in(payload: Uint8Array, seq = inSeq): Uint8Array[] {
      if (seq === inSeq) inSeq += payload.length;
      return h.send(tcpPacket(SERVER, PUBLIC, { sport: 1723, dport: pub, flags: ACK | PSH, seq, payload, options }));
    },
  };
}

/** TCP payload of a packet that left the engine, after checking every checksum. */
function payloadOf(p: Uint8Array): Uint8Array {
  assert.ok(checksumsValid(p), 'checksums');
  const q = parse(p);
  return q.l4.subarray((q.l4[12] >>> 4) * 4);
}

function diffOffsets(a: Uint8Array, b: Uint8Array): number[] {
  const d: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) d.push(i);
  return d;
}

test('Outgoing-Call-Request split at every byte boundary, two messages in one stream, is rewritten in the Call ID only', () => {
  const stream = concat(pptpMsg(1), pptpMsg(7, 0x1234));
  let pubId = -1;
  for (let k = 1; k < stream.length; k++) {
    const { h, calls } = pptpHarness();
    const c = connect(h);
    const a = c.out(stream.subarray(0, k));
    const b = c.out(stream.subarray(k));
    assert.equal(a.length, 1);
    assert.equal(b.length, 1);
    const got = concat(payloadOf(a[0]), payloadOf(b[0]));
    const call = calls.findLan(ipInt(LAN), ipInt(SERVER), 0x1234);
    assert.ok(call >= 0, `call created (split ${k})`);
    const pub = calls.pubId[call];
    assert.notEqual(pub, 0x1234, 'the public Call ID differs from the LAN one');
    assert.equal(pub >>> 8, 0x12, 'and keeps its high byte');
    if (pubId < 0) pubId = pub;
    assert.equal(r16(got, 156 + 12), pub, `split ${k}`);
    const changed = diffOffsets(stream, got);
    for (const o of changed) assert.ok(o === 168 || o === 169, `only the Call ID changed (split ${k}, byte ${o})`);
  }
});

test('every §5.2 message type is rewritten in the right field, in both directions, with TCP timestamps present', () => {
  const { h, calls } = pptpHarness();
  const c = connect(h, LAN, 40001, true);
  const out7 = payloadOf(c.out(pptpMsg(7, 0x0102))[0]);
  const call = calls.findLan(ipInt(LAN), ipInt(SERVER), 0x0102);
  const pub = calls.pubId[call];
  assert.equal(r16(out7, 12), pub);
  // Out-Call-Reply: Peer's Call ID @14 pub -> lan; the server's own ID @12 untouched.
  const in8 = payloadOf(c.in(pptpMsg(8, 0x0900, pub, 1))[0]);
  assert.equal(r16(in8, 12), 0x0900);
  assert.equal(r16(in8, 14), 0x0102);
  assert.equal(calls.remId[call], 0x0900);
  // Incoming-Call-Request (9) inbound: nothing rewritten; Incoming-Call-Reply (10) outbound allocates.
  assert.deepEqual(payloadOf(c.in(pptpMsg(9, 0x0a00))[0]), pptpMsg(9, 0x0a00));
  const out10 = payloadOf(c.out(pptpMsg(10, 0x0203, 0x0a00, 1))[0]);
  const call2 = calls.findLan(ipInt(LAN), ipInt(SERVER), 0x0203);
  assert.ok(call2 >= 0);
  assert.equal(r16(out10, 12), calls.pubId[call2]);
  assert.equal(r16(out10, 14), 0x0a00);
  assert.equal(calls.remId[call2], 0x0a00);
  // Incoming-Call-Connected (11), WAN-Error-Notify (14), Set-Link-Info (15) inbound: @12 pub -> lan.
  assert.equal(r16(payloadOf(c.in(pptpMsg(11, calls.pubId[call2]))[0]), 12), 0x0203);
  assert.equal(r16(payloadOf(c.in(pptpMsg(14, pub))[0]), 12), 0x0102);
  assert.equal(r16(payloadOf(c.in(pptpMsg(15, pub))[0]), 12), 0x0102);
  // Set-Link-Info outbound carries the server's ID: untouched. Start/Stop/Echo pass unchanged.
  assert.deepEqual(payloadOf(c.out(pptpMsg(15, 0x0900))[0]), pptpMsg(15, 0x0900));
  for (const t of [1, 2, 3, 4, 5, 6]) assert.deepEqual(payloadOf(c.out(pptpMsg(t))[0]), pptpMsg(t));
  // Call-Disconnect-Notify (13) inbound names the server's own ID: untouched, and the call goes into grace.
  assert.deepEqual(payloadOf(c.in(pptpMsg(13, 0x0a00))[0]), pptpMsg(13, 0x0a00));
  assert.ok(calls.expires[call2] < Infinity);
  // Call-Clear-Request (12) outbound: @12 lan -> pub, grace.
  assert.equal(r16(payloadOf(c.out(pptpMsg(12, 0x0102))[0]), 12), pub);
  assert.ok(calls.expires[call] < Infinity);
  h.now += 31_000;
  calls.sweep(h.now);
  assert.equal(calls.count, 0);
});

test('two clients with the same Call ID get distinct public IDs; GRE data and ack-only packets map back', () => {
  const { h, calls } = pptpHarness();
  const c1 = connect(h, LAN);
  const c2 = connect(h, LAN2);
  const p1 = r16(payloadOf(c1.out(pptpMsg(7, 0x4000))[0]), 12);
  const p2 = r16(payloadOf(c2.out(pptpMsg(7, 0x4000))[0]), 12);
  assert.notEqual(p1, p2);
  c1.in(pptpMsg(8, 0x0001, p1, 1));
  c2.in(pptpMsg(8, 0x0002, p2, 1));
  for (const [lan, pub, srvId] of [[LAN, p1, 1], [LAN2, p2, 2]] as const) {
    for (const seq of [5, null]) {
      const o = parse(h.one(grePacket(lan, SERVER, srvId, seq, 7)));
      assert.equal(o.src, PUBLIC);
      assert.equal(r16(o.l4, 6), srvId, 'outbound GRE keeps the server Call ID');
      const i = parse(h.one(grePacket(SERVER, PUBLIC, pub, seq, 7)));
      assert.equal(i.dst, lan);
      assert.equal(r16(i.l4, 6), 0x4000);
    }
  }
  assert.equal(calls.count, 2);
  h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, 0x7777, 1, null));
});

test('a refused call leaves no mapping', () => {
  const { h, calls } = pptpHarness();
  const c = connect(h);
  const pub = r16(payloadOf(c.out(pptpMsg(7, 0x0505))[0]), 12);
  assert.equal(calls.count, 1);
  assert.equal(r16(payloadOf(c.in(pptpMsg(8, 0x0001, pub, 3))[0]), 14), 0x0505);
  assert.equal(calls.count, 0);
  h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, pub, 1, null));
});

test('malformed messages pass untouched and the connection lives', () => {
  const { h, calls } = pptpHarness();
  const c = connect(h);
  const badMagic = pptpMsg(7, 0x0606);
  w32(badMagic, 4, 0x1a2b3c4e);
  assert.deepEqual(payloadOf(c.out(badMagic)[0]), badMagic);
  const badLen = pptpMsg(7, 0x0707);
  w16(badLen, 0, 100);
  // Re-synchronises on the next segment that starts with a valid header.
  assert.deepEqual(payloadOf(c.out(badLen.subarray(0, 100))[0]), badLen.subarray(0, 100));
  const unknown = pptpMsg(1);
  w16(unknown, 8, 16);
  w16(unknown, 12, 0x0707);
  assert.deepEqual(payloadOf(c.out(unknown)[0]), unknown);
  assert.equal(calls.count, 0);
  const good = payloadOf(c.out(pptpMsg(7, 0x0808))[0]);
  assert.equal(calls.count, 1);
  assert.equal(r16(good, 12), calls.pubId[calls.findLan(ipInt(LAN), ipInt(SERVER), 0x0808)]);
});

test('a retransmission gets the same rewrite; a segment beyond a gap is dropped', () => {
  const { h } = pptpHarness();
  const c = connect(h);
  const msg = pptpMsg(7, 0x0909);
  const first = payloadOf(c.out(msg, 1000)[0]);
  const again = payloadOf(c.out(msg, 1000)[0]);
  assert.deepEqual(again, first);
  h.dropped(Drop.PPTP_OUT_OF_ORDER, tcpPacket(LAN, SERVER, { sport: 40000, dport: 1723, flags: ACK, seq: 1000 + 168 + 16, payload: pptpMsg(5) }));
});

test('ICMP fragmentation-needed quoting GRE reaches the LAN host of the call', () => {
  const { h } = pptpHarness();
  const c = connect(h, LAN2);
  const pub = r16(payloadOf(c.out(pptpMsg(7, 0x0b0b))[0]), 12);
  c.in(pptpMsg(8, 0x0c0c, pub, 1));
  const sent = h.one(grePacket(LAN2, SERVER, 0x0c0c, 1, null));
  const icmp = new Uint8Array(8 + 28);
  icmp[0] = 3; icmp[1] = 4; w16(icmp, 6, 1400);
  icmp.set(sent.subarray(0, 28), 8);
  let s = 0;
  for (let i = 0; i < icmp.length; i += 2) s += (icmp[i] << 8) | icmp[i + 1];
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  w16(icmp, 2, ~s & 0xffff);
  const out = parse(h.one(ipPacket('198.18.0.1', PUBLIC, 1, icmp)));
  assert.equal(out.dst, LAN2);
  assert.equal(out.inner?.src, LAN2);
  assert.ok(checksumsValid(h.one(ipPacket('198.18.0.1', PUBLIC, 1, icmp))));
});

test('calls end with their control connection: removing the TCP session removes them and their GRE at once', () => {
  const { h, calls, ctl } = pptpHarness();
  const c = connect(h);
  const c2 = connect(h, LAN2, 40002);
  const pub = r16(payloadOf(c.out(pptpMsg(7, 0x0d0d))[0]), 12);
  c.in(pptpMsg(8, 0x0e0e, pub, 1));
  const pub2 = r16(payloadOf(c2.out(pptpMsg(7, 0x0d0d))[0]), 12);
  c2.in(pptpMsg(8, 0x0f0f, pub2, 1));
  assert.equal(calls.count, 2);
  assert.equal(ctl.count, 2);
  h.table.removeSession(h.session(TCP, LAN, 40000, SERVER, 1723));
  assert.equal(calls.count, 1, 'only the other connection\'s call is left');
  assert.equal(ctl.count, 1);
  h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, pub, 1, null));
  h.dropped(Drop.GRE_NO_MAPPING, grePacket(LAN, SERVER, 0x0e0e, 1, null));
  assert.equal(parse(h.one(grePacket(SERVER, PUBLIC, pub2, 1, null))).dst, LAN2);
});

test('removeAll ends every call and address-only GRE entry', () => {
  const { h, calls, gre, pptp } = pptpHarness();
  gre.allowNonPptp = true;
  const c = connect(h);
  const pub = r16(payloadOf(c.out(pptpMsg(7, 0x1212))[0]), 12);
  c.in(pptpMsg(8, 0x1313, pub, 1));
  const cisco = grePacket(LAN, '198.18.0.30', 0, null, null);
  w16(cisco, 20, 0); w16(cisco, 22, 0x0800);
  h.one(cisco);
  assert.equal(pptp.removeAll(), 1);
  assert.equal(calls.count, 0);
  h.dropped(Drop.GRE_NO_MAPPING, grePacket(SERVER, PUBLIC, pub, 1, null));
  const back = grePacket('198.18.0.30', PUBLIC, 0, null, null);
  w16(back, 20, 0); w16(back, 22, 0x0800);
  h.dropped(Drop.GRE_NO_MAPPING, back);
});
