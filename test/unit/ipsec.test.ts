/**
 * IPsec masquerade on crafted packets (vpn-masquerade-spec §3, §4, §9, §11):
 * ISAKMP keeps port 500 and is demultiplexed by cookie, ESP is paired by
 * per-remote serialization, AH is refused. Time is injected (napt.now).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  Drop, NatHarness, PUBLIC, MF, UDP, checksumsValid, concat, fragment, icmpError, icmpPacket, ipv4, parse, r32, reassemble,
  udpPacket,
} from './packet-builder';
import { IpsecOptions, TABLE_ESP, TABLE_ISAKMP } from '../../src/helpers/ipsec/ipsec';
import { EV_DESTROY, EV_NEW, EV_UPDATE } from '../../src/core/journal';
import { ConnRow, espRow, isakmpRow } from '../../src/query/rows';
import { Forwards } from '../../src/nat/forwards';
import { AH, ESP, L1, L2, L3, MIN, R, ZERO, dests, esp, ike, ipsecHarness, isakmp } from './ipsec-builder';


const setup = (over: Partial<IpsecOptions> = {}): NatHarness => ipsecHarness(over);

/** The ISAKMP then ESP rows of the harness's IPsec tables. */
function* ipsecRows(h: NatHarness): Generator<ConnRow> {
  const m = h.ipsec!;
  for (let k = 0; k < m.opts.capacity; k++) if (m.kInUse[k] === 1) yield isakmpRow(m, k, h.now, (lan) => h.table.addressOfHost(lan));
  for (let e = 0; e < m.opts.capacity; e++) if (m.eInUse[e] === 1) yield espRow(m, e, h.now, (lan) => h.table.addressOfHost(lan));
}


describe('ISAKMP masquerade (spec §3)', () => {
  it('keeps source port 500, and the first reply teaches the responder cookie that is required afterwards', () => {
    const h = setup({ guessing: false });
    const o = parse(h.one(ike(L1, R, '1111111122222222', ZERO)));
    assert.deepEqual([o.src, o.sport, o.dst, o.dport], [PUBLIC, 500, R, 500]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, '1111111122222222', 'aaaaaaaabbbbbbbb')), [L1]);
    const back = parse(h.one(ike(R, PUBLIC, '1111111122222222', 'aaaaaaaabbbbbbbb', 32)));
    assert.deepEqual([back.dst, back.dport], [L1, 500]);
    // Once the LAN host went on with that responder cookie: same initiator cookie, wrong responder cookie is not this exchange.
    h.one(ike(L1, R, '1111111122222222', 'aaaaaaaabbbbbbbb'));
    h.dropped(Drop.ISAKMP_NO_MAPPING, ike(R, PUBLIC, '1111111122222222', 'aaaaaaaabbbbbbbc'));
  });

  it('tells apart two hosts whose cookies differ only in bytes 4-7', () => {
    const h = setup({ guessing: false });
    h.one(ike(L1, R, '0102030400000001', ZERO));
    h.one(ike(L2, R, '0102030400000002', ZERO));
    assert.deepEqual(dests(h, ike(R, PUBLIC, '0102030400000002', 'cccccccc00000002')), [L2]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, '0102030400000001', 'cccccccc00000001')), [L1]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, '0102030400000002', 'cccccccc00000002', 32)), [L2]);
  });

  it('drops a colliding new exchange while one with the same cookie is outstanding, not after', () => {
    const h = setup();
    h.one(ike(L1, R, '5555555555555555', ZERO));
    h.dropped(Drop.ISAKMP_COLLISION, ike(L2, R, '5555555555555555', ZERO));
    assert.deepEqual(dests(h, ike(R, PUBLIC, '5555555555555555', '6666666666666666')), [L1]);
    h.one(ike(L2, R, '5555555555555555', ZERO));
    assert.deepEqual(dests(h, ike(R, PUBLIC, '5555555555555555', '7777777777777777')), [L2]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, '5555555555555555', '6666666666666666')), [L1]);
  });

  it('IKE from another source port is plain NAPT, two hosts on 4500 get distinct ports, keepalives pass', () => {
    const h = setup();
    const a = parse(h.one(udpPacket(L1, R, { sport: 4500, dport: 4500, payload: concat(new Uint8Array(4), isakmp('1234123412341234', ZERO)) })));
    const b = parse(h.one(udpPacket(L2, R, { sport: 4500, dport: 4500, payload: Uint8Array.of(0xff) })));
    assert.notEqual(a.sport, b.sport);
    const c = parse(h.one(udpPacket(L3, R, { sport: 40500, dport: 500, payload: isakmp('9999999999999999', ZERO) })));
    assert.equal(c.sport, 40500);
    const back = parse(h.one(udpPacket(R, PUBLIC, { sport: 4500, dport: b.sport as number, payload: Uint8Array.of(0xff) })));
    assert.deepEqual([back.dst, back.dport], [L2, 4500]);
  });

  it('a rekey the remote starts after 20 idle minutes still arrives, with old or new cookies', () => {
    const h = setup();
    h.one(ike(L1, R, 'abababababababab', ZERO));
    h.one(ike(R, PUBLIC, 'abababababababab', 'cdcdcdcdcdcdcdcd'));
    h.now += 20 * MIN;
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'abababababababab', 'cdcdcdcdcdcdcdcd', 32)), [L1], 'quick mode on the old SA');
    h.now += 20 * MIN;
    // New Phase 1 started by the remote: unknown cookie goes to the host that spoke ISAKMP with it (Rule I-7).
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'efefefefefefefef', ZERO)), [L1]);
    h.one(ike(L1, R, 'efefefefefefefef', '1212121212121212'));
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'efefefefefefefef', '1212121212121212')), [L1]);
    const rows = [...ipsecRows(h)];
    assert.ok(rows.some((r) => r.vpn?.icookie === 'efefefefefefefef' && r.vpn?.rcookie === '1212121212121212' && r.lan.addr === L1));
  });

  it('entries expire with the IPsec lifetime, not the UDP timeout', () => {
    const h = setup({ guessing: false });
    h.one(ike(L1, R, '3333333333333333', ZERO));
    h.now += 29 * MIN;
    h.one(ike(R, PUBLIC, '3333333333333333', '4444444444444444'));
    h.now += 30 * MIN + 1;
    h.dropped(Drop.ISAKMP_NO_MAPPING, ike(R, PUBLIC, '3333333333333333', '4444444444444444'));
  });

  it('fragmented IKE (certificates) crosses whole in both directions', () => {
    const h = setup();
    const outFrags = fragment(ike(L1, R, '7777777777777777', ZERO, 2, 3000), 1480);
    const sent = outFrags.flatMap((f) => h.send(f));
    assert.deepEqual(sent.map((p) => [parse(p).src, parse(p).dst]), outFrags.map(() => [PUBLIC, R]));
    const frags = fragment(ike(R, PUBLIC, '7777777777777777', '8888888888888888', 4, 3000), 1480);
    const got = [...h.send(frags[1]), ...h.send(frags[0]), ...h.send(frags[2])];
    assert.equal(got.length, 3);
    for (const g of got) assert.equal(parse(g).dst, L1);
  });
});

describe('ESP masquerade (spec §4)', () => {
  /** Both sides of an IKE exchange for `lan`, so it is a guess candidate. */
  function ikeDone(h: NatHarness, lan: string, ic: string): void {
    h.one(ike(lan, R, ic, ZERO));
    h.one(ike(R, PUBLIC, ic, 'f0f0f0f0f0f0f0f0'));
  }

  it('a pending entry is established by the first unknown inbound SPI; both directions translate', () => {
    const h = setup({ guessing: false });
    const o = parse(h.one(esp(L1, R, 0x1000)));
    assert.equal(o.src, PUBLIC);
    assert.equal(r32(o.l4, 0), 0x1000, 'SPI untouched');
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x2000)), [L1]);
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x2000, 2)), [L1]);
    h.one(esp(L1, R, 0x1000, 2));
    const row = [...ipsecRows(h)].find((r) => r.proto === 'esp');
    assert.equal(row?.state, 'ESTABLISHED');
    assert.deepEqual(row?.vpn, { spiOut: '0x00001000', spiIn: '0x00002000', state: 'established' });
    assert.deepEqual([row?.lan.addr, row?.public.addr, row?.remote.addr], [L1, PUBLIC, R]);
  });

  it('SPI 0 and reserved inbound SPIs are dropped', () => {
    const h = setup();
    h.dropped(Drop.ESP_ZERO_SPI, esp(L1, R, 0));
    h.dropped(Drop.ESP_ZERO_SPI, esp(R, PUBLIC, 0));
    h.dropped(Drop.ESP_RESERVED_SPI, esp(R, PUBLIC, 1));
  });

  it('serializes new SPIs per remote; after more than 5 retries under contention the pending one is squelched for 30 s', () => {
    const h = setup({ guessing: false });
    h.one(esp(L1, R, 0x1111));
    h.dropped(Drop.ESP_BLOCKED, esp(L2, R, 0x2222));
    h.dropped(Drop.ESP_BLOCKED, esp(L1, R, 0x1112)); // the same host's second SA waits too
    for (let i = 0; i < 5; i++) h.one(esp(L1, R, 0x1111, i + 2));
    h.dropped(Drop.ESP_SQUELCHED, esp(L1, R, 0x1111, 7));
    h.one(esp(L2, R, 0x2222, 2));
    h.dropped(Drop.ESP_SQUELCHED, esp(L1, R, 0x1111, 8));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9222)), [L2]);
    h.now += 30_001;
    h.one(esp(L1, R, 0x1111, 9)); // squelch over: a new pending entry
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9111)), [L1]);
    const ev = h.ipsec!.stats().events as Record<string, number>;
    assert.equal(ev['esp-squelch'], 1);
    assert.equal(ev['esp-blocked'], 1);
    assert.equal(ev['esp-blocked-self'], 1);
  });

  it('a host without competitors may wait as long as it retransmits; a pending entry expires after 2 min', () => {
    const h = setup({ guessing: false });
    h.one(esp(L1, R, 0x1111));
    for (let i = 0; i < 10; i++) {
      h.now += 90_000;
      h.one(esp(L1, R, 0x1111, i + 2));
    }
    h.dropped(Drop.ESP_BLOCKED, esp(L2, R, 0x2222));
    h.now += 2 * MIN + 1;
    h.one(esp(L2, R, 0x2222, 2));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x9222)), [L2]);
  });

  it('guessing copies an unknown SPI to the recent ISAKMP hosts and creates nothing; the host that answers does', () => {
    const h = setup();
    ikeDone(h, L1, '0000000100000001');
    h.now += 1000;
    ikeDone(h, L2, '0000000200000002');
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x7777)).sort(), [L1, L2]);
    assert.equal(h.ipsec!.stats().esp && (h.ipsec!.stats().esp as Record<string, number>).established, 0);
    h.one(esp(L2, R, 0x5555));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x7777, 2)), [L2]);
    const off = setup({ guessing: false });
    ikeDone(off, L1, '0000000100000001');
    off.dropped(Drop.ESP_NO_MAPPING, esp(R, PUBLIC, 0x7777));
  });

  it('guessing reaches every recent host, also hosts last seen in the same millisecond (one batch)', () => {
    const h = setup();
    ikeDone(h, L1, '0000000100000001');
    ikeDone(h, L2, '0000000200000002');
    ikeDone(h, L3, '0000000300000003');
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x7778)).sort(), [L1, L2, L3]);
  });

  it('three hosts each end with their own bidirectional flow; nobody gets another host\'s ESP', () => {
    const h = setup();
    const hosts = [L1, L2, L3];
    hosts.forEach((l, i) => ikeDone(h, l, `0000000${i + 1}0000000${i + 1}`));
    // Round robin: each sends; only the first new SPI is let through until its reply comes.
    for (let round = 0; round < 3; round++) {
      for (let i = round; i < 3; i++) {
        const out = h.send(esp(hosts[i], R, 0x100 + i, round + 1));
        assert.equal(out.length, i === round ? 1 : 0);
      }
      assert.deepEqual(dests(h, esp(R, PUBLIC, 0x900 + round)), [hosts[round]]);
    }
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(dests(h, esp(R, PUBLIC, 0x900 + i, 10)), [hosts[i]]);
      assert.equal(parse(h.one(esp(hosts[i], R, 0x100 + i, 10))).src, PUBLIC);
    }
  });

  it('a rekey to new SPIs on both sides keeps traffic flowing while the old SAs drain', () => {
    const h = setup();
    ikeDone(h, L1, '0000000100000001');
    ikeDone(h, L2, '0000000200000002');
    h.one(esp(L1, R, 0x101));
    dests(h, esp(R, PUBLIC, 0x901));
    h.one(esp(L2, R, 0x102));
    dests(h, esp(R, PUBLIC, 0x902));
    h.now += 10 * MIN;
    // L1 rekeys; the remote switches to its new SPI first (spec §9.4): guessed, then associated.
    h.one(ike(L1, R, '0000000100000001', 'f0f0f0f0f0f0f0f0', 32));
    const first = dests(h, esp(R, PUBLIC, 0xa01));
    assert.ok(first.includes(L1));
    h.one(esp(L1, R, 0x201));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0xa01, 2)), [L1]);
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x901, 50)), [L1], 'old inbound SA still drains');
    h.one(esp(L1, R, 0x101, 50));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x902, 50)), [L2]);
  });

  it('parallel off: a remote in use by one host refuses new SPIs from another', () => {
    const h = setup({ parallel: false, guessing: false });
    h.one(esp(L1, R, 0x101));
    dests(h, esp(R, PUBLIC, 0x901));
    h.dropped(Drop.ESP_BLOCKED, esp(L2, R, 0x102));
    h.one(esp(L1, R, 0x103));
    assert.equal((h.ipsec!.stats().events as Record<string, number>)['esp-blocked-parallel'], 1);
  });

  it('fragmented inbound ESP is collected, then every fragment goes to its host', () => {
    const h = setup();
    h.one(esp(L1, R, 0x101));
    dests(h, esp(R, PUBLIC, 0x901));
    const frags = fragment(esp(R, PUBLIC, 0x901, 2, 2000), 1480);
    assert.deepEqual(h.send(frags[0]), [], 'the first fragment waits for the rest');
    const out = h.send(frags[1]);
    assert.deepEqual(out.map((o) => parse(o).dst), [L1, L1]);
    assert.equal(parse(out[0]).flags & MF, MF);
    assert.ok(out.every((o) => checksumsValid(o)));
    assert.deepEqual(reassemble(out).subarray(20), reassemble(frags).subarray(20), 'the ESP payload is untouched');
  });

  it('ICMP fragmentation-needed quoting outbound ESP reaches the sender', () => {
    const h = setup();
    h.one(esp(L2, R, 0x102));
    const sent = h.one(esp(L2, R, 0x102, 2, 1400));
    const err = icmpPacket('198.18.0.1', PUBLIC, icmpError(3, 4, sent, 28, 1280));
    const o = h.one(err);
    const p = parse(o);
    assert.equal(p.dst, L2);
    assert.equal(p.inner?.src, L2);
    assert.equal(p.inner?.proto, ESP);
    assert.equal(r32(p.inner!.l4, 0), 0x102);
    assert.equal(p.mtu, 1280);
    assert.ok(checksumsValid(o));
    h.dropped(Drop.ICMP_ERROR_NO_MAPPING, icmpPacket('198.18.0.1', PUBLIC, icmpError(3, 4, esp(PUBLIC, R, 0x999), 28, 1280)));
  });
});

describe('AH (spec §4.5)', () => {
  it('is dropped, counted, and logged once per flow with the reason', () => {
    const h = setup();
    const ah = (src: string, dst: string) => ipv4({ src, dst, proto: AH, payload: new Uint8Array(24) });
    h.dropped(Drop.AH_REFUSED, ah(L1, R));
    h.dropped(Drop.AH_REFUSED, ah(L1, R));
    h.dropped(Drop.AH_REFUSED, ah(R, PUBLIC));
    const lines: Array<[string, string, Record<string, unknown>]> = [];
    h.ipsec!.events.drain((k, m, f) => lines.push([k, m, f]));
    assert.deepEqual(lines.map((l) => [l[0], l[2].from, l[2].to]), [
      ['ipsec-ah-refused', L1, R], ['ipsec-ah-refused', R, PUBLIC],
    ]);
    assert.match(lines[0][1], /signs the addresses/);
    assert.equal((h.ipsec!.stats().events as Record<string, number>)['ah-refused'], 3);
  });
});

describe('without IPsec masquerade', () => {
  it('UDP 500 is plain NAPT and ESP an unknown protocol', () => {
    const h = new NatHarness();
    const o = parse(h.one(ike(L1, R, '1111111122222222', ZERO)));
    assert.equal(o.sport, 500);
    h.dropped(Drop.UNKNOWN_PROTOCOL, esp(L1, R, 0x100));
    assert.equal(UDP, 17);
  });
});

describe('IPsec server behind the NAT (spec §6)', () => {
  /** A LAN IPsec server L3 behind udp/500, udp/4500 and an ESP forward to `espTo`. */
  function serverSetup(espTo: string, over: Partial<IpsecOptions> = {}): NatHarness {
    const h = setup(over);
    h.napt.forwards = new Forwards(h.table, [
      { proto: 'udp', publicPort: 500, lanAddress: L3, lanPort: 500 },
      { proto: 'udp', publicPort: 4500, lanAddress: L3, lanPort: 4500 },
      { proto: 'esp', lanAddress: espTo },
    ]);
    return h;
  }
  const events = (h: NatHarness): Record<string, number> => h.ipsec!.stats().events as Record<string, number>;

  it('an exchange the remote starts goes to the forwarded server, not to recent LAN initiators; replies leave from 500', () => {
    const h = serverSetup(L3);
    h.one(ike(L1, R, '1010101010101010', ZERO));
    assert.deepEqual(dests(h, ike(R, PUBLIC, '1010101010101010', '2020202020202020')), [L1], 'L1 is a recent initiator');
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'c1c1c1c1c1c1c1c1', ZERO)), [L3]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'c1c1c1c1c1c1c1c1', ZERO)), [L3], 'a retransmit stays with the server');
    const reply = parse(h.one(ike(L3, R, 'c1c1c1c1c1c1c1c1', 'd2d2d2d2d2d2d2d2')));
    assert.deepEqual([reply.src, reply.sport, reply.dst, reply.dport], [PUBLIC, 500, R, 500]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, 'c1c1c1c1c1c1c1c1', 'd2d2d2d2d2d2d2d2', 35)), [L3]);
    assert.deepEqual(dests(h, ike(R, PUBLIC, '1010101010101010', '2020202020202020', 32)), [L1], 'the LAN client keeps its own exchange');
    const rows = [...ipsecRows(h)];
    assert.ok(rows.some((r) => r.lan.addr === L3 && r.vpn?.icookie === 'c1c1c1c1c1c1c1c1' && r.vpn?.rcookie === 'd2d2d2d2d2d2d2d2'));
    assert.equal(events(h)['isakmp-forward'], 1);
    assert.equal(events(h)['isakmp-guess'], 0);
  });

  it('new ESP from a remote goes to the server holding its ISAKMP session, before the ESP forward, then pairs', () => {
    const R2 = '198.18.0.21';
    const h = serverSetup(L2, { guessing: false });
    h.one(ike(R, PUBLIC, 'e1e1e1e1e1e1e1e1', ZERO));
    h.one(ike(L3, R, 'e1e1e1e1e1e1e1e1', 'f2f2f2f2f2f2f2f2'));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x1000)), [L3], 'the ISAKMP owner, like IPVS');
    const out = parse(h.one(esp(L3, R, 0x2000)));
    assert.equal(out.src, PUBLIC);
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x1000, 2)), [L3]);
    assert.equal((h.ipsec!.stats().esp as Record<string, number>).established, 1);
    assert.equal(events(h)['esp-server'], 1, 'the second packet matched the established entry');
    // A remote with no ISAKMP session here: the ESP protocol forward is the last resort.
    assert.deepEqual(dests(h, esp(R2, PUBLIC, 0x3000)), [L2]);
    assert.equal(events(h)['esp-forward'], 1);
    // Once the server's ISAKMP session has expired, a new SPI from R also falls to the forward.
    h.now += 31 * MIN;
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x4000)), [L2]);
  });

  it('without forwards unknown ESP is still dropped', () => {
    const h = setup({ guessing: false });
    h.dropped(Drop.ESP_NO_MAPPING, esp(R, PUBLIC, 0x5000));
  });
});

describe('IPsec entries in the connection listing (vpnmasq conns)', () => {
  it('share one id space with the sessions; deleting an entry stops its translation', () => {
    const h = setup({ guessing: false });
    h.ipsec!.serials = h.table.serials;
    h.one(udpPacket(L1, R, { sport: 4000, dport: 53, payload: new Uint8Array(8) }));
    h.one(ike(L1, R, '5151515151515151', ZERO));
    h.one(ike(R, PUBLIC, '5151515151515151', '6161616161616161'));
    h.one(esp(L1, R, 0x7000));
    assert.deepEqual(dests(h, esp(R, PUBLIC, 0x7001)), [L1]);
    const rows = [...ipsecRows(h)];
    const isakmpRow = rows.find((r) => r.proto === 'isakmp')!;
    const espRow = rows.find((r) => r.proto === 'esp')!;
    assert.deepEqual([isakmpRow.lan, isakmpRow.public, isakmpRow.remote], [{ addr: L1, port: 500 }, { addr: PUBLIC, port: 500 }, { addr: R, port: 500 }]);
    assert.deepEqual(isakmpRow.vpn, { icookie: '5151515151515151', rcookie: '6161616161616161' });
    assert.deepEqual([isakmpRow.state, isakmpRow.packets], ['REPLIED', { out: 1, in: 1 }]);
    assert.deepEqual([espRow.state, espRow.packets, espRow.expiresInSeconds, espRow.idleSeconds], ['ESTABLISHED', { out: 1, in: 1 }, 30 * 60, 0]);
    const sessionIds: number[] = [];
    h.table.forEachSession((s) => sessionIds.push(h.table.sSerial[s]));
    const all = [...sessionIds, isakmpRow.id, espRow.id];
    assert.equal(new Set(all).size, all.length, `ids unique across tables: ${all}`);

    assert.equal(h.ipsec!.deleteSerials(new Set([espRow.id])), 1);
    h.dropped(Drop.ESP_NO_MAPPING, esp(R, PUBLIC, 0x7001, 2));
    assert.deepEqual([...ipsecRows(h)].map((r) => r.proto), ['isakmp']);
    h.one(esp(L1, R, 0x7000, 2));
    const again = [...ipsecRows(h)].find((r) => r.proto === 'esp')!;
    assert.deepEqual([again.state, again.vpn?.spiIn], ['PENDING', null], 'the next outbound packet makes a new, pending entry');
    assert.ok(again.id > espRow.id);
    assert.equal(h.ipsec!.deleteSerials(new Set([isakmpRow.id])), 1);
    h.dropped(Drop.ISAKMP_NO_MAPPING, ike(R, PUBLIC, '5151515151515151', '6161616161616161', 32));
  });
});

describe('IPsec tables and the journal', () => {
  /** The journal events since the last call, as [kind, table] pairs. */
  const events = (h: NatHarness): Array<[number, number]> => {
    const out: Array<[number, number]> = [];
    h.journal.drain((kind, table) => { out.push([kind, table]); });
    return out;
  };

  it('the pending -> established change of an ESP entry is an UPDATE event (conns watch, the store)', () => {
    const h = setup({ guessing: false });
    h.ipsec!.journal = h.journal;
    h.one(esp(L1, R, 0x7100));
    assert.deepEqual(events(h), [[EV_NEW, TABLE_ESP]]);
    h.one(esp(R, PUBLIC, 0x7200));
    assert.deepEqual(events(h), [[EV_UPDATE, TABLE_ESP]]);
    h.one(esp(R, PUBLIC, 0x7200, 2));
    assert.deepEqual(events(h), [], 'no event per packet');
  });

  it('an ISAKMP entry learning its responder cookie from the first reply is an UPDATE event; one made with it is only NEW', () => {
    const h = setup({ guessing: false });
    h.ipsec!.journal = h.journal;
    h.one(ike(L1, R, '6161616161616161', ZERO));
    assert.deepEqual(events(h), [[EV_NEW, TABLE_ISAKMP]]);
    h.one(ike(R, PUBLIC, '6161616161616161', '7171717171717171'));
    assert.deepEqual(events(h), [[EV_UPDATE, TABLE_ISAKMP]]);
    h.one(ike(R, PUBLIC, '6161616161616161', '7171717171717171', 32));
    h.one(ike(L1, R, '6161616161616161', '7171717171717171', 32));
    assert.deepEqual(events(h), [], 'no event per packet');
    // A LAN host answering the remote's exchange carries both cookies in its first packet.
    h.one(ike(L2, R, '5151515151515151', '4141414141414141'));
    assert.deepEqual(events(h), [[EV_NEW, TABLE_ISAKMP]]);
  });

  it('removeAll ends every ISAKMP and ESP entry: nothing translates inbound afterwards', () => {
    const h = setup({ guessing: false });
    h.ipsec!.journal = h.journal;
    h.one(ike(L1, R, '7171717171717171', ZERO));
    h.one(ike(R, PUBLIC, '7171717171717171', '8181818181818181'));
    h.one(esp(L1, R, 0x7300));
    h.one(esp(R, PUBLIC, 0x7400));
    events(h);
    assert.equal(h.ipsec!.removeAll(), 2);
    assert.deepEqual(events(h).map(([k]) => k), [EV_DESTROY, EV_DESTROY]);
    assert.deepEqual(h.ipsec!.stats().esp, { pending: 0, established: 0, squelched: 0 });
    assert.equal(h.ipsec!.stats().isakmp, 0);
    h.dropped(Drop.ESP_NO_MAPPING, esp(R, PUBLIC, 0x7400, 3));
    h.dropped(Drop.ISAKMP_NO_MAPPING, ike(R, PUBLIC, '7171717171717171', '8181818181818181', 32));
  });
});
