/**
 * Real IPsec peers through vpnmasq: three LAN hosts run strongSwan (IKEv2,
 * kernel-libipsec, PSK, virtual IPs) to one strongSwan server on the WAN
 * side at the same time. IKE_SA_INIT leaves from public port 500 for all
 * three (ISAKMP masquerade, demultiplexed by SPI), then the peers float to
 * NAT-T on 4500 (plain NAPT). Traffic is checked at the far end: the server
 * sees each client's virtual IP, which only exists inside the tunnel.
 * See /work/shared/reference/strongswan-in-namespaces.md.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';
import { PROTECTED_HOST, requireCharon, initiate, startClient, startServer } from './charon';

requireRoot();
requireCharon();

describe('strongSwan peers through vpnmasq', () => {
  let lab: Lab;
  let router: RouterHandle;
  let base: string;

  before(async () => {
    lab = await createLab({ lanHosts: 3, wanHosts: 1, farHost: false });
    router = await startRouter(lab);
    base = lab.tempDir('swan');
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      if (lab) await lab.destroy();
    }
  });

  it('three LAN hosts bring up tunnels to one server at once; ping and TCP through each are seen at the far end', async () => {
    const server = lab.ns.vpnServer;
    await startServer(lab, base, server, lab.addr.vpnServer);
    const clients = await Promise.all(lab.ns.lan.map((ns, i) => startClient(lab, base, ns, `client${i}`, lab.addr.vpnServer)));
    const started = Date.now();
    const up = await Promise.all(clients.map((c) => initiate(lab, c)));
    up.forEach((r, i) => assert.match(r.stdout, /initiate completed successfully/, `client ${i}: ${r.stdout}${r.stderr}\n${clients[i].log().slice(-3000)}`));
    const upMs = Date.now() - started;

    for (const ns of lab.ns.lan) {
      const p = await lab.ping(ns, PROTECTED_HOST, { count: 3 });
      assert.equal(p.received, 3, `${ns}: ${JSON.stringify(p)}`);
    }
    const srv = await peerServer(lab, server, ['tcp-server', '--port', '7100', '--count', '3', '--timeout', '30']);
    const tcp = await Promise.all(lab.ns.lan.map((ns) =>
      peer(lab, ns, ['tcp-client', '--host', PROTECTED_HOST, '--port', '7100', '--bytes', String(2 * 1024 * 1024), '--timeout', '30'], 40000)));
    await srv.result;
    const vips = new Set<string>();
    for (const r of tcp) {
      assert.equal(r.reply.sha256, r.sha256, 'bytes arrived intact');
      const seenFrom = r.reply.peer.split(':')[0] as string;
      assert.match(seenFrom, /^100\.64\.0\./, 'the server saw the virtual IP: the connection ran inside the tunnel');
      assert.equal(r.local.split(':')[0], seenFrom);
      vips.add(seenFrom);
    }
    assert.equal(vips.size, 3, 'three distinct tunnels');
    const st = await router.stats();
    assert.ok(st.ipsec.isakmp >= 3, `three ISAKMP entries on port 500: ${JSON.stringify(st.ipsec)}`);
    assert.equal(st.ipsec.events['isakmp-collision'], 0);
    console.log(`# strongSwan: 3 tunnels up in ${upMs} ms`);
  });
});
