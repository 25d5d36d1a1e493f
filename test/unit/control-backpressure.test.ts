/**
 * No control client can hold the daemon up: a watcher that never reads gets a
 * bounded buffer, then one "events lost: N" line and is disconnected while
 * a reading watcher gets every event; connections are capped with a clear
 * error and a log line; a silent connection is closed; listings, sorts and
 * deletions by filter yield to the event loop while they run.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControlServer, startControlServer } from '../../src/daemon/control';
import { slicedSort } from '../../src/daemon/slices';
import { BEHIND_GRACE_MS, WATCH_BUFFER_BYTES } from '../../src/daemon/watch-fanout';
import type { ConnRow } from '../../src/query/rows';
import { PROTO_UDP } from '../../src/wire/ipv4';
import { FakeDaemon } from './cli-fixture';

/** A raw client: sends one request, collects lines; `paused` never reads. */
function client(socket: string, req: Record<string, unknown>, paused = false) {
  const conn = net.createConnection(socket);
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  let closed = false;
  conn.setEncoding('utf8');
  conn.on('connect', () => conn.write(JSON.stringify(req) + '\n'));
  conn.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      buf = buf.slice(nl + 1);
    }
  });
  conn.on('error', () => undefined);
  conn.on('close', () => { closed = true; });
  if (paused) conn.pause();
  return { conn, lines, get closed() { return closed; } };
}

async function until(cond: () => boolean, what: string, ms = 10000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function extraRows(n: number): Array<ConnRow & Record<string, unknown>> {
  return Array.from({ length: n }, (_, i) => ({
    id: 100_000 + i, proto: 'udp', lan: { addr: '10.77.0.12', port: 1024 + (i % 60000) }, public: { addr: '198.18.0.2', port: 1024 + ((i * 7) % 60000) },
    remote: { addr: '198.18.0.11', port: 53 }, state: 'UNREPLIED', idleSeconds: i % 97, expiresInSeconds: 300, packets: { out: i % 13, in: 0 }, bytes: { out: i, in: 0 },
  }));
}

describe('control socket backpressure', () => {
  let dir: string;
  let d: FakeDaemon;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmq-backpressure-'));
    d = new FakeDaemon(dir);
    await d.start();
  });

  afterEach(async () => {
    await d.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a watcher that never reads is bounded, told "events lost: N" and disconnected; a reading one gets every event', async () => {
    const slow = client(d.socket, { cmd: 'watch' }, true);
    const fast = client(d.socket, { cmd: 'watch' });
    await until(() => fast.lines.some((l) => l.watching === true), 'the fast watcher to start');
    await until(() => d.watchers > 0, 'the hub to observe');
    // 4,000 NEW and 4,000 DESTROY events, in rounds as batches would make them.
    let events = 0;
    for (let round = 0; round < 40; round++) {
      const slots = Array.from({ length: 100 }, (_, i) => d.add(PROTO_UDP, '10.77.0.12', 20000 + i, '198.18.0.11', 53));
      d.drain();
      d.table.removeAll();
      d.drain();
      events += 2 * slots.length;
      await new Promise((r) => setImmediate(r));
    }
    await until(() => fast.lines.filter((l) => l.event !== undefined).length >= events, 'the fast watcher to get every event', 20000);
    assert.equal(fast.lines.filter((l) => l.event === 'LOST').length, 0, 'the reading watcher lost nothing');
    // The slow one was cut off (its server side held at most its buffer meanwhile).
    await until(() => d.commands.watching === 1, 'the slow watcher to be disconnected', BEHIND_GRACE_MS * 5);
    // What it gets when it finally reads: events, then exactly one LOST line.
    const late = client(d.socket, { cmd: 'status' });
    await until(() => late.lines.some((l) => l.end === true), 'status');
    late.conn.destroy();
    assert.equal(d.commands.watching, 1, 'only the reading watcher is left');
    slow.conn.destroy();
    fast.conn.destroy();
    await until(() => d.watchers === 0, 'the hub to stop observing');
  });

  it('the events-lost line is the last one a slow reader sees, with the count', async () => {
    const slow = client(d.socket, { cmd: 'watch' }, true);
    await until(() => d.watchers > 0, 'the watch to start');
    for (let round = 0; round < 30; round++) {
      for (let i = 0; i < 100; i++) d.add(PROTO_UDP, '10.77.0.13', 30000 + i, '198.18.0.11', 53);
      d.drain();
      d.table.removeAll();
      d.drain();
      await new Promise((r) => setImmediate(r));
    }
    // Read long after the server gave up on it: the line waits for the reader.
    await new Promise((r) => setTimeout(r, BEHIND_GRACE_MS * 3));
    slow.conn.resume();
    await until(() => slow.closed, 'the end of the stream', 10000);
    const last = slow.lines.at(-1) as Record<string, unknown>;
    assert.equal(last.event, 'LOST');
    assert.match(String(last.error), /^events lost: \d+ \(the watcher fell behind; watch again for a consistent picture\)$/);
    const got = slow.lines.filter((l) => l.event === 'NEW' || l.event === 'DESTROY').length;
    assert.ok(Number(last.lost) > 0 && got + Number(last.lost) <= 6000, `${got} delivered + ${String(last.lost)} lost`);
    const bytes = slow.lines.reduce((n, l) => n + JSON.stringify(l).length + 1, 0);
    assert.ok(bytes < 4 * 1024 * 1024, `the slow watcher was sent ${bytes} bytes in all`);
    assert.ok(WATCH_BUFFER_BYTES <= 64 * 1024);
  });

  it('connections are capped: the next one gets a clear error, the refusal is logged; a silent one is closed', async () => {
    await d.stop();
    const logged: string[] = [];
    const server: ControlServer = await startControlServer(path.join(dir, 'capped.sock'), null, (req) => d.commands.handle(req), {
      maxConnections: 3, requestTimeoutMs: 300, log: { event: (kind, msg) => logged.push(`${kind}: ${msg}`) },
    });
    try {
      const held = [0, 1, 2].map(() => client(path.join(dir, 'capped.sock'), { cmd: 'watch' }));
      await until(() => held.every((h) => h.lines.some((l) => l.watching === true)), 'three watchers');
      const fourth = client(path.join(dir, 'capped.sock'), { cmd: 'status' });
      await until(() => fourth.closed, 'the refusal');
      assert.deepEqual(fourth.lines, [{ ok: false, error: 'too many control connections (3 open); try again later' }]);
      assert.deepEqual(logged, ['control-refused: control connection refused: too many open']);
      held[0].conn.destroy();
      await until(() => held[0].closed, 'a slot to free');
      await new Promise((r) => setTimeout(r, 50));
      const silent = net.createConnection(path.join(dir, 'capped.sock'));
      let said = '';
      silent.setEncoding('utf8');
      silent.on('data', (x: string) => { said += x; });
      await new Promise<void>((resolve) => silent.once('close', () => resolve()));
      assert.equal(said, `${JSON.stringify({ ok: false, error: 'no request within 300 ms' })}\n`);
      for (const h of held) h.conn.destroy();
    } finally {
      await server.close();
      await d.start();
    }
  });

  it('a listing of a large table, sorted or not, and a deletion by filter yield to the event loop while they run', async () => {
    d.extra.push(...extraRows(60_000));
    for (const req of [{ cmd: 'conns' }, { cmd: 'conns', sort: 'idle', reverse: true }, { cmd: 'conns-flush', filter: { proto: 'udp' } }]) {
      let turns = 0;
      let done = false;
      const tick = (): void => { if (!done) { turns++; setImmediate(tick); } };
      setImmediate(tick);
      const c = client(d.socket, req);
      await until(() => c.closed || c.lines.some((l) => l.end === true || l.ok === false), `${req.cmd} to finish`, 60000);
      done = true;
      assert.ok(turns > 20, `${JSON.stringify(req)}: the event loop turned only ${turns} times`);
      if (req.cmd === 'conns') {
        const rows = c.lines.filter((l) => l.id !== undefined);
        assert.equal(rows.length, 60_000);
        if (req.sort) {
          for (let i = 1; i < rows.length; i++) assert.ok((rows[i - 1].idleSeconds as number) >= (rows[i].idleSeconds as number), 'sorted');
        }
      } else {
        assert.equal(c.lines.at(-1)?.deleted, 60_000);
      }
      c.conn.destroy();
    }
  });
});

describe('slicedSort', () => {
  it('sorts like Array.sort, stably, in slices', async () => {
    for (const n of [0, 1, 255, 256, 257, 1000, 5000]) {
      const items = Array.from({ length: n }, (_, i) => ({ k: (i * 7919) % 97, i }));
      const want = items.slice().sort((a, b) => a.k - b.k);
      assert.deepEqual(await slicedSort(items, (a, b) => a.k - b.k), want);
    }
  });
});
