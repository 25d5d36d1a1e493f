// The daemon's packet loop on a FakeTun, without root: translation end to end
// through the batch callback, exceptions on the packet path, device failures.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { parseConfig } from '../../src/config/schema';
import { Daemon } from '../../src/daemon/daemon';
import { createLogger } from '../../src/daemon/log';
import { FakeTun } from '../../src/edge/tun/fake-tun';
import type { TunFactory } from '../../src/edge/tun/device';
import { concat, ipv4, MF, parse, udpPacket, vnetHeader } from './packet-builder';
import { SIDE_LAN, SIDE_WAN, tunDeviceNames } from '../../src/core/side';

const LAN_HOST = '10.77.0.11';
const REMOTE = '198.18.0.11';
const PUBLIC = '198.18.0.2';

interface Rig {
  daemon: Daemon;
  tun: FakeTun;
  fatal: Error[];
  lines(): Promise<string[]>;
}

function rig(): Rig {
  const dir = path.join(os.tmpdir(), `vmq-fake-tun-${process.pid}`);
  const config = parseConfig(JSON.stringify({
    tun: { name: 'fake0', mtu: 1500, offloads: false },
    lan: { interfaces: ['lan0'], prefixes: ['10.77.0.0/24'] },
    wan: { interface: 'wan0', mode: 'dedicated', publicAddress: PUBLIC },
    state: { path: path.join(dir, 'state.db') },
    control: { socket: path.join(dir, 'control.sock'), group: 'root' },
  }), 'test');
  const chunks: string[] = [];
  const stream = new Writable({ write(c: Buffer, _e, done) { chunks.push(c.toString()); done(); } });
  const log = createLogger({ format: 'json', level: 'debug', rateLimitPerMinute: 60, stream });
  const tun = new FakeTun({ names: [...tunDeviceNames('fake0')] });
  const fatal: Error[] = [];
  const openTun: TunFactory = () => tun;
  const daemon = new Daemon(config, log, { persist: false, openTun, onFatal: (e) => fatal.push(e) });
  daemon.startPacketLoop(tun);
  return {
    daemon, tun, fatal,
    async lines() {
      await tick();
      return chunks.join('').split('\n').filter((l) => l !== '');
    },
  };
}

const packet = (src: string, dst: string, sport: number, dport: number): Uint8Array =>
  concat(vnetHeader(), udpPacket(src, dst, { sport, dport, payload: new Uint8Array(16) }));

/** Makes translation throw for UDP packets to `dport`. */
function poison(daemon: Daemon, dport: number): void {
  const napt = daemon.datapath.napt;
  const process = napt.process.bind(napt);
  napt.process = (off, len, out, side) => {
    const a = napt.arena;
    const l4 = off + 10 + (a[off + 10] & 0x0f) * 4;
    if (((a[l4 + 2] << 8) | a[l4 + 3]) === dport) throw new TypeError(`poisoned packet to port ${dport}`);
    process(off, len, out, side);
  };
}

describe('daemon packet loop on a fake TUN', () => {
  it('translates an outbound datagram and its reply through the batch callback', () => {
    const { tun } = rig();
    tun.inject(packet(LAN_HOST, REMOTE, 40000, 7000));
    const [out] = tun.deliver();
    assert.ok(out, 'outbound packet written');
    const p = parse(out.packet.subarray(10));
    assert.deepEqual([p.src, p.sport, p.dst, p.dport], [PUBLIC, 40000, REMOTE, 7000]);
    tun.inject(packet(REMOTE, PUBLIC, 7000, 40000), SIDE_WAN);
    const [back] = tun.deliver();
    const q = parse(back.packet.subarray(10));
    assert.deepEqual([q.src, q.sport, q.dst, q.dport], [REMOTE, 7000, LAN_HOST, 40000]);
  });

  it('direction is by device: a LAN source from the WAN device and a foreign source from the LAN device are spoofs and create nothing', async () => {
    const { daemon, tun, lines } = rig();
    for (let i = 0; i < 20; i++) tun.inject(packet('10.77.0.99', PUBLIC, 7000, 40100 + i), SIDE_WAN);
    tun.inject(packet(REMOTE, '198.18.0.99', 7000, 40200), SIDE_LAN);
    // The reply to a mapping that exists, sent on the LAN device: not inbound either.
    tun.inject(packet(LAN_HOST, REMOTE, 40300, 7000), SIDE_LAN);
    const written = tun.deliver();
    assert.equal(written.length, 1, 'only the genuine outbound datagram is written');
    tun.inject(packet(REMOTE, PUBLIC, 7000, 40300), SIDE_LAN);
    assert.deepEqual(tun.deliver(), []);
    const drops = daemon.drops();
    assert.equal(drops['spoofed-source'], 22);
    assert.equal(daemon.table.sessionCount, 1);
    (daemon as unknown as { logSpoofs(): void }).logSpoofs();
    const spoofLines = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === 'spoofed-source');
    assert.equal(spoofLines.length, 1);
    assert.equal(spoofLines[0].count, 22);
    assert.equal(spoofLines[0].side, 'lan');
    assert.equal(spoofLines[0].source, REMOTE);
  });

  it('one source gets limits.fragmentsPerSource (64) of the fragment pool; the cap is counted and logged once a minute', async () => {
    const { daemon, tun, lines } = rig();
    const later = (src: string, id: number): Uint8Array =>
      concat(vnetHeader(), ipv4({ src, dst: PUBLIC, proto: 17, id, flags: MF, fragOffset: 1480, payload: new Uint8Array(16) }));
    for (let i = 0; i < 70; i++) tun.inject(later(REMOTE, i), SIDE_WAN);
    assert.deepEqual(tun.deliver(), [], 'later fragments wait for their first');
    for (let i = 0; i < 5; i++) tun.inject(later('198.18.0.12', i), SIDE_WAN);
    tun.deliver();
    assert.equal(daemon.datapath.frags.heldCount, 64 + 5, 'another source still gets slots');
    assert.equal(daemon.drops()['fragment-source-limit'], 6);
    daemon.sweep();
    for (let i = 0; i < 3; i++) tun.inject(later(REMOTE, 100 + i), SIDE_WAN);
    tun.deliver();
    daemon.sweep();
    const limit = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === 'limit');
    assert.equal(limit.length, 1, 'one line a minute at most');
    assert.equal(limit[0].level, 'warn');
    assert.equal(limit[0]['fragment-source-limit'], 6);
    assert.match(String(limit[0].msg), /limits reached, packets refused since the last report: fragment-source-limit 6/);
  });

  it('commits a new mapping (journal flush) inside the batch, before its packet is written', () => {
    const { daemon, tun } = rig();
    const seen: string[] = [];
    daemon.addJournalListener({
      event: (kind) => seen.push(`event ${kind}`),
      flush: () => seen.push(`flush with ${tun.written.length} written`),
    });
    tun.inject(packet(LAN_HOST, REMOTE, 40001, 7000));
    assert.equal(tun.deliver().length, 1);
    assert.deepEqual(seen.slice(-1), ['flush with 0 written']);
    assert.ok(seen.length >= 2);
  });

  it('a packet whose translation throws is dropped and logged with its stack; the rest of the batch is written', async () => {
    const { daemon, tun, fatal, lines } = rig();
    poison(daemon, 6666);
    tun.inject(packet(LAN_HOST, REMOTE, 40010, 7000));
    tun.inject(packet(LAN_HOST, REMOTE, 40011, 6666));
    tun.inject(packet(LAN_HOST, REMOTE, 40012, 7000));
    const out = tun.deliver().map((w) => parse(w.packet.subarray(10)));
    assert.deepEqual(out.map((p) => [p.src, p.sport, p.dport]), [[PUBLIC, 40010, 7000], [PUBLIC, 40012, 7000]]);
    const stats = daemon.stats() as { tun: Record<string, number> };
    assert.equal(stats.tun.packet_errors, 1);
    assert.equal(stats.tun.batch_errors, 0);
    assert.equal(fatal.length, 0);
    const logged = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 'error');
    assert.equal(logged.length, 1);
    assert.equal(logged[0].msg, 'packet translation threw; packet dropped');
    assert.equal(logged[0].error, 'poisoned packet to port 6666');
    assert.match(String(logged[0].stack), /TypeError: poisoned packet to port 6666\n\s+at /);
    assert.equal(logged[0].index, 1);
  });

  it('exceptions that repeat end forwarding: onFatal once, with the reason, and one log line per second', async () => {
    const { daemon, tun, fatal, lines } = rig();
    poison(daemon, 6666);
    for (let i = 0; i < 40; i++) tun.inject(packet(LAN_HOST, REMOTE, 41000 + i, 6666));
    assert.deepEqual(tun.deliver(), []);
    assert.equal(fatal.length, 1);
    assert.match(fatal[0].message, /^packet path failing: 32 packets in a row threw \(last: poisoned packet to port 6666\)$/);
    const errors = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 'error');
    assert.deepEqual(errors.map((l) => l.msg), ['packet translation threw; packet dropped', fatal[0].message]);
    assert.equal((daemon.stats() as { tun: Record<string, number> }).tun.packet_errors, 40);
  });

  it('isolated exceptions spread over batches do not end forwarding', () => {
    const { daemon, tun, fatal } = rig();
    poison(daemon, 6666);
    for (let b = 0; b < 50; b++) {
      tun.inject(packet(LAN_HOST, REMOTE, 42000 + b, 6666));
      tun.inject(packet(LAN_HOST, REMOTE, 43000 + b, 7000));
      assert.equal(tun.deliver().length, 1);
    }
    assert.equal(fatal.length, 0);
  });

  it('a batch callback that throws outside translation (a journal listener) writes nothing of that batch and is counted', async () => {
    const { daemon, tun, fatal, lines } = rig();
    daemon.addJournalListener({ event: () => undefined, flush: () => { throw new Error('listener broke'); } });
    tun.inject(packet(LAN_HOST, REMOTE, 40020, 7000));
    tun.inject(packet(LAN_HOST, REMOTE, 40021, 7000));
    assert.deepEqual(tun.deliver(), []);
    const stats = daemon.stats() as { tun: Record<string, number> };
    assert.equal(stats.tun.batch_errors, 1);
    assert.equal(stats.tun.batch_dropped, 2);
    assert.equal(fatal.length, 0);
    const logged = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 'error');
    assert.equal(logged[0].msg, 'batch callback threw; batch not written');
    assert.match(String(logged[0].stack), /Error: listener broke/);
  });

  it('a device error is logged at error level, ends forwarding once, and status no longer says running', async () => {
    const { daemon, tun, fatal, lines } = rig();
    tun.fail('EBADFD', 'read', 'File descriptor in bad state');
    tun.fail('EBADFD', 'read', 'File descriptor in bad state');
    assert.equal(fatal.length, 1);
    assert.equal(fatal[0].message, 'TUN fake0 is gone (deleted or detached): read: File descriptor in bad state (EBADFD); forwarding has stopped');
    const errors = (await lines()).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 'error');
    assert.deepEqual(errors.map((l) => l.msg), [fatal[0].message]);
    const status = daemon.status();
    assert.equal(status.running, false);
    assert.equal(status.failed, fatal[0].message);
  });
});
