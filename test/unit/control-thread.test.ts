/**
 * The control socket's connections live on a thread of their own
 * (control-io.ts): a burst of clients is accepted and read there, and the
 * packet thread gets their requests in messages it works through in slices.
 * When that thread cannot start, or dies, the socket is served on the packet
 * thread by the same code, with a log line, and clients are still answered.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { controlRequest, ControlServer, startControlServer } from '../../src/daemon/control';
import { tempDir } from './cli-fixture';

const BURST = 300;

/** Connects `n` clients at once from another process, each asking `status`; resolves with how many were answered. */
function burst(socket: string, n: number): Promise<number> {
  const script = [
    "const net = require('node:net');",
    `let left = ${n}, answered = 0;`,
    `for (let i = 0; i < ${n}; i++) {`,
    '  const c = net.createConnection(process.argv[1]);',
    "  let buf = '';",
    "  c.on('connect', () => c.write('{\"cmd\":\"status\"}\\n'));",
    "  c.on('data', (d) => { buf += d; if (buf.includes('\"end\":true')) { answered++; c.end(); } });",
    "  c.on('error', () => undefined);",
    "  c.on('close', () => { if (--left === 0) { console.log(answered); } });",
    '}',
    'setTimeout(() => process.exit(2), 20000).unref();',
  ].join('\n');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script, socket]);
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`burst client exited with ${code}`))));
  });
}

/** A server whose every answer is `{answer: cmd}`; the log lines it wrote. */
async function server(socket: string, script?: string): Promise<{ server: ControlServer; logged: string[] }> {
  const logged: string[] = [];
  const s = await startControlServer(socket, null, (req) => ({ result: { answer: req.cmd } }), {
    script, log: { event: (kind, msg) => logged.push(`${kind}: ${msg}`) },
  });
  return { server: s, logged };
}

describe('the control connections thread', () => {
  it(`accepts and reads a burst of ${BURST} clients off the packet thread, whose event loop keeps turning meanwhile`, async () => {
    const dir = tempDir('io-thread');
    const { server: s, logged } = await server(path.join(dir, 'c.sock'));
    let turns = 0;
    let counting = true;
    const tick = (): void => { if (counting) { turns++; setImmediate(tick); } };
    try {
      assert.equal(s.thread, true);
      setImmediate(tick);
      assert.equal(await burst(s.path, BURST), BURST, 'every client was answered');
      counting = false;
      // The requests came in reports of at most 256, worked through in slices: the loop turned between them.
      assert.ok(turns > 10, `the event loop turned ${turns} times during the burst`);
      assert.deepEqual(logged, []);
    } finally {
      counting = false;
      await s.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a thread that cannot start: the socket is served on the packet thread, and that is logged', async () => {
    const dir = tempDir('io-nostart');
    const bad = path.join(dir, 'bad-worker.js');
    fs.writeFileSync(bad, "throw new Error('no thread today');\n");
    const { server: s, logged } = await server(path.join(dir, 'c.sock'), bad);
    try {
      assert.equal(s.thread, false);
      assert.equal(logged.length, 1);
      assert.match(logged[0], /^control-thread: the control connections' thread did not start \(no thread today\): they are served on the packet thread$/);
      assert.deepEqual(await controlRequest(s.path, { cmd: 'status' }), { ok: true, end: true, answer: 'status' });
    } finally {
      await s.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a thread that dies: its connections close, the socket is served on the packet thread from then on', async () => {
    const dir = tempDir('io-dies');
    const dying = path.join(dir, 'dying-worker.js');
    const real = path.join(__dirname, '../../src/daemon/control-io.js');
    fs.writeFileSync(dying, [
      "const { parentPort } = require('node:worker_threads');",
      `require(${JSON.stringify(real)}).serveControlIo(parentPort);`,
      "parentPort.on('message', (ops) => { if (ops.some((o) => o.op === 'write' && String(o.data).includes('die'))) process.exit(3); });",
    ].join('\n'));
    const { server: s, logged } = await server(path.join(dir, 'c.sock'), dying);
    try {
      assert.equal(s.thread, true);
      const held = net.createConnection(s.path);
      held.on('error', () => undefined);
      const heldClosed = new Promise<void>((resolve) => held.once('close', () => resolve()));
      await new Promise<void>((resolve) => held.once('connect', () => resolve()));
      // The thread writes this answer, then exits.
      await controlRequest(s.path, { cmd: 'die' }, undefined, 5000).catch(() => undefined);
      await heldClosed;
      for (const until = Date.now() + 5000; logged.length === 0 && Date.now() < until;) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(logged, ["control-thread: the control connections' thread failed (it exited with 3): they are served on the packet thread"]);
      assert.equal(s.thread, false);
      assert.deepEqual(await controlRequest(s.path, { cmd: 'status' }), { ok: true, end: true, answer: 'status' });
    } finally {
      await s.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
