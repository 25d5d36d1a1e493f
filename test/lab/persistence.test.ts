/**
 * The persisted connection table with the real daemon: kill -9 mid-traffic,
 * write-ahead of a mapping created just before the kill, and a full disk.
 * Flows are checked on the wire: the public port the WAN peer saw before and
 * after the restart, and the hash of a TCP transfer that spans the restart.
 *
 * Each flow starts traffic before the kill and checks it after: a TCP
 * transfer, a UDP stream, a strongSwan IPsec tunnel carrying ping (its IKE SA
 * must stay the same one: no renegotiation) and a PPTP call whose GRE keeps
 * flowing on the same public Call ID. The same flows survive a "reboot":
 * the router namespace deleted and rebuilt (new TUN, same database file).
 * A hostile row among good ones is quarantined while the good ones come back.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { DbHealth } from '../../src/persist/health';
import { createLab, Lab } from './lab';
import { CLI, peer, peerServer, PEER, PPTP_HOST, RouterHandle, startRouter } from './router-harness';
import Database from 'better-sqlite3';
import { Charon, hasCharon, initiate, listSas, PROTECTED_HOST, startClient, startServer } from './charon';

const isRoot = process.getuid?.() === 0;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** SIGKILL the daemon and wait until it is gone (bounded). */
async function kill9(router: RouterHandle): Promise<void> {
  const gone = new Promise<void>((resolve) => {
    if (router.proc.exitCode !== null || router.proc.signalCode !== null) resolve();
    else router.proc.once('exit', () => resolve());
  });
  router.proc.kill('SIGKILL');
  await Promise.race([gone, sleep(5000).then(() => { throw new Error('daemon did not die'); })]);
}

/** The `state` part of `vpnmasq status`. */
async function dbState(router: RouterHandle): Promise<DbHealth> {
  return (await router.request('status')).state as DbHealth;
}

/** A flow that must survive a restart: `start` runs before the kill, `check` after the restart. */
interface Flow {
  name: string;
  start(lab: Lab, router: RouterHandle): Promise<void>;
  check(lab: Lab, router: RouterHandle): Promise<void>;
}

const TCP_BYTES = 12 * 1024 * 1024;
const TCP_RATE = 2 * 1024 * 1024;

function tcpTransfer(): Flow {
  let client: Promise<Record<string, any>>;
  let server: { result: Promise<string> };
  let publicPort = '';
  let id = 0;
  return {
    name: 'TCP transfer',
    async start(lab, router) {
      server = await peerServer(lab, lab.ns.wan[0], ['tcp-server', '--port', '7100', '--timeout', '40']);
      client = peer(lab, lab.ns.lan[0], ['tcp-client', '--host', lab.addr.wan[0], '--port', '7100',
        '--bytes', String(TCP_BYTES), '--rate', String(TCP_RATE), '--timeout', '40'], 60000);
      await sleep(1500);
      // The newest one: a finished transfer of an earlier test may still be listed.
      const c = (await router.conns()).filter((r) => r.proto === 'tcp' && r.remote.port === 7100).sort((a, b) => b.id - a.id)[0];
      assert.ok(c, 'TCP session visible before the kill');
      publicPort = String(c.public.port);
      id = c.id;
    },
    async check(lab, router) {
      const c = (await router.conns()).find((r) => r.id === id);
      assert.ok(c, 'TCP session restored');
      assert.equal(String(c.public.port), publicPort);
      const r = await client;
      await server.result;
      assert.equal(r.reply.bytes, TCP_BYTES, 'transfer completed without a reset');
      assert.equal(r.reply.sha256, r.sha256);
      assert.equal(r.reply.peer, `${lab.addr.public}:${publicPort}`, 'the server saw one public port throughout');
    },
  };
}

/** Two LAN hosts share a source port, so the second one gets a random public port that must come back. */
function udpStream(): Flow {
  const seen: string[] = [];
  const send = async (lab: Lab) => {
    const srv = await peerServer(lab, lab.ns.wan[1], ['udp-server', '--port', '7101', '--count', '2']);
    for (const l of [0, 1]) {
      const r = await peer(lab, lab.ns.lan[l], ['udp-client', '--host', lab.addr.wan[1], '--port', '7101', '--sport', '45000']);
      seen.push(r.reply.peer);
    }
    await srv.result;
  };
  return {
    name: 'UDP stream',
    start: (lab) => send(lab),
    async check(lab) {
      await send(lab);
      assert.equal(seen[0], `${lab.addr.public}:45000`);
      assert.notEqual(seen[1], seen[0]);
      assert.deepEqual(seen.slice(2), seen.slice(0, 2), 'both LAN hosts keep their public ports');
    },
  };
}

/** The IKE SA line of `swanctl --list-sas` (name, unique id, state, SPIs): unchanged means never renegotiated. */
function ikeSa(sas: string): string {
  const line = sas.split('\n').find((l) => /ESTABLISHED/.test(l));
  assert.ok(line, `an established IKE SA: ${sas}`);
  return line.replace(/, ESTABLISHED \d+ \w+ ago/, '').trim();
}

/**
 * A strongSwan tunnel from a LAN host to the VPN server, carrying ping. It is
 * brought up once and kept for every test of the file: each restart must
 * leave the same IKE SA (unique id, SPIs) in place and ping working.
 */
function ipsecTunnel(base: () => string): Flow {
  let client: Charon | null = null;
  let sa = '';
  let isakmpPort = '';
  return {
    name: 'IPsec tunnel',
    async start(lab, router) {
      if (client === null) {
        await startServer(lab, base(), lab.ns.vpnServer, lab.addr.vpnServer);
        client = await startClient(lab, base(), lab.ns.lan[1], 'client1', lab.addr.vpnServer);
        const up = await initiate(lab, client);
        assert.match(up.stdout, /initiate completed successfully/, `${up.stdout}${up.stderr}\n${client.log().slice(-3000)}`);
      }
      const p = await lab.ping(lab.ns.lan[1], PROTECTED_HOST, { count: 2 });
      assert.equal(p.received, 2, `ping through the tunnel: ${JSON.stringify(p)}`);
      sa = ikeSa(await listSas(lab, client));
      const nat = (await router.conns()).find((r) => r.proto === 'udp' && r.lan.addr === lab.addr.lan[1] && r.remote.port === 4500);
      assert.ok(nat, 'the NAT-T flow is visible');
      isakmpPort = String(nat.public.port);
    },
    async check(lab, router) {
      const c = client as Charon;
      const p = await lab.ping(lab.ns.lan[1], PROTECTED_HOST, { count: 5 });
      assert.ok(p.received >= 4, `ping through the tunnel after the restart: ${JSON.stringify(p)}`);
      assert.equal(ikeSa(await listSas(lab, c)), sa, 'the same IKE SA: never renegotiated');
      const nat = (await router.conns()).find((r) => r.proto === 'udp' && r.lan.addr === lab.addr.lan[1] && r.remote.port === 4500);
      assert.equal(String(nat?.public.port), isakmpPort, 'NAT-T keeps its public port');
    },
  };
}

const PPTP_HOLD_S = 14;

/** A PPTP call whose GRE runs across the restart (pptp_host.py client --hold). */
function pptpCall(): Flow {
  let client: Promise<Record<string, any>>;
  let server: { result: Promise<string> };
  let pubCallId: unknown;
  return {
    name: 'PPTP call',
    async start(lab, router) {
      server = await peerServer(lab, lab.ns.wan[1], ['server', '--clients', '1', '--seconds', String(PPTP_HOLD_S + 20)], PPTP_HOST);
      client = peer(lab, lab.ns.lan[0], ['client', '--server', lab.addr.wan[1], '--call-id', '0x0100', '--gre-count', '3',
        '--seconds', '8', '--hold', String(PPTP_HOLD_S)], (PPTP_HOLD_S + 25) * 1000, PPTP_HOST);
      const deadline = Date.now() + 8000;
      let row: any;
      while (!(row = (await router.conns()).find((r: any) => r.proto === 'gre' && r.state === 'CONFIRMED')) && Date.now() < deadline) await sleep(200);
      assert.ok(row, 'PPTP call confirmed before the kill');
      pubCallId = row.vpn.callIdPub;
    },
    async check(_lab, router) {
      const resumed = Date.now() / 1000;
      const row = (await router.conns()).find((r: any) => r.proto === 'gre') as any;
      assert.ok(row, 'PPTP call restored');
      assert.equal(row.vpn.callIdPub, pubCallId, 'same public Call ID');
      const r = await client;
      const seen = JSON.parse((await server.result).trim().split('\n').pop() as string);
      assert.equal(r.calls[0].result, 1, JSON.stringify(r));
      assert.deepEqual(Object.values(seen.calls).map((c: any) => c.peerCallId), [pubCallId], 'the server only ever knew one Call ID');
      const after = r.hold.backAt.filter((t: number) => t >= resumed);
      assert.ok(after.length >= 5, `GRE echoes after the restart: ${after.length} of ${r.hold.sent} sent`);
    },
  };
}

describe('persisted connection table in the lab', { skip: !isRoot && 'needs root' }, () => {
  let lab: Lab;
  let dir: string;
  const routers: RouterHandle[] = [];
  let mounted = '';
  let swanBase = '';

  async function start(overrides: Record<string, unknown> = {}): Promise<RouterHandle> {
    const r = await startRouter(lab, { state: { path: path.join(dir, 'state.db') }, ...overrides });
    routers.push(r);
    return r;
  }

  before(async () => {
    lab = await createLab({ lanHosts: 2, wanHosts: 2 });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-persist-'));
    swanBase = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-persist-swan-'));
  });

  after(async () => {
    try {
      for (const r of routers) await r.stop().catch(() => undefined);
      if (mounted) execFileSync('umount', ['-l', mounted]);
    } finally {
      if (lab) await lab.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(swanBase, { recursive: true, force: true });
    }
  });

  const tunnel = ipsecTunnel(() => swanBase);
  /** VPN flows first: the TCP transfer (about 6 s) must still be running at the kill. */
  const flows = (): Flow[] => [...(hasCharon ? [tunnel] : []), pptpCall(), tcpTransfer(), udpStream()];

  /** Starts the flows, stops the router with `down` (which also brings it back), checks every row and flow. */
  async function survives(down: (router: RouterHandle) => Promise<void>): Promise<void> {
    const fl = flows();
    let router = await start();
    for (const f of fl) await f.start(lab, router);
    const before = await router.conns();
    await down(router);
    router = await start();
    const st = await dbState(router);
    assert.ok(st.rowsRestored >= before.length, `restored ${st.rowsRestored} of ${before.length}`);
    assert.equal(st.healthy, true);
    const afterRows = await router.conns();
    for (const b of before) {
      const a = afterRows.find((r) => r.id === b.id);
      assert.ok(a, `connection ${b.id} (${b.proto} ${b.lan.addr}:${b.lan.port}) restored`);
      assert.deepEqual(a.public, b.public);
      assert.deepEqual((a as any).vpn, (b as any).vpn);
    }
    for (const f of fl) await f.check(lab, router);
    await router.stop();
  }

  it('kill -9 mid-traffic: TCP, UDP, IPsec and PPTP resume on the same public ports / SAs / Call IDs', async () => {
    await survives((router) => kill9(router));
  });

  it('reboot: the router namespace is rebuilt (new TUN, same database file) and the flows resume', async () => {
    await survives(async (router) => {
      await kill9(router);
      await lab.rebuildRouter();
    });
  });

  it('write-ahead: a mapping whose first packet left 1 ms before SIGKILL is present after restart', async () => {
    let router = await start();
    // The WAN host prints as soon as the datagram arrives: the packet has left the router.
    const watcher = lab.spawn(lab.ns.wan[0], ['python3', '-c',
      'import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(("0.0.0.0",7102))\nprint("ready",file=sys.stderr,flush=True)\n' +
      's.settimeout(10)\nd,a=s.recvfrom(2048)\nprint("%s:%d"%a,flush=True)']);
    await new Promise<void>((resolve) => watcher.stderr?.once('data', () => resolve()));
    const seen = new Promise<string>((resolve, reject) => {
      watcher.stdout?.once('data', (d: Buffer) => { router.proc.kill('SIGKILL'); resolve(d.toString().trim()); });
      watcher.once('exit', () => reject(new Error('no datagram')));
    });
    void lab.exec(lab.ns.lan[1], ['python3', PEER, 'udp-client', '--host', lab.addr.wan[0], '--port', '7102', '--sport', '46000', '--timeout', '1']);
    const from = await seen;
    await kill9(router);
    router = await start();
    const row = (await router.conns()).find((r) => r.proto === 'udp' && r.lan.port === 46000 && r.lan.addr === lab.addr.lan[1]);
    assert.ok(row, 'mapping restored');
    assert.equal(`${row.public.addr}:${row.public.port}`, from);
    await router.stop();
  });

  it('disk full: forwarding goes on, status reports the fault, writes resume when space is back', async () => {
    mounted = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mounted]);
    const router = await start({ state: { path: path.join(mounted, 'state.db'), flushIntervalMs: 200 } });
    const filler = path.join(mounted, 'filler');
    try {
      execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k'], { stdio: 'ignore' });
    } catch {
      // dd stops with ENOSPC: the disk is full, as wanted
    }
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7103', '--count', '300']);
    for (let i = 0; i < 300; i++) {
      const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', '7103', '--sport', String(20000 + i), '--size', '1000']);
      assert.equal(r.reply?.sha256, r.sentSha256, `flow ${i} forwarded`);
      if (i % 5 === 4 && (await dbState(router)).healthy === false) break;
    }
    srv.proc.kill();
    let st = await dbState(router);
    assert.equal(st.healthy, false);
    assert.match(st.lastError ?? '', /SQLITE_FULL|disk|full/i);
    assert.ok(st.pendingWrites > 0);
    assert.match(router.log(), /state database fault/);
    fs.rmSync(filler);
    const deadline = Date.now() + 10000;
    while ((st = await dbState(router)).healthy !== true && Date.now() < deadline) await sleep(200);
    assert.equal(st.healthy, true, 'writes resumed');
    assert.equal(st.pendingWrites, 0);
    await router.stop();
  });

  it('a bad row among 100 good ones: 100 restored and still mapped on the wire, 1 quarantined, status says so', async () => {
    let router = await start({ state: { path: path.join(dir, 'hostile.db'), flushIntervalMs: 200 } });
    // 100 UDP flows from one LAN host, source ports 21000-21099; the WAN host reports each datagram's source.
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7104', '--count', '101', '--timeout', '30']);
    const send = (ports: string): Promise<unknown> => lab.exec(lab.ns.lan[0], ['python3', '-c',
      'import socket,sys\nfor p in sys.argv[2].split(","):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n' +
      ' s.bind(("0.0.0.0",int(p)))\n s.sendto(b"x"*32,(sys.argv[1],7104))\n s.close()', lab.addr.wan[0], ports]);
    await send(Array.from({ length: 100 }, (_, i) => String(21000 + i)).join(','));
    const deadline = Date.now() + 10000;
    let before: Array<Record<string, any>> = [];
    while (Date.now() < deadline) {
      before = (await router.conns()).filter((r) => r.proto === 'udp' && r.remote.port === 7104);
      if (before.length === 100) break;
      await sleep(100);
    }
    assert.equal(before.length, 100, 'all 100 flows mapped');
    assert.equal(await router.stop(), 0);
    // One more row that cannot be right (protocol 99), next to the good ones.
    const file = path.join(dir, 'hostile.db');
    const db = new Database(file);
    db.exec(`INSERT INTO sessions SELECT serial + 1000, 99, lan, 21500, pub_addr, 21500, rem, rem_port, state, created, last_seen, expires,
      pkts_out, pkts_in, bytes_out, bytes_in FROM sessions ORDER BY serial LIMIT 1`);
    db.close();

    router = await start({ state: { path: file, flushIntervalMs: 200 } });
    const st = await dbState(router);
    assert.equal(st.rowsRestored, 100);
    assert.equal(st.rowsQuarantined, 1);
    const after = (await router.conns()).filter((r) => r.proto === 'udp' && r.remote.port === 7104);
    assert.deepEqual(after.map((r) => [r.id, r.public.port]).sort(), before.map((r) => [r.id, r.public.port]).sort());
    assert.match(router.log(), /1 state database row could not be restored: kept in its quarantine table/);
    assert.match(router.log(), /sessions serial \d+: proto: 99 is not one of 6 \(tcp\), 17 \(udp\), 1 \(icmp\)/);
    const human = execFileSync(process.execPath, [CLI, '--config', router.configPath, 'status'], { encoding: 'utf8' });
    assert.match(human, /100 rows restored, 0 discarded at start/);
    assert.match(human, /1 row could not be restored and is kept in the file's "quarantine" table with the reason/);
    // On the wire: a restored flow leaves from the public port it had.
    const old = before.find((r) => r.lan.port === 21042) as Record<string, any>;
    await send('21042');
    const seen = (await srv.result).trim().split('\n').map((l) => JSON.parse(l) as { peer?: string }).filter((x) => x.peer);
    assert.equal(seen.at(-1)?.peer, `${lab.addr.public}:${old.public.port}`);
    // Later writes keep every row: 100 in their table, the bad one in quarantine.
    await sleep(600);
    assert.equal(await router.stop(), 0);
    const check = new Database(file, { readonly: true });
    try {
      assert.equal((check.prepare('SELECT COUNT(*) AS n FROM sessions WHERE rem_port = 7104').get() as { n: number }).n, 100);
      assert.deepEqual(check.prepare('SELECT source, reason FROM quarantine').all(),
        [{ source: 'sessions', reason: 'proto: 99 is not one of 6 (tcp), 17 (udp), 1 (icmp)' }]);
    } finally {
      check.close();
    }
  });
});
