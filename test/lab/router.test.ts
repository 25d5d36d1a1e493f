/**
 * The router core against real kernel stacks: LAN hosts and WAN hosts in
 * network namespaces, vpnmasq in the router namespace. Assertions are about
 * what the peers saw on the wire.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';

requireRoot();

describe('router core in the lab', () => {
  let lab: Lab;
  let router: RouterHandle;

  before(async () => {
    lab = await createLab({ lanHosts: 2, wanHosts: 2 });
    router = await startRouter(lab);
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      if (lab) await lab.destroy();
    }
  });

  it('pings WAN hosts from both LAN hosts', async () => {
    for (const l of lab.ns.lan) {
      for (const w of lab.addr.wan) {
        const r = await lab.ping(l, w, { count: 2 });
        assert.equal(r.received, 2, `${l} -> ${w}: ${JSON.stringify(r)}`);
      }
    }
    const conns = await router.conns();
    assert.ok(conns.some((c) => c.proto === 'icmp' && c.lan.addr === lab.addr.lan[0] && c.public.addr === lab.addr.public));
  });

  it('UDP: WAN hosts see only the public address, LAN hosts see the true remote', async () => {
    for (let w = 0; w < 2; w++) {
      const srv = await peerServer(lab, lab.ns.wan[w], ['udp-server', '--port', '7000', '--count', '2']);
      for (let l = 0; l < 2; l++) {
        const r = await peer(lab, lab.ns.lan[l], ['udp-client', '--host', lab.addr.wan[w], '--port', '7000', '--size', '300']);
        assert.equal(r.reply.peer.split(':')[0], lab.addr.public);
        assert.equal(r.from, `${lab.addr.wan[w]}:7000`);
        assert.equal(r.reply.sha256, r.sentSha256);
      }
      await srv.result;
    }
  });

  it('endpoint-independent mapping: one LAN socket to two servers keeps one public port', async () => {
    const seen: string[] = [];
    for (let w = 0; w < 2; w++) {
      const srv = await peerServer(lab, lab.ns.wan[w], ['udp-server', '--port', '7001']);
      const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[w], '--port', '7001', '--sport', '40000']);
      seen.push(r.reply.peer);
      await srv.result;
    }
    assert.equal(seen[0], `${lab.addr.public}:40000`, 'port preserved when free');
    assert.equal(seen[0], seen[1]);
  });

  it('no port overloading: two LAN hosts with the same source port get different public ports', async () => {
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7002', '--count', '2']);
    const a = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', '7002', '--sport', '41000']);
    const b = await peer(lab, lab.ns.lan[1], ['udp-client', '--host', lab.addr.wan[0], '--port', '7002', '--sport', '41000']);
    await srv.result;
    assert.notEqual(a.reply.peer, b.reply.peer);
    assert.equal(a.reply.peer.split(':')[0], lab.addr.public);
    assert.equal(b.reply.peer.split(':')[0], lab.addr.public);
  });

  it('TCP: concurrent connections and a 100 MB transfer checked by hash', async () => {
    const srv = await peerServer(lab, lab.ns.wan[0], ['tcp-server', '--port', '7003', '--count', '4', '--timeout', '60']);
    const jobs = [
      peer(lab, lab.ns.lan[0], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7003', '--bytes', String(100 * 1024 * 1024), '--timeout', '60'], 90000),
      peer(lab, lab.ns.lan[0], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7003', '--bytes', '100000']),
      peer(lab, lab.ns.lan[1], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7003', '--bytes', '200000']),
      peer(lab, lab.ns.lan[1], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7003', '--bytes', '300000']),
    ];
    const results = await Promise.all(jobs);
    await srv.result;
    for (const r of results) {
      assert.equal(r.reply.sha256, r.sha256, 'server read exactly what the client sent');
      assert.equal(r.reply.bytes, r.bytes);
      assert.equal(r.reply.peer.split(':')[0], lab.addr.public);
      assert.equal(r.remote, `${lab.addr.wan[0]}:7003`);
    }
    const st = await router.stats();
    assert.ok(st.tun.rx_bytes / st.tun.rx_packets > 1600, `offloads on: super-packets pass the loop (avg ${st.tun.rx_bytes / st.tun.rx_packets} B)`);
  });

  it('unsolicited TCP/UDP/ICMP to the public address reaches no LAN host and gets no reply', async () => {
    // Create a mapping from l1 to w1, then probe it from w2 (never contacted) and probe unmapped ports.
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7004']);
    const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', '7004', '--sport', '42000']);
    await srv.result;
    const mappedPort = r.reply.peer.split(':')[1];
    const before = (await router.stats()).drops;
    const listener = await peerServer(lab, lab.ns.lan[0], ['udp-server', '--port', '42000', '--timeout', '3']);
    const probe = await peer(lab, lab.ns.wan[1], ['udp-client', '--host', lab.addr.public, '--port', mappedPort, '--timeout', '2']);
    assert.equal(probe.reply, null, 'no answer to an unsolicited datagram');
    const refused = await peer(lab, lab.ns.wan[1], ['udp-refused', '--host', lab.addr.public, '--port', '9', '--timeout', '2']);
    assert.equal(refused.refused, false, 'no ICMP port-unreachable leaks from the router');
    const ping = await lab.ping(lab.ns.wan[1], lab.addr.public, { count: 2, waitMs: 500 });
    assert.equal(ping.received, 0);
    assert.equal(ping.errors.length, 0);
    const tcp = await lab.exec(lab.ns.wan[1], ['python3', '-c',
      `import socket;s=socket.socket();s.settimeout(2)\ntry:\n s.connect(('${lab.addr.public}', 22)); print('open')\nexcept socket.timeout: print('silent')\nexcept ConnectionRefusedError: print('refused')`]);
    assert.equal(tcp.stdout.trim(), 'silent', 'no RST for an unsolicited SYN');
    const got = await listener.result;
    assert.equal(got.trim(), '', 'the LAN host received nothing');
    const after = (await router.stats()).drops;
    assert.ok(after.filtered > before.filtered, 'filtered drop counted');
    assert.ok(after['no-mapping'] > before['no-mapping'], 'no-mapping drop counted');
  });

  it('ICMP port-unreachable from a WAN host reaches the LAN socket (connection refused)', async () => {
    const r = await peer(lab, lab.ns.lan[0], ['udp-refused', '--host', lab.addr.wan[0], '--port', '9999', '--timeout', '3']);
    assert.equal(r.refused, true);
  });

  it('fragmentation-needed from a router on the path lowers the LAN host path MTU', async () => {
    const ping = await lab.ping(lab.ns.lan[0], lab.addr.far, { count: 1, size: 1400, df: 'probe' });
    assert.ok(ping.errors.some((e) => e.kind === 'icmp' && e.icmpType === 3 && e.icmpCode === 4 && e.mtu === 1280),
      `expected frag-needed with MTU 1280: ${JSON.stringify(ping)}`);
    const r = await peer(lab, lab.ns.lan[1], ['udp-pmtu', '--host', lab.addr.far, '--port', '7005', '--size', '1400']);
    assert.equal(r.mtu, 1280, 'the socket learnt the path MTU');
    assert.equal(r.second, 'EMSGSIZE', 'the kernel refuses a datagram above the learnt MTU');
    const route = await lab.exec(lab.ns.lan[1], ['ip', 'route', 'get', lab.addr.far]);
    assert.match(route.stdout, /mtu 1280/, `path MTU learnt: ${route.stdout}`);
  });

  it('8000-byte UDP datagrams fragmented by the sender arrive whole both ways, also in reverse order', async () => {
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7006', '--count', '3', '--echo-bytes', '8000']);
    const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', '7006', '--sport', '43000', '--size', '8000', '--expect-bytes', '8000']);
    assert.equal(r.reply.len, 8000);
    assert.equal(r.reply.sha256, r.sentSha256, 'outbound fragments reassembled at the WAN host');
    assert.equal(r.tailOk, true, 'inbound 8000-byte reply reassembled at the LAN host');
    // Reverse order, outbound: hand-made fragments from the LAN host.
    const rev = await peer(lab, lab.ns.lan[1], ['udp-frags', '--src', lab.addr.lan[1], '--dst', lab.addr.wan[0], '--sport', '43001', '--dport', '7006', '--size', '8000', '--reverse']);
    // Reverse order, inbound: the WAN host answers the mapping of 43000 with reversed fragments.
    const lanSrv = await peerServer(lab, lab.ns.lan[0], ['udp-server', '--port', '43000', '--timeout', '5']);
    const mapped = (await router.conns()).find((c) => c.lan.port === 43000 && c.proto === 'udp')!.public.port;
    const revIn = await peer(lab, lab.ns.wan[0], ['udp-frags', '--src', lab.addr.wan[0], '--dst', lab.addr.public, '--sport', '7006', '--dport', String(mapped), '--size', '8000', '--reverse']);
    const lanGot = JSON.parse((await lanSrv.result).trim().split('\n')[0] || 'null');
    const wanGot = (await srv.result).trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(rev.fragments, 6);
    assert.ok(wanGot.some((g) => g.len === 8000 && g.sha256 === rev.sha256 && g.peer.startsWith(`${lab.addr.public}:`)),
      'WAN host reassembled the reversed outbound datagram');
    assert.ok(lanGot, 'LAN host received the reversed inbound datagram');
    assert.equal(lanGot.len, 8000);
    assert.equal(lanGot.sha256, revIn.sha256);
    assert.equal(lanGot.peer, `${lab.addr.wan[0]}:7006`);
  });

  it('malformed and unsupported packets are dropped and counted, and forwarding goes on', async () => {
    const before = (await router.stats()).drops;
    const dst = lab.addr.wan[0];
    // TCP header cut to 8 bytes; TCP with a wrong checksum; UDP with a wrong checksum; protocol 99; AH.
    await peer(lab, lab.ns.lan[0], ['raw', '--dst', dst, '--proto', '6', '--hex', '1f9001bb00000000']);
    await peer(lab, lab.ns.lan[0], ['raw', '--dst', dst, '--proto', '6', '--hex', '1f9101bb000000010000000050020200dead0000']);
    await peer(lab, lab.ns.lan[0], ['raw', '--dst', dst, '--proto', '17', '--hex', '1f9201bb000c1234abcdef01']);
    await peer(lab, lab.ns.lan[0], ['raw', '--dst', dst, '--proto', '99', '--hex', '00112233']);
    await peer(lab, lab.ns.lan[0], ['raw', '--dst', dst, '--proto', '51', '--hex', '0404000000001001000000010000000000000000000000000000']);
    await new Promise((r) => setTimeout(r, 300));
    const after = (await router.stats()).drops;
    assert.ok(after['l4-truncated'] > before['l4-truncated'], 'truncated TCP counted');
    assert.ok(after['l4-bad-checksum'] >= before['l4-bad-checksum'] + 2, 'bad TCP and UDP checksums counted');
    assert.ok(after['unknown-protocol'] > before['unknown-protocol'], 'unknown protocol counted');
    assert.ok(after['ah-refused'] > before['ah-refused'], 'AH refused');
    const ping = await lab.ping(lab.ns.lan[0], dst, { count: 1 });
    assert.equal(ping.received, 1, 'still forwarding');
  });

  it('stopping the daemon leaves only the safety net (no TUN, no TUN route); teardown removes it and restores ip_forward', async () => {
    const sh = async (...argv: string[]) => (await lab.exec(lab.ns.router, argv)).stdout;
    const code = await router.stop();
    assert.equal(code, 0, router.log());
    const tun = router.tunName;
    assert.doesNotMatch(await sh('ip', 'link', 'show'), new RegExp(`^\\d+: ${tun}[:@]`, 'm'), 'the TUN is gone');
    const routes = await sh('ip', 'route', 'show', 'table', 'all');
    assert.doesNotMatch(routes, new RegExp(`dev ${tun}\\b`));
    assert.match(routes, /^blackhole default table 7100 proto 247/m, 'LAN traffic has nowhere to go but the blackhole');
    assert.match(routes, /^blackhole default table 7101 proto 247/m);
    assert.match(await sh('ip', 'rule', 'show'), /^7100:\s+from 10\.77\.0\.0\/24 iif lan0 lookup 7100 proto 247/m);
    assert.equal((await lab.ping(lab.ns.lan[0], lab.addr.wan[0], { count: 1, waitMs: 500 })).received, 0, 'nothing forwarded untranslated');
    const down = await router.cli('status');
    assert.equal(down.code, 1);
    assert.match(down.stdout, /^vpnmasq is not running\nSafety net +in place \(\d+ rules, blackholes in table 7100, 7101\): nothing translates/);
    const td = await router.teardown();
    assert.equal(td.code, 0, td.stderr);
    assert.match(td.stderr, /restored net\.ipv4\.ip_forward=0/);
    assert.doesNotMatch(await sh('ip', 'rule', 'show'), /7100|7101|proto 247/);
    assert.doesNotMatch(await sh('ip', 'route', 'show', 'table', 'all'), /proto 247|198\.18\.0\.2 /);
    assert.doesNotMatch(await sh('ip', 'neigh', 'show', 'proxy'), /198\.18\.0\.2/);
    assert.equal((await sh('cat', '/proc/sys/net/ipv4/ip_forward')).trim(), '0');
  });
});

describe('router core without offloads', () => {
  it('bulk TCP works with offloads off', async () => {
    const lab = await createLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false });
    let router: RouterHandle | undefined;
    try {
      router = await startRouter(lab, { tun: { name: `${lab.prefix.slice(3)}off`, mtu: 1500, offloads: false } });
      const srv = await peerServer(lab, lab.ns.wan[0], ['tcp-server', '--port', '7010', '--timeout', '60']);
      const r = await peer(lab, lab.ns.lan[0], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7010', '--bytes', String(20 * 1024 * 1024), '--timeout', '60'], 90000);
      await srv.result;
      assert.equal(r.reply.sha256, r.sha256);
      const st = await router.stats();
      assert.ok(st.tun.rx_bytes / st.tun.rx_packets <= 1510, 'no super-packets without offloads');
    } finally {
      if (router) await router.stop();
      await lab.destroy();
    }
  });
});
