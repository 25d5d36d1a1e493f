/**
 * The `vpnmasq` CLI against the real daemon in the lab: live TCP, UDP,
 * ICMP, ISAKMP, ESP and GRE entries listed and filtered, --json checked
 * against docs/cli-json-schema.json, deletion checked on the wire (a UDP
 * mapping, an ESP entry), runtime forwards, `conns watch`, a non-root user,
 * and a daemon that is down.
 *
 * Set CLI_SAMPLE_OUT=FILE to save the real output of `conns list`, `stats`
 * and `status` (docs/cli-sample-output.txt comes from this).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { requireRoot, createLab, Lab } from './lab';
import { CLI, peer, peerServer, PPTP_HOST, readableCli, RouterHandle, startRouter } from './router-harness';
import { jsonLines, runCli, schemaErrors } from '../unit/cli-fixture';

requireRoot();

/** The IPsec exchange of LAN host 0 (test/hosts/peer.py ike-esp-*): its cookie, its SPI and the remote's answer to it. */
const ICOOKIE = 'c11c11c100000007';
const SPI = 0x3100;
const RSPI = ((SPI ^ 0x5a5a0000) | 0x01000000) >>> 0;
const hex8 = (n: number) => n.toString(16).padStart(8, '0');
/** The PPTP call of LAN host 1 (test/hosts/pptp_host.py). */
const CALL_ID = 0x4242;
const SESSION_PROTOS = ['tcp', 'udp', 'icmp'];

describe('vpnmasq CLI in the lab', () => {
  let lab: Lab;
  let router: RouterHandle;
  const cli = (...args: string[]) => runCli(['-c', router.configPath, ...args]);
  const list = async (...args: string[]) => {
    const r = await cli('conns', 'list', '--json', ...args);
    assert.equal(r.code, 0, r.stderr);
    const rows = jsonLines(r.stdout);
    for (const row of rows) assert.deepEqual(schemaErrors(row, 'conn'), [], JSON.stringify(row));
    return rows;
  };
  /** A UDP exchange lan -> wan[0]; returns the public endpoint the WAN host saw. */
  const udp = async (lanIdx: number, sport: number, port: number) => {
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', String(port)]);
    const r = await peer(lab, lab.ns.lan[lanIdx], ['udp-client', '--host', lab.addr.wan[0], '--port', String(port), '--sport', String(sport)]);
    await srv.result;
    return r.reply.peer as string;
  };

  before(async () => {
    lab = await createLab({ lanHosts: 2, wanHosts: 1, farHost: false });
    // No guessing: an inbound ESP packet whose entry was deleted must not be copied to the host anyway.
    router = await startRouter(lab, { ipsec: { guessing: false } });
    await udp(0, 40100, 7100);
    const srv = await peerServer(lab, lab.ns.wan[0], ['tcp-server', '--port', '7101']);
    await peer(lab, lab.ns.lan[1], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7101', '--bytes', '100000']);
    await srv.result;
    const ping = await lab.ping(lab.ns.lan[1], lab.addr.wan[0], { count: 2 });
    assert.equal(ping.received, 2);
    // ISAKMP + ESP from LAN host 0, a PPTP call (GRE) from LAN host 1, both to the VPN server, at once.
    const ikeSrv = await peerServer(lab, lab.ns.vpnServer, ['ike-esp-responder', '--seconds', '20', '--idle', '1']);
    // The PPTP client keeps its control connection open for the whole file: a call's GRE entry ends with it.
    await peerServer(lab, lab.ns.vpnServer, ['server', '--seconds', '600', '--clients', '1'], PPTP_HOST);
    lab.spawn(lab.ns.lan[1], ['python3', PPTP_HOST, 'client', '--server', lab.addr.vpnServer, '--call-id', String(CALL_ID), '--gre-count', '2',
      '--seconds', '600', '--linger', '600']);
    const ike = await peer(lab, lab.ns.lan[0], ['ike-esp-client', '--host', lab.addr.vpnServer, '--icookie', ICOOKIE, '--spi', String(SPI),
      '--packets', '3', '--timeout', '15'], 20000);
    await ikeSrv.result;
    assert.equal(ike.flow?.good, 3, JSON.stringify(ike));
    // The call is up and its GRE came back through the router (data and acknowledgement echoed).
    const deadline = Date.now() + 15000;
    let gre: Record<string, any> | undefined;
    while (!((gre = (await list('-p', 'gre'))[0]) && gre.vpn.callIdRemote !== null && gre.packets.in >= 2) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(gre && gre.packets.in >= 2, `the PPTP call's GRE: ${JSON.stringify(gre)}`);
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      if (lab) await lab.destroy();
    }
  });

  it('lists the live TCP, UDP and ICMP mappings with their endpoints and counters', async () => {
    const rows = await list();
    const u = rows.find((r) => r.proto === 'udp' && r.lan.port === 40100);
    assert.ok(u, JSON.stringify(rows));
    assert.deepEqual([u.lan, u.public, u.remote], [
      { addr: lab.addr.lan[0], port: 40100 }, { addr: lab.addr.public, port: 40100 }, { addr: lab.addr.wan[0], port: 7100 }]);
    assert.equal(u.state, 'REPLIED');
    assert.ok(u.packets.out >= 1 && u.packets.in >= 1 && u.bytes.out > 28, JSON.stringify(u));
    const t = rows.find((r) => r.proto === 'tcp' && r.remote.port === 7101);
    assert.ok(t, 'tcp row');
    assert.equal(t.lan.addr, lab.addr.lan[1]);
    assert.ok(t.bytes.out > 100000, `all payload counted: ${t.bytes.out}`);
    const i = rows.find((r) => r.proto === 'icmp');
    assert.ok(i && i.lan.addr === lab.addr.lan[1] && i.remote.addr === lab.addr.wan[0] && i.packets.in === 2, JSON.stringify(i));

    const table = await cli('conns', 'list');
    assert.match(table.stdout, /^ID +PROTO +LAN +PUBLIC +REMOTE +VPN +STATE +IDLE +EXPIRES +PKTS OUT\/IN +BYTES OUT\/IN$/m);
    assert.match(table.stdout, new RegExp(`udp +${lab.addr.lan[0]}:40100 +${lab.addr.public}:40100 +${lab.addr.wan[0]}:7100 +- +REPLIED`));
    assert.equal(table.stderr, `${rows.length} connections listed.\n`);
  });

  it('lists the ISAKMP, ESP and GRE entries with their VPN detail; --spi, --cookie, --call-id select them', async () => {
    const rows = await list();
    assert.equal(new Set(rows.map((r) => r.id)).size, rows.length, 'ids unique across protocols');
    const k = rows.find((r) => r.proto === 'isakmp');
    assert.ok(k, JSON.stringify(rows));
    assert.deepEqual([k.lan, k.public, k.remote], [
      { addr: lab.addr.lan[0], port: 500 }, { addr: lab.addr.public, port: 500 }, { addr: lab.addr.vpnServer, port: 500 }]);
    assert.equal(k.vpn.icookie, ICOOKIE);
    assert.match(k.vpn.rcookie, /^[0-9a-f]{16}$/, 'responder cookie learnt');
    assert.equal(k.state, 'REPLIED');
    assert.ok(k.packets.out >= 4 && k.packets.in >= 4, 'Main + Quick Mode both ways');
    assert.ok(k.expiresInSeconds > 850, 'the IPsec lifetime, not the UDP timeout');
    const e = rows.find((r) => r.proto === 'esp');
    assert.ok(e, JSON.stringify(rows));
    assert.deepEqual([e.lan.addr, e.public.addr, e.remote.addr], [lab.addr.lan[0], lab.addr.public, lab.addr.vpnServer]);
    assert.deepEqual(e.vpn, { spiOut: `0x${hex8(SPI)}`, spiIn: `0x${hex8(RSPI)}`, state: 'established' });
    assert.equal(e.state, 'ESTABLISHED');
    assert.ok(e.packets.out >= 3 && e.packets.in >= 3, JSON.stringify(e));
    const g = rows.find((r) => r.proto === 'gre');
    assert.ok(g, JSON.stringify(rows));
    assert.deepEqual([g.lan.addr, g.public.addr, g.remote.addr], [lab.addr.lan[1], lab.addr.public, lab.addr.vpnServer]);
    assert.equal(g.vpn.callIdLan, CALL_ID);
    assert.notEqual(g.vpn.callIdRemote, null, 'answered');
    assert.ok(g.packets.out >= 2 && g.packets.in >= 2, JSON.stringify(g));

    const ids = async (...args: string[]) => (await list(...args)).map((r) => r.id).sort();
    assert.deepEqual(await ids('-p', 'esp'), [e.id]);
    assert.deepEqual(await ids('-p', 'isakmp'), [k.id]);
    assert.deepEqual(await ids('--spi', hex8(RSPI)), [e.id], 'inbound SPI');
    assert.deepEqual(await ids('--spi', `0x${SPI.toString(16)}`), [e.id], 'outbound SPI');
    assert.deepEqual(await ids('--cookie', ICOOKIE), [k.id]);
    assert.deepEqual(await ids('--cookie', k.vpn.rcookie), [k.id]);
    assert.deepEqual(await ids('--call-id', `0x${CALL_ID.toString(16)}`), [g.id]);
    assert.deepEqual(await ids('--call-id', String(g.vpn.callIdPub)), [g.id], 'the public Call ID');
    assert.deepEqual(await ids('-p', 'gre', '--lan-host', lab.addr.lan[0]), []);

    const table = await cli('conns', 'list', '-p', 'esp');
    assert.match(table.stdout, new RegExp(`esp +${lab.addr.lan[0]}:0 +${lab.addr.public}:0 +${lab.addr.vpnServer}:0 +spiOut=0x${hex8(SPI)} spiIn=0x${hex8(RSPI)} state=established +ESTABLISHED`));
    const show = await cli('conns', 'show', String(g.id), '--json');
    assert.deepEqual(JSON.parse(show.stdout).proto, 'gre');
  });

  it('every filter selects the right rows', async () => {
    const all = await list();
    const pick = (f: (r: Record<string, any>) => boolean) => all.filter(f).map((r) => r.id).sort();
    const ids = async (...args: string[]) => (await list(...args)).map((r) => r.id).sort();
    const u = all.find((r) => r.proto === 'udp' && r.lan.port === 40100)!;
    assert.deepEqual(await ids('-p', 'udp'), pick((r) => r.proto === 'udp'));
    assert.deepEqual(await ids('-p', 'tcp'), pick((r) => r.proto === 'tcp'));
    assert.deepEqual(await ids('-p', 'icmp'), pick((r) => r.proto === 'icmp'));
    assert.deepEqual(await ids('-s', lab.addr.lan[1]), pick((r) => r.lan.addr === lab.addr.lan[1]));
    assert.deepEqual(await ids('--lan-host', `${lab.addr.lan[0]}:40100`), [u.id]);
    assert.deepEqual(await ids('-d', lab.addr.wan[0]), pick((r) => r.remote.addr === lab.addr.wan[0]));
    const vpnSide = await ids('-d', lab.addr.vpnServer);
    assert.deepEqual(vpnSide, pick((r) => r.remote.addr === lab.addr.vpnServer));
    assert.deepEqual(new Set(all.filter((r) => vpnSide.includes(r.id)).map((r) => r.proto)), new Set(['isakmp', 'esp', 'gre', 'tcp']), 'the VPN entries and the PPTP control connection');
    const transfer = pick((r) => r.proto === 'tcp' && r.remote.port === 7101);
    assert.deepEqual(await ids('--remote', `${lab.addr.wan[0]}:7101`), transfer);
    assert.deepEqual(await ids('--sport', '40100'), [u.id]);
    assert.deepEqual(await ids('--dport', '7100'), [u.id]);
    assert.deepEqual(await ids('--public-port', '40100'), [u.id]);
    assert.deepEqual(await ids('--state', 'replied', '-p', 'udp'), pick((r) => r.proto === 'udp' && r.state === 'REPLIED'));
    assert.deepEqual(await ids('--spi', '0x1234'), [], 'no ESP entry with that SPI');
    assert.deepEqual(await ids('-n', '1', '--sort', 'bytes', '-r'), transfer, 'the TCP transfer has the most bytes');
  });

  /** `vpnmasq conns watch --json ARGS` in the background; `until` waits (bounded) for a condition on its output. */
  const watch = async (...args: string[]) => {
    const child = spawn(process.execPath, [CLI, '-c', router.configPath, 'conns', 'watch', '--json', ...args]);
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const until = async (cond: () => boolean, what: string) => {
      const deadline = Date.now() + 10000;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${out} ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const stop = async () => {
      child.kill('SIGINT');
      if (child.exitCode === null) await new Promise((r) => child.once('close', r));
    };
    try {
      await until(() => err.includes('watching'), 'watch to start');
    } catch (e) {
      await stop();
      throw e;
    }
    return { output: () => out, until, stop };
  };

  it('status and stats report the live daemon; --json matches the schema', async () => {
    const st = await cli('status');
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /^vpnmasq is running \(pid \d+, up \d+/);
    assert.match(st.stdout, new RegExp(`^TUN +${router.tunName} `, 'm'));
    assert.match(st.stdout, new RegExp(`^State +forwarding, public address ${lab.addr.public.replace(/\./g, '\\.')}$`, 'm'));
    assert.match(st.stdout, new RegExp(`^Mode +dedicated, public address ${lab.addr.public.replace(/\./g, '\\.')}$`, 'm'));
    assert.match(st.stdout, /^Database +\S+state\.db: healthy/m);
    const stats = await cli('stats');
    assert.match(stats.stdout, /^mappings\.udp +[1-9]/m);
    for (const [cmd, def] of [['status', 'status'], ['stats', 'stats']]) {
      const r = await cli(cmd, '--json');
      assert.deepEqual(schemaErrors(JSON.parse(r.stdout), def), []);
    }
    if (process.env.CLI_SAMPLE_OUT) {
      const conns = await cli('conns', 'list');
      const text = [
        '$ vpnmasq conns list', conns.stdout + conns.stderr.trimEnd(), '',
        '$ vpnmasq stats', stats.stdout.trimEnd(), '',
        '$ vpnmasq status', st.stdout.trimEnd(), '',
      ].join('\n');
      fs.writeFileSync(process.env.CLI_SAMPLE_OUT, text);
    }
  });

  it('deleting an ESP entry stops its translation: inbound ESP for it no longer reaches the LAN host', async () => {
    const esp = async () => {
      // The window outlasts the sender's start (a python process in another namespace), also on a loaded machine.
      const listener = await peerServer(lab, lab.ns.lan[0], ['listen-raw', '--proto', '50', '--seconds', '4']);
      await peer(lab, lab.ns.vpnServer, ['raw', '--dst', lab.addr.public, '--proto', '50', '--hex', `${hex8(RSPI)}00000063${'ab'.repeat(16)}`]);
      return JSON.parse((await listener.result).trim()).received as number;
    };
    assert.equal(await esp(), 1, 'translated while the entry lives');
    const before = (await router.stats()).drops['esp-no-mapping'];
    const w = await watch('-p', 'esp');
    try {
      const del = await cli('conns', 'delete', '-p', 'esp', '--spi', hex8(RSPI));
      assert.equal(del.code, 0, del.stderr);
      assert.equal(del.stderr, '1 connection deleted.\n');
      // `conns watch` shows the ESP entry going, with its SPIs.
      await w.until(() => jsonLines(w.output()).some((e) => e.event === 'DESTROY' && e.conn.proto === 'esp' &&
        e.conn.vpn?.spiIn === `0x${hex8(RSPI)}`), 'the ESP DESTROY event');
      for (const e of jsonLines(w.output())) assert.deepEqual(schemaErrors(e, 'event'), [], JSON.stringify(e));
    } finally {
      await w.stop();
    }
    assert.deepEqual(await list('-p', 'esp'), []);
    assert.equal(await esp(), 0, 'the LAN host received nothing');
    assert.equal((await router.stats()).drops['esp-no-mapping'], before + 1, 'dropped as unmapped');
  });

  it('forwards add: an inbound connection reaches the LAN host; forwards remove: a new one does not', async () => {
    const add = await cli('forwards', 'add', 'udp', lab.addr.lan[0], '8080', '7200');
    assert.equal(add.code, 0, add.stderr);
    const fw = jsonLines((await cli('forwards', 'list', '--json')).stdout);
    assert.deepEqual(fw, [{ proto: 'udp', publicPort: 8080, lanAddress: lab.addr.lan[0], lanPort: 7200, source: 'runtime' }]);
    for (const f of fw) assert.deepEqual(schemaErrors(f, 'forward'), []);
    const srv = await peerServer(lab, lab.ns.lan[0], ['udp-server', '--port', '7200']);
    const r = await peer(lab, lab.ns.wan[0], ['udp-client', '--host', lab.addr.public, '--port', '8080', '--sport', '7202']);
    await srv.result;
    assert.equal(r.reply?.peer, `${lab.addr.wan[0]}:7202`, 'the LAN server saw the remote itself');
    assert.equal(r.from, `${lab.addr.public}:8080`, 'answered from the forwarded port');

    const rm = await cli('forwards', 'remove', 'udp', '8080');
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal((await cli('forwards', 'list', '--json')).stdout, '');
    const listener = await peerServer(lab, lab.ns.lan[0], ['udp-server', '--port', '7200', '--timeout', '2']);
    await peer(lab, lab.ns.wan[0], ['udp-client', '--host', lab.addr.public, '--port', '8080', '--sport', '7203', '--timeout', '1']);
    assert.equal((await listener.result).trim(), '', 'the LAN host received nothing');
  });

  it('watch sees a new flow appear and a deleted one go; deleting stops its translation', async () => {
    const w = await watch('-p', 'udp');
    try {
      const seen = await udp(0, 40102, 7102);
      const pubPort = seen.split(':')[1];
      await w.until(() => jsonLines(w.output()).some((e) => e.event === 'NEW' && e.conn.lan?.port === 40102), 'NEW');
      const row = (await list('--sport', '40102'))[0];
      assert.equal(row.public.port, Number(pubPort));

      const del = await cli('conns', 'delete', '--sport', '40102', '-p', 'udp');
      assert.equal(del.code, 0, del.stderr);
      assert.equal(del.stderr, '1 connection deleted.\n');
      await w.until(() => jsonLines(w.output()).some((e) => e.event === 'DESTROY' && e.conn.id === row.id), 'DESTROY');
      for (const e of jsonLines(w.output())) assert.deepEqual(schemaErrors(e, 'event'), [], JSON.stringify(e));

      // Inbound to the deleted mapping's public port: dropped, the LAN host gets nothing.
      const before = (await router.stats()).drops['no-mapping'];
      const listener = await peerServer(lab, lab.ns.lan[0], ['udp-server', '--port', '40102', '--timeout', '2']);
      await peer(lab, lab.ns.wan[0], ['udp-client', '--host', lab.addr.public, '--port', pubPort, '--sport', '7102', '--timeout', '1']);
      assert.equal((await listener.result).trim(), '', 'the LAN host received nothing');
      assert.ok((await router.stats()).drops['no-mapping'] > before, 'dropped as unmapped');
      // Outbound again: a new mapping with a new id.
      await udp(0, 40102, 7102);
      const again = await list('--sport', '40102');
      assert.equal(again.length, 1);
      assert.notEqual(again[0].id, row.id);
    } finally {
      await w.stop();
    }
  });

  it('a user without access gets a clear permission message; a member of the control group gets the rows', async () => {
    const dir = path.dirname(router.configPath);
    fs.chmodSync(dir, 0o711);
    fs.chmodSync(router.configPath, 0o644);
    // The program as another user can read it, wherever the checkout lives.
    const copy = lab.tempDir('cli');
    const readable = readableCli(copy);
    const r = await lab.exec(lab.ns.router, ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, readable, '-c', router.configPath, 'conns', 'list']);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^vpnmasq: permission denied on \S+control\.sock: run as root or as a member of the "root" group\n$/);
    // A member of control.group (here root, gid 0) may use the socket without being root.
    const member = await lab.exec(lab.ns.router, ['setpriv', '--reuid=nobody', '--regid=nogroup', '--groups=0', process.execPath, readable, '-c', router.configPath, 'conns', 'list', '--json', '--sport', '40100']);
    assert.equal(member.code, 0, member.stderr);
    assert.equal(jsonLines(member.stdout)[0]?.lan.port, 40100);
  });

  it('a daemon that is down is reported; conns list reads the database it left', async () => {
    const sessionIds = (rows: Array<Record<string, any>>) => rows.filter((r) => SESSION_PROTOS.includes(r.proto)).map((r) => r.id).sort();
    // A session that may expire before the database is read (an unanswered one has 10 s) is left out of the comparison.
    const before = sessionIds((await list()).filter((r) => r.expiresInSeconds > 60));
    assert.equal(await router.stop(), 0);
    const st = await router.cli('status');
    assert.equal(st.code, 1);
    assert.match(st.stdout, /^vpnmasq is not running\nSafety net +in place \(\d+ rules, blackholes in table 7100, 7101\): nothing translates/);
    const r = await cli('conns', 'list', '--json');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /vpnmasq is not running .* reading \S+state\.db read-only/);
    assert.deepEqual(sessionIds(jsonLines(r.stdout)).filter((id) => before.includes(id)), before, 'the persisted sessions');
    const del = await cli('conns', 'flush', '--yes');
    assert.equal(del.code, 1);
    assert.match(del.stderr, /not running/);
  });
});
