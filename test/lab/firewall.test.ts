/**
 * vpnmasq behind an ordinary router firewall: default-drop forward and
 * input chains of the operator's own (table inet filter, as in the README)
 * plus `vpnmasq firewall | nft -f -`. First the firewall alone loses the TUN
 * paths (so the ruleset is what makes them work), then with the ruleset:
 * TCP, UDP, ICMP, raw ESP with IKE, PPTP (control and GRE), a port forward
 * and pings to the box, a strongSwan tunnel (IKEv2, NAT-T), asserting what the far side received and from which
 * address, and that the ruleset opens nothing else (WAN -> LAN directly
 * stays dropped, also with the WAN's strict reverse-path filter off).
 * Shared-address and dedicated mode.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createLab, Lab, LAB_ROUTER_WAN, requireRoot } from './lab';
import { CLI, peer, peerServer, PPTP_HOST, RouterHandle, startRouter } from './router-harness';
import { acceptRule, DEFAULT_FIREWALL_MARK } from '../../src/edge/netlink/firewall';
import { tunDeviceNames } from '../../src/core/side';
import { hasCharon, initiate, PROTECTED_HOST, startClient, startServer } from './charon';

requireRoot();

/** The operator's firewall: default drop, the usual rules, and the one rule per chain that vpnmasq's table needs. */
const operatorRuleset = (withMarkRule: boolean): string => `
table inet filter
delete table inet filter
table inet filter {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "lan0" accept
    iifname "wan0" icmp type echo-request accept
    ${withMarkRule ? `${acceptRule(DEFAULT_FIREWALL_MARK).replace(' accept', ' counter accept')}` : ''}
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
    ${withMarkRule ? `${acceptRule(DEFAULT_FIREWALL_MARK).replace(' accept', ' counter accept')}` : ''}
  }
}
`;

for (const mode of ['shared', 'dedicated'] as const) {
  describe(`behind a default-drop forward and input policy plus vpnmasq firewall (${mode} mode)`, () => {
    let lab: Lab;
    let router: RouterHandle;
    let publicAddr: string;
    let base: string | undefined;

    const sh = async (script: string) => {
      const r = await lab.exec(lab.ns.router, ['sh', '-c', script], { timeoutMs: 20000 });
      assert.equal(r.code, 0, `${script}: ${r.stderr}`);
      return r.stdout;
    };
    const loadOperator = (withMarkRule: boolean) => sh(`nft -f - <<'EOF'\n${operatorRuleset(withMarkRule)}\nEOF`);
    const udp = async (ns: string, host: string, port: number) => {
      const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', String(port), '--timeout', '4']);
      const r = await peer(lab, ns, ['udp-client', '--host', host, '--port', String(port), '--timeout', '3']);
      const seen = (await srv.result).trim();
      return { reply: r.reply as Record<string, any> | null, seen: seen === '' ? [] : seen.split('\n').map((l) => JSON.parse(l)) };
    };

    before(async () => {
      lab = await createLab({ lanHosts: 2, wanHosts: 2 });
      const forwards = [{ proto: 'tcp', publicPort: 8080, lanAddress: lab.addr.lan[1], lanPort: 80 }];
      router = await startRouter(lab, mode === 'shared'
        ? { wan: { interface: lab.routerIfaces.wan, mode: 'shared' }, forwards }
        : { forwards });
      publicAddr = String((await router.request('status')).publicAddress);
      assert.equal(publicAddr, mode === 'shared' ? LAB_ROUTER_WAN : lab.addr.public);
    });

    after(async () => {
      try {
        if (router) await router.stop();
      } finally {
        if (lab) await lab.destroy();
      }
    });

    /** Whether UDP from a WAN host straight to a LAN host's address (routed by the box, no TUN) arrives. */
    const wanToLan = async (port: number) => {
      const l = await peerServer(lab, lab.ns.lan[0], ['listen-raw', '--proto', '17', '--seconds', '6']); // outlasts a slow python start on a loaded machine
      await peer(lab, lab.ns.wan[0], ['udp-client', '--host', lab.addr.lan[0], '--port', String(port), '--timeout', '1']);
      return JSON.parse((await l.result).trim().split('\n').pop() as string).received as number;
    };
    /**
     * The same with the WAN's strict reverse-path filter off for the probe:
     * vpnmasq sets it (the reverse lookup of a LAN address from the WAN side
     * finds the LAN rule and the TUN), so WAN -> LAN never gets as far as the
     * forward chain. Off, the probe shows what the forward chain alone does.
     */
    const wanToLanLoose = async (port: number) => {
      const rpf = `/proc/sys/net/ipv4/conf/${lab.routerIfaces.wan}/rp_filter`;
      await sh(`echo 0 > ${rpf}`);
      try {
        return await wanToLan(port);
      } finally {
        await sh(`echo 1 > ${rpf}`);
      }
    };

    it('the default-drop policy alone loses the TUN paths: LAN traffic and pings to the box', async () => {
      const route = await lab.exec(lab.ns.wan[0], ['ip', 'route', 'replace', lab.lanPrefix, 'via', LAB_ROUTER_WAN]);
      assert.equal(route.code, 0, route.stderr);
      assert.equal(await wanToLan(7008), 0, 'strict reverse-path filtering on the WAN drops WAN -> LAN');
      assert.equal(await wanToLanLoose(7010), 1, 'without it and without a firewall the box routes WAN -> LAN (the control for the last test)');
      await loadOperator(false);
      const r = await udp(lab.ns.lan[0], lab.addr.wan[0], 7001);
      assert.equal(r.reply, null);
      assert.deepEqual(r.seen, [], 'nothing reached the WAN host');
      if (mode === 'shared') {
        const ping = await lab.ping(lab.ns.wan[1], publicAddr, { count: 2 });
        assert.equal(ping.received, 0, 'the box\'s answer arrives on the input hook from the TUN');
      }
    });

    it('vpnmasq firewall | nft -f - loads the inet vpnmasq table, and again (idempotent)', async () => {
      await loadOperator(true);
      const load = `${process.execPath} ${CLI} -c ${router.configPath} firewall | nft -f -`;
      await sh(load);
      await sh(load);
      const table = await sh('nft list table inet vpnmasq');
      assert.equal((table.match(/comment "/g) ?? []).length, mode === 'shared' ? 5 : 4, table);
      const [lanTun, wanTun] = tunDeviceNames(router.tunName);
      assert.match(table, new RegExp(`iifname "lan0" oifname \\{ "${lanTun}", "${wanTun}" \\} ip saddr 10\\.77\\.0\\.0/24 meta mark set meta mark \\| 0x10000000`));
      assert.equal((await sh('nft list tables')).match(/inet vpnmasq/g)?.length, 1);
    });

    it('TCP, UDP and ICMP from the LAN pass; the WAN host sees only the public address', async () => {
      const u = await udp(lab.ns.lan[0], lab.addr.wan[0], 7002);
      assert.ok(u.reply, 'UDP reply through the firewall');
      assert.deepEqual(u.seen.map((s) => String(s.peer).split(':')[0]), [publicAddr]);
      const srv = await peerServer(lab, lab.ns.wan[0], ['tcp-server', '--port', '7003']);
      const t = await peer(lab, lab.ns.lan[1], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7003', '--bytes', '200000']);
      await srv.result;
      assert.equal(t.reply?.bytes, 200000, JSON.stringify(t));
      assert.equal(t.reply.sha256, t.sha256);
      assert.equal(String(t.reply.peer).split(':')[0], publicAddr);
      const ping = await lab.ping(lab.ns.lan[0], lab.addr.wan[1], { count: 3 });
      assert.equal(ping.received, 3, JSON.stringify(ping));
    });

    it('raw ESP with IKE on port 500 passes both ways', async () => {
      const srv = await peerServer(lab, lab.ns.vpnServer, ['ike-esp-responder', '--seconds', '15', '--idle', '3']);
      const r = await peer(lab, lab.ns.lan[0], ['ike-esp-client', '--host', lab.addr.vpnServer, '--icookie', 'f1f1f1f1f1f1f1f1', '--spi', '0x7001', '--packets', '5', '--timeout', '10'], 20000);
      const seen = JSON.parse((await srv.result).trim().split('\n').pop() as string);
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.flow.good, 5);
      assert.deepEqual(r.foreign, []);
      assert.deepEqual(seen.ikeFrom, [`${publicAddr}:500`]);
      assert.ok(seen.esp['00007001'] >= 5);
    });

    it('PPTP: the call connects and GRE comes back', async () => {
      const srv = await peerServer(lab, lab.ns.vpnServer, ['server', '--seconds', '12', '--clients', '1'], PPTP_HOST);
      const r = await peer(lab, lab.ns.lan[1], ['client', '--server', lab.addr.vpnServer, '--call-id', '4660', '--gre-count', '4', '--seconds', '8'], 20000, PPTP_HOST);
      const seen = JSON.parse((await srv.result).trim().split('\n').pop() as string);
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.calls.length, 1);
      assert.equal(r.calls[0].result, 1);
      assert.equal(r.calls[0].dataBack, 4, JSON.stringify(r));
      assert.deepEqual(r.foreign, []);
      assert.ok(JSON.stringify(seen).includes(publicAddr), `the server saw the public address: ${JSON.stringify(seen)}`);
    });

    it('strongSwan: an IKEv2 tunnel comes up (NAT-T) and TCP inside it reaches the protected host', async () => {
      assert.ok(hasCharon, 'strongSwan (charon, swanctl) is installed by scripts/ensure-deps.sh');
      base = lab.tempDir('swan');
      await startServer(lab, base, lab.ns.vpnServer, lab.addr.vpnServer);
      const client = await startClient(lab, base, lab.ns.lan[0], 'client0', lab.addr.vpnServer);
      const up = await initiate(lab, client);
      assert.match(up.stdout, /initiate completed successfully/, `${up.stdout}${up.stderr}\n${client.log().slice(-3000)}`);
      const srv = await peerServer(lab, lab.ns.vpnServer, ['tcp-server', '--port', '7104', '--timeout', '20']);
      const t = await peer(lab, lab.ns.lan[0], ['tcp-client', '--host', PROTECTED_HOST, '--port', '7104', '--bytes', '300000', '--timeout', '20'], 30000);
      await srv.result;
      assert.equal(t.reply?.sha256, t.sha256, JSON.stringify(t));
      assert.match(String(t.reply.peer), /^100\.64\.0\./, 'the server saw the virtual IP: the connection ran inside the tunnel');
    });

    it('a port forward reaches the LAN server from the WAN', async () => {
      const srv = await peerServer(lab, lab.ns.lan[1], ['tcp-server', '--port', '80']);
      const t = await peer(lab, lab.ns.wan[1], ['tcp-client', '--host', publicAddr, '--port', '8080', '--bytes', '5000']);
      await srv.result;
      assert.equal(t.reply?.bytes, 5000, JSON.stringify(t));
      assert.equal(String(t.reply.peer).split(':')[0], lab.addr.wan[1], 'the LAN server sees the WAN host');
    });

    it('the box answers pings from the WAN', async () => {
      const ping = await lab.ping(lab.ns.wan[1], LAB_ROUTER_WAN, { count: 2 });
      assert.equal(ping.received, 2, JSON.stringify(ping));
    });

    it('the ruleset opens nothing else: WAN -> LAN directly stays dropped, and the mark rules did the work', async () => {
      assert.equal(await wanToLanLoose(7009), 0, 'WAN -> LAN is not a TUN path, also without the reverse-path filter');
      const counters = [...(await sh('nft list table inet filter')).matchAll(/meta mark & 0x10000000 == 0x10000000 counter packets (\d+)/g)].map((m) => Number(m[1]));
      assert.equal(counters.length, 2);
      assert.ok(counters[1] > 0, 'forward accepted marked packets');
      if (mode === 'shared') assert.ok(counters[0] > 0, 'input accepted the box\'s ICMP from the TUN');
    });
  });
}
