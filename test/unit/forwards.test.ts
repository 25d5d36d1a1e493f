/** Forwards for servers on the LAN (spec §6), through the real Napt engine. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ACK, NatHarness, SYN, TCP, addr, parse, tcpPacket } from './packet-builder';
import { Forwards, NO_FORWARD } from '../../src/nat/forwards';
import { Drop } from '../../src/core/verdict';

const SERVER = '10.77.0.13';
const CLIENT = '10.77.0.11';
const PUBLIC = '198.18.0.2';

function harness(): { h: NatHarness; f: Forwards } {
  const h = new NatHarness();
  const f = new Forwards(h.table, [
    { proto: 'tcp', publicPort: 1723, lanAddress: SERVER, lanPort: 1723 },
    { proto: 'tcp', publicPort: 8080, lanAddress: SERVER, lanPort: 80 },
    { proto: 'esp', lanAddress: SERVER },
  ]);
  h.napt.forwards = f;
  return { h, f };
}

test('protoForward answers ESP and GRE lookups', () => {
  const { f } = harness();
  assert.equal(f.protoForward(50), addr(SERVER));
  assert.equal(f.protoForward(47), NO_FORWARD);
  assert.equal(f.portForward(TCP, 8080), addr(SERVER));
  assert.equal(f.portForward(TCP, 8081), NO_FORWARD);
});

test('two WAN clients reach a forwarded port at once; replies leave from the public port', () => {
  const { h } = harness();
  for (const [wan, port] of [['198.18.0.11', 5000], ['198.18.0.12', 5001]] as const) {
    const i = parse(h.one(tcpPacket(wan, PUBLIC, { sport: port, dport: 8080, flags: SYN })));
    assert.equal(i.dst, SERVER);
    assert.equal(i.dport, 80);
    const o = parse(h.one(tcpPacket(SERVER, wan, { sport: 80, dport: port, flags: SYN | ACK })));
    assert.equal(o.src, PUBLIC);
    assert.equal(o.sport, 8080);
  }
  h.dropped(Drop.NO_MAPPING, tcpPacket('198.18.0.11', PUBLIC, { sport: 5000, dport: 8081, flags: SYN }));
});

test('hairpinning: a LAN client reaches the forwarded port on the public address', () => {
  const { h } = harness();
  const i = parse(h.one(tcpPacket(CLIENT, PUBLIC, { sport: 41000, dport: 8080, flags: SYN })));
  assert.equal(i.src, PUBLIC);
  assert.equal(i.dst, SERVER);
  assert.equal(i.dport, 80);
  const back = parse(h.one(tcpPacket(SERVER, PUBLIC, { sport: 80, dport: i.sport as number, flags: SYN | ACK })));
  assert.equal(back.dst, CLIENT);
  assert.equal(back.dport, 41000);
  assert.equal(back.src, PUBLIC);
  assert.equal(back.sport, 8080);
});

test('isakmpServer: only a udp/500 forward that keeps port 500 takes ISAKMP exchanges', () => {
  const h = new NatHarness();
  const f = new Forwards(h.table, [{ proto: 'udp', publicPort: 500, lanAddress: SERVER, lanPort: 500 }]);
  assert.equal(f.isakmpServer(), addr(SERVER));
  f.configure([{ proto: 'udp', publicPort: 500, lanAddress: SERVER, lanPort: 4500 }]);
  assert.equal(f.isakmpServer(), NO_FORWARD);
  f.configure([]);
  assert.equal(f.isakmpServer(), NO_FORWARD);
});
