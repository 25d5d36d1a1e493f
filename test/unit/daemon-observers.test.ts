// The daemon's observers on a FakeTun: `conns watch` and the id index get the
// table events after the batch was written, never inside it; ids are found
// and deleted directly.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { parseConfig } from '../../src/config/schema';
import { Daemon } from '../../src/daemon/daemon';
import { createLogger } from '../../src/daemon/log';
import { EV_DESTROY, EV_NEW } from '../../src/core/journal';
import { TABLE_SESSIONS } from '../../src/nat/sessions';
import { FakeTun } from '../../src/edge/tun/fake-tun';
import { tunDeviceNames } from '../../src/core/side';
import { concat, udpPacket, vnetHeader } from './packet-builder';

const PUBLIC = '198.18.0.2';

function rig(): { daemon: Daemon; tun: FakeTun } {
  const dir = path.join(os.tmpdir(), `vmq-observers-${process.pid}`);
  const config = parseConfig(JSON.stringify({
    tun: { name: 'fake0', mtu: 1500, offloads: false },
    lan: { interfaces: ['lan0'], prefixes: ['10.77.0.0/24'] },
    wan: { interface: 'wan0', mode: 'dedicated', publicAddress: PUBLIC },
    state: { path: path.join(dir, 'state.db') },
    control: { socket: path.join(dir, 'control.sock'), group: 'root' },
  }), 'test');
  const stream = new Writable({ write(_c, _e, done) { done(); } });
  const log = createLogger({ format: 'json', level: 'info', rateLimitPerMinute: 60, stream });
  const tun = new FakeTun({ names: [...tunDeviceNames('fake0')] });
  const daemon = new Daemon(config, log, { persist: false, openTun: () => tun, onFatal: () => undefined });
  daemon.startPacketLoop(tun);
  return { daemon, tun };
}

const packet = (sport: number): Uint8Array =>
  concat(vnetHeader(), udpPacket('10.77.0.11', '198.18.0.11', { sport, dport: 7000, payload: new Uint8Array(16) }));

describe('daemon observers', () => {
  it('an observer gets the events after the batch was written, not inside it', async () => {
    const { daemon, tun } = rig();
    const seen: Array<{ kind: number; table: number; written: number }> = [];
    daemon.addObserver({ event: (kind, table) => seen.push({ kind, table, written: tun.written.length }), lost: () => undefined });
    tun.inject(packet(40000));
    tun.inject(packet(40001));
    assert.equal(tun.deliver().length, 2);
    assert.deepEqual(seen, [], 'nothing observed inside the batch');
    await tick();
    assert.deepEqual(seen, [
      { kind: EV_NEW, table: TABLE_SESSIONS, written: 2 },
      { kind: EV_NEW, table: TABLE_SESSIONS, written: 2 },
    ]);
  });

  it('finds a new entry by id at once and deletes it by id; its DESTROY reaches the observer', async () => {
    const { daemon, tun } = rig();
    const destroyed: number[] = [];
    daemon.addObserver({ event: (kind, _t, _i, serial) => { if (kind === EV_DESTROY) destroyed.push(serial); }, lost: () => undefined });
    tun.inject(packet(40002));
    tun.deliver();
    const t = daemon.table;
    let id = 0;
    t.forEachSession((s) => { id = t.sSerial[s]; });
    // Before the feed's turn: the lookup delivers what is queued first.
    const row = daemon.connById(id);
    assert.equal(row?.lan.port, 40002);
    assert.equal(daemon.connById(id + 1000), null);
    assert.equal(daemon.deleteConns(new Set([id, id + 1000])), 1);
    assert.equal(t.sessionCount, 0);
    assert.equal(daemon.connById(id), null);
    await tick();
    assert.deepEqual(destroyed, [id]);
  });
});

describe('daemon VPN counters', () => {
  it('stats show the PPTP counters; the VPN events metric gets the IPsec events and the PPTP event counters', () => {
    const { daemon } = rig();
    const stats = daemon.stats() as { pptp: { events: Record<string, number> } };
    for (const name of ['calls-created', 'calls-refused', 'gre-out', 'gre-in', 'malformed', 'lost-call']) assert.equal(stats.pptp.events[name], 0, name);
    const events = daemon.vpnEvents();
    for (const name of ['ipsec-esp-established', 'ipsec-ah-refused', 'pptp-calls-created', 'pptp-malformed', 'pptp-gre-not-pptp']) assert.equal(events[name], 0, name);
    assert.equal(events['pptp-gre-out'], undefined, 'packet counts are not events');
  });
});
