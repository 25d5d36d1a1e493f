// `vpnmasq reload` and finding the daemon when the config file names another
// control socket than the one it listens on (the file edited after the
// daemon read it): status must never say "not running" while it runs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ChildProcess, spawn } from 'node:child_process';
import { controlRequest, startControlServer, WatchLink } from '../../src/daemon/control';
import { findDaemons, runConfigOf } from '../../src/cli/locate';
import { FakeDaemon, runCli, tempDir, writeConfig } from './cli-fixture';

/** Stands in for `vpnmasq run`: a process named vpnmasq.js that answers status on the socket given as its last argument. */
const FAKE_RUN = `
const net = require('node:net');
const sock = process.argv[process.argv.length - 1];
net.createServer((c) => {
  c.on('data', () => c.end(JSON.stringify({ ok: true, end: true, running: true, pid: process.pid, uptimeSeconds: 1, tun: null,
    mode: 'dedicated', publicAddress: '198.18.0.2', lanPrefixes: ['10.77.0.0/24'], sessions: 0, limit: 1024, state: null, control: sock }) + '\\n'));
}).listen(sock, () => process.stderr.write('ready\\n'));
`;

describe('vpnmasq reload', () => {
  let d: FakeDaemon;
  before(async () => {
    d = new FakeDaemon(tempDir('reload'));
    await d.start();
  });
  after(async () => {
    await d.stop();
    fs.rmSync(d.dir, { recursive: true, force: true });
  });

  it('exits 0 and names what was applied', async () => {
    d.reloadOutcome = { ok: true, applied: ['timeouts.udp', 'ports.range'], warnings: ['state.groupCommitMs: no longer used'] };
    const r = await runCli(['-c', d.configPath, 'reload']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, 'warning: state.groupCommitMs: no longer used\nconfig reloaded; applied: timeouts.udp, ports.range\n');
    d.reloadOutcome = { ok: true, applied: [], warnings: [] };
    assert.equal((await runCli(['-c', d.configPath, 'reload'])).stderr, 'config reloaded; nothing changed\n');
  });

  it('exits 1 with every line of the rejection when the daemon rejects the config', async () => {
    d.reloadOutcome = { ok: false, error: 'tun.name: needs a restart (the TUN device is created at start)\nstate.path: needs a restart (x)' };
    const r = await runCli(['-c', d.configPath, 'reload']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'vpnmasq: tun.name: needs a restart (the TUN device is created at start)\nvpnmasq: state.path: needs a restart (x)\n');
  });

  it('exits 1 when no daemon runs', async () => {
    const dir = tempDir('reload-down');
    try {
      const r = await runCli(['-c', writeConfig(dir, path.join(dir, 'none.sock')), 'reload']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /vpnmasq is not running/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('finding the daemon when the config file names another control socket', () => {
  let dir: string;
  let config: string;
  let fake: ChildProcess;
  let live: string;

  before(async () => {
    dir = tempDir('locate');
    live = path.join(dir, 'live.sock');
    config = writeConfig(dir, path.join(dir, 'edited.sock'));
    const script = path.join(dir, 'vpnmasq.js');
    fs.writeFileSync(script, FAKE_RUN);
    fake = spawn(process.execPath, [script, '-c', config, 'run', live]);
    await new Promise<void>((resolve, reject) => {
      fake.stderr?.on('data', (b: Buffer) => { if (b.toString().includes('ready')) resolve(); });
      fake.once('exit', () => reject(new Error('fake daemon exited')));
    });
  });
  after(() => {
    fake?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads the config file of a `vpnmasq run` command line', () => {
    assert.equal(runConfigOf(['node', '/opt/vpnmasq/dist/src/bin/vpnmasq.js', 'run']), '/etc/vpnmasq/vpnmasq.json');
    assert.equal(runConfigOf(['node', 'x/vpnmasq.js', '--config', '/a.json', 'run']), '/a.json');
    assert.equal(runConfigOf(['node', 'x/vpnmasq.js', '--config=/b.json', 'run']), '/b.json');
    assert.equal(runConfigOf(['node', 'x/vpnmasq.js', '-c', '/a.json', 'status']), null);
    assert.equal(runConfigOf(['node', 'other.js', 'run']), null);
  });

  it('finds the running daemon and the socket it listens on', () => {
    assert.deepEqual(findDaemons(config), [{ pid: fake.pid, socket: live }]);
    assert.deepEqual(findDaemons(path.join(dir, 'other.json')), []);
  });

  it('status asks the daemon on its live socket and says why the file disagrees', async () => {
    const r = await runCli(['-c', config, 'status', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).running, true);
    assert.match(r.stderr, new RegExp(`listens on ${live.replace(/[.]/g, '\\.')}, not on .*edited\\.sock named in`));
  });

  it('a config file that no longer parses still reaches the daemon, with the file\'s problem', async () => {
    const broken = path.join(dir, 'broken.json');
    fs.writeFileSync(broken, '{ oops');
    const script = path.join(dir, 'vpnmasq.js');
    const other = spawn(process.execPath, [script, '-c', broken, 'run', path.join(dir, 'b.sock')]);
    try {
      await new Promise<void>((resolve) => other.stderr?.on('data', (b: Buffer) => { if (b.toString().includes('ready')) resolve(); }));
      const r = await runCli(['-c', broken, 'status']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^vpnmasq is running/);
      assert.match(r.stderr, /syntax error at line 1/);
    } finally {
      other.kill('SIGKILL');
    }
  });
});

describe('the control server moves to a new socket', () => {
  it('binds the new path before removing the old one; open connections stay', async () => {
    const dir = tempDir('move');
    const a = path.join(dir, 'a.sock');
    const b = path.join(dir, 'b.sock');
    let link: WatchLink | null = null;
    const server = await startControlServer(a, null, (req) => ({ result: { answer: req.cmd } }), { watch: { watching: (_n, l) => { link = l; } } });
    try {
      const watcher = net.createConnection(a);
      const lines: string[] = [];
      watcher.on('data', (x) => lines.push(x.toString()));
      watcher.write('{"cmd":"watch"}\n');
      /** Waits (bounded: a loaded machine is slow, never this slow) until the watcher's stream shows `re`. */
      const seen = async (re: RegExp) => {
        for (const until = Date.now() + 5000; !re.test(lines.join('')) && Date.now() < until;) await new Promise((r) => setTimeout(r, 10));
      };
      await seen(/"watching":true/);
      await server.move(b, null);
      assert.equal(server.path, b);
      assert.equal(fs.existsSync(a), false);
      assert.equal((fs.statSync(b).mode & 0o777), 0o660);
      assert.deepEqual(await controlRequest(b, { cmd: 'status' }), { ok: true, end: true, answer: 'status' });
      assert.ok(link !== null, 'the watcher was counted');
      (link as WatchLink).round(['{"event":"NEW","conn":{"id":1}}\n']);
      await seen(/"event":"NEW"/);
      assert.match(lines.join(''), /"watching":true[\s\S]*"event":"NEW"/, 'the watcher on the old socket still gets events');
      watcher.destroy();
    } finally {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
