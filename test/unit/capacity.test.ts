/**
 * Capacity on crafted packets: port overlapping (RFC 7857 §3), takeover of
 * closed TCP 5-tuples and its guard, several public addresses with paired
 * pooling (RFC 4787 REQ-2), per-LAN-host limits, refusals with ICMP code 13
 * (RFC 5508 REQ-8), the negative cache, hairpinning of every protocol.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EV_DESTROY } from '../../src/core/journal';
import { Forwards } from '../../src/nat/forwards';
import { pairedAddress } from '../../src/nat/hosts';
import { NEGATIVE_MS, REMOTE_NEGATIVE_MS } from '../../src/nat/sessions';
import { IpsecMasq } from '../../src/helpers/ipsec/ipsec';
import { attachIpsec } from '../../src/helpers/ipsec/nat';
import { PptpMasq } from '../../src/helpers/pptp/pptp';
import { int32ToIpv4, ipv4ToInt32 } from '../../src/core/ipv4-addr';
import {
  ACK, Drop, FIN, MF, NatHarness, NatSetup, PUBLIC, RST, SYN, TCP, UDP, ascii, checksumProblems, icmpEcho, icmpError,
  icmpPacket, ipv4, parse, tcpPacket, udpPacket, w32,
} from './packet-builder';

const A = '10.77.0.10';
const B = '10.77.0.20';
const C = '10.77.0.30';
const S1 = '203.0.113.5';
const S2 = '198.51.100.7';
const T0 = 1_000_000;
const SEC = 1000;
const DATA = ascii('capacity');
/** The smallest range the config allows. */
const RANGE64: NatSetup['ports'] = { range: [20000, 20063], lowRange: null, preserve: true };

const udpOut = (lan: string, port: number, rem: string, remPort = 53) => udpPacket(lan, rem, { sport: port, dport: remPort, payload: DATA });
const udpBack = (rem: string, pub: number, remPort = 53, to = PUBLIC) => udpPacket(rem, to, { sport: remPort, dport: pub, payload: DATA });
const tcpOut = (lan: string, port: number, rem: string, flags: number, seq: number, ack = 0, remPort = 443) =>
  tcpPacket(lan, rem, { sport: port, dport: remPort, flags, seq, ack });
const tcpBack = (rem: string, pub: number, flags: number, seq: number, ack: number, remPort = 443) =>
  tcpPacket(rem, PUBLIC, { sport: remPort, dport: pub, flags, seq, ack });

for (const vnetLen of [10, 0]) {
  const nat = (s: NatSetup = {}): NatHarness => new NatHarness({ vnetLen, now: T0, ...s });
  /** B holds all 64 ports of RANGE64 with UDP flows to S2:53 from LAN ports 30000..30063; returns their public ports. */
  const fill = (h: NatHarness, proto = UDP): number[] => {
    const ports: number[] = [];
    for (let i = 0; i < 64; i++) {
      const o = parse(h.one(proto === UDP ? udpOut(B, 30000 + i, S2) : tcpOut(B, 30000 + i, S2, SYN, 1000)));
      ports.push(o.sport ?? -1);
    }
    assert.equal(new Set(ports).size, 64, 'one unused port each while there are unused ones');
    return ports;
  };

  describe(`port overlapping (RFC 7857 §3) with vnetLen ${vnetLen}`, () => {
    it('two LAN hosts share one public port to different servers; each gets only its own replies', () => {
      const h = nat({ ports: RANGE64 });
      const ports = fill(h);
      const a = parse(h.one(udpOut(A, 40000, S1)));
      const p = a.sport ?? -1;
      assert.ok(ports.includes(p), 'shares a port of B');
      const bLanPort = 30000 + ports.indexOf(p);
      assert.equal(parse(h.one(udpBack(S1, p))).dst, A);
      assert.deepEqual([parse(h.one(udpBack(S2, p))).dst, parse(h.one(udpBack(S2, p))).dport], [B, bLanPort]);
      // Same port, same server, another source port: no session, filtered (address-and-port-dependent).
      h.dropped(Drop.FILTERED, udpBack(S1, p, 54));
      // Endpoint-independent mapping still holds for A: another server, the same public port.
      assert.equal(parse(h.one(udpOut(A, 40000, '192.0.2.77'))).sport, p);
    });

    it('TCP and ICMP identifiers share too', () => {
      const h = nat({ ports: { range: [20000, 20063], lowRange: null, preserve: false } });
      for (let i = 0; i < 64; i++) h.one(icmpPacket(B, S2, icmpEcho({ id: 100 + i })));
      const e = parse(h.one(icmpPacket(A, S1, icmpEcho({ id: 7 }))));
      const back = parse(h.one(icmpPacket(S1, PUBLIC, icmpEcho({ type: 0, id: e.icmpId ?? -1 }))));
      assert.deepEqual([back.dst, back.icmpId], [A, 7]);
      fill(h, TCP);
      const t = parse(h.one(tcpOut(A, 40000, S1, SYN, 5)));
      assert.equal(parse(h.one(tcpBack(S1, t.sport ?? -1, SYN | ACK, 900, 6))).dst, A);
    });

    it('a LAN endpoint whose port already carries that remote for another host is refused (the mapping stays endpoint-independent)', () => {
      const h = nat({ ports: RANGE64 });
      const ports = fill(h);
      const p = parse(h.one(udpOut(A, 40000, S1))).sport ?? -1;
      // B's flow on p goes to S2:53; A's endpoint must keep p, and (p, S2, 53) is B's.
      const e = h.refused(Drop.MAPPING_CONFLICT, udpOut(A, 40000, S2));
      assert.equal(parse(e).inner?.sport, 40000);
      assert.ok(ports.includes(p));
    });

    it('shares only when no port is unused: the LAN port is kept when unused, another unused one otherwise', () => {
      const h = nat({ ports: RANGE64 });
      assert.equal(parse(h.one(udpOut(A, 20005, S1))).sport, 20005, 'preserved');
      assert.notEqual(parse(h.one(udpOut(B, 20005, S2))).sport, 20005, 'not shared while others are unused');
    });

    it('with endpoint-independent filtering a port belongs to one mapping: no sharing', () => {
      const h = nat({ ports: RANGE64, eif: true });
      fill(h);
      h.refused(Drop.PORTS_EXHAUSTED, udpOut(A, 40000, S1));
    });

    it('a failed allocation is answered from the negative cache for a short while', () => {
      const h = nat({ ports: RANGE64, eif: true });
      fill(h);
      h.refused(Drop.PORTS_EXHAUSTED, udpOut(A, 40000, S1));
      // Free every port: the cached answer still holds for this LAN endpoint, not for another.
      h.now = T0 + 301 * SEC;
      assert.equal(h.table.sweep(h.now, 1000), 64);
      h.one(udpOut(A, 40001, S1));
      h.now += NEGATIVE_MS;
      h.one(udpOut(A, 40000, S1));
    });

    it('a remote whose 5-tuples are all taken refuses new LAN endpoints without probing for a short while', () => {
      const h = nat({ ports: RANGE64 });
      const ports = fill(h);
      // Every port leads to S2:53: no share is possible towards it; other remotes still share.
      h.refused(Drop.PORTS_EXHAUSTED, udpOut(A, 40000, S2));
      const p = parse(h.one(udpOut(C, 40001, S1))).sport ?? -1;
      // B's flow on p ends; p stays in use by C's mapping, so (p, S2:53) is a free 5-tuple only a share finds.
      const s = h.table.findOut(17, ipv4ToInt32(B), 30000 + ports.indexOf(p), ipv4ToInt32(S2), 53);
      h.table.removeSession(s);
      // Within the window even a LAN endpoint whose own port is p (tried first) is refused from the cache...
      h.refused(Drop.PORTS_EXHAUSTED, udpOut(C, p, S2));
      // ...after it the share probes again and finds the tuple.
      h.now += REMOTE_NEGATIVE_MS;
      assert.equal(parse(h.one(udpOut(A, p, S2))).sport, p);
    });
  });

  describe(`takeover of closed TCP 5-tuples with vnetLen ${vnetLen}`, () => {
    /** B holds all 64 ports with TCP connections to S1:443 (ISN 1000) that ended with `close`. */
    const closed = (h: NatHarness, close: 'rst-out' | 'rst-in' | 'fin'): number[] => {
      const ports: number[] = [];
      for (let i = 0; i < 64; i++) {
        const lp = 30000 + i;
        const p = parse(h.one(tcpOut(B, lp, S1, SYN, 1000))).sport ?? -1;
        ports.push(p);
        h.one(tcpBack(S1, p, SYN | ACK, 7000, 1001));
        h.one(tcpOut(B, lp, S1, ACK, 1001, 7001));
        if (close === 'rst-out') {
          h.one(tcpOut(B, lp, S1, RST | ACK, 1001, 7001));
        } else if (close === 'rst-in') {
          h.one(tcpBack(S1, p, RST, 7001, 0));
        } else {
          h.one(tcpOut(B, lp, S1, FIN | ACK, 1001, 7001));
          h.one(tcpBack(S1, p, FIN | ACK, 7001, 1002));
          h.one(tcpOut(B, lp, S1, ACK, 1002, 7002));
        }
      }
      return ports;
    };

    for (const close of ['rst-out', 'rst-in', 'fin'] as const) {
      it(`${close}: a SYN beyond the old sequence takes the 5-tuple; the old connection's strays never reach the new host`, () => {
        const h = nat({ ports: RANGE64 });
        const ports = closed(h, close);
        const before = h.table.sessionCount;
        h.journal.drain(() => undefined);
        const syn = parse(h.one(tcpOut(A, 41000, S1, SYN, 50000)));
        const p = syn.sport ?? -1;
        assert.ok(ports.includes(p), 'took one of the closed 5-tuples');
        assert.equal(h.table.sessionCount, before, 'the closed session is gone');
        assert.equal(h.table.takeovers, 1);
        const events: number[] = [];
        h.journal.drain((kind) => events.push(kind));
        assert.ok(events.includes(EV_DESTROY));
        // A stray of the old connection (acknowledging B's old data) is dropped, not delivered to A.
        h.dropped(Drop.STALE_SEGMENT, tcpBack(S1, p, ACK, 7001, 1002));
        h.dropped(Drop.STALE_SEGMENT, tcpBack(S1, p, RST, 7001, 0));
        // An ICMP error about the old connection's segment does not reach A either.
        const oldSeg = tcpPacket(PUBLIC, S1, { sport: p, dport: 443, flags: ACK, seq: 1001, ack: 7001 });
        h.dropped(Drop.STALE_SEGMENT, icmpPacket(S1, PUBLIC, icmpError(3, 3, oldSeg, 28)));
        // The new connection's own segments pass.
        assert.equal(parse(h.one(tcpBack(S1, p, SYN | ACK, 90000, 50001))).dst, A);
        h.one(tcpOut(A, 41000, S1, ACK, 50001, 90001));
        assert.equal(parse(h.one(tcpBack(S1, p, ACK, 90001, 50001))).dst, A);
        const newSeg = tcpPacket(PUBLIC, S1, { sport: p, dport: 443, flags: ACK, seq: 50001, ack: 90001 });
        assert.equal(parse(h.one(icmpPacket(S1, PUBLIC, icmpError(3, 3, newSeg, 28)))).dst, A);
        h.dropped(Drop.STALE_SEGMENT, tcpBack(S1, p, ACK, 90001, 60000));
      });
    }

    it('no takeover for a SYN not beyond the old sequence, nor for an open connection', () => {
      const h = nat({ ports: RANGE64 });
      closed(h, 'rst-out');
      h.refused(Drop.PORTS_EXHAUSTED, tcpOut(A, 41000, S1, SYN, 500));
      h.refused(Drop.PORTS_EXHAUSTED, tcpOut(C, 41000, S1, ACK, 50000), PUBLIC);
      const g = nat({ ports: RANGE64 });
      for (let i = 0; i < 64; i++) g.one(tcpOut(B, 30000 + i, S1, SYN, 1000));
      g.refused(Drop.PORTS_EXHAUSTED, tcpOut(A, 41000, S1, SYN, 50000));
    });

    it('a RST the LAN host answers with a challenge ACK (RFC 5961) did not close the connection', () => {
      const h = nat({ ports: RANGE64 });
      for (let i = 0; i < 64; i++) {
        const lp = 30000 + i;
        const p = parse(h.one(tcpOut(B, lp, S1, SYN, 1000))).sport ?? -1;
        h.one(tcpBack(S1, p, SYN | ACK, 7000, 1001));
        h.one(tcpBack(S1, p, RST, 123456, 0));
        h.one(tcpOut(B, lp, S1, ACK, 1001, 7001));
      }
      h.refused(Drop.PORTS_EXHAUSTED, tcpOut(A, 41000, S1, SYN, 50000));
    });
  });

  describe(`several public addresses, paired pooling (RFC 4787 REQ-2) with vnetLen ${vnetLen}`, () => {
    const P1 = '198.18.0.2';
    const P2 = '198.18.0.3';
    const both = [P1, P2].map(ipv4ToInt32);
    /** LAN hosts that hash to each address. */
    const hosts = (): [string, string] => {
      const on: string[][] = [[], []];
      for (let i = 10; i < 60; i++) on[pairedAddress(ipv4ToInt32(`10.77.0.${i}`), Int32Array.from(both))].push(`10.77.0.${i}`);
      return [on[0][0], on[1][0]];
    };

    it('every flow of a LAN host leaves from its one address; hosts spread over both; replies come back by address', () => {
      const h = nat({ publics: [P1, P2] });
      const [h1, h2] = hosts();
      for (const [host, pub, port] of [[h1, P1, 5000], [h2, P2, 6000]] as const) {
        const u = parse(h.one(udpOut(host, port, S1)));
        const t = parse(h.one(tcpOut(host, port + 1, S2, SYN, 1)));
        const e = parse(h.one(icmpPacket(host, S1, icmpEcho({ id: 9 }))));
        assert.deepEqual([u.src, t.src, e.src], [pub, pub, pub], host);
        assert.equal(parse(h.one(udpBack(S1, u.sport ?? -1, 53, pub))).dst, host);
      }
      // The same port on the other address is not the host's.
      h.dropped(Drop.NO_MAPPING, udpBack(S1, 5000, 53, P2));
      assert.equal(h.table.addressOfHost(ipv4ToInt32(h1)), ipv4ToInt32(P1));
    });

    it('ESP of a LAN host leaves from its address too', () => {
      const h = nat({ publics: [P1, P2] });
      const m = new IpsecMasq({ lifetimeMs: 1800_000, pendingMs: 120_000, squelchMs: 30_000, retries: 5, parallel: true, guessing: true, guessMax: 5, capacity: 64 });
      attachIpsec(h.napt, m);
      const [, h2] = hosts();
      const esp = new Uint8Array(16);
      w32(esp, 0, 0x1234);
      assert.equal(parse(h.one(ipv4({ src: h2, dst: S1, proto: 50, payload: esp }))).src, P2);
    });

    it('the same LAN port on two hosts of different addresses maps to the same public port without sharing', () => {
      const h = nat({ publics: [P1, P2] });
      const [h1, h2] = hosts();
      assert.equal(parse(h.one(udpOut(h1, 7777, S1))).sport, 7777);
      assert.equal(parse(h.one(udpOut(h2, 7777, S1))).sport, 7777);
    });
  });

  describe(`fairness with vnetLen ${vnetLen}`, () => {
    it('a LAN host at its session limit is refused (counted, listed once); another host still opens flows', () => {
      const h = nat({ hostLimits: { maxSessions: 3, ratePerSecond: 0, burst: 0 } });
      for (let i = 0; i < 3; i++) h.one(udpOut(A, 5000 + i, S1));
      h.refused(Drop.HOST_SESSION_LIMIT, udpOut(A, 5003, S1));
      h.refused(Drop.HOST_SESSION_LIMIT, udpOut(A, 5004, S1));
      h.one(udpOut(A, 5000, S1));
      h.one(udpOut(B, 5000, S1));
      const lines: Array<[string, number, number]> = [];
      h.table.hosts.drainOffenders(h.now, (lan, sessions, refused) => lines.push([int32ToIpv4(lan), sessions, refused]));
      assert.deepEqual(lines, [[A, 3, 2]]);
      h.refused(Drop.HOST_SESSION_LIMIT, udpOut(A, 5005, S1));
      h.table.hosts.drainOffenders(h.now + 30 * SEC, () => assert.fail('reported again within a minute'));
      let again = 0;
      h.table.hosts.drainOffenders(h.now + 61 * SEC, () => again++);
      assert.equal(again, 1);
    });

    it('a LAN host opening new sessions faster than its rate is refused until its bucket refills', () => {
      const h = nat({ hostLimits: { maxSessions: 100, ratePerSecond: 10, burst: 2 } });
      h.one(udpOut(A, 5000, S1));
      h.one(udpOut(A, 5001, S1));
      h.refused(Drop.HOST_RATE_LIMIT, udpOut(A, 5002, S1));
      h.one(udpOut(B, 5002, S1));
      h.now += 100;
      h.one(udpOut(A, 5002, S1));
    });

    it('a full table: existing flows go on, new ones are refused with ICMP code 13, rate-limited, or only dropped', () => {
      const h = nat({ capacity: 2 });
      const a = parse(h.one(udpOut(A, 5000, S1)));
      h.one(udpOut(B, 5000, S1));
      h.refused(Drop.TABLE_FULL, udpOut(C, 5000, S1));
      h.refused(Drop.TABLE_FULL, tcpOut(C, 5001, S1, SYN, 1));
      assert.equal(parse(h.one(udpBack(S1, a.sport ?? -1))).dst, A);
      h.one(udpOut(A, 5000, S1));
      // The burst of 50 ICMP errors is spent; then only drops until tokens come back (1000/s).
      for (let i = 0; i < 48; i++) h.refused(Drop.TABLE_FULL, udpOut(C, 6000 + i, S1));
      h.dropped(Drop.TABLE_FULL, udpOut(C, 7000, S1));
      assert.equal(h.napt.refusals.limited, 1);
      h.now += 2;
      h.refused(Drop.TABLE_FULL, udpOut(C, 7001, S1));
      const quiet = nat({ capacity: 1, refuseWithIcmp: false });
      quiet.one(udpOut(A, 5000, S1));
      quiet.dropped(Drop.TABLE_FULL, udpOut(B, 5000, S1));
    });

    it('refuses a first fragment, never answers an ICMP error with one', () => {
      const h = nat({ capacity: 1 });
      h.one(udpOut(A, 5000, S1));
      h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(B, S1, icmpError(3, 3, udpBack(S1, 1, 53, B), 28)));
      h.refused(Drop.TABLE_FULL, ipv4({ src: B, dst: S1, proto: UDP, flags: MF, payload: udpPacket(B, S1, { sport: 1, dport: 2, payload: DATA }).subarray(20, 36) }));
    });
  });

  describe(`budgets for the outside with vnetLen ${vnetLen}`, () => {
    const SERVER = '10.77.0.40';
    const flooded = (over: Partial<{ perTarget: number; perRemote: number; unansweredMs: number }> = {}): NatHarness => {
      const h = nat({ inboundLimits: { perTarget: 4, perRemote: 2, unansweredMs: 10 * SEC, ...over } });
      h.napt.forwards = new Forwards(h.table, [{ proto: 'tcp', publicPort: 8443, lanAddress: SERVER, lanPort: 443 }]);
      return h;
    };
    const syn = (from: string, port: number, seq = 1) => tcpPacket(from, PUBLIC, { sport: port, dport: 8443, flags: SYN, seq });
    const floodFrom = (i: number) => `192.0.2.${i}`;

    it('a SYN flood at a forward churns through its budget; a real client still gets through and, answered, stays', () => {
      const h = flooded();
      for (let i = 1; i <= 4; i++) assert.equal(parse(h.one(syn(floodFrom(i), 1000))).dst, SERVER);
      assert.equal(h.table.sessionCount, 4);
      // The client's SYN evicts the oldest unanswered session instead of being refused.
      assert.equal(parse(h.one(syn(S1, 5555, 77))).dst, SERVER);
      assert.equal(h.table.sessionCount, 4);
      assert.equal(h.table.inbound.evicted, 1);
      h.one(tcpPacket(SERVER, S1, { sport: 443, dport: 5555, flags: SYN | ACK, seq: 900, ack: 78 }));
      for (let i = 5; i <= 40; i++) h.one(syn(floodFrom(i), 1000));
      const s = h.session(TCP, SERVER, 443, S1, 5555);
      assert.ok(s >= 0, 'the answered session survived the flood');
      assert.ok(h.table.expiresOf(s) > h.now + 200 * SEC, 'and has the normal timer');
      assert.equal(h.table.sessionCount, 5, 'the flood holds at most the budget');
    });

    it('a forwarded port is never a LAN host\'s mapping, so the forward cannot be hijacked', () => {
      const h = flooded();
      const o = parse(h.one(tcpOut(A, 8443, S2, SYN, 1)));
      assert.notEqual(o.sport, 8443, 'the LAN port is not kept: it is forwarded');
      assert.equal(parse(h.one(syn(S1, 4000))).dst, SERVER, 'the forward still works');
      h.napt.forwards = new Forwards(h.table, []);
      h.now += 10 * SEC;
      h.table.sweep(h.now, 100);
      assert.equal(parse(h.one(tcpOut(B, 8443, S1, SYN, 1))).sport, 8443, 'free again once the forward is gone');
    });

    it('one remote holds at most its unanswered sessions; unanswered ones expire after the short timer', () => {
      const h = flooded();
      h.one(syn(S1, 1001));
      h.one(syn(S1, 1002));
      h.dropped(Drop.UNANSWERED_LIMIT, syn(S1, 1003));
      assert.equal(h.table.inbound.heldBy(ipv4ToInt32(S1)), 2);
      const s = h.session(TCP, SERVER, 443, S1, 1001);
      assert.equal(h.table.expiresOf(s), h.now + 10 * SEC);
      h.now += 10 * SEC;
      assert.equal(h.table.sweep(h.now, 100), 2);
      assert.equal(h.table.inbound.heldBy(ipv4ToInt32(S1)), 0);
      h.one(syn(S1, 1003));
    });

    it('with endpoint-independent filtering a spray at one mapping is bounded the same way', () => {
      const h = nat({ eif: true, inboundLimits: { perTarget: 3, perRemote: 1, unansweredMs: 10 * SEC } });
      const p = parse(h.one(udpOut(A, 5000, S1))).sport ?? -1;
      for (let i = 1; i <= 20; i++) h.one(udpBack(floodFrom(i), p));
      assert.equal(h.table.sessionCount, 4, 'A\'s own session and the budget of 3');
      h.dropped(Drop.UNANSWERED_LIMIT, udpBack(floodFrom(20), p, 54));
      assert.equal(parse(h.one(udpBack(S1, p))).dst, A, 'the LAN host\'s own flow is untouched');
    });
  });

  describe(`hairpinning every protocol with vnetLen ${vnetLen}`, () => {
    /** A NAT with the IPsec and PPTP trackers and B behind ESP, GRE and udp/500 forwards. */
    const vpnNat = (forwards = true): NatHarness => {
      const h = nat();
      const m = new IpsecMasq({ lifetimeMs: 1800_000, pendingMs: 120_000, squelchMs: 30_000, retries: 5, parallel: true, guessing: true, guessMax: 5, capacity: 64 });
      attachIpsec(h.napt, m);
      new PptpMasq(64, h.table, h.journal).attach(h.napt);
      h.napt.forwards = new Forwards(h.table, forwards ? [
        { proto: 'esp', lanAddress: B }, { proto: 'gre', lanAddress: B }, { proto: 'udp', publicPort: 500, lanAddress: B, lanPort: 500 },
      ] : []);
      return h;
    };
    const esp = (src: string, dst: string, spi: number): Uint8Array => {
      const b = new Uint8Array(16);
      w32(b, 0, spi);
      return ipv4({ src, dst, proto: 50, payload: b });
    };
    // Enhanced GRE (RFC 2637 §4.1): K and version 1, protocol 0x880b, payload length 0, Call ID.
    const gre = (src: string, dst: string, callId: number): Uint8Array =>
      ipv4({ src, dst, proto: 47, payload: Uint8Array.from([0x20, 0x01, 0x88, 0x0b, 0, 0, callId >> 8, callId & 0xff]) });
    const ike = (src: string, dst: string): Uint8Array => {
      const b = new Uint8Array(28);
      b.fill(0xc1, 0, 8);
      b[17] = 0x10;
      w32(b, 24, 28);
      return udpPacket(src, dst, { sport: 500, dport: 500, payload: b });
    };

    for (const [name, out, back] of [
      ['ESP', esp(A, PUBLIC, 0x4242), esp(B, PUBLIC, 0x5151)],
      ['GRE', gre(A, PUBLIC, 0x1234), gre(B, PUBLIC, 0x4321)],
      ['ISAKMP', ike(A, PUBLIC), ike(B, PUBLIC)],
    ] as const) {
      it(`${name} to the public address reaches the server behind its forward and the answer the client; never source = destination`, () => {
        const h = vpnNat();
        const o = h.one(out);
        assert.deepEqual([parse(o).src, parse(o).dst], [PUBLIC, B]);
        assert.deepEqual(checksumProblems(o), []);
        const r = h.one(back);
        assert.deepEqual([parse(r).src, parse(r).dst], [PUBLIC, A]);
        assert.deepEqual(checksumProblems(r), []);
        vpnNat(false).dropped(Drop.NO_MAPPING, out);
      });
    }

    it('an ICMP echo request to the public address has no one behind it: dropped, not sent back out', () => {
      const h = nat();
      h.dropped(Drop.NO_MAPPING, icmpPacket(A, PUBLIC, icmpEcho({ id: 3 })));
    });

    it('UDP keeps its hairpin (RFC 4787 REQ-9) and its checksums', () => {
      const h = nat({ eif: true });
      const pb = parse(h.one(udpOut(B, 6000, S1))).sport ?? -1;
      const o = h.one(udpPacket(A, PUBLIC, { sport: 5000, dport: pb, payload: DATA }));
      assert.deepEqual([parse(o).src, parse(o).dst, parse(o).dport], [PUBLIC, B, 6000]);
      assert.deepEqual(checksumProblems(o), []);
    });
  });
}
