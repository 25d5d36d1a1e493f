/**
 * `vpnmasq conns list` streams a million rows, from the state database (daemon
 * down) and from the control socket: the first rows are printed before the
 * source has been read whole, and the CLI's peak memory (VmHWM, read from
 * /proc while it runs) stays bounded, far below the size of its output.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { startControlServer } from '../../src/daemon/control';
import { CLI, generateStateDb, PUBLIC, tempDir, writeConfig } from './cli-fixture';

const ROWS = 1_000_000;
/** Peak RSS allowed for the CLI; node itself takes ~45 MB, a million rows held would take >500 MB. */
const MAX_RSS_MB = 160;
/** The CLI runs with this V8 old-space limit: holding the table would end in an out-of-memory crash. */
const HEAP_LIMIT_MB = 48;

interface Measured { lines: number; bytes: number; firstAt: number; endAt: number; peakRssMb: number; code: number | null; stderr: string }

function vmHwmMb(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0; // exited between polls
  }
}

function measure(args: string[]): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [`--max-old-space-size=${HEAP_LIMIT_MB}`, CLI, ...args], { env: { ...process.env, NO_COLOR: '1' } });
    const m: Measured = { lines: 0, bytes: 0, firstAt: -1, endAt: -1, peakRssMb: 0, code: null, stderr: '' };
    const poll = setInterval(() => { m.peakRssMb = Math.max(m.peakRssMb, vmHwmMb(child.pid as number)); }, 25);
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('timed out')); }, 240_000);
    child.stdout.on('data', (b: Buffer) => {
      if (m.firstAt < 0) m.firstAt = Date.now() - t0;
      m.bytes += b.length;
      for (let i = 0; i < b.length; i++) if (b[i] === 10) m.lines++;
    });
    child.stderr.on('data', (b: Buffer) => { m.stderr += b.toString(); });
    child.on('close', (code) => {
      clearInterval(poll);
      clearTimeout(timer);
      m.code = code;
      m.endAt = Date.now() - t0;
      resolve(m);
    });
  });
}

function report(t: { diagnostic(message: string): void }, name: string, m: Measured): void {
  t.diagnostic(`${name}: ${m.lines} lines, ${(m.bytes / 1e6).toFixed(0)} MB out, first output after ${m.firstAt} ms of ${m.endAt} ms, peak RSS ${m.peakRssMb.toFixed(0)} MB`);
}

describe('streaming a million connections', { timeout: 600_000 }, () => {
  it('from the state database (daemon down), as JSON lines', async (t) => {
    const dir = tempDir('cli-1m-db');
    try {
      generateStateDb(path.join(dir, 'state.db'), ROWS);
      const cfg = writeConfig(dir, path.join(dir, 'absent.sock'));
      const m = await measure(['-c', cfg, 'conns', 'list', '--json']);
      report(t, '1M rows from the database, JSON', m);
      assert.equal(m.code, 0, m.stderr);
      assert.equal(m.lines, ROWS, 'every row');
      assert.match(m.stderr, /vpnmasq is not running.*read-only/);
      assert.match(m.stderr, /1000000 connections listed\./);
      assert.ok(m.firstAt < m.endAt / 4, `first rows (${m.firstAt} ms) long before the end (${m.endAt} ms)`);
      assert.ok(m.peakRssMb < MAX_RSS_MB, `peak RSS ${m.peakRssMb} MB`);
      assert.ok(m.bytes / 1e6 > m.peakRssMb, 'the output is larger than the memory used');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('from the control socket, as a table', async (t) => {
    const dir = tempDir('cli-1m-sock');
    const socket = path.join(dir, 'control.sock');
    let lastRowAt = -1;
    let t0 = 0;
    function* rows() {
      for (let i = 1; i <= ROWS; i++) {
        yield {
          id: i, proto: 'udp', lan: { addr: '10.77.0.11', port: 1024 + (i % 60000) }, public: { addr: PUBLIC, port: 1024 + (i % 60000) },
          remote: { addr: '198.18.0.11', port: 53 }, state: 'REPLIED', idleSeconds: 1, expiresInSeconds: 299,
          packets: { out: i, in: i }, bytes: { out: 100 * i, in: 90 * i },
        };
      }
      lastRowAt = Date.now() - t0;
    }
    const server = await startControlServer(socket, null, () => ({ rows: rows(), result: { count: ROWS } }));
    try {
      t0 = Date.now();
      const m = await measure(['-c', writeConfig(dir, socket), 'conns', 'list']);
      report(t, '1M rows from the control socket, table', m);
      assert.equal(m.code, 0, m.stderr);
      assert.equal(m.lines, ROWS + 1, 'header and every row');
      assert.match(m.stderr, /1000000 connections listed\./);
      assert.ok(lastRowAt > 0);
      assert.ok(m.firstAt < lastRowAt, `first row printed (${m.firstAt} ms) before the daemon sent the last (${lastRowAt} ms)`);
      assert.ok(m.peakRssMb < MAX_RSS_MB, `peak RSS ${m.peakRssMb} MB`);
    } finally {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
