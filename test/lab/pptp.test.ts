/**
 * PPTP masquerade against crafted endpoints (test/hosts/pptp_host.py: the
 * kernel here has no PPP/GRE stack): control messages on TCP 1723 and
 * enhanced GRE on raw IP 47. Assertions are about what the hosts received:
 * which Call IDs the server saw, from which address, and whose GRE reached
 * whom (vpn-masquerade-spec §5, §6, §9.14, §11; issue 5), and about real-world
 * conditions: retransmissions, fragmented segments, many calls, SYN floods,
 * the end of a control connection, a forwarded PAC on another port. Calls
 * end with their control connection, so the router's rows are read while
 * the clients are connected.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, PPTP_HOST, RouterHandle, startRouter } from './router-harness';

requireRoot();

const GRE_COUNT = 4;
/** A short grace after Call-Clear so the reuse test need not wait 30 s. */
const GRACE = { timeouts: { pptpGrace: 1 } };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const mode of ['shared', 'dedicated'] as const) {
  describe(`PPTP masquerade in the lab (crafted PNS/PAC, raw GRE), ${mode} address`, () => {
    let lab: Lab;
    let router: RouterHandle;
    /** The NAT's public address: the router's own WAN address in shared mode. */
    let pub: string;
    const wan = () => (mode === 'shared' ? { wan: { interface: lab.routerIfaces.wan, mode: 'shared' } } : {});
    const restart = async (extra: Record<string, unknown> = {}) => {
      if (router) await router.stop();
      router = await startRouter(lab, { ...GRACE, ...wan(), ...extra });
    };

    before(async () => {
      lab = await createLab({ lanHosts: 3, wanHosts: 2 });
      pub = mode === 'shared' ? lab.addr.routerWan : lab.addr.public;
      await restart();
    });

    after(async () => {
      try {
        if (router) await router.stop();
      } finally {
        if (lab) await lab.destroy();
      }
    });

    const server = (ns: string, extra: string[]) =>
      peerServer(lab, ns, ['server', '--seconds', '15', ...extra], PPTP_HOST);
    const client = (ns: string, host: string, callId: number, extra: string[] = [], seconds = 8) =>
      peer(lab, ns, ['client', '--server', host, '--call-id', String(callId), '--gre-count', String(GRE_COUNT), '--seconds', String(seconds),
        '--linger', '1', ...extra], (seconds + 12) * 1000, PPTP_HOST);
    const summary = async (srv: { result: Promise<string> }) => JSON.parse((await srv.result).trim().split('\n').pop() as string);
    const greRows = async () => (await router.conns()).filter((r) => r.proto === 'gre');

    /** Runs `work`, polling the GRE rows meanwhile; returns its result and the last copy of every row seen. */
    async function withRows<T>(work: Promise<T>): Promise<[T, Array<Record<string, any>>]> {
      const seen = new Map<number, Record<string, any>>();
      let done = false;
      const result = work.finally(() => { done = true; });
      while (!done) {
        for (const r of await greRows()) seen.set(r.id, r);
        await sleep(100);
      }
      return [await result, [...seen.values()]];
    }

    /** The calls of these LAN hosts are gone right after their control connections closed. */
    const assertEnded = async (hosts: string[]) => {
      const left = (await greRows()).filter((r) => hosts.includes(r.lan.addr) && r.state !== 'CLEARING');
      assert.deepEqual(left, [], 'the calls ended with their control connections');
    };

    /** Every call of a client result connected, echoed back in full (data + ack-only), nothing foreign. */
    const assertFlows = (r: Record<string, any>, calls: number, who: string) => {
      assert.equal(r.error, undefined, `${who}: ${JSON.stringify(r)}`);
      assert.equal(r.calls.length, calls, who);
      for (const c of r.calls) {
        assert.equal(c.result, 1, `${who} call ${c.callId} connected`);
        assert.equal(c.dataBack, GRE_COUNT, `${who} call ${c.callId} got its GRE data back: ${JSON.stringify(r)}`);
        assert.equal(c.ackBack, 1, `${who} call ${c.callId} got an ack-only packet`);
      }
      assert.deepEqual(r.foreign, [], `${who} received nothing of the others`);
      assert.deepEqual(r.wrongCallId, [], `${who}: GRE arrived with its own Call IDs only`);
    };

    /** The wire rule: the server never saw a LAN host's own Call ID. */
    const assertNoLanIds = (seen: Record<string, any>, lanIds: number[]) => {
      const ids: number[] = seen.connections.flatMap((c: { callIds: number[] }) => c.callIds);
      for (const w of seen.wire ?? []) ids.push(w.callId);
      assert.deepEqual(ids.filter((id) => lanIds.includes(id)), [], `a LAN Call ID reached the server: ${ids}`);
    };

    it('three LAN clients call one server with the same Call ID: three public Call IDs, GRE both ways, each gets only its own', async () => {
      const srv = await server(lab.ns.vpnServer, ['--clients', '3', '--sniff']);
      const [res, rows] = await withRows(Promise.all([0, 1, 2].map((i) => client(lab.ns.lan[i], lab.addr.vpnServer, 0x1234))));
      const seen = await summary(srv);
      res.forEach((r, i) => {
        assertFlows(r, 1, `host ${i}`);
        assert.equal(r.calls[0].callId, 0x1234, 'the client sees its own Call ID in the reply');
      });
      assert.equal(seen.connections.length, 3);
      for (const c of seen.connections) assert.equal(c.peer.split(':')[0], pub, 'control from the public address');
      const ids = seen.connections.map((c: { callIds: number[] }) => c.callIds[0]);
      assert.equal(new Set(ids).size, 3, `distinct Call IDs at the server: ${ids}`);
      assertNoLanIds(seen, [0x1234]);
      assert.deepEqual(seen.gre.from, [pub], 'GRE from the public address only');
      assert.deepEqual(seen.gre.unknownCallId, []);
      for (const sid of Object.keys(seen.calls)) {
        assert.equal(seen.gre.data[sid], GRE_COUNT, `server call ${sid} got all data`);
        assert.equal(seen.gre.ackOnly[sid], 1, `server call ${sid} got the ack-only packet`);
      }
      // The router listed the calls: LAN Call ID 0x1234 for all three hosts, public IDs as the server saw them.
      const mine = rows.filter((r) => r.vpn.callIdLan === 0x1234 && r.remote.addr === lab.addr.vpnServer);
      assert.deepEqual(mine.map((r) => r.lan.addr).sort(), [...lab.addr.lan].sort(), JSON.stringify(rows));
      assert.deepEqual(mine.map((r) => r.vpn.callIdPub).sort(), [...ids].sort());
      for (const r of mine) assert.notEqual(r.vpn.callIdRemote, null, 'answered: the server\'s Call ID is known');
      await assertEnded(lab.addr.lan);
    });

    it('two calls on one control connection both work', async () => {
      const srv = await server(lab.ns.vpnServer, ['--clients', '1']);
      const r = await client(lab.ns.lan[0], lab.addr.vpnServer, 0x2000, ['--calls', '2']);
      const seen = await summary(srv);
      assertFlows(r, 2, 'host 0');
      assert.deepEqual(r.calls.map((c: { callId: number }) => c.callId), [0x2000, 0x2001]);
      assert.equal(seen.connections.length, 1);
      const ids: number[] = seen.connections[0].callIds;
      assert.equal(ids.length, 2);
      assert.notEqual(ids[0], ids[1]);
      assert.equal(Object.keys(seen.gre.data).length, 2, 'GRE for both calls reached the server');
    });

    it('a refused call leaves no GRE row; its sibling on the same connection still works', async () => {
      const srv = await server(lab.ns.vpnServer, ['--clients', '1', '--refuse-serial', '0x52']);
      const [r, all] = await withRows(client(lab.ns.lan[1], lab.addr.vpnServer, 0x3000, ['--calls', '2', '--serial', '0x51']));
      const rows = all.filter((x) => x.lan.addr === lab.addr.lan[1] && (x.vpn.callIdLan === 0x3000 || x.vpn.callIdLan === 0x3001));
      await summary(srv);
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.deepEqual(r.calls.map((c: { callId: number; result: number }) => [c.callId, c.result]), [[0x3000, 1], [0x3001, 2]]);
      assert.equal(r.calls[0].dataBack, GRE_COUNT);
      assert.deepEqual([...new Set(rows.filter((x) => x.state === 'CONFIRMED').map((x) => x.vpn.callIdLan))], [0x3000],
        `only the connected call is listed: ${JSON.stringify(rows)}`);
      const stats = await router.stats();
      assert.ok(stats, 'router alive');
    });

    it('Call-Clear, then a server reusing that Call ID: the new call keeps its GRE', async () => {
      const srv = await server(lab.ns.vpnServer, ['--clients', '2', '--fixed-call-id', '0x5a00']);
      const a = await client(lab.ns.lan[0], lab.addr.vpnServer, 0x7000, ['--gre-count', '1', '--clear']);
      // The cleared call ends with Call-Disconnect-Notify; the new call sends GRE after it is gone.
      const [b, all] = await withRows(client(lab.ns.lan[1], lab.addr.vpnServer, 0x7100, ['--gre-delay', '3']));
      const seen = await summary(srv);
      assert.equal(a.error, undefined, JSON.stringify(a));
      assert.equal(a.calls[0].dataBack, 1);
      // Call-Disconnect-Notify carries the PAC's own Call ID: passed untouched (spec §5.2).
      assert.equal(a.calls[0].disconnectCallId, 0x5a00);
      const [first, second] = seen.connections;
      assert.deepEqual(first.cleared, first.callIds, 'the Call-Clear-Request named the public Call ID');
      assertFlows(b, 1, 'second caller');
      assert.equal(b.calls[0].serverCallId, 0x5a00, 'the server reused the ID');
      assert.equal(seen.gre.data['23040'], GRE_COUNT + 1, `server got both calls' GRE: ${JSON.stringify(seen.gre)}`);
      assert.equal(second.peer.split(':')[0], pub);
      const rows = all.filter((x) => x.vpn.callIdRemote === 0x5a00);
      assert.deepEqual([...new Set(rows.map((x) => x.lan.addr))], [lab.addr.lan[1]], JSON.stringify(rows));
    });

    it('GRE fragmentation-needed from the WAN router reaches the LAN client that sent the packet', async () => {
      const srv = await server(lab.ns.far, ['--clients', '1']);
      const r = await client(lab.ns.lan[2], lab.addr.far, 0x4400, ['--gre-count', '1', '--big', '1300']);
      await summary(srv);
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.bigSent, true, JSON.stringify(r));
      const fn = r.fragNeeded;
      assert.ok(fn, `no frag-needed reached the client: ${JSON.stringify(r)}`);
      assert.equal(fn.mtu, 1280);
      assert.equal(fn.from, lab.addr.wanRouter);
      assert.equal(fn.quotedProto, 47);
      assert.equal(fn.quotedSrc, lab.addr.lan[2], 'quoted source is the LAN host again');
      assert.equal(fn.quotedDst, lab.addr.far);
      assert.equal(fn.quotedCallId, r.calls[0].serverCallId, 'quoted GRE carries the server\'s Call ID, untouched');
    });

    it('a client resending its first Outgoing-Call-Request after 6 calls: the resend carries the same public Call ID', async () => {
      const srv = await server(lab.ns.vpnServer, ['--clients', '1', '--sniff']);
      const r = await client(lab.ns.lan[0], lab.addr.vpnServer, 0x1101, ['--calls', '6', '--gre-count', '1', '--resend-first']);
      await sleep(300);
      const seen = await summary(srv);
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.resent, true, 'the client found its first request and sent it again');
      const first = seen.connections[0].callIds[0];
      const resends = seen.wire.filter((w: { callId: number; seq: number }) => w.seq === seen.wire[0].seq);
      assert.ok(resends.length >= 2, `the resend reached the server: ${JSON.stringify(seen.wire)}`);
      for (const w of resends) assert.equal(w.callId, first, 'as the first time');
      assertNoLanIds(seen, [0x1101, 0x1102, 0x1103, 0x1104, 0x1105, 0x1106]);
    });

    it('300 calls on one control connection to one server: every one connected with its own public Call ID and GRE', async (t) => {
      const srv = await server(lab.ns.vpnServer, ['--clients', '1', '--seconds', '40', '--sniff']);
      const [r, all] = await withRows(client(lab.ns.lan[1], lab.addr.vpnServer, 0x8000, ['--calls', '300', '--gre-count', '1'], 30));
      const seen = await summary(srv);
      assert.equal(r.error, undefined, JSON.stringify(r).slice(0, 500));
      assert.equal(r.calls.length, 300);
      assert.deepEqual(r.calls.filter((c: { result: number }) => c.result !== 1), []);
      const ids: number[] = seen.connections[0].callIds;
      assert.equal(new Set(ids).size, 300, 'distinct public Call IDs at the server');
      // What reached the server is exactly the public IDs the router gave the 300 calls: no LAN ID went out untranslated.
      const rows = [...new Map(all.filter((x) => x.lan.addr === lab.addr.lan[1] && x.vpn.callIdLan >= 0x8000 && x.vpn.callIdLan < 0x8000 + 300)
        .map((x) => [x.id, x])).values()];
      const byLan = new Map(rows.map((x) => [x.vpn.callIdLan as number, x.vpn.callIdPub as number]));
      assert.equal(byLan.size, 300, 'every call listed while up');
      assert.deepEqual(ids, Array.from({ length: 300 }, (_, i) => byLan.get(0x8000 + i)));
      assert.deepEqual(seen.wire.map((w: { callId: number }) => w.callId).filter((id: number) => !ids.includes(id)), []);
      const back = r.calls.filter((c: { dataBack: number }) => c.dataBack === 1).length;
      const st = await router.stats();
      const why = `server echoed ${seen.gre.sent}; tun ${JSON.stringify(st.tun)}; drops ${JSON.stringify(Object.fromEntries(Object.entries(st.drops).filter(([, n]) => n)))}`;
      t.diagnostic(`300 calls: ${r.greResent} call(s) needed their GRE sent again; ${why}`);
      if (back !== 300) assert.fail(`GRE back on ${back}/300 calls after one resend; ${why}; pptp ${JSON.stringify(st.pptp.events)}`);
      assert.deepEqual(seen.gre.unknownCallId, []);
    });

    it('5,000 SYNs to port 1723 from one host take no control records; a real call from another host works', async () => {
      const before = (await router.stats()).pptp;
      const flood = await peer(lab, lab.ns.lan[2], ['synflood', '--server', lab.addr.vpnServer, '--count', '5000'], 60000, PPTP_HOST);
      assert.equal(flood.sent, 5000);
      const mid = (await router.stats()).pptp;
      assert.equal(mid.controlConnections, before.controlConnections, 'the flood took no control-connection record');
      const srv = await server(lab.ns.vpnServer, ['--clients', '1', '--sniff']);
      const r = await client(lab.ns.lan[0], lab.addr.vpnServer, 0x9100);
      const seen = await summary(srv);
      assertFlows(r, 1, 'the caller after the flood');
      assertNoLanIds(seen, [0x9100]);
      assert.equal((await router.stats()).pptp.events['control-table-full'], before.events['control-table-full']);
    });

    it('a segment fragmented on the way in (a narrower TUN MTU): the OCRQ in it is rewritten, later calls go on', async () => {
      await restart({ tun: { name: 'vmq0', mtu: 1400, offloads: false } });
      try {
        const srv = await server(lab.ns.vpnServer, ['--clients', '1', '--sniff']);
        const r = await client(lab.ns.lan[0], lab.addr.vpnServer, 0x2201, ['--calls', '2', '--pad', '84']);
        const seen = await summary(srv);
        assertFlows(r, 2, 'the padded client');
        assertNoLanIds(seen, [0x2201, 0x2202]);
        assert.equal(seen.connections[0].callIds.length, 2, 'the request after the fragmented one was inspected too');
        const drops = (await router.stats()).drops;
        assert.equal(drops['pptp-out-of-order'], 0);
      } finally {
        await restart();
      }
    });

    it('a PPTP server on the LAN, forwarded (TCP 1723 + GRE), serves two WAN clients at once with GRE both ways', async () => {
      const pac = lab.addr.lan[2];
      await restart({ forwards: [{ proto: 'tcp', publicPort: 1723, lanAddress: pac }, { proto: 'gre', lanAddress: pac }] });
      try {
        const srv = await server(lab.ns.lan[2], ['--clients', '2']);
        const [res, all] = await withRows(Promise.all([0, 1].map((i) => client(lab.ns.wan[i], pub, 0x5500))));
        const seen = await summary(srv);
        res.forEach((r, i) => {
          assertFlows(r, 1, `WAN client ${i}`);
          assert.equal(r.calls[0].callId, 0x5500);
        });
        assert.deepEqual(seen.connections.map((c: { peer: string }) => c.peer.split(':')[0]).sort(), [...lab.addr.wan].sort(),
          'the LAN server sees the real client addresses');
        assert.deepEqual([...seen.gre.from].sort(), [...lab.addr.wan].sort());
        assert.deepEqual(seen.gre.unknownCallId, []);
        // The server's own Call IDs are masqueraded; the clients only ever saw public ones, distinct per client.
        const rows = [...new Map(all.filter((x) => x.lan.addr === pac).map((x) => [x.id, x])).values()];
        assert.equal(rows.length, 2, JSON.stringify(rows));
        for (const x of rows) assert.equal(x.vpn.role, 'pac');
      } finally {
        await restart();
      }
    });

    it('a PAC forwarded to LAN port 1800: its Call IDs are masqueraded outbound too', async () => {
      const pac = lab.addr.lan[2];
      await restart({ forwards: [{ proto: 'tcp', publicPort: 1723, lanAddress: pac, lanPort: 1800 }, { proto: 'gre', lanAddress: pac }] });
      try {
        const srv = await server(lab.ns.lan[2], ['--clients', '1', '--port', '1800']);
        const [r, all] = await withRows(client(lab.ns.wan[0], pub, 0x5600));
        const seen = await summary(srv);
        assertFlows(r, 1, 'WAN client');
        const serverOwn = Object.keys(seen.calls).map(Number);
        assert.equal(serverOwn.length, 1);
        assert.notEqual(r.calls[0].serverCallId, serverOwn[0], 'the client saw a public Call ID, not the PAC\'s own');
        const rows = all.filter((x) => x.lan.addr === pac);
        assert.deepEqual(rows.map((x) => [x.vpn.role, x.vpn.callIdLan, x.vpn.callIdPub]), [['pac', serverOwn[0], r.calls[0].serverCallId]]);
      } finally {
        await restart();
      }
    });
  });
}
