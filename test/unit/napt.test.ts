/**
 * The NAPT engine on crafted packets: every test asserts on the translated
 * bytes, usually by comparing them with a packet built from scratch with the
 * expected fields (so incremental checksum updates must equal recomputation).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Drop, DROP_NAMES } from '../../src/core/verdict';
import { EV_DESTROY, EV_NEW, EV_UPDATE } from '../../src/core/journal';
import { tcpStateName } from '../../src/nat/tcp-tracker';
import { T_BYTES_IN, T_BYTES_OUT, T_PKTS_IN, T_PKTS_OUT } from '../../src/nat/napt';
import { TABLE_SESSIONS } from '../../src/nat/sessions';
import { SIDE_LAN, SIDE_WAN } from '../../src/core/side';
import { VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_UDP_L4 } from '../../src/wire/vnet';
import {
  ACK, Addr, DF, FIN, ICMP, IpOpts, MF, NatHarness, NatSetup, PSH, PUBLIC, Parsed, RST, SYN, TCP, UDP,
  ascii, asPartial, checksumProblems, concat, completePartial, fixIpChecksum, fixL4Checksum, fragment, icmpEcho, icmpError,
  icmpPacket, ipv4, mutate, parse, pattern, pseudo, r16, reassemble, tcp, tcpPacket, udpPacket, vnetHeader, w16,
} from './packet-builder';

const A = '10.77.0.10';
const B = '10.77.0.20';
const C = '10.77.0.30';
const R1 = '203.0.113.5';
const R2 = '198.51.100.7';
const ROUTER = '192.0.2.254';
const T0 = 1_000_000;
const SEC = 1000;
const DATA = ascii('hello, world');

/** One protocol's packets in both directions; for ICMP the "port" on the LAN side is the echo identifier. */
interface Kind {
  name: string;
  proto: number;
  remPort: number;
  /** LAN side -> remote. */
  out(lan: Addr, lanPort: number, rem: Addr, remPort: number, ip?: IpOpts): Uint8Array;
  /** Remote -> LAN side. */
  back(rem: Addr, remPort: number, lan: Addr, lanPort: number, ip?: IpOpts): Uint8Array;
}

const UDP_KIND: Kind = {
  name: 'UDP', proto: UDP, remPort: 53,
  out: (l, lp, r, rp, ip) => udpPacket(l, r, { sport: lp, dport: rp, payload: DATA }, ip),
  back: (r, rp, l, lp, ip) => udpPacket(r, l, { sport: rp, dport: lp, payload: DATA }, ip),
};
const TCP_KIND: Kind = {
  name: 'TCP', proto: TCP, remPort: 443,
  out: (l, lp, r, rp, ip) => tcpPacket(l, r, { sport: lp, dport: rp, seq: 0x11223344, ack: 0x55667788, flags: ACK | PSH, payload: DATA }, ip),
  back: (r, rp, l, lp, ip) => tcpPacket(r, l, { sport: rp, dport: lp, seq: 0x55667788, ack: 0x11223350, flags: ACK | PSH, payload: DATA }, ip),
};
const ICMP_KIND: Kind = {
  name: 'ICMP echo', proto: ICMP, remPort: 0,
  out: (l, id, r, _rp, ip) => icmpPacket(l, r, icmpEcho({ id, seq: 7, payload: DATA }), ip),
  back: (r, _rp, l, id, ip) => icmpPacket(r, l, icmpEcho({ type: 0, id, seq: 7, payload: DATA }), ip),
};
const KINDS = [UDP_KIND, TCP_KIND, ICMP_KIND];

/** The LAN-side port (or echo id) of a packet in the outbound or inbound direction. */
const lanSide = (p: Parsed, outbound: boolean): number =>
  (p.proto === ICMP ? p.icmpId : outbound ? p.sport : p.dport) ?? -1;

for (const vnetLen of [10, 0]) {
  const nat = (s: NatSetup = {}): NatHarness => new NatHarness({ vnetLen, now: T0, ...s });

  describe(`Napt with vnetLen ${vnetLen}`, () => {
    describe('translation', () => {
      for (const k of KINDS) {
        it(`${k.name}: outbound gets the public source, keeps a free port, gives the hop back; the reply translates back`, () => {
          const h = nat();
          const o = h.one(k.out(A, 40000, R1, k.remPort, { ttl: 63, id: 0x4242, flags: DF }));
          assert.equal(lanSide(parse(o), true), 40000, 'port preserved');
          assert.deepEqual(o, k.out(PUBLIC, 40000, R1, k.remPort, { ttl: 64, id: 0x4242, flags: DF }));
          assert.deepEqual(checksumProblems(o), []);

          const i = h.one(k.back(R1, k.remPort, PUBLIC, 40000, { ttl: 50, id: 0x99 }));
          assert.deepEqual(i, k.back(R1, k.remPort, A, 40000, { ttl: 51, id: 0x99 }));
          assert.deepEqual(checksumProblems(i), []);
          const t = h.napt.traffic;
          assert.deepEqual([t[T_PKTS_OUT], t[T_PKTS_IN], t[T_BYTES_OUT], t[T_BYTES_IN]], [1, 1, o.length, i.length]);
        });

        it(`${k.name}: a taken port is replaced, and both checksums follow`, () => {
          const h = nat();
          h.one(k.out(B, 40000, R2, k.remPort));
          const o = h.one(k.out(A, 40000, R1, k.remPort, { ttl: 20 }));
          const pub = lanSide(parse(o), true);
          assert.notEqual(pub, 40000);
          assert.ok(pub >= 1024 && pub <= 65535, `public port ${pub}`);
          assert.deepEqual(o, k.out(PUBLIC, pub, R1, k.remPort, { ttl: 21 }));
          assert.deepEqual(checksumProblems(o), []);
          const i = h.one(k.back(R1, k.remPort, PUBLIC, pub));
          assert.deepEqual(i, k.back(R1, k.remPort, A, 40000, { ttl: 65 }));
          assert.deepEqual(checksumProblems(i), []);
        });
      }

      it('ICMP echo with a low identifier gets one from the main range', () => {
        const h = nat();
        const o = h.one(ICMP_KIND.out(A, 7, R1, 0));
        const pub = lanSide(parse(o), true);
        assert.ok(pub >= 1024, `id ${pub}`);
        assert.deepEqual(o, ICMP_KIND.out(PUBLIC, pub, R1, 0, { ttl: 65 }));
        assert.deepEqual(h.one(ICMP_KIND.back(R1, 0, PUBLIC, pub)), ICMP_KIND.back(R1, 0, A, 7, { ttl: 65 }));
      });

      it('TTL 255 is left alone', () => {
        const h = nat();
        assert.deepEqual(h.one(UDP_KIND.out(A, 5000, R1, 53, { ttl: 255 })), UDP_KIND.out(PUBLIC, 5000, R1, 53, { ttl: 255 }));
      });

      it('a header with IP options is translated with valid checksums', () => {
        const h = nat();
        const options = Uint8Array.of(0x94, 0x04, 0x00, 0x00); // Router Alert
        const o = h.one(UDP_KIND.out(A, 5000, R1, 53, { options, ttl: 9 }));
        assert.deepEqual(o, UDP_KIND.out(PUBLIC, 5000, R1, 53, { options, ttl: 10 }));
        assert.deepEqual(checksumProblems(o), []);
      });

      it('a TCP segment arriving mid-stream (no SYN) is translated', () => {
        const h = nat();
        assert.deepEqual(h.one(TCP_KIND.out(A, 40000, R1, 443)), TCP_KIND.out(PUBLIC, 40000, R1, 443, { ttl: 65 }));
      });
    });

    describe('mapping (RFC 4787 / RFC 5382)', () => {
      for (const k of [UDP_KIND, TCP_KIND]) {
        it(`${k.name}: endpoint-independent mapping: one LAN socket, two remotes, one public port`, () => {
          const h = nat();
          h.one(k.out(B, 5000, R2, k.remPort)); // takes 5000, so A's port is allocated
          const p1 = lanSide(parse(h.one(k.out(A, 5000, R1, k.remPort))), true);
          const p2 = lanSide(parse(h.one(k.out(A, 5000, R2, k.remPort))), true);
          assert.notEqual(p1, 5000);
          assert.equal(p1, p2);
          assert.equal(h.table.mappingCount, 2);
          assert.equal(h.table.sessionCount, 3);
        });

        it(`${k.name}: two LAN hosts, same port, same server: different public ports (no overloading)`, () => {
          const h = nat();
          const pa = lanSide(parse(h.one(k.out(A, 5000, R1, k.remPort))), true);
          const pb = lanSide(parse(h.one(k.out(B, 5000, R1, k.remPort))), true);
          assert.equal(pa, 5000);
          assert.notEqual(pb, pa);
          assert.deepEqual(h.one(k.back(R1, k.remPort, PUBLIC, pa)), k.back(R1, k.remPort, A, 5000, { ttl: 65 }));
          assert.deepEqual(h.one(k.back(R1, k.remPort, PUBLIC, pb)), k.back(R1, k.remPort, B, 5000, { ttl: 65 }));
        });

        it(`${k.name}: the port class is kept (LAN port < 1024 -> public < 1024, >= 1024 -> >= 1024)`, () => {
          const h = nat();
          assert.equal(lanSide(parse(h.one(k.out(A, 500, R1, k.remPort))), true), 500);
          const low = lanSide(parse(h.one(k.out(B, 500, R1, k.remPort))), true);
          assert.ok(low >= 1 && low < 1024 && low !== 500, `low port ${low}`);
          assert.equal(lanSide(parse(h.one(k.out(A, 40000, R1, k.remPort))), true), 40000);
          const high = lanSide(parse(h.one(k.out(B, 40000, R1, k.remPort))), true);
          assert.ok(high >= 1024 && high !== 40000, `high port ${high}`);
        });
      }

      it('UDP, TCP and ICMP have separate port spaces', () => {
        const h = nat();
        for (const k of KINDS) assert.equal(lanSide(parse(h.one(k.out(A, 40000, R1, k.remPort))), true), 40000, k.name);
      });
    });

    describe('filtering', () => {
      it('by default inbound from an endpoint the LAN socket never contacted is FILTERED (address and port dependent)', () => {
        const h = nat();
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        h.dropped(Drop.FILTERED, UDP_KIND.back(R2, 53, PUBLIC, 5000));
        h.dropped(Drop.FILTERED, UDP_KIND.back(R1, 54, PUBLIC, 5000));
        h.one(UDP_KIND.back(R1, 53, PUBLIC, 5000));
        h.one(TCP_KIND.out(A, 6000, R1, 443));
        h.dropped(Drop.FILTERED, TCP_KIND.back(R2, 443, PUBLIC, 6000));
        h.one(ICMP_KIND.out(A, 4444, R1, 0));
        h.dropped(Drop.FILTERED, ICMP_KIND.back(R2, 0, PUBLIC, 4444));
      });

      it('with endpoint-independent filtering it is accepted and gets its own session', () => {
        const h = nat({ eif: true });
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        assert.deepEqual(h.one(UDP_KIND.back(R2, 99, PUBLIC, 5000)), UDP_KIND.back(R2, 99, A, 5000, { ttl: 65 }));
        assert.equal(h.table.sessionCount, 2);
        // A's answer to R2 uses that session and the same public port.
        assert.deepEqual(h.one(UDP_KIND.out(A, 5000, R2, 99)), UDP_KIND.out(PUBLIC, 5000, R2, 99, { ttl: 65 }));
        assert.equal(h.table.sessionCount, 2);
      });

      for (const eif of [false, true]) {
        it(`unsolicited traffic to an unmapped port is NO_MAPPING (eif ${eif})`, () => {
          const h = nat({ eif });
          h.one(UDP_KIND.out(A, 5000, R1, 53));
          h.dropped(Drop.NO_MAPPING, UDP_KIND.back(R1, 53, PUBLIC, 5001));
          h.dropped(Drop.NO_MAPPING, TCP_KIND.back(R1, 53, PUBLIC, 5000));
          h.dropped(Drop.NO_MAPPING, ICMP_KIND.back(R1, 0, PUBLIC, 5000));
        });

        it(`an unsolicited ICMP echo request to the public address is dropped (eif ${eif})`, () => {
          const h = nat({ eif });
          h.one(ICMP_KIND.out(A, 4444, R1, 0));
          h.dropped(Drop.NO_MAPPING, icmpPacket(R1, PUBLIC, icmpEcho({ id: 4444 })));
        });
      }
    });

    describe('timers', () => {
      it('UDP: a session is alive at 299 s and gone after 301 s', () => {
        const alive = nat();
        alive.one(UDP_KIND.out(A, 5000, R1, 53));
        alive.now = T0 + 299 * SEC;
        assert.equal(alive.table.sweep(alive.now, 1000), 0);
        alive.one(UDP_KIND.back(R1, 53, PUBLIC, 5000));

        const gone = nat();
        gone.one(UDP_KIND.out(A, 5000, R1, 53));
        gone.now = T0 + 301 * SEC;
        gone.dropped(Drop.NO_MAPPING, UDP_KIND.back(R1, 53, PUBLIC, 5000));
        assert.equal(gone.table.sessionCount, 0);

        const swept = nat();
        swept.one(UDP_KIND.out(A, 5000, R1, 53));
        assert.equal(swept.table.sweep(T0 + 301 * SEC, 1000), 1);
        assert.equal(swept.table.sessionCount, 0);
        assert.equal(swept.table.mappingCount, 0);
      });

      it('a reply refreshes the UDP timer', () => {
        const h = nat();
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        h.now = T0 + 200 * SEC;
        h.one(UDP_KIND.back(R1, 53, PUBLIC, 5000));
        h.now = T0 + 450 * SEC;
        assert.equal(h.table.sweep(h.now, 1000), 0);
        h.one(UDP_KIND.back(R1, 53, PUBLIC, 5000));
      });

      it('ICMP: a query session is alive at 59 s and gone after 61 s', () => {
        const alive = nat();
        alive.one(ICMP_KIND.out(A, 4444, R1, 0));
        alive.now = T0 + 59 * SEC;
        alive.one(ICMP_KIND.back(R1, 0, PUBLIC, 4444));

        const gone = nat();
        gone.one(ICMP_KIND.out(A, 4444, R1, 0));
        gone.now = T0 + 61 * SEC;
        gone.dropped(Drop.NO_MAPPING, ICMP_KIND.back(R1, 0, PUBLIC, 4444));
        assert.equal(gone.table.sweep(gone.now, 1000), 0, 'already removed inline');
      });

      const syn = (flags: number, seq = 1000, ack = 0, dir: 'out' | 'in' = 'out'): Uint8Array =>
        dir === 'out'
          ? tcpPacket(A, R1, { sport: 40000, dport: 443, flags, seq, ack })
          : tcpPacket(R1, PUBLIC, { sport: 443, dport: 40000, flags, seq, ack });
      const handshake = (h: NatHarness): void => {
        h.one(syn(SYN));
        h.one(syn(SYN | ACK, 5000, 1001, 'in'));
        h.one(syn(ACK, 1001, 5001));
      };

      it('TCP: each state an operator sees changing is an UPDATE event, the creating SYN only a NEW', () => {
        const h = nat();
        const states = (): string[] => {
          const out: string[] = [];
          h.journal.drain((kind, _t, s) => out.push(kind === EV_NEW ? 'NEW' : kind === EV_UPDATE ? tcpStateName(h.table.stateOf(s)) : 'DESTROY'));
          return out;
        };
        h.journal.drain(() => undefined);
        h.one(syn(SYN));
        h.one(syn(SYN));
        assert.deepEqual(states(), ['NEW'], 'the retransmitted SYN changes nothing');
        h.one(syn(SYN | ACK, 5000, 1001, 'in'));
        assert.deepEqual(states(), ['ESTABLISHED']);
        h.one(syn(ACK, 1001, 5001));
        h.one(syn(ACK | PSH, 1001, 5001));
        assert.deepEqual(states(), [], 'data on an established connection changes nothing');
        h.one(syn(FIN | ACK, 1001, 5001));
        assert.deepEqual(states(), ['FIN_WAIT']);
        h.one(syn(FIN | ACK, 5001, 1002, 'in'));
        assert.deepEqual(states(), ['TIME_WAIT']);
      });

      it('TCP: a session that only saw a SYN expires after the transitory timer (240 s)', () => {
        const h = nat();
        h.one(syn(SYN));
        assert.equal(h.table.sweep(T0 + 239 * SEC, 1000), 0);
        assert.equal(h.table.sweep(T0 + 241 * SEC, 1000), 1);

        const late = nat();
        late.one(syn(SYN));
        late.now = T0 + 241 * SEC;
        late.dropped(Drop.NO_MAPPING, syn(SYN | ACK, 5000, 1001, 'in'));
      });

      it('TCP: an established connection survives 2 h idle and expires after 2 h 4 min', () => {
        const h = nat();
        handshake(h);
        assert.equal(h.table.sweep(T0 + 7200 * SEC, 1000), 0);
        h.now = T0 + 7439 * SEC;
        h.one(syn(ACK | PSH, 5001, 1001, 'in'));

        const idle = nat();
        handshake(idle);
        assert.equal(idle.table.sweep(T0 + 7439 * SEC, 1000), 0);
        assert.equal(idle.table.sweep(T0 + 7441 * SEC, 1000), 1);
      });

      it('TCP: a mid-stream pickup (no SYN seen) gets the established timer', () => {
        const h = nat();
        h.one(syn(ACK));
        assert.equal(h.table.sweep(T0 + 241 * SEC, 1000), 0);
        assert.equal(h.table.sweep(T0 + 7441 * SEC, 1000), 1);
      });

      for (const [name, close] of [
        ['FIN both ways', [syn(FIN | ACK, 2000, 6000), syn(FIN | ACK, 6000, 2001, 'in')]],
        ['a FIN one way', [syn(FIN | ACK, 2000, 6000)]],
        ['RST', [syn(RST, 6000, 0, 'in')]],
      ] as const) {
        it(`TCP: after ${name} the transitory timer applies`, () => {
          const h = nat();
          handshake(h);
          h.now = T0 + 1000 * SEC;
          for (const p of close) h.one(p);
          assert.equal(h.table.sweep(T0 + 1239 * SEC, 1000), 0);
          assert.equal(h.table.sweep(T0 + 1241 * SEC, 1000), 1);
        });
      }

      it('TCP: a new SYN after a close starts over (the established timer applies again after the handshake)', () => {
        const h = nat();
        handshake(h);
        h.one(syn(RST));
        h.now = T0 + 10 * SEC;
        handshake(h);
        assert.equal(h.table.sweep(T0 + 10 * SEC + 241 * SEC, 1000), 0);
      });

      it('sweep(now, budget) removes expired sessions, at most `budget` per call, and resumes where it stopped', () => {
        const h = nat();
        for (let i = 0; i < 6; i++) h.one(UDP_KIND.out(A, 5000 + i, R1, 53));
        h.one(TCP_KIND.out(A, 5000, R1, 443)); // established, still alive later
        const later = T0 + 301 * SEC;
        assert.equal(h.table.sweep(T0 + 299 * SEC, 1000), 0);
        const removed: number[] = [];
        for (let n = 0; n < 10 && h.table.sessionCount > 1; n++) removed.push(h.table.sweep(later, 3));
        assert.ok(removed.every((r) => r <= 3), `removed per call ${removed}`);
        assert.ok(removed.length >= 2, 'took more than one call');
        assert.equal(removed.reduce((x, y) => x + y, 0), 6);
        assert.equal(h.table.sessionCount, 1);
        assert.equal(h.table.countBySlot[0], 1);
      });

      it('a port is freed when its mapping expires', () => {
        const h = nat();
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        assert.notEqual(lanSide(parse(h.one(UDP_KIND.out(B, 5000, R1, 53))), true), 5000);
        h.now = T0 + 301 * SEC;
        assert.equal(h.table.sweep(h.now, 1000), 2);
        assert.equal(h.table.mappingCount, 0);
        h.dropped(Drop.NO_MAPPING, UDP_KIND.back(R1, 53, PUBLIC, 5000));
        assert.equal(lanSide(parse(h.one(UDP_KIND.out(C, 5000, R1, 53))), true), 5000);
      });
    });

    describe('ICMP errors (RFC 5508)', () => {
      /** A:5000 -> R1:53 with public port 5000 already taken by B, so A's port is rewritten. */
      const udpFlow = (h: NatHarness): { sent: Uint8Array; pub: number } => {
        h.one(UDP_KIND.out(B, 5000, R2, 53));
        const sent = h.one(udpPacket(A, R1, { sport: 5000, dport: 53, payload: DATA }, { ttl: 63, id: 0x1111 }));
        const pub = parse(sent).sport ?? -1;
        assert.notEqual(pub, 5000);
        return { sent, pub };
      };

      it('port unreachable quoting a whole UDP datagram reaches the LAN host with every checksum valid', () => {
        const h = nat();
        const { sent } = udpFlow(h);
        const d = h.one(icmpPacket(R1, PUBLIC, icmpError(3, 3, sent), { ttl: 60 }));
        const p = parse(d);
        assert.equal(p.src, R1);
        assert.equal(p.dst, A);
        assert.equal(p.ttl, 61);
        assert.deepEqual([p.icmpType, p.icmpCode], [3, 3]);
        assert.equal(p.inner?.src, A);
        assert.equal(p.inner?.sport, 5000);
        assert.equal(p.inner?.dst, R1);
        assert.equal(p.inner?.dport, 53);
        assert.deepEqual(checksumProblems(d), []);
        // The quoted datagram is now exactly what A sent (plus the hop given back).
        assert.deepEqual(d.subarray(28), udpPacket(A, R1, { sport: 5000, dport: 53, payload: DATA }, { ttl: 64, id: 0x1111 }));
      });

      it('fragmentation needed quoting 8 bytes of TCP keeps the MTU field', () => {
        const h = nat();
        h.one(TCP_KIND.out(B, 40000, R2, 443));
        const seg = { sport: 40000, dport: 443, seq: 0x01020304, flags: ACK | PSH, payload: pattern(1400) };
        const sent = h.one(tcpPacket(A, R1, seg, { flags: DF, ttl: 63 }));
        const pub = parse(sent).sport;
        assert.notEqual(pub, 40000);
        const d = h.one(icmpPacket(ROUTER, PUBLIC, icmpError(3, 4, sent, 28, 1400)));
        const p = parse(d);
        assert.equal(d.length, 20 + 8 + 28);
        assert.equal(p.dst, A);
        assert.equal(p.mtu, 1400);
        assert.equal(r16(d, 24), 0, 'unused field');
        assert.equal(p.inner?.src, A);
        assert.equal(p.inner?.sport, 40000);
        assert.deepEqual(checksumProblems(d), []);
        assert.deepEqual(d.subarray(28), tcpPacket(A, R1, seg, { flags: DF, ttl: 64 }).subarray(0, 28));
      });

      it('time exceeded quoting a whole TCP segment updates the embedded TCP checksum', () => {
        const h = nat();
        h.one(TCP_KIND.out(B, 40000, R2, 443));
        const sent = h.one(TCP_KIND.out(A, 40000, R1, 443, { ttl: 2 }));
        const d = h.one(icmpPacket(ROUTER, PUBLIC, icmpError(11, 0, sent)));
        assert.deepEqual(checksumProblems(d), []);
        assert.deepEqual(d.subarray(28), TCP_KIND.out(A, 40000, R1, 443, { ttl: 3 }));
      });

      it('time exceeded quoting an ICMP echo request restores the identifier', () => {
        const h = nat();
        const sent = h.one(ICMP_KIND.out(A, 7, R1, 0, { ttl: 1 }));
        assert.notEqual(parse(sent).icmpId, 7);
        const d = h.one(icmpPacket(ROUTER, PUBLIC, icmpError(11, 0, sent)));
        const p = parse(d);
        assert.equal(p.dst, A);
        assert.equal(p.inner?.src, A);
        assert.equal(p.inner?.icmpId, 7);
        assert.deepEqual(checksumProblems(d), [], 'including the embedded echo checksum');
        assert.deepEqual(d.subarray(28), ICMP_KIND.out(A, 7, R1, 0, { ttl: 2 }));
      });

      it('an error with a bad ICMP checksum is ICMP_ERROR_BAD_CHECKSUM', () => {
        const h = nat();
        const { sent } = udpFlow(h);
        h.dropped(Drop.ICMP_ERROR_BAD_CHECKSUM, mutate(icmpPacket(R1, PUBLIC, icmpError(3, 3, sent)), (b) => { b[22] ^= 0x10; }));
      });

      it('an error quoting a header with a bad checksum is dropped', () => {
        const h = nat();
        const { sent } = udpFlow(h);
        const quoted = mutate(sent, (b) => { b[10] ^= 0x01; });
        h.dropped(Drop.ICMP_ERROR_BAD_CHECKSUM, icmpPacket(R1, PUBLIC, icmpError(3, 3, quoted)));
      });

      it('an error quoting less than 8 bytes of transport header is ICMP_ERROR_MALFORMED', () => {
        const h = nat();
        const { sent } = udpFlow(h);
        h.dropped(Drop.ICMP_ERROR_MALFORMED, icmpPacket(R1, PUBLIC, icmpError(3, 3, sent, 24)));
      });

      it('an error about a flow the NAT does not know is ICMP_ERROR_NO_MAPPING', () => {
        const h = nat();
        const { pub } = udpFlow(h);
        const unknownPort = udpPacket(PUBLIC, R1, { sport: 33333, dport: 53 });
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(R1, PUBLIC, icmpError(3, 3, unknownPort)));
        const otherRemote = udpPacket(PUBLIC, R2, { sport: pub, dport: 53 });
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(R2, PUBLIC, icmpError(3, 3, otherRemote)));
        const notFromUs = udpPacket(R2, R1, { sport: pub, dport: 53 });
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(R1, PUBLIC, icmpError(3, 3, notFromUs)));
      });

      it('an error does not refresh the session timer (REQ-6)', () => {
        const h = nat();
        const { sent } = udpFlow(h);
        const s = h.session(UDP, A, 5000, R1, 53);
        const expires = h.table.expiresOf(s);
        h.now = T0 + 200 * SEC;
        h.one(icmpPacket(R1, PUBLIC, icmpError(3, 3, sent)));
        assert.equal(h.table.expiresOf(s), expires);
        assert.equal(h.table.sweep(T0 + 301 * SEC, 1000), 2);
        h.now = T0 + 301 * SEC;
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(R1, PUBLIC, icmpError(3, 3, sent)));
      });

      it('an error for a session that expired but was not swept yet is ICMP_ERROR_NO_MAPPING', () => {
        const h = nat();
        const { sent } = udpFlow(h);
        h.now = T0 + 301 * SEC;
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(R1, PUBLIC, icmpError(3, 3, sent)));
      });

      it('an outbound error from a LAN host about inbound traffic gets the public address and port', () => {
        const h = nat();
        const { pub } = udpFlow(h);
        const inb = h.one(udpPacket(R1, PUBLIC, { sport: 53, dport: pub, payload: DATA }, { ttl: 50, id: 0x2222 }));
        const d = h.one(icmpPacket(A, R1, icmpError(3, 3, inb), { ttl: 64 }));
        const p = parse(d);
        assert.equal(p.src, PUBLIC);
        assert.equal(p.dst, R1);
        assert.equal(p.ttl, 65);
        assert.equal(p.inner?.src, R1);
        assert.equal(p.inner?.dst, PUBLIC);
        assert.equal(p.inner?.dport, pub);
        assert.deepEqual(checksumProblems(d), []);
        // R1 gets back the datagram it sent.
        assert.deepEqual(d.subarray(28), udpPacket(R1, PUBLIC, { sport: 53, dport: pub, payload: DATA }, { ttl: 51, id: 0x2222 }));
      });

      it('an outbound error about a flow the NAT does not know is ICMP_ERROR_NO_MAPPING', () => {
        const h = nat();
        udpFlow(h);
        const stray = udpPacket(R2, A, { sport: 53, dport: 5000 });
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(A, R2, icmpError(3, 3, stray)));
      });

      it("an outbound error from one LAN host about another host's flow is ICMP_ERROR_NO_MAPPING", () => {
        const h = nat();
        const { pub } = udpFlow(h);
        const inb = h.one(udpPacket(R1, PUBLIC, { sport: 53, dport: pub, payload: DATA }));
        h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket(C, R1, icmpError(3, 3, inb)));
      });
    });

    describe('fragments (RFC 4787 REQ-14)', () => {
      const PAYLOAD = pattern(7992); // an 8000-byte UDP datagram
      for (const order of ['in order', 'in reverse order'] as const) {
        it(`hairpinned, ${order}: every fragment leaves with both addresses translated in one pass`, () => {
          const h = nat({ eif: true });
          const pubB = lanSide(parse(h.one(UDP_KIND.out(B, 6000, R1, 53))), true);
          const frags = fragment(udpPacket(A, PUBLIC, { sport: 5000, dport: pubB, payload: PAYLOAD }, { id: 0x7878, ttl: 40 }), 1480);
          const outputs: Uint8Array[] = [];
          for (const f of order === 'in order' ? frags : [...frags].reverse()) outputs.push(...h.send(f));
          assert.equal(h.napt.drops.total(), 0);
          assert.equal(outputs.length, 6);
          for (const o of outputs) {
            const p = parse(o);
            assert.equal(p.src, PUBLIC, `fragment at ${p.fragOffset}`);
            assert.equal(p.dst, B, `fragment at ${p.fragOffset}`);
            assert.deepEqual(checksumProblems(o), [], `fragment at ${p.fragOffset}`);
          }
          const whole = parse(reassemble(outputs));
          assert.equal(whole.dport, 6000);
          assert.deepEqual(checksumProblems(reassemble(outputs)), []);
        });
      }
      for (const dir of ['outbound', 'inbound'] as const) {
        for (const order of ['in order', 'in reverse order'] as const) {
          it(`${dir}, ${order}: every fragment comes out translated and the datagram reassembles with a valid checksum`, () => {
            const h = nat();
            h.one(UDP_KIND.out(B, 5000, R2, 53)); // so that A's public port differs from 5000
            let pub = -1;
            if (dir === 'inbound') pub = parse(h.one(UDP_KIND.out(A, 5000, R1, 53))).sport ?? -1;
            const dgram = dir === 'outbound'
              ? udpPacket(A, R1, { sport: 5000, dport: 53, payload: PAYLOAD }, { id: 0x7777, ttl: 40 })
              : udpPacket(R1, PUBLIC, { sport: 53, dport: pub, payload: PAYLOAD }, { id: 0x7777, ttl: 40 });
            const frags = fragment(dgram, 1480);
            assert.equal(frags.length, 6);
            assert.equal(frags[0].length, 1500);
            const sendOrder = order === 'in order' ? frags : [...frags].reverse();
            const outputs: Uint8Array[] = [];
            sendOrder.forEach((f, n) => {
              const out = h.send(f);
              if (order === 'in order') assert.equal(out.length, 1, `fragment ${n}`);
              else assert.equal(out.length, n === 5 ? 6 : 0, `fragment ${n}`);
              outputs.push(...out);
            });
            assert.equal(h.napt.drops.total(), 0);
            assert.equal(h.frags.heldCount, 0);
            assert.equal(outputs.length, 6);
            for (const o of outputs) {
              const p = parse(o);
              assert.equal(dir === 'outbound' ? p.src : p.dst, dir === 'outbound' ? PUBLIC : A);
              assert.equal(p.ttl, 41);
              assert.deepEqual(checksumProblems(o), [], `fragment at ${p.fragOffset}`);
            }
            const first = parse(outputs.find((o) => (r16(o, 6) & 0x1fff) === 0) ?? new Uint8Array(20));
            if (dir === 'outbound') {
              pub = first.sport ?? -1;
              assert.notEqual(pub, 5000);
            } else {
              assert.equal(first.dport, 5000);
            }
            const whole = reassemble(outputs);
            assert.deepEqual(checksumProblems(whole), []);
            const expected = dir === 'outbound'
              ? udpPacket(PUBLIC, R1, { sport: pub, dport: 53, payload: PAYLOAD }, { id: 0x7777, ttl: 41 })
              : udpPacket(R1, A, { sport: 53, dport: 5000, payload: PAYLOAD }, { id: 0x7777, ttl: 41 });
            assert.deepEqual(whole, expected);
          });
        }
      }

      it('fragments whose first fragment never comes are dropped by frags.sweep after the fragment timeout', () => {
        const h = nat();
        const frags = fragment(udpPacket(A, R1, { sport: 5000, dport: 53, payload: PAYLOAD }, { id: 0x5555 }), 1480);
        assert.equal(h.send(frags[3]).length, 0);
        assert.equal(h.send(frags[5]).length, 0);
        assert.equal(h.frags.heldCount, 2);
        assert.equal(h.napt.drops.total(), 0);
        assert.equal(h.frags.sweep(T0 + 4999), 0);
        assert.equal(h.frags.sweep(T0 + 5001), 2);
        assert.equal(h.frags.heldCount, 0);
        // When the first fragment finally comes, nothing stale is released with it.
        h.now = T0 + 6000;
        assert.equal(h.send(frags[0]).length, 1);
      });

      it('later fragments after the datagram entry expired are held again, not translated with stale state', () => {
        const h = nat();
        const frags = fragment(udpPacket(A, R1, { sport: 5000, dport: 53, payload: PAYLOAD }, { id: 0x5656 }), 1480);
        h.one(frags[0]);
        h.now = T0 + 5001;
        assert.equal(h.send(frags[1]).length, 0);
        assert.equal(h.frags.heldCount, 1);
      });

      it('a full hold pool is FRAGMENT_HOLD_FULL', () => {
        const h = nat({ holdSlots: 2 });
        const frags = fragment(udpPacket(A, R1, { sport: 5000, dport: 53, payload: PAYLOAD }, { id: 0x6666 }), 1480);
        assert.equal(h.send(frags[1]).length, 0);
        assert.equal(h.send(frags[2]).length, 0);
        h.dropped(Drop.FRAGMENT_HOLD_FULL, frags[3]);
        // The first fragment still releases the two that were held.
        assert.equal(h.send(frags[0]).length, 3);
      });

      it('a fragment larger than a hold slot is FRAGMENT_TOO_BIG', () => {
        const h = nat({ holdSlotSize: 1024 });
        const frags = fragment(udpPacket(A, R1, { sport: 5000, dport: 53, payload: PAYLOAD }, { id: 0x6767 }), 1480);
        h.dropped(Drop.FRAGMENT_TOO_BIG, frags[1]);
      });

      it('fragmented ICMP is ICMP_UNSUPPORTED', () => {
        const h = nat();
        const frags = fragment(icmpPacket(A, R1, icmpEcho({ id: 9, payload: pattern(3000) })), 1480);
        h.dropped(Drop.ICMP_UNSUPPORTED, frags[0]);
      });
    });

    describe('hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8)', () => {
      for (const k of [UDP_KIND, TCP_KIND]) {
        it(`${k.name}: with endpoint-independent filtering a LAN host reaches another through the public address`, () => {
          const h = nat({ eif: true });
          h.one(k.out(C, 5000, R2, k.remPort)); // takes public 5000
          const pubB = lanSide(parse(h.one(k.out(B, 6000, R1, k.remPort))), true);
          const o = h.one(k.out(A, 5000, PUBLIC, pubB, { ttl: 63 }));
          const pubA = h.pubPort(k.proto, A, 5000, PUBLIC, pubB);
          assert.notEqual(pubA, 5000);
          assert.deepEqual(o, k.out(PUBLIC, pubA, B, 6000, { ttl: 64 }));
          assert.deepEqual(checksumProblems(o), []);
          // B answers the endpoint it saw, and A hears it from B's public endpoint.
          const back = h.one(k.out(B, 6000, PUBLIC, pubA, { ttl: 63 }));
          assert.deepEqual(back, k.out(PUBLIC, pubB, A, 5000, { ttl: 64 }));
          assert.deepEqual(checksumProblems(back), []);
        });
      }

      it('without endpoint-independent filtering the hairpinned packet is FILTERED', () => {
        const h = nat();
        const pubB = lanSide(parse(h.one(UDP_KIND.out(B, 6000, R1, 53))), true);
        h.dropped(Drop.FILTERED, UDP_KIND.out(A, 5000, PUBLIC, pubB));
      });
    });

    describe('malformed packets', () => {
      const base = (): Uint8Array => UDP_KIND.out(A, 5000, R1, 53);
      const tcpL4 = (fn: (l4: Uint8Array) => void, src: Addr = A, dst: Addr = R1): Uint8Array =>
        fixL4Checksum(ipv4({ src, dst, proto: TCP, payload: mutate(tcp({ sport: 40000, dport: 443, flags: ACK, payload: DATA }, src, dst), fn) }));
      const cases: Array<{ name: string; pkt: () => Uint8Array; reason: number }> = [
        { name: 'shorter than an IP header', pkt: () => base().subarray(0, 19), reason: Drop.IP_TRUNCATED },
        { name: 'IP version 6', pkt: () => mutate(base(), (b) => { b[0] = 0x65; fixIpChecksum(b); }), reason: Drop.IP_VERSION },
        { name: 'IHL 4', pkt: () => mutate(base(), (b) => { b[0] = 0x44; }), reason: Drop.IP_BAD_IHL },
        { name: 'IHL larger than the packet', pkt: () => mutate(udpPacket(A, R1, { sport: 1, dport: 2 }), (b) => { b[0] = 0x4f; }), reason: Drop.IP_BAD_IHL },
        { name: 'total length beyond the buffer', pkt: () => mutate(base(), (b) => { w16(b, 2, b.length + 1); fixIpChecksum(b); }), reason: Drop.IP_BAD_TOTAL_LEN },
        { name: 'total length below the header length', pkt: () => mutate(base(), (b) => { w16(b, 2, 19); fixIpChecksum(b); }), reason: Drop.IP_BAD_TOTAL_LEN },
        { name: 'bad IP header checksum', pkt: () => mutate(base(), (b) => { b[11] ^= 0x01; }), reason: Drop.IP_BAD_CHECKSUM },
        { name: 'TCP header cut short', pkt: () => ipv4({ src: A, dst: R1, proto: TCP, payload: tcp({ sport: 1, dport: 2, flags: SYN }, A, R1).subarray(0, 12) }), reason: Drop.L4_TRUNCATED },
        { name: 'TCP data offset beyond the packet', pkt: () => tcpL4((l4) => { l4[12] = 0xf0; }), reason: Drop.L4_TRUNCATED },
        { name: 'TCP data offset below 5 words', pkt: () => tcpL4((l4) => { l4[12] = 0x40; }), reason: Drop.L4_TRUNCATED },
        { name: 'bad TCP checksum', pkt: () => mutate(TCP_KIND.out(A, 40000, R1, 443), (b) => { b[b.length - 1] ^= 0x20; }), reason: Drop.L4_BAD_CHECKSUM },
        { name: 'UDP header cut short', pkt: () => ipv4({ src: A, dst: R1, proto: UDP, payload: Uint8Array.of(0x13, 0x88, 0, 53) }), reason: Drop.L4_TRUNCATED },
        { name: 'bad UDP checksum', pkt: () => mutate(base(), (b) => { b[b.length - 1] ^= 0x20; }), reason: Drop.L4_BAD_CHECKSUM },
        { name: 'ICMP message cut short', pkt: () => ipv4({ src: A, dst: R1, proto: ICMP, payload: Uint8Array.of(8, 0, 0xf7, 0xff) }), reason: Drop.L4_TRUNCATED },
        { name: 'bad ICMP checksum', pkt: () => mutate(ICMP_KIND.out(A, 4444, R1, 0), (b) => { b[b.length - 1] ^= 0x20; }), reason: Drop.L4_BAD_CHECKSUM },
        { name: 'ICMP type 9 (router advertisement)', pkt: () => fixL4Checksum(mutate(ICMP_KIND.out(A, 4444, R1, 0), (b) => { b[20] = 9; })), reason: Drop.ICMP_UNSUPPORTED },
        { name: 'unknown protocol 99', pkt: () => ipv4({ src: A, dst: R1, proto: 99, payload: DATA }), reason: Drop.UNKNOWN_PROTOCOL },
        { name: 'AH (51)', pkt: () => ipv4({ src: A, dst: R1, proto: 51, payload: pattern(24) }), reason: Drop.AH_REFUSED },
        { name: 'neither from the LAN nor to the public address', pkt: () => UDP_KIND.out(R2, 5000, R1, 53), reason: Drop.NOT_OURS },
        { name: 'inbound bad TCP checksum', pkt: () => mutate(TCP_KIND.back(R1, 443, PUBLIC, 40000), (b) => { b[30] ^= 0x01; }), reason: Drop.L4_BAD_CHECKSUM },
        { name: 'inbound TCP data offset beyond the packet', pkt: () => tcpL4((l4) => { l4[12] = 0xf0; }, R1, PUBLIC), reason: Drop.L4_TRUNCATED },
        { name: 'inbound TCP data offset below 5 words', pkt: () => tcpL4((l4) => { l4[12] = 0x40; }, R1, PUBLIC), reason: Drop.L4_TRUNCATED },
        { name: 'inbound bad UDP checksum', pkt: () => mutate(UDP_KIND.back(R1, 53, PUBLIC, 5000), (b) => { b[b.length - 1] ^= 0x20; }), reason: Drop.L4_BAD_CHECKSUM },
        { name: 'inbound bad ICMP checksum', pkt: () => mutate(ICMP_KIND.back(R1, 0, PUBLIC, 4444), (b) => { b[b.length - 1] ^= 0x20; }), reason: Drop.L4_BAD_CHECKSUM },
        { name: 'inbound unknown protocol 99', pkt: () => ipv4({ src: R1, dst: PUBLIC, proto: 99, payload: DATA }), reason: Drop.UNKNOWN_PROTOCOL },
        { name: 'inbound AH', pkt: () => ipv4({ src: R1, dst: PUBLIC, proto: 51, payload: pattern(24) }), reason: Drop.AH_REFUSED },
      ];

      /** Translating a normal packet afterwards still works, and the flows set up before are intact. */
      const stillWorks = (h: NatHarness): void => {
        assert.deepEqual(h.one(UDP_KIND.back(R1, 53, PUBLIC, 5000)), UDP_KIND.back(R1, 53, A, 5000, { ttl: 65 }));
        assert.deepEqual(h.one(TCP_KIND.out(A, 40001, R1, 443)), TCP_KIND.out(PUBLIC, 40001, R1, 443, { ttl: 65 }));
      };
      const setUp = (): NatHarness => {
        const h = nat();
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        h.one(TCP_KIND.out(A, 40000, R1, 443));
        h.one(ICMP_KIND.out(A, 4444, R1, 0));
        return h;
      };

      for (const c of cases) {
        it(`${c.name}: ${DROP_NAMES[c.reason]}`, () => {
          const h = setUp();
          const sessions = h.table.sessionCount;
          h.dropped(c.reason, c.pkt());
          assert.equal(h.table.sessionCount, sessions, 'no session created');
          stillWorks(h);
        });
      }

      it('zero length', () => {
        const h = setUp();
        h.expectDrop(vnetLen > 0 ? Drop.VNET_TRUNCATED : Drop.IP_TRUNCATED, () => h.processRaw(new Uint8Array(0), 0));
        stillWorks(h);
      });

      if (vnetLen > 0) {
        it('shorter than the vnet header', () => {
          const h = setUp();
          h.expectDrop(Drop.VNET_TRUNCATED, () => h.processRaw(new Uint8Array(5), 5));
          h.expectDrop(Drop.IP_TRUNCATED, () => h.processRaw(vnetHeader(), vnetLen));
          stillWorks(h);
        });
      }

      it('a buffer cut short of the IP total length', () => {
        const h = setUp();
        const p = base();
        h.dropped(Drop.IP_BAD_TOTAL_LEN, p.subarray(0, p.length - 1));
        stillWorks(h);
      });

      it('trailing bytes after the IP total length are not sent', () => {
        const h = setUp();
        const o = h.one(concat(UDP_KIND.out(A, 5001, R1, 53), Uint8Array.of(0, 0, 0, 0, 0, 0)));
        assert.deepEqual(o, UDP_KIND.out(PUBLIC, 5001, R1, 53, { ttl: 65 }));
      });
    });

    describe('resource limits', () => {
      it('a full table is TABLE_FULL, for new mappings and for new sessions of an existing mapping', () => {
        const h = nat({ capacity: 2 });
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        h.one(UDP_KIND.out(B, 5000, R1, 53));
        h.refused(Drop.TABLE_FULL, UDP_KIND.out(C, 5000, R1, 53));
        h.refused(Drop.TABLE_FULL, UDP_KIND.out(A, 5000, R2, 53));
        h.refused(Drop.TABLE_FULL, ICMP_KIND.out(C, 9, R1, 0));
        assert.equal(h.table.mappingCount, 2);
        assert.equal(h.table.sessionCount, 2);
        h.now = T0 + 301 * SEC;
        assert.equal(h.table.sweep(h.now, 100), 2);
        h.one(UDP_KIND.out(C, 5000, R1, 53));
      });

      it('exhausted ports are PORTS_EXHAUSTED, and come back when a mapping expires', () => {
        const h = nat({ ports: { range: [20000, 20001], lowRange: [1, 1023], preserve: true } });
        const ports = [A, B].map((host) => lanSide(parse(h.one(UDP_KIND.out(host, 30000, R1, 53))), true));
        assert.deepEqual(ports.sort(), [20000, 20001]);
        h.refused(Drop.PORTS_EXHAUSTED, UDP_KIND.out(C, 30000, R1, 53));
        assert.equal(h.table.mappingCount, 2, 'no mapping leaked');
        assert.equal(h.table.sessionCount, 2);
        // Another protocol has its own ports.
        h.one(TCP_KIND.out(C, 30000, R1, 443));
        h.now = T0 + 301 * SEC;
        h.table.sweep(h.now, 100);
        const p = lanSide(parse(h.one(UDP_KIND.out(C, 30000, R1, 53))), true);
        assert.ok(p === 20000 || p === 20001);
      });
    });

    describe('journal', () => {
      it('records NEW when a session is created and DESTROY when it is removed, with the same serial', () => {
        const h = nat();
        h.journal.drain(() => undefined);
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        h.one(UDP_KIND.back(R1, 53, PUBLIC, 5000));
        h.dropped(Drop.FILTERED, UDP_KIND.back(R2, 53, PUBLIC, 5000));
        const events: number[][] = [];
        const take = (): number[][] => { events.length = 0; h.journal.drain((...e) => events.push(e)); return events; };
        const s = h.session(UDP, A, 5000, R1, 53);
        const serial = h.table.sSerial[s];
        // The first reply is a state change (UNREPLIED -> REPLIED); the filtered packet changes nothing.
        assert.deepEqual(take(), [[EV_NEW, TABLE_SESSIONS, s, serial], [EV_UPDATE, TABLE_SESSIONS, s, serial]]);
        h.one(UDP_KIND.back(R1, 53, PUBLIC, 5000));
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        assert.deepEqual(take(), [], 'no more state changes');
        h.table.sweep(T0 + 301 * SEC, 100);
        assert.deepEqual(take(), [[EV_DESTROY, TABLE_SESSIONS, s, serial]]);
        // Inline expiry (a packet finding its session expired) is journaled too, before the replacement's NEW.
        h.now = T0 + 400 * SEC;
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        const s2 = h.session(UDP, A, 5000, R1, 53);
        h.now = T0 + 701 * SEC;
        h.one(UDP_KIND.out(A, 5000, R1, 53));
        const s3 = h.session(UDP, A, 5000, R1, 53);
        const ev = take();
        assert.deepEqual(ev.map((e) => e[0]), [EV_NEW, EV_DESTROY, EV_NEW]);
        assert.equal(ev[1][2], s2);
        assert.equal(ev[2][2], s3);
        assert.notEqual(ev[2][3], ev[0][3], 'a new serial');
      });
    });
  });
}

describe('Napt with vnet offloads (vnetLen 10)', () => {
  const nat = (): NatHarness => new NatHarness({ vnetLen: 10, now: T0 });
  const partialVnet = (proto: number) => ({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: proto === TCP ? 16 : 6 });

  for (const k of [TCP_KIND, UDP_KIND]) {
    for (const dir of ['outbound', 'inbound'] as const) {
      it(`${k.name} ${dir} with NEEDS_CSUM: the field holds the translated pseudo-header sum, and completing it yields a valid packet`, () => {
        const h = nat();
        h.one(k.out(B, 40000, R2, k.remPort)); // so A's port is rewritten
        const pub = lanSide(parse(h.one(k.out(A, 40000, R1, k.remPort))), true);
        assert.notEqual(pub, 40000);
        const [pkt, expected] = dir === 'outbound'
          ? [k.out(A, 40000, R1, k.remPort, { ttl: 9 }), k.out(PUBLIC, pub, R1, k.remPort, { ttl: 10 })]
          : [k.back(R1, k.remPort, PUBLIC, pub, { ttl: 9 }), k.back(R1, k.remPort, A, 40000, { ttl: 10 })];
        const vnet = partialVnet(k.proto);
        const o = h.one(asPartial(pkt), vnet);
        const q = parse(expected);
        const csumAt = 20 + vnet.csumOffset;
        assert.equal(r16(o, csumAt), pseudo(q.src, q.dst, k.proto, q.totalLen - 20));
        assert.deepEqual(o, asPartial(expected));
        assert.deepEqual(h.lastVnet[0], vnetHeader(vnet), 'vnet header passed through');
        const done = completePartial(o, vnet.csumStart, vnet.csumOffset);
        assert.deepEqual(checksumProblems(done), []);
        assert.deepEqual(done, expected);
      });
    }
  }

  it('a TCPv4 GSO super-packet (IP total length 30000) is translated as one packet, length unchanged', () => {
    const h = nat();
    h.one(TCP_KIND.out(B, 40000, R2, 443));
    const seg = { sport: 40000, dport: 443, seq: 1, ack: 2, flags: ACK | PSH, payload: pattern(30000 - 40) };
    const pkt = asPartial(tcpPacket(A, R1, seg, { flags: DF, id: 0 }));
    assert.equal(pkt.length, 30000);
    const vnet = { flags: VNET_F_NEEDS_CSUM, gsoType: VNET_GSO_TCPV4, hdrLen: 40, gsoSize: 1448, csumStart: 20, csumOffset: 16 };
    const o = h.one(pkt, vnet);
    assert.equal(o.length, 30000);
    assert.equal(h.out.list[1], 10 + 30000);
    assert.deepEqual(h.lastVnet[0], vnetHeader(vnet));
    const pub = parse(o).sport ?? -1;
    assert.notEqual(pub, 40000);
    const expected = tcpPacket(PUBLIC, R1, { ...seg, sport: pub }, { flags: DF, id: 0, ttl: 65 });
    assert.deepEqual(completePartial(o, 20, 16), expected);
  });

  it('a UDP GSO super-packet is translated as one packet too', () => {
    const h = nat();
    const pkt = asPartial(udpPacket(A, R1, { sport: 4433, dport: 443, payload: pattern(20000) }));
    const vnet = { flags: VNET_F_NEEDS_CSUM, gsoType: VNET_GSO_UDP_L4, hdrLen: 28, gsoSize: 1200, csumStart: 20, csumOffset: 6 };
    const o = h.one(pkt, vnet);
    assert.equal(o.length, pkt.length);
    assert.deepEqual(completePartial(o, 20, 6), udpPacket(PUBLIC, R1, { sport: 4433, dport: 443, payload: pattern(20000) }, { ttl: 65 }));
  });

  it('DATA_VALID skips verification; the checksum is still updated incrementally', () => {
    const h = nat();
    const o = h.one(TCP_KIND.out(A, 40000, R1, 443), { flags: VNET_F_DATA_VALID });
    assert.deepEqual(o, TCP_KIND.out(PUBLIC, 40000, R1, 443, { ttl: 65 }));
  });

  it('a fragment held and released keeps its vnet header and is sent from the hold pool', () => {
    const h = nat();
    const frags = fragment(udpPacket(A, R1, { sport: 5000, dport: 53, payload: pattern(3000) }, { id: 0x4321, flags: 0 }), 1480);
    assert.equal(frags.length, 3);
    assert.equal(h.send(frags[2]).length, 0);
    const out = h.send(frags[0]);
    assert.equal(out.length, 2);
    assert.ok(h.out.list[0] >= NatHarness.SLOT, 'released fragment is written from the hold pool');
    assert.equal(h.out.list[2], 0, 'then the first fragment from its receive slot');
    assert.ok(out.every((o) => (r16(o, 6) & MF) !== 0 || (r16(o, 6) & 0x1fff) !== 0));
  });
});

describe('direction by device (core/side.ts)', () => {
  const nat = (): NatHarness => new NatHarness({ vnetLen: 10, now: T0 });

  it('a LAN source read from the WAN device is a spoof: dropped, nothing created, also when it matches a mapping', () => {
    const h = nat();
    for (const k of [UDP_KIND, TCP_KIND]) {
      h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(k.out(A, 40000, R1, k.remPort), undefined, SIDE_WAN));
      h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(k.out(A, 40000, PUBLIC, 40000), undefined, SIDE_WAN));
    }
    h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(ICMP_KIND.out(A, 7, R1, 0), undefined, SIDE_WAN));
    assert.equal(h.table.sessionCount, 0);
    // With a mapping in place, the same spoof from the WAN device does not ride it either.
    h.one(UDP_KIND.out(A, 40000, R1, 53));
    h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(UDP_KIND.out(A, 40000, R1, 53), undefined, SIDE_WAN));
    assert.equal(h.table.sessionCount, 1);
  });

  it('the box\'s own ICMP error about a translated packet, sent from its LAN address, reaches the LAN host', () => {
    const h = nat();
    const out = h.one(UDP_KIND.out(A, 40000, R1, 53));
    // frag-needed from the box (source: its LAN address) to the public address, through the WAN device.
    const err = h.one(icmpPacket('10.77.0.1', PUBLIC, icmpError(3, 4, out, 28, 1400)), undefined, SIDE_WAN);
    assert.deepEqual([parse(err).src, parse(err).dst], ['10.77.0.1', A]);
    // An echo request with that source is no error: a spoof.
    h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(icmpPacket('10.77.0.1', PUBLIC, icmpEcho({ id: 9, seq: 1 })), undefined, SIDE_WAN));
  });

  it('a foreign source read from the LAN device is a spoof: no reply can be injected on the LAN side', () => {
    const h = nat();
    const pub = parse(h.one(UDP_KIND.out(A, 40000, R1, 53))).sport as number;
    h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(UDP_KIND.back(R1, 53, PUBLIC, pub), undefined, SIDE_LAN));
    h.expectDrop(Drop.SPOOFED_SOURCE, () => h.send(UDP_KIND.out(R2, 40000, R1, 53), undefined, SIDE_LAN));
    // The genuine reply, from the WAN device, still goes through.
    assert.deepEqual(parse(h.one(UDP_KIND.back(R1, 53, PUBLIC, pub))).dst, A);
    assert.equal(h.table.sessionCount, 1);
  });
});
