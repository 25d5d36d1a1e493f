/**
 * PPTP masquerade against crafted endpoints (test/hosts/pptp_host.py: the
 * kernel here has no PPP/GRE stack): control messages on TCP 1723 and
 * enhanced GRE on raw IP 47. Assertions are about what the hosts received:
 * which Call IDs the server saw, from which address, and whose GRE reached
 * whom (vpn-masquerade-spec §5, §6, §9.14, §11; issue 5).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, PPTP_HOST, RouterHandle, startRouter } from './router-harness';

requireRoot();

const GRE_COUNT = 4;
/** A short grace after Call-Clear so the reuse test need not wait 30 s. */
const GRACE = { timeouts: { pptpGrace: 1 } };

describe('PPTP masquerade in the lab (crafted PNS/PAC, raw GRE)', () => {
  let lab: Lab;
  let router: RouterHandle;

  before(async () => {
    lab = await createLab({ lanHosts: 3, wanHosts: 2 });
    router = await startRouter(lab, GRACE);
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
  const client = (ns: string, host: string, callId: number, extra: string[] = []) =>
    peer(lab, ns, ['client', '--server', host, '--call-id', String(callId), '--gre-count', String(GRE_COUNT), '--seconds', '8', ...extra], 20000, PPTP_HOST);
  const summary = async (srv: { result: Promise<string> }) => JSON.parse((await srv.result).trim().split('\n').pop() as string);
  const greRows = async () => (await router.conns()).filter((r) => r.proto === 'gre');

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

  it('three LAN clients call one server with the same Call ID: three public Call IDs, GRE both ways, each gets only its own', async () => {
    const srv = await server(lab.ns.vpnServer, ['--clients', '3']);
    const res = await Promise.all([0, 1, 2].map((i) => client(lab.ns.lan[i], lab.addr.vpnServer, 0x1234)));
    const rows = await greRows();
    const seen = await summary(srv);
    res.forEach((r, i) => {
      assertFlows(r, 1, `host ${i}`);
      assert.equal(r.calls[0].callId, 0x1234, 'the client sees its own Call ID in the reply');
    });
    assert.equal(seen.connections.length, 3);
    for (const c of seen.connections) assert.equal(c.peer.split(':')[0], lab.addr.public, 'control from the public address');
    const ids = seen.connections.map((c: { callIds: number[] }) => c.callIds[0]);
    assert.equal(new Set(ids).size, 3, `distinct Call IDs at the server: ${ids}`);
    assert.deepEqual(seen.gre.from, [lab.addr.public], 'GRE from the public address only');
    assert.deepEqual(seen.gre.unknownCallId, []);
    for (const sid of Object.keys(seen.calls)) {
      assert.equal(seen.gre.data[sid], GRE_COUNT, `server call ${sid} got all data`);
      assert.equal(seen.gre.ackOnly[sid], 1, `server call ${sid} got the ack-only packet`);
    }
    // The router lists the calls: LAN Call ID 0x1234 for all three hosts, public IDs as the server saw them.
    const mine = rows.filter((r) => r.vpn.callIdLan === 0x1234 && r.remote.addr === lab.addr.vpnServer);
    assert.deepEqual(mine.map((r) => r.lan.addr).sort(), [...lab.addr.lan].sort(), JSON.stringify(rows));
    assert.deepEqual(mine.map((r) => r.vpn.callIdPub).sort(), [...ids].sort());
    for (const r of mine) assert.notEqual(r.vpn.callIdRemote, null, 'answered: the server\'s Call ID is known');
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
    const r = await client(lab.ns.lan[1], lab.addr.vpnServer, 0x3000, ['--calls', '2', '--serial', '0x51']);
    const rows = (await greRows()).filter((x) => x.lan.addr === lab.addr.lan[1] && (x.vpn.callIdLan === 0x3000 || x.vpn.callIdLan === 0x3001));
    await summary(srv);
    assert.equal(r.error, undefined, JSON.stringify(r));
    assert.deepEqual(r.calls.map((c: { callId: number; result: number }) => [c.callId, c.result]), [[0x3000, 1], [0x3001, 2]]);
    assert.equal(r.calls[0].dataBack, GRE_COUNT);
    assert.deepEqual(rows.map((x) => x.vpn.callIdLan), [0x3000], `only the connected call is listed: ${JSON.stringify(rows)}`);
    const stats = await router.stats();
    assert.ok(stats, 'router alive');
  });

  it('Call-Clear, then a server reusing that Call ID: the new call keeps its GRE after the old call expires', async () => {
    const srv = await server(lab.ns.vpnServer, ['--clients', '2', '--fixed-call-id', '0x5a00']);
    const a = await client(lab.ns.lan[0], lab.addr.vpnServer, 0x7000, ['--gre-count', '1', '--clear']);
    // The cleared call lives for the 1 s grace (+ the 1 s sweep); the new call sends GRE after it is gone.
    const b = await client(lab.ns.lan[1], lab.addr.vpnServer, 0x7100, ['--gre-delay', '3']);
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
    assert.equal(second.peer.split(':')[0], lab.addr.public);
    const rows = (await greRows()).filter((x) => x.vpn.callIdRemote === 0x5a00);
    assert.deepEqual(rows.map((x) => x.lan.addr), [lab.addr.lan[1]], JSON.stringify(rows));
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

  it('a PPTP server on the LAN, forwarded (TCP 1723 + GRE), serves two WAN clients at once with GRE both ways', async () => {
    await router.stop();
    const pac = lab.addr.lan[2];
    router = await startRouter(lab, { ...GRACE, forwards: [{ proto: 'tcp', publicPort: 1723, lanAddress: pac }, { proto: 'gre', lanAddress: pac }] });
    const srv = await server(lab.ns.lan[2], ['--clients', '2']);
    const res = await Promise.all([0, 1].map((i) => client(lab.ns.wan[i], lab.addr.public, 0x5500)));
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
    const rows = (await greRows()).filter((x) => x.lan.addr === pac);
    assert.equal(rows.length, 2, JSON.stringify(rows));
    for (const x of rows) assert.equal(x.vpn.role, 'pac');
  });
});
