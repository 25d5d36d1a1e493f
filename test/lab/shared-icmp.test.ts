/**
 * ICMP in shared-address mode: every ICMP packet to the router's WAN address
 * goes through vpnmasq, which translates what belongs to a LAN flow and hands
 * the rest (the box's own pings and errors) back to the kernel. Assertions are
 * about what the hosts saw on the wire.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';

requireRoot();

const ROUTER_WAN = '198.18.0.1';
const ROUTER_LAN = '10.77.0.1';

/** One echo request with IP TTL argv[2]; prints the ICMP type and sender of what comes back, or "timeout". */
const TTL_PING = `
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[2]))
s.settimeout(2)
ident = os.getpid() & 0xffff
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
body = struct.pack('!HH', ident, 1) + b'ttl-probe!'
s.sendto(struct.pack('!BBH', 8, 0, csum(b'\\x08\\x00\\x00\\x00' + body)) + body, (sys.argv[1], 0))
try:
    while True:
        data, addr = s.recvfrom(2048)
        icmp = data[(data[0] & 15) * 4:]
        if icmp[0] == 11 and struct.unpack('!H', icmp[32:34])[0] == ident:
            print(11, addr[0]); break
except socket.timeout:
    print('timeout')
`;

/** The source addresses of echo requests among raw-socket dumps (IP header first). */
function echoRequestSources(dumps: string[]): string[] {
  return dumps.map((h) => Buffer.from(h, 'hex')).filter((b) => b[(b[0] & 15) * 4] === 8).map((b) => [...b.subarray(12, 16)].join('.'));
}

describe('shared-address mode: ICMP', () => {
  let lab: Lab;
  let router: RouterHandle;

  const sh = async (ns: string, argv: string[]) => {
    const r = await lab.exec(ns, argv);
    assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    lab = await createLab({ lanHosts: 2, wanHosts: 2, vpnServer: false });
    router = await startRouter(lab, { wan: { interface: lab.routerIfaces.wan, mode: 'shared' } });
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      if (lab) await lab.destroy();
    }
  });

  it('steers ICMP to the WAN address into the TUN, behind an iif rule that delivers what comes back', async () => {
    const rules = await sh(lab.ns.router, ['ip', 'rule', 'show']);
    assert.match(rules, new RegExp(`^49:\\s+from all iif ${router.tunName} lookup local proto 247`, 'm'));
    assert.match(rules, /^50:\s+from all to 198\.18\.0\.1 ipproto icmp lookup 7102 proto 247/m);
  });

  it('LAN hosts ping WAN hosts; the WAN host sees the router\'s WAN address', async () => {
    const cap = await peerServer(lab, lab.ns.wan[0], ['listen-raw', '--proto', '1', '--seconds', '3', '--dump']);
    for (const l of lab.ns.lan) {
      const r = await lab.ping(l, lab.addr.wan[0], { count: 2 });
      assert.equal(r.received, 2, `${l}: ${JSON.stringify(r)}`);
    }
    const seen = JSON.parse((await cap.result).trim().split('\n').pop() ?? '{}') as { packets: string[] };
    const sources = echoRequestSources(seen.packets);
    assert.ok(sources.length >= 4, `captured ${JSON.stringify(seen)}`);
    assert.deepEqual([...new Set(sources)], [ROUTER_WAN]);
    const conns = await router.conns();
    assert.ok(conns.some((c) => c.proto === 'icmp' && c.lan.addr === lab.addr.lan[1] && c.public.addr === ROUTER_WAN));
  });

  it('a WAN host pings the router\'s WAN address and the box\'s kernel answers through vpnmasq', async () => {
    const before = await router.stats();
    const r = await lab.ping(lab.ns.wan[1], ROUTER_WAN, { count: 3 });
    assert.equal(r.received, 3, JSON.stringify(r));
    const after = await router.stats();
    assert.ok(after.tun.rx_packets - before.tun.rx_packets >= 3, 'the echo requests went through the TUN');
    assert.equal(after.drops['no-mapping'], before.drops['no-mapping'], 'handed to the kernel, not dropped');
    // Bigger than the MTU: fragments go to the kernel too and are reassembled there.
    const big = await lab.ping(lab.ns.wan[1], ROUTER_WAN, { count: 1, size: 3000 });
    assert.equal(big.received, 1, JSON.stringify(big));
  });

  it('the router pings WAN hosts itself', async () => {
    for (const w of lab.addr.wan) {
      const r = await lab.ping(lab.ns.router, w, { count: 2 });
      assert.equal(r.received, 2, `${w}: ${JSON.stringify(r)}`);
    }
  });

  it('a LAN host pings the router\'s WAN address', async () => {
    const r = await lab.ping(lab.ns.lan[0], ROUTER_WAN, { count: 2 });
    assert.equal(r.received, 2, JSON.stringify(r));
  });

  it('ICMP port-unreachable from a WAN host reaches the LAN socket (connection refused)', async () => {
    const r = await peer(lab, lab.ns.lan[0], ['udp-refused', '--host', lab.addr.wan[0], '--port', '9999', '--timeout', '3']);
    assert.equal(r.refused, true);
    // The box's own socket gets its port-unreachable too.
    const own = await peer(lab, lab.ns.router, ['udp-refused', '--host', lab.addr.wan[0], '--port', '9998', '--timeout', '3']);
    assert.equal(own.refused, true);
  });

  it('fragmentation-needed from a router on the path lowers the LAN host path MTU', async () => {
    const ping = await lab.ping(lab.ns.lan[0], lab.addr.far, { count: 1, size: 1400, df: 'probe' });
    assert.ok(ping.errors.some((e) => e.kind === 'icmp' && e.icmpType === 3 && e.icmpCode === 4 && e.mtu === 1280),
      `expected frag-needed with MTU 1280: ${JSON.stringify(ping)}`);
    const r = await peer(lab, lab.ns.lan[1], ['udp-pmtu', '--host', lab.addr.far, '--port', '7005', '--size', '1400']);
    assert.equal(r.mtu, 1280, 'the socket learnt the path MTU');
    assert.equal(r.second, 'EMSGSIZE');
    // And the box's own socket learns it as well.
    const own = await peer(lab, lab.ns.router, ['udp-pmtu', '--host', lab.addr.far, '--port', '7006', '--size', '1400']);
    assert.equal(own.mtu, 1280);
  });

  it('errors the box itself generates for LAN flows reach the LAN host', async () => {
    // TTL 1 expires on the way into the TUN: the router's own time-exceeded.
    const ttl = await sh(lab.ns.lan[0], ['python3', '-c', TTL_PING, lab.addr.wan[0], '1']);
    assert.equal(ttl.trim(), `11 ${ROUTER_LAN}`);
    // A WAN link narrower than the TUN: the kernel's frag-needed goes to the public address, i.e. through vpnmasq.
    await sh(lab.ns.router, ['ip', 'link', 'set', 'wan0', 'mtu', '1400']);
    try {
      const r = await peer(lab, lab.ns.lan[1], ['udp-pmtu', '--host', lab.addr.wan[1], '--port', '7007', '--size', '1450']);
      assert.equal(r.mtu, 1400, 'the LAN socket learnt the WAN link MTU from the router\'s own frag-needed');
    } finally {
      await sh(lab.ns.router, ['ip', 'link', 'set', 'wan0', 'mtu', '1500']);
    }
  });

  it('with the daemon stopped the box still answers pings itself; teardown removes the ICMP and iif rules', async () => {
    assert.equal(await router.stop(), 0, router.log());
    const ping = await lab.ping(lab.ns.wan[0], ROUTER_WAN, { count: 2 });
    assert.equal(ping.received, 2, 'ICMP to the box falls through to its own stack while nothing translates');
    const td = await router.teardown();
    assert.equal(td.code, 0, td.stderr);
    const rules = await sh(lab.ns.router, ['ip', 'rule', 'show']);
    assert.doesNotMatch(rules, /^(49|50|100):/m);
    assert.doesNotMatch(rules, new RegExp(`ipproto icmp|iif ${router.tunName}`));
    assert.match(rules, /^0:\s+from all lookup local/m);
  });
});
