// Reload on a daemon with a fake TUN (no root): every runtime section has an
// applier, and the applied values reach new and existing entries; a field
// that needs a restart, or a limit above what was allocated, rejects the
// whole config.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { Config, parseConfig, reloadFields } from '../../src/config/schema';
import { Daemon } from '../../src/daemon/daemon';
import { createLogger } from '../../src/daemon/log';
import { FakeTun } from '../../src/edge/tun/fake-tun';
import { concat, ipv4, parse, udpPacket, vnetHeader } from './packet-builder';
import { Drop, DROP_NAMES } from '../../src/core/verdict';
import { SIDE_LAN, SIDE_WAN, tunDeviceNames } from '../../src/core/side';

const LAN = '10.77.0.11';
const REMOTE = '198.18.0.11';
const OTHER = '198.18.0.12';
const PUBLIC = '198.18.0.2';
const T0 = 1_700_000_000_000;

function config(extra: Record<string, unknown> = {}): Config {
  const dir = path.join(os.tmpdir(), `vmq-reload-${process.pid}`);
  return parseConfig(JSON.stringify({
    tun: { name: 'fake0', mtu: 1500, offloads: false },
    lan: { interfaces: ['lan0'], prefixes: ['10.77.0.0/24'] },
    wan: { interface: 'wan0', mode: 'dedicated', publicAddress: PUBLIC },
    state: { path: path.join(dir, 'state.db') },
    control: { socket: path.join(dir, 'control.sock'), group: 'root' },
    limits: { maxSessions: 2048, maxHeldFragments: 16 },
    log: { level: 'info' },
    ...extra,
  }), 'test');
}

function rig(extra: Record<string, unknown> = {}) {
  const clock = { t: T0 };
  const chunks: string[] = [];
  const stream = new Writable({ write(c: Buffer, _e, done) { chunks.push(c.toString()); done(); } });
  const base = config(extra);
  const log = createLogger({ ...base.log, stream, now: () => clock.t });
  const tun = new FakeTun({ names: [...tunDeviceNames('fake0')] });
  const daemon = new Daemon(base, log, { persist: false, openTun: () => tun, now: () => clock.t });
  daemon.startPacketLoop(tun);
  const send = (src: string, dst: string, sport: number, dport: number) => {
    // Read from the device the policy routing feeds: LAN for a LAN source, else WAN.
    tun.inject(concat(vnetHeader(), udpPacket(src, dst, { sport, dport, payload: new Uint8Array(8) })), src === LAN ? SIDE_LAN : SIDE_WAN);
    return tun.deliver().map((w) => parse(w.packet.subarray(10)));
  };
  const row = (lanPort: number) => [...daemon.rows()].find((r) => r.lan.port === lanPort);
  const drops = () => daemon.drops();
  return {
    daemon, tun, clock, send, row, drops, base,
    reload: (more: Record<string, unknown>) => daemon.reload(config({ ...extra, ...more })),
    /** The lines written so far, without letting the event loop turn (so the feed has not delivered). */
    written: () => chunks.join('').split('\n').filter((l) => l !== ''),
    async lines() { await tick(); return chunks.join('').split('\n').filter((l) => l !== ''); },
  };
}

describe('reload on a running daemon', () => {
  it('has an applier for every config section with a runtime field, and none for the others', () => {
    const { daemon } = rig();
    const runtime = new Set(reloadFields().filter(([, k]) => k.kind === 'runtime').map(([f]) => f.split('.')[0]));
    assert.deepEqual(new Set(daemon.reloadSections()), runtime);
  });

  it('a shorter timeouts.udp applies to the existing mapping and to new ones', async () => {
    const r = rig();
    assert.equal(r.send(LAN, REMOTE, 40000, 7000).length, 1);
    assert.equal(r.row(40000)?.expiresInSeconds, 300);
    r.clock.t += 100_000;
    const outcome = await r.reload({ timeouts: { udp: 120 } });
    assert.deepEqual(outcome, { ok: true, applied: ['timeouts.udp'], warnings: [] });
    // 100 s idle under a 120 s timeout: 20 s left.
    assert.equal(r.row(40000)?.expiresInSeconds, 20);
    r.send(LAN, REMOTE, 40001, 7000);
    assert.equal(r.row(40001)?.expiresInSeconds, 120);
    r.clock.t += 21_000;
    (r.daemon as unknown as { sweep(b: number): void }).sweep(1 << 20);
    assert.equal(r.row(40000), undefined, 'expired under the new timeout');
    assert.equal(r.row(40001)?.expiresInSeconds, 99);
  });

  it('rejects the whole config when a restart field changed, naming each, and keeps running the old one', async () => {
    const r = rig();
    const before = r.daemon.config;
    const outcome = await r.reload({ tun: { name: 'other0', mtu: 1400, offloads: false }, timeouts: { udp: 120 } });
    assert.equal(outcome.ok, false);
    assert.deepEqual(!outcome.ok && outcome.error.split('\n'), [
      'tun.name: needs a restart (the TUN device is created at start)',
      'tun.mtu: needs a restart (the packet buffers are sized for it at start)',
    ]);
    assert.equal(r.daemon.config, before);
    r.send(LAN, REMOTE, 40000, 7000);
    assert.equal(r.row(40000)?.expiresInSeconds, 300, 'timeouts.udp was not applied either');
    assert.match(String((r.daemon.status().lastReload as { error: string }).error), /tun\.name: needs a restart/);
  });

  it('limits: lowering refuses new sessions while the existing ones stay; raising above the allocation needs a restart', async () => {
    const r = rig({ limits: { maxSessions: 2048, maxHeldFragments: 16 } });
    for (let i = 0; i < 3; i++) r.send(LAN, REMOTE, 41000 + i, 7000);
    let o = await r.reload({ limits: { maxSessions: 1024, maxHeldFragments: 8 } });
    assert.equal(o.ok, true);
    assert.equal(r.daemon.table.limit, 1024);
    assert.equal(r.daemon.datapath.frags.holdLimit, 8);
    o = await r.reload({ limits: { maxSessions: 4096, maxHeldFragments: 8 } });
    assert.equal(o.ok, false);
    assert.match(!o.ok ? o.error : '', /^limits\.maxSessions: needs a restart \(4096 is above the 2048 sessions the table was allocated with at start; lowering works at runtime\)$/);
    assert.equal(r.daemon.table.limit, 1024);
    // A limit below the live count: the three stay, a fourth is refused (limits.refuse "icmp": code 13 back to the LAN host, nothing out).
    (r.daemon.table as { limit: number }).limit = 3;
    const refused = r.send(LAN, REMOTE, 41003, 7000);
    assert.deepEqual(refused.map((p) => [p.dst, p.proto, p.icmpType, p.icmpCode]), [[LAN, 1, 3, 13]]);
    assert.equal(r.drops()[DROP_NAMES[Drop.TABLE_FULL]], 1);
    assert.equal([...r.daemon.rows()].length, 3);
  });

  it('ports.range applies to new mappings (dedicated mode keeps the old ones)', async () => {
    const r = rig({ ports: { range: [20000, 29999], preserve: false, lowRange: null } });
    const [a] = r.send(LAN, REMOTE, 40000, 7000);
    assert.ok(Number(a.sport) >= 20000 && Number(a.sport) <= 29999);
    assert.equal((await r.reload({ ports: { range: [50000, 50100], preserve: false, lowRange: null } })).ok, true);
    const [b] = r.send(LAN, REMOTE, 40001, 7000);
    assert.ok(Number(b.sport) >= 50000 && Number(b.sport) <= 50100, `new mapping on ${b.sport}`);
    const [again] = r.send(LAN, REMOTE, 40000, 7000);
    assert.equal(again.sport, a.sport, 'the existing mapping keeps its port');
  });

  it('filtering needs a restart (the table gives each mapping a port of its own under endpoint-independent filtering); the mapping stays filtered', async () => {
    const r = rig();
    const [out] = r.send(LAN, REMOTE, 40000, 7000);
    assert.equal(r.send(OTHER, PUBLIC, 7000, Number(out.sport)).length, 0, 'address-and-port-dependent filtering drops it');
    const o = await r.reload({ filtering: 'endpoint-independent' });
    assert.equal(o.ok, false);
    assert.match(!o.ok ? o.error : '', /^filtering: needs a restart \(/);
    assert.equal(r.send(OTHER, PUBLIC, 7000, Number(out.sport)).length, 0, 'still filtered');
    assert.equal(r.send(REMOTE, PUBLIC, 7000, Number(out.sport))[0]?.dst, LAN, 'the mapping is still there');
  });

  it('timeouts.espPending moves the deadline of a pending ESP entry', async () => {
    const r = rig();
    const esp = new Uint8Array(16);
    esp.set([0xc0, 0xff, 0xee, 0x01], 0);
    r.tun.inject(concat(vnetHeader(), ipv4({ src: LAN, dst: REMOTE, proto: 50, payload: esp })), SIDE_LAN);
    r.tun.deliver();
    const pending = () => [...r.daemon.rows()].find((x) => x.proto === 'esp');
    assert.equal(pending()?.expiresInSeconds, 120);
    r.clock.t += 30_000;
    assert.equal((await r.reload({ timeouts: { espPending: 60 } })).ok, true);
    assert.equal(pending()?.expiresInSeconds, 30);
  });
});

describe('debug logging', () => {
  const debugLines = async (r: ReturnType<typeof rig>) =>
    (await r.lines()).map((l) => JSON.parse(l) as Record<string, any>).filter((l) => l.level === 'debug');

  it('is off at info; a reload to debug turns on lines for new, updated and expired entries and drops, after the batch', async () => {
    const r = rig();
    r.send(LAN, REMOTE, 40000, 7000);
    await tick();
    assert.deepEqual(await debugLines(r), []);
    assert.equal((await r.reload({ log: { level: 'debug', format: 'json' } })).ok, true);
    const [out] = r.send(LAN, REMOTE, 40001, 7000);
    assert.deepEqual(r.written().filter((l) => JSON.parse(l).level === 'debug'), [], 'nothing is logged inside the batch');
    await tick();
    r.send(REMOTE, PUBLIC, 7000, Number(out.sport));
    r.send(OTHER, PUBLIC, 7000, Number(out.sport));
    await tick();
    r.clock.t += 301_000;
    const d = r.daemon as unknown as { sweep(b: number): void };
    d.sweep(1 << 20);
    await tick();
    const lines = await debugLines(r);
    assert.deepEqual(lines.map((l) => [l.event, l.msg]), [
      ['conn-new', 'new udp 10.77.0.11:40001 -> 198.18.0.11:7000 as 198.18.0.2:40001'],
      ['conn-update', 'REPLIED udp 10.77.0.11:40001 -> 198.18.0.11:7000 as 198.18.0.2:40001'],
      // The sweep's once-a-second drop report, then the sweep's table events (after it).
      ['drop-filtered', 'dropped 1 packet: filtered'],
      ['conn-end', 'expired udp 10.77.0.11:40000 -> 198.18.0.11:7000 as 198.18.0.2:40000 after 301s idle'],
      ['conn-end', 'expired udp 10.77.0.11:40001 -> 198.18.0.11:7000 as 198.18.0.2:40001 after 301s idle'],
    ]);
    assert.equal(lines[3].reason, 'expired');
  });

  it('is rate limited per kind, and counts what it left out', async () => {
    const r = rig({ log: { level: 'debug', format: 'json', rateLimitPerMinute: 5 } });
    for (let i = 0; i < 8; i++) r.send(LAN, REMOTE, 42000 + i, 7000);
    await tick();
    r.clock.t += 61_000;
    r.send(LAN, REMOTE, 42100, 7000);
    await tick();
    const news = (await debugLines(r)).filter((l) => l.event === 'conn-new');
    assert.equal(news.length, 6);
    assert.equal(news[5].suppressed, 3);
  });
});
