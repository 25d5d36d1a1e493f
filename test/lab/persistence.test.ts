/**
 * The persisted connection table with the real daemon, in shared-address
 * mode (the default: the router's own WAN address is the public one) and in
 * dedicated mode: kill -9 mid-traffic, a planned restart (SIGTERM, start
 * again) and a reboot (the router namespace deleted and rebuilt: new TUN,
 * same database, the safety net put back by `vpnmasq safety-net` before the
 * new namespace has addresses, as vpnmasq-safety-net.service does at boot).
 *
 * Every case carries, across the restart: a TCP download checked by hash
 * (300 MB at 20 MB/s for shared mode's kill -9 and SIGTERM cases), UDP from
 * two LAN hosts sharing a source port, a strongSwan tunnel carrying ping (its
 * IKE SA must stay the same one), a raw-ESP tunnel with crafted peers (no
 * NAT-T) and a PPTP call whose GRE keeps flowing. They must resume on the
 * same public ports, SPIs and Call IDs, and tcpdump on every WAN host must
 * show no reset and no ICMP error from the box, and no private source
 * address, while the daemon is down. Each test has its own lab and daemons.
 * A hostile row among good ones is quarantined while the good ones come back.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { DbHealth } from '../../src/persist/health';
import { requireRoot, createLab, Lab, TestOwner } from './lab';
import { CLI, peer, peerServer, PEER, PPTP_HOST, RouterHandle, startRouter } from './router-harness';
import { Charon, initiate, requireCharon, listSas, PROTECTED_HOST, startClient, startServer } from './charon';
import { capture, Capture, isPrivateSource, leaks } from './capture';
import Database from 'better-sqlite3';

requireRoot();
requireCharon();

type Mode = 'shared' | 'dedicated';
type Down = 'kill' | 'restart' | 'reboot';

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The `state` part of `vpnmasq status`. */
async function dbState(router: RouterHandle): Promise<DbHealth> {
  return (await router.request('status')).state as DbHealth;
}

/** One case's world: its lab, its state directory, its daemon config, the address peers see. */
interface Case {
  lab: Lab;
  mode: Mode;
  publicAddr: string;
  dir: string;
  config: Record<string, unknown>;
  start(): Promise<RouterHandle>;
}

async function newCase(t: TestOwner, mode: Mode, lanHosts = 3): Promise<Case> {
  const lab = await createLab({ lanHosts, wanHosts: 2 });
  const dir = lab.tempDir('persist');
  t.after(() => lab.destroy());
  const config: Record<string, unknown> = {
    // The same TUN name and state directory for every start of this case, as on a real box.
    tun: { name: `${lab.prefix.slice(3)}p`, mtu: 1500, offloads: true },
    state: { path: path.join(dir, 'state.db') },
    ...(mode === 'shared' ? { wan: { interface: lab.routerIfaces.wan, mode: 'shared' } } : {}),
  };
  return {
    lab, mode, dir, config,
    publicAddr: mode === 'shared' ? lab.addr.routerWan : lab.addr.public,
    start: () => startRouter(lab, config, { owner: t }),
  };
}

/** A flow that must survive a restart: `start` runs before the daemon goes down, `check` after it is back. */
interface Flow {
  name: string;
  start(c: Case, router: RouterHandle): Promise<void>;
  check(c: Case, router: RouterHandle, resumedAt: number): Promise<void>;
}

/** A download from a WAN host to a LAN host (the direction whose packets the box answered with resets). */
function tcpDownload(bytes: number, rate: number): Flow {
  let sink: Promise<Record<string, any>>;
  let source: { result: Promise<string> };
  let publicPort = 0;
  const timeout = String(Math.ceil(bytes / rate) + 40);
  return {
    name: 'TCP download',
    async start(c, router) {
      source = await peerServer(c.lab, c.lab.ns.wan[0], ['tcp-source', '--port', '7100', '--bytes', String(bytes), '--rate', String(rate), '--timeout', timeout]);
      sink = peer(c.lab, c.lab.ns.lan[0], ['tcp-sink', '--host', c.lab.addr.wan[0], '--port', '7100', '--timeout', timeout], (Number(timeout) + 20) * 1000);
      const deadline = Date.now() + 5000;
      let row: Record<string, any> | undefined;
      while (!(row = (await router.conns()).find((r) => r.proto === 'tcp' && r.remote.port === 7100)) && Date.now() < deadline) await sleep(100);
      assert.ok(row, 'TCP session visible before the daemon goes down');
      publicPort = row.public.port;
    },
    async check(c, router) {
      const row = (await router.conns()).find((r) => r.proto === 'tcp' && r.remote.port === 7100);
      assert.ok(row, 'TCP session restored');
      assert.equal(row.public.port, publicPort);
      const got = await sink;
      const sent = JSON.parse((await source.result).trim().split('\n').pop() as string);
      assert.equal(sent.peer, `${c.publicAddr}:${publicPort}`, 'the server saw one public endpoint throughout');
      assert.equal(got.bytes, bytes, 'the whole download arrived (no reset)');
      assert.equal(got.sha256, sent.sha256, 'and intact');
    },
  };
}

/** Two LAN hosts share a source port, so the second one gets another public port that must come back. */
function udpStream(): Flow {
  const seen: string[] = [];
  const send = async (c: Case) => {
    const srv = await peerServer(c.lab, c.lab.ns.wan[1], ['udp-server', '--port', '7101', '--count', '2']);
    for (const l of [0, 1]) {
      const r = await peer(c.lab, c.lab.ns.lan[l], ['udp-client', '--host', c.lab.addr.wan[1], '--port', '7101', '--sport', '45000']);
      seen.push(r.reply.peer);
    }
    await srv.result;
  };
  return {
    name: 'UDP stream',
    start: (c) => send(c),
    async check(c) {
      await send(c);
      assert.equal(seen[0].split(':')[0], c.publicAddr);
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

/** A strongSwan tunnel from LAN host 1 to the VPN server (NAT-T), carrying ping. */
function ipsecTunnel(): Flow {
  let client: Charon;
  let sa = '';
  let nattPort = 0;
  return {
    name: 'strongSwan tunnel',
    async start(c, router) {
      const base = fs.mkdtempSync(path.join(c.dir, 'swan-'));
      await startServer(c.lab, base, c.lab.ns.vpnServer, c.lab.addr.vpnServer);
      client = await startClient(c.lab, base, c.lab.ns.lan[1], 'client1', c.lab.addr.vpnServer);
      const up = await initiate(c.lab, client);
      assert.match(up.stdout, /initiate completed successfully/, `${up.stdout}${up.stderr}\n${client.log().slice(-3000)}`);
      const p = await c.lab.ping(c.lab.ns.lan[1], PROTECTED_HOST, { count: 2 });
      assert.equal(p.received, 2, `ping through the tunnel: ${JSON.stringify(p)}`);
      sa = ikeSa(await listSas(c.lab, client));
      const nat = (await router.conns()).find((r) => r.proto === 'udp' && r.lan.addr === c.lab.addr.lan[1] && r.remote.port === 4500);
      assert.ok(nat, 'the NAT-T flow is visible');
      nattPort = nat.public.port;
    },
    async check(c, router) {
      const p = await c.lab.ping(c.lab.ns.lan[1], PROTECTED_HOST, { count: 5 });
      assert.ok(p.received >= 4, `ping through the tunnel after the restart: ${JSON.stringify(p)}`);
      assert.equal(ikeSa(await listSas(c.lab, client)), sa, 'the same IKE SA: never renegotiated');
      const nat = (await router.conns()).find((r) => r.proto === 'udp' && r.lan.addr === c.lab.addr.lan[1] && r.remote.port === 4500);
      assert.equal(nat?.public.port, nattPort, 'NAT-T keeps its public port');
    },
  };
}

/** The longest a held VPN flow runs; it ends earlier, once its answers are back after the outage (--resume). */
const HOLD_S = 60;
const RESUME = '8';

/** Raw ESP (no NAT-T): crafted IKE from port 500, then an SA that keeps sending across the restart (peer.py --hold). */
function rawEsp(): Flow {
  let client: Promise<Record<string, any>>;
  let responder: { result: Promise<string> };
  let row: Record<string, any>;
  return {
    name: 'raw ESP tunnel',
    async start(c, router) {
      responder = await peerServer(c.lab, c.lab.ns.wan[1], ['ike-esp-responder', '--seconds', String(HOLD_S + 30)]);
      client = peer(c.lab, c.lab.ns.lan[2], ['ike-esp-client', '--host', c.lab.addr.wan[1], '--icookie', 'e5e5e5e500000001',
        '--spi', '0x5100', '--packets', '3', '--hold', String(HOLD_S), '--resume', RESUME, '--interval', '0.2', '--timeout', '15'], (HOLD_S + 30) * 1000);
      const deadline = Date.now() + 8000;
      let esp: Record<string, any> | undefined;
      while (!(esp = (await router.conns()).find((r) => r.proto === 'esp' && r.state === 'ESTABLISHED')) && Date.now() < deadline) await sleep(200);
      assert.ok(esp, 'the ESP pairing is established before the daemon goes down');
      row = esp;
    },
    async check(c, router, resumedAt) {
      const esp = (await router.conns()).find((r) => r.proto === 'esp' && r.id === row.id);
      assert.ok(esp, 'ESP entry restored');
      assert.deepEqual(esp.vpn, row.vpn, 'the same SPI pairing');
      const r = await client;
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.deepEqual(r.foreign, [], 'nothing of anyone else');
      // The remote's account first: a remote that stopped answering says so here (its exit, or its counts).
      const seen = JSON.parse((await responder.result).trim().split('\n').pop() as string);
      const after = r.hold.backAt.filter((t: number) => t >= resumedAt / 1000);
      assert.ok(after.length >= 5, `ESP answered after the restart (at ${resumedAt / 1000}): ${after.length} of ${r.hold.sent} sent, ` +
        `answers at ${r.hold.backAt.join(' ')}; the remote saw ${JSON.stringify(seen)}`);
      assert.deepEqual(seen.ikeFrom, [`${c.publicAddr}:500`], 'ISAKMP from public port 500');
      assert.deepEqual(Object.keys(seen.esp), ['00005100'], 'the remote only ever saw the one SPI');
    },
  };
}

/** A PPTP call whose GRE runs across the restart (pptp_host.py client --hold). */
function pptpCall(): Flow {
  let client: Promise<Record<string, any>>;
  let server: { result: Promise<string> };
  let pubCallId: unknown;
  return {
    name: 'PPTP call',
    async start(c, router) {
      server = await peerServer(c.lab, c.lab.ns.wan[1], ['server', '--clients', '1', '--seconds', String(HOLD_S + 25)], PPTP_HOST);
      client = peer(c.lab, c.lab.ns.lan[0], ['client', '--server', c.lab.addr.wan[1], '--call-id', '0x0100', '--gre-count', '3',
        '--seconds', '8', '--hold', String(HOLD_S), '--resume', RESUME], (HOLD_S + 30) * 1000, PPTP_HOST);
      const deadline = Date.now() + 8000;
      let row: any;
      while (!(row = (await router.conns()).find((r: any) => r.proto === 'gre' && r.state === 'CONFIRMED')) && Date.now() < deadline) await sleep(200);
      assert.ok(row, 'PPTP call confirmed before the daemon goes down');
      pubCallId = row.vpn.callIdPub;
    },
    async check(_c, router, resumedAt) {
      const row = (await router.conns()).find((r: any) => r.proto === 'gre') as any;
      assert.ok(row, 'PPTP call restored');
      assert.equal(row.vpn.callIdPub, pubCallId, 'same public Call ID');
      const r = await client;
      const seen = JSON.parse((await server.result).trim().split('\n').pop() as string);
      assert.equal(r.calls[0].result, 1, JSON.stringify(r));
      assert.deepEqual(Object.values(seen.calls).map((x: any) => x.peerCallId), [pubCallId], 'the server only ever knew one Call ID');
      const after = r.hold.backAt.filter((t: number) => t >= resumedAt / 1000);
      assert.ok(after.length >= 5, `GRE echoes after the restart: ${after.length} of ${r.hold.sent} sent`);
    },
  };
}

/** `vpnmasq safety-net` in the router namespace with this case's config (the early boot stage). */
async function safetyNetStage(c: Case, configPath: string): Promise<void> {
  const r = await c.lab.exec(c.lab.ns.router, [process.execPath, CLI, '-c', configPath, 'safety-net']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /safety net in place/);
}

async function survives(t: TestOwner, mode: Mode, how: Down): Promise<void> {
  const c = await newCase(t, mode);
  const long = mode === 'shared' && how !== 'reboot';
  // VPN flows first: the download must still be running when the daemon goes down.
  const flows = [ipsecTunnel(), rawEsp(), pptpCall(),
    long ? tcpDownload(300 * 1024 * 1024, 20 * 1024 * 1024) : tcpDownload(24 * 1024 * 1024, 3 * 1024 * 1024), udpStream()];
  const wanSide = [c.lab.ns.wan[0], c.lab.ns.wan[1], c.lab.ns.vpnServer];
  const caps: Capture[] = [];
  for (const ns of wanSide) caps.push(await capture(c.lab, ns));
  let router = await c.start();
  for (const f of flows) await f.start(c, router);
  const before = await router.conns();
  await sleep(long ? 2500 : 500);
  const downAt = Date.now();
  let gap = '';
  if (how === 'kill') {
    await router.kill9();
    await sleep(1000);
  } else if (how === 'restart') {
    assert.equal(await router.stop(), 0, router.log());
    await sleep(1000);
  } else {
    await router.kill9();
    let netAt = 0;
    const { addressesAt } = await c.lab.rebuildRouter({
      beforeWire: async () => {
        await safetyNetStage(c, router.configPath);
        netAt = Date.now();
      },
    });
    gap = `safety net in place ${addressesAt - netAt} ms before the router's addresses came up`;
    // The hosts' links died with the old namespace, and their captures with them: capture the new ones.
    for (const ns of wanSide) caps.push(await capture(c.lab, ns));
  }
  router = await c.start();
  const resumedAt = Date.now();
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
  for (const f of flows) await f.check(c, router, resumedAt);
  const seen = (await Promise.all(caps.map((x) => x.stop()))).flat();
  const box = [c.lab.addr.routerWan, c.lab.addr.public];
  assert.deepEqual(leaks(seen, box, downAt / 1000, resumedAt / 1000 + 2), [], 'nothing from the box while it was down');
  assert.deepEqual(seen.filter(isPrivateSource).map((p) => p.line), [], 'no private source on the WAN side, ever');
  console.log(`# ${mode} ${how}: down ${resumedAt - downAt} ms${gap ? `; ${gap}` : ''}; ${seen.length} suspect-filter packets captured, none from the box while down`);
  assert.equal(await router.stop(), 0);
}

for (const mode of ['shared', 'dedicated'] as const) {
  describe(`persisted connection table in the lab, ${mode} mode`, () => {
    it('kill -9 mid-traffic: TCP, UDP, strongSwan, raw ESP and PPTP resume on the same public ports, SPIs and Call IDs', (t) => survives(t, mode, 'kill'));
    it('SIGTERM and start again: the same flows resume, nothing is answered or leaked in between', (t) => survives(t, mode, 'restart'));
    it('reboot: the router namespace is rebuilt (new TUN, same database), the safety net goes in before its addresses, the flows resume', (t) => survives(t, mode, 'reboot'));
  });
}

describe('persisted connection table: write-ahead and a full disk', () => {
  it('write-ahead: a mapping whose first packet left 1 ms before SIGKILL is present after restart', async (t) => {
    const c = await newCase(t, 'dedicated', 2);
    const { lab } = c;
    let router = await c.start();
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
    await router.kill9();
    router = await c.start();
    const row = (await router.conns()).find((r) => r.proto === 'udp' && r.lan.port === 46000 && r.lan.addr === lab.addr.lan[1]);
    assert.ok(row, 'mapping restored');
    assert.equal(`${row.public.addr}:${row.public.port}`, from);
    assert.equal(await router.stop(), 0);
  });

  it('disk full: forwarding goes on, status reports the fault, writes resume when space is back', async (t) => {
    const c = await newCase(t, 'dedicated', 1);
    const { lab } = c;
    const mounted = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mounted]);
    t.after(() => {
      execFileSync('umount', ['-l', mounted]);
      fs.rmSync(mounted, { recursive: true, force: true });
    });
    const router = await startRouter(lab, { state: { path: path.join(mounted, 'state.db'), flushIntervalMs: 200 } }, { owner: t });
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
    assert.equal(await router.stop(), 0);
  });

  it('a bad row among 100 good ones: 100 restored and still mapped on the wire, 1 quarantined, status says so', async (t) => {
    const c = await newCase(t, 'shared', 1);
    const { lab, dir } = c;
    const start = (extra: Record<string, unknown>) => startRouter(lab, { ...c.config, ...extra }, { owner: t });
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
    assert.equal(seen.at(-1)?.peer, `${c.publicAddr}:${old.public.port}`);
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
