/**
 * An IPsec server on the LAN behind forwards (vpn-masquerade-spec §6):
 * udp/500 and udp/4500 to the server, ESP to the server as the protocol
 * forward. Guessing is off, so inbound ESP reaches the server only through
 * the forward logic (the ISAKMP owner of that remote, like IPVS, else the
 * ESP forward).
 *
 * 1. Crafted hosts (test/hosts/peer.py), raw ESP: the responder on the LAN
 *    server, the client on a WAN host. Real strongSwan cannot be made to send
 *    raw ESP here: it floats to UDP 4500 whenever NAT-D sees the NAT, on the
 *    responder side too (there is no `encap = no`).
 * 2. Real strongSwan (IKEv2, kernel-libipsec): the server on the LAN, a
 *    client on the WAN side connecting to the public address. The client
 *    sees the server behind a NAT, so both float to NAT-T on UDP 4500.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';
import { capture } from './capture';
import { PROTECTED_HOST, requireCharon, initiate, listSas, startClient, startServer } from './charon';

requireRoot();
requireCharon();

describe('IPsec server on the LAN behind forwards', () => {
  let lab: Lab;
  let router: RouterHandle;
  let base: string;
  let server: string;

  before(async () => {
    lab = await createLab({ lanHosts: 1, wanHosts: 2, vpnServer: false, farHost: false });
    server = lab.addr.lan[0];
    router = await startRouter(lab, {
      ipsec: { guessing: false },
      forwards: [
        { proto: 'udp', publicPort: 500, lanAddress: server },
        { proto: 'udp', publicPort: 4500, lanAddress: server },
        { proto: 'esp', lanAddress: server },
      ],
    });
    base = lab.tempDir('swan');
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      if (lab) await lab.destroy();
    }
  });

  const events = async (): Promise<Record<string, number>> => (await router.stats()).ipsec.events;

  it('crafted raw ESP: a WAN client reaches the LAN responder; ESP pairs via the ISAKMP owner; stray ESP takes the ESP forward', async () => {
    const client = lab.addr.wan[1];
    const srv = await peerServer(lab, lab.ns.lan[0], ['ike-esp-responder', '--seconds', '20', '--idle', '3']);
    const r = await peer(lab, lab.ns.wan[1], ['ike-esp-client', '--host', lab.addr.public, '--icookie', 'd4d4d4d4d4d4d4d4',
      '--spi', '0x4100', '--packets', '5', '--timeout', '15'], 25000);
    assert.equal(r.error, undefined, JSON.stringify(r));
    assert.equal(r.ikeReplies, 4, 'Main Mode and Quick Mode answered from public port 500');
    assert.equal(r.flow.good, 5, `ESP came back with the server's SPI: ${JSON.stringify(r)}`);
    assert.deepEqual(r.foreign, []);
    const seen = JSON.parse((await srv.result).trim().split('\n').pop() as string);
    assert.deepEqual(seen.ikeFrom, [`${client}:500`], 'the server saw the client itself on port 500 (no NAT on its side)');
    assert.ok(seen.esp['00004100'] >= 5, JSON.stringify(seen));
    const ev = await events();
    assert.equal(ev['isakmp-forward'], 1, 'one exchange started through the udp/500 forward');
    assert.equal(ev['esp-server'], 1, 'only the first ESP needed steering; the server\'s answer built the entry');
    assert.equal(ev['esp-guess'], 0);
    const st = (await router.stats()).ipsec;
    assert.equal(st.esp.established, 1);

    // ESP from a remote with no ISAKMP session here: the ESP protocol forward (the last resort).
    const listen = await peerServer(lab, lab.ns.lan[0], ['listen-raw', '--proto', '50', '--seconds', '2', '--dump']);
    await peer(lab, lab.ns.wan[0], ['raw', '--dst', lab.addr.public, '--proto', '50', '--hex', '0000420000000001aabbccdd']);
    const got = JSON.parse((await listen.result).trim().split('\n').pop() as string);
    assert.equal(got.received, 1, JSON.stringify(got));
    assert.match(got.packets[0], /0000420000000001aabbccdd$/, 'the stray ESP, SPI 0x4200');
    assert.equal((await events())['esp-forward'], 1);
  });

  it('strongSwan: a WAN client brings up a tunnel to the LAN server through the forwards (NAT-T on 4500); ping and TCP reach the far end', async () => {
    const client = lab.addr.wan[0];
    const srv = await startServer(lab, base, lab.ns.lan[0], server);
    const cli = await startClient(lab, base, lab.ns.wan[0], 'client', lab.addr.public);
    const before = await events();
    // IKE_SA_INIT on port 500 through the forward, seen on the wire at both ends (RFC 7296 §2.23).
    const atServer = await capture(lab, lab.ns.lan[0], 'eth0', 'udp port 500');
    const atClient = await capture(lab, lab.ns.wan[0], 'eth0', 'udp port 500');
    const started = Date.now();
    const up = await initiate(lab, cli);
    assert.match(up.stdout, /initiate completed successfully/, `${up.stdout}${up.stderr}\n${cli.log().slice(-3000)}\n--- server\n${srv.log().slice(-3000)}`);
    const upMs = Date.now() - started;

    // Which ports each side used: IKE_SA_INIT on 500 through the forward, then NAT-T on 4500 (RFC 7296 §2.23).
    const cs = await listSas(lab, cli);
    assert.match(cs, new RegExp(`local  'client.test' @ ${client.replace(/\./g, '\\.')}\\[4500\\]`), cs);
    assert.match(cs, new RegExp(`remote 'server.test' @ ${lab.addr.public.replace(/\./g, '\\.')}\\[4500\\]`), cs);
    assert.match(cs, /TUNNEL-in-UDP/, 'ESP in UDP');
    const ss = await listSas(lab, srv);
    assert.match(ss, new RegExp(`local  'server.test' @ ${server.replace(/\./g, '\\.')}\\[4500\\]`), ss);
    assert.match(ss, new RegExp(`remote 'client.test' @ ${client.replace(/\./g, '\\.')}\\[4500\\]`), `the server sees the client un-NATed: ${ss}`);
    const server500 = await atServer.stop();
    const client500 = await atClient.stop();
    assert.ok(server500.some((p) => p.src === client && p.sport === 500 && p.dst === server && p.dport === 500),
      `IKE_SA_INIT reached the server on port 500, from the client itself: ${server500.map((p) => p.line).join('\n')}\n--- at the client\n${client500.map((p) => p.line).join('\n')}`);
    assert.ok(client500.some((p) => p.src === lab.addr.public && p.sport === 500 && p.dst === client && p.dport === 500),
      `its answer left from public port 500: ${client500.map((p) => p.line).join('\n')}`);
    const after = await events();
    assert.equal(after['isakmp-forward'] - before['isakmp-forward'], 1, 'the UDP 500 exchange went through the forward');
    assert.equal(after['isakmp-no-mapping'], before['isakmp-no-mapping']);

    const p = await lab.ping(lab.ns.wan[0], PROTECTED_HOST, { count: 3 });
    assert.equal(p.received, 3, JSON.stringify(p));
    const tcpSrv = await peerServer(lab, lab.ns.lan[0], ['tcp-server', '--port', '7100', '--count', '1', '--timeout', '30']);
    const tcp = await peer(lab, lab.ns.wan[0], ['tcp-client', '--host', PROTECTED_HOST, '--port', '7100', '--bytes', String(2 * 1024 * 1024), '--timeout', '30'], 40000);
    await tcpSrv.result;
    assert.equal(tcp.reply.sha256, tcp.sha256, 'bytes arrived intact');
    assert.match(tcp.reply.peer, /^100\.64\.0\./, 'the server saw the virtual IP: the connection ran inside the tunnel');

    // The router's view: the ISAKMP entry of the server on port 500 and the NAT-T mapping on public 4500.
    const conns = await router.conns();
    assert.ok(conns.some((c) => c.proto === 'isakmp' && c.lan.addr === server && c.remote.addr === client && c.vpn.rcookie !== null),
      JSON.stringify(conns));
    const natt = conns.find((c) => c.proto === 'udp' && c.lan.addr === server && c.lan.port === 4500 && c.remote.addr === client);
    assert.ok(natt, JSON.stringify(conns));
    assert.equal(natt.public.port, 4500);
    assert.equal(natt.remote.port, 4500);
    assert.ok(natt.packets.in > 10 && natt.packets.out > 10, `ESP in UDP crossed the mapping: ${JSON.stringify(natt.packets)}`);
    console.log(`# strongSwan server behind the NAT: tunnel up in ${upMs} ms`);
  });
});
