/**
 * The real `vpnmasq` binary against the real control commands and socket,
 * over a real session table (no TUN): every conns command and filter, the
 * --json schema, exit codes, daemon-down and database reads.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../../src/wire/ipv4';
import { TCP_SYN_IN, TCP_SYN_OUT } from '../../src/nat/tcp-tracker';
import { FakeDaemon, generateStateDb, inBatches, jsonLines, PUBLIC, runCli, schemaErrors, tempDir, writeConfig, CLI } from './cli-fixture';
import { ipv4ToInt32 } from '../../src/core/ipv4-addr';

describe('vpnmasq conns against a control socket', () => {
  let d: FakeDaemon;
  const cli = (...args: string[]) => runCli(['-c', d.configPath, ...args]);
  const ids = async (...args: string[]) => {
    const r = await cli('conns', 'list', '--json', ...args);
    assert.equal(r.code, 0, r.stderr);
    const rows = jsonLines(r.stdout);
    for (const row of rows) assert.deepEqual(schemaErrors(row, 'conn'), [], JSON.stringify(row));
    return rows.map((x) => x.id as number);
  };
  let tcp: number; let udpA: number; let udpB: number; let icmp: number;

  before(async () => {
    d = new FakeDaemon(tempDir('cli'));
    const t = d.table;
    tcp = t.sSerial[d.add(PROTO_TCP, '10.77.0.11', 40000, '198.18.0.11', 443, TCP_SYN_OUT | TCP_SYN_IN, 7_440_000)];
    const su = d.add(PROTO_UDP, '10.77.0.11', 40001, '198.18.0.11', 53);
    t.setCounters(su, 5, 4, 500_000, 400);
    udpA = t.sSerial[su];
    udpB = t.sSerial[d.add(PROTO_UDP, '10.77.0.12', 40001, '198.18.0.12', 7000)];
    icmp = t.sSerial[d.add(PROTO_ICMP, '10.77.0.12', 77, '198.18.0.11', 77, 0, 60_000)];
    // Stand-ins for the rows of the IPsec and PPTP modules (src/helpers/ipsec/ipsec.ts rows(), src/helpers/pptp/calls.ts greConnRow).
    const vpnRow = { lan: { addr: '10.77.0.13', port: 0 }, public: { addr: PUBLIC, port: 0 }, remote: { addr: '198.18.0.20', port: 0 }, idleSeconds: 1 };
    d.extra.push({
      ...vpnRow, id: 9000, proto: 'esp', state: 'ESTABLISHED', expiresInSeconds: 1799,
      packets: { out: 1, in: 1 }, bytes: { out: 100, in: 100 }, vpn: { spiOut: '0xc0ffee01', spiIn: '0x0badf00d', state: 'established' },
    }, {
      ...vpnRow, id: 9001, proto: 'isakmp', lan: { addr: '10.77.0.13', port: 500 }, public: { addr: PUBLIC, port: 500 },
      remote: { addr: '198.18.0.20', port: 500 }, state: 'REPLIED', expiresInSeconds: 1799,
      packets: { out: 4, in: 4 }, bytes: { out: 0, in: 0 }, vpn: { icookie: '0011223344556677', rcookie: null },
    }, {
      ...vpnRow, id: 9002, proto: 'gre', state: 'CONFIRMED', expiresInSeconds: -1,
      packets: { out: 2, in: 2 }, bytes: { out: 0, in: 0 }, vpn: { role: 'pns', callIdLan: 4660, callIdPub: 4700, callIdRemote: 77 },
    });
    d.drain();
    await d.start();
  });

  after(async () => {
    await d.stop();
    fs.rmSync(d.dir, { recursive: true, force: true });
  });

  it('lists a table with every column, the summary on stderr, no colour off a terminal', async () => {
    const r = await cli('conns', 'list');
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0], /^ID +PROTO +LAN +PUBLIC +REMOTE +VPN +STATE +IDLE +EXPIRES +PKTS OUT\/IN +BYTES OUT\/IN$/);
    assert.equal(lines.length, 8);
    const udp = lines.find((l) => l.includes('10.77.0.11:40001'))!;
    assert.match(udp, /udp +10\.77\.0\.11:40001 +198\.18\.0\.2:40001 +198\.18\.0\.11:53 +- +REPLIED +0s +5m +5\/4 +488K\/400/);
    assert.match(lines.find((l) => l.includes(' esp '))!, /spiOut=0xc0ffee01 spiIn=0x0badf00d state=established/);
    assert.match(lines.find((l) => l.includes(' isakmp '))!, /10\.77\.0\.13:500 +198\.18\.0\.2:500 +198\.18\.0\.20:500 +icookie=0011223344556677 rcookie=pending +REPLIED/);
    assert.match(lines.find((l) => l.includes(' gre '))!, /role=pns callIdLan=4660 callIdPub=4700 callIdRemote=77 +CONFIRMED +1s +- /);
    const cols = lines.map((l) => l.indexOf('PROTO') >= 0 ? l.indexOf('PROTO') : l.search(/ (tcp|udp|icmp|esp|isakmp|gre) /) + 1);
    assert.equal(new Set(cols).size, 1, 'PROTO column aligned');
    assert.equal(r.stderr, '7 connections listed.\n');
    assert.doesNotMatch(r.stdout, /\x1b\[/);
    const bare = await cli('conns', 'list', '--no-legend');
    assert.equal(bare.stdout.trimEnd().split('\n').length, 7);
    assert.equal(bare.stderr, '');
  });

  it('filters by every conntrack-style and VPN key', async () => {
    const pub = d.table.pubPortOf(d.table.findOut(PROTO_UDP, ipv4ToInt32('10.77.0.12'), 40001, ipv4ToInt32('198.18.0.12'), 7000));
    assert.notEqual(pub, 40001, 'second LAN host got another public port');
    const cases: Array<[string[], number[]]> = [
      [['-p', 'udp'], [udpA, udpB]],
      [['-p', '6'], [tcp]],
      [['--proto', 'icmp'], [icmp]],
      [['-s', '10.77.0.12'], [udpB, icmp]],
      [['-s', '10.77.0.11:40001'], [udpA]],
      [['-d', '198.18.0.12'], [udpB]],
      [['--sport', '40001'], [udpA, udpB]],
      [['--dport', '443'], [tcp]],
      [['--state', 'established'], [tcp, 9000]],
      [['--state', 'UNREPLIED', '-p', 'udp'], [udpB]],
      [['--lan-host', '10.77.0.0/31'], []],
      [['--lan-host', '10.77.0.10/31'], [tcp, udpA]],
      [['--remote', '198.18.0.11:53'], [udpA]],
      [['--public-port', String(pub)], [udpB]],
      [['--spi', 'c0ffee01'], [9000]],
      [['--spi', '0x0BADF00D'], [9000]],
      [['--spi', '0x1'], []],
      [['--cookie', '0x0011223344556677'], [9001]],
      [['--call-id', '4660'], [9002]],
      [['--call-id', '0x1234'], [9002]],
      [['--call-id', '77'], [9002]],
      [['-p', 'isakmp', '--sport', '500'], [9001]],
    ];
    const got = await inBatches(cases, ([args]) => ids(...args));
    cases.forEach(([args, want], i) => assert.deepEqual(got[i], want, args.join(' ')));
  });

  it('sorts and limits on the daemon side', async () => {
    assert.deepEqual(await ids('--sort', 'bytes', '-r', '-n', '2'), [udpA, 9000]);
    assert.deepEqual(await ids('--sort', 'remote', '-p', 'udp'), [udpA, udpB]);
    assert.deepEqual(await ids('-n', '1'), [tcp]);
    assert.deepEqual(await ids('-n', '0'), []);
  });

  it('usage errors exit 2 with a message on stderr', async () => {
    const cases = [['conns', 'list', '-p', 'sctp'], ['conns', 'list', '--bogus'], ['conns', 'list', '-s', '10.1'], ['conns', 'list', '--sort', 'colour'],
      ['conns', 'list', '-n', 'x'], ['conns', 'delete'], ['conns', 'show', 'abc'], ['nosuch'], ['conns', 'list', '--spi', 'xyz']];
    const results = await inBatches(cases, (args) => cli(...args));
    results.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i].join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '');
      assert.ok(r.stderr.length > 0);
    });
  });

  it('shows one connection; a missing one is a failure (1)', async () => {
    const r = await cli('conns', 'show', String(udpA), '--json');
    assert.equal(r.code, 0, r.stderr);
    const c = JSON.parse(r.stdout);
    assert.deepEqual(schemaErrors(c, 'conn'), []);
    assert.deepEqual([c.lan, c.remote, c.packets], [{ addr: '10.77.0.11', port: 40001 }, { addr: '198.18.0.11', port: 53 }, { out: 5, in: 4 }]);
    const h = await cli('conns', 'show', String(udpA));
    assert.match(h.stdout, /^lan\.addr +10\.77\.0\.11$/m);
    const miss = await cli('conns', 'show', '777');
    assert.equal(miss.code, 1);
    assert.match(miss.stderr, /no connection with id 777/);
  });

  it('status, stats and forwards list validate against the schema', async () => {
    for (const [cmd, def] of [['status', 'status'], ['stats', 'stats']]) {
      const r = await cli(cmd, '--json');
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(schemaErrors(JSON.parse(r.stdout), def), []);
    }
    const st = await cli('status');
    assert.match(st.stdout, /^vpnmasq is running \(pid \d+, up 62m5s\)$/m);
    assert.match(st.stdout, /^Database +none \(not persisted\)$/m);
    assert.match(st.stdout, /^Table +4 of 1024 sessions \(0\.4%\)$/m);
    const stats = await cli('stats');
    assert.match(stats.stdout, /^drops\.filtered +3$/m);
    assert.doesNotMatch(stats.stdout, /no-mapping/, 'zero drop counters left out');
    const fw = await cli('forwards', 'list', '--json');
    const rows = jsonLines(fw.stdout);
    for (const f of rows) assert.deepEqual(schemaErrors(f, 'forward'), []);
    assert.deepEqual(rows.map((f) => [f.proto, f.publicPort, f.lanAddress]), [['tcp', 8443, '10.77.0.13'], ['gre', undefined, '10.77.0.14']]);
  });

  it('forwards add|remove change the running forwards, checked like the config file', async () => {
    const add = await cli('forwards', 'add', 'udp', '10.77.0.13', '5000', '5001');
    assert.equal(add.code, 0, add.stderr);
    assert.equal(add.stderr, 'forward added.\n');
    assert.equal(d.forwards.portForward(PROTO_UDP, 5000), ipv4ToInt32('10.77.0.13'), 'in effect on the packet path');
    assert.equal(d.forwards.portForwardLanPort(PROTO_UDP, 5000), 5001);
    const rows = jsonLines((await cli('forwards', 'list', '--json')).stdout);
    for (const f of rows) assert.deepEqual(schemaErrors(f, 'forward'), []);
    assert.deepEqual(rows.at(-1), { proto: 'udp', publicPort: 5000, lanAddress: '10.77.0.13', lanPort: 5001, source: 'runtime' });
    const taken = await cli('forwards', 'add', 'tcp', '10.77.0.12', '8443');
    assert.equal(taken.code, 1);
    assert.equal(taken.stderr, 'vpnmasq: forwards add: forward.publicPort: tcp port 8443 is already forwarded by forwards[0]\n');
    const outside = await cli('forwards', 'add', 'esp', '192.168.9.9');
    assert.equal(outside.code, 1);
    assert.match(outside.stderr, /forward\.lanAddress: 192\.168\.9\.9 is not inside a LAN prefix \(10\.77\.0\.0\/24\)/);
    const cfg = await cli('forwards', 'remove', 'tcp', '8443');
    assert.equal(cfg.code, 1);
    assert.match(cfg.stderr, /the tcp port 8443 forward comes from the config file/);
    const rm = await cli('forwards', 'remove', 'udp', '5000');
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal(d.forwards.portForward(PROTO_UDP, 5000), -1, 'gone from the packet path');
    assert.equal((await cli('forwards', 'remove', 'udp', '5000')).code, 1, 'already gone');
    assert.equal(jsonLines((await cli('forwards', 'list', '--json')).stdout).length, 2);
  });

  it('watch reports a new flow and an expired one, and filters', async () => {
    const child = spawn(process.execPath, [CLI, '-c', d.configPath, 'conns', 'watch', '--json', '-p', 'udp']);
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const until = async (cond: () => boolean, what: string) => {
      const deadline = Date.now() + 10000;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${out} ${err}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    try {
      await until(() => err.includes('watching'), 'watch to start');
      d.add(PROTO_TCP, '10.77.0.11', 45000, '198.18.0.11', 80); // filtered out (-p udp)
      const s = d.add(PROTO_UDP, '10.77.0.11', 45001, '198.18.0.11', 123, 0, 30_000);
      const serial = d.table.sSerial[s];
      d.drain();
      await until(() => out.includes('"NEW"'), 'NEW');
      d.now += 31_000; // past its timeout: the sweep expires it
      d.table.sweep(d.now, d.table.capacity);
      d.drain();
      await until(() => out.includes('"DESTROY"'), 'DESTROY');
      const evs = jsonLines(out);
      for (const e of evs) assert.deepEqual(schemaErrors(e, 'event'), [], JSON.stringify(e));
      assert.deepEqual(evs.filter((e) => e.conn.id === serial).map((e) => e.event), ['NEW', 'DESTROY']);
      assert.equal(evs.find((e) => e.event === 'NEW')?.conn.lan.port, 45001);
      assert.ok(evs.every((e) => e.conn.proto === undefined || e.conn.proto === 'udp'), 'tcp filtered out');
      assert.ok(d.table.sessionCount < 1024);
    } finally {
      child.kill('SIGINT');
      await new Promise((r) => child.once('close', r));
    }
    await until(() => d.watchers === 0, 'the watch listener to go');
  });

  it('delete by id stops the translation; delete by filter and flush remove what matches', async () => {
    const t = d.table;
    const s = t.findOut(PROTO_UDP, ipv4ToInt32('10.77.0.11'), 40001, ipv4ToInt32('198.18.0.11'), 53);
    const pub = t.pubPortOf(s);
    const r = await cli('conns', 'delete', String(udpA), '--json');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { deleted: 1 });
    assert.equal(r.stderr, '1 connection deleted.\n');
    assert.equal(t.findOut(PROTO_UDP, ipv4ToInt32('10.77.0.11'), 40001, ipv4ToInt32('198.18.0.11'), 53), -1, 'outbound lookup gone');
    assert.equal(t.portInUse(PROTO_UDP, 0, pub), false, 'public port no longer maps inbound packets');
    assert.equal((await cli('conns', 'delete', String(udpA))).code, 1, 'already gone');
    const f = await cli('conns', 'delete', '-s', '10.77.0.12', '-p', 'icmp');
    assert.equal(f.stderr, '1 connection deleted.\n');
    assert.deepEqual((await ids('-p', 'icmp')), []);
    const flush = await cli('conns', 'flush', '--state', 'ESTABLISHED', '-p', 'tcp', '--yes');
    assert.equal(flush.stderr, '1 connection deleted.\n');
    assert.equal(flush.code, 0, flush.stderr);
    assert.deepEqual(await ids('--state', 'established'), [9000]);
    // VPN rows are deleted like the others: ids are one space across tables.
    const vpn = await cli('conns', 'delete', '9000');
    assert.equal(vpn.code, 0, vpn.stderr);
    assert.deepEqual(await ids('-p', 'esp'), []);
    assert.deepEqual(await ids('-p', 'udp'), [udpB]);
  });
});

describe('vpnmasq conns watch when the daemon stops', () => {
  it('ends instead of holding the daemon up', async () => {
    const d = new FakeDaemon(tempDir('cli-watch-stop'));
    await d.start();
    const child = spawn(process.execPath, [CLI, '-c', d.configPath, 'conns', 'watch']);
    let err = '';
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const closed = new Promise<number | null>((r) => child.once('close', r));
    try {
      const deadline = Date.now() + 10000;
      while (!err.includes('watching') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.match(err, /watching/);
      await d.stop(); // resolves only once every connection is gone
      assert.equal(await closed, 1);
      assert.match(err, /closed the connection/);
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(d.dir, { recursive: true, force: true });
    }
  });
});

describe('vpnmasq conns flush on a terminal', () => {
  it('asks for confirmation and keeps the table on "n"; --yes does not ask', async () => {
    const d = new FakeDaemon(tempDir('cli-tty'));
    d.add(PROTO_UDP, '10.77.0.11', 5000, '198.18.0.11', 53);
    await d.start();
    try {
      // script(1) gives the CLI a pseudo-terminal as stdin.
      const onTty = (answer: string, args = '') => new Promise<string>((resolve, reject) => {
        const child = spawn('script', ['-qec', `${process.execPath} ${CLI} -c ${d.configPath} conns flush ${args}; echo rc=$?`, '/dev/null']);
        let out = '';
        child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
        const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`no answer: ${out}`)); }, 20000);
        child.on('close', () => { clearTimeout(timer); resolve(out); });
        child.stdin.end(answer);
      });
      const no = await onTty('n\n');
      assert.match(no, /Delete ALL connections\? \[y\/N\]/);
      assert.match(no, /vpnmasq: aborted/);
      assert.match(no, /rc=1/);
      assert.equal(d.table.sessionCount, 1);
      const yes = await onTty('', '--yes');
      assert.doesNotMatch(yes, /\[y\/N\]/);
      assert.match(yes, /1 connection deleted\./);
      assert.equal(d.table.sessionCount, 0);
    } finally {
      await d.stop();
      fs.rmSync(d.dir, { recursive: true, force: true });
    }
  });
});

describe('vpnmasq with the daemon down', () => {
  it('status says so and exits 1; conns list reads the database read-only', async () => {
    const dir = tempDir('cli-down');
    try {
      const cfg = writeConfig(dir, path.join(dir, 'none.sock'));
      const st = await runCli(['-c', cfg, 'status']);
      assert.equal(st.code, 1);
      assert.match(st.stdout, /^vpnmasq is not running\nSafety net +(none|in place|unknown)/);
      const sj = await runCli(['-c', cfg, 'status', '--json']);
      const down = JSON.parse(sj.stdout);
      assert.equal(down.running, false);
      assert.equal(typeof down.safetyNet, 'object', 'what the kernel holds of the safety net');
      assert.deepEqual(schemaErrors(JSON.parse(sj.stdout), 'status'), []);
      const noDb = await runCli(['-c', cfg, 'conns', 'list']);
      assert.equal(noDb.code, 1);
      assert.match(noDb.stderr, /vpnmasq is not running .*reading .*state\.db read-only\n.*cannot read the state database/s);
      generateStateDb(path.join(dir, 'state.db'), 50);
      const r = await runCli(['-c', cfg, 'conns', 'list', '--json', '--sport', '1030']);
      assert.equal(r.code, 0, r.stderr);
      const rows = jsonLines(r.stdout);
      assert.deepEqual(rows.map((x) => x.id), [6]);
      assert.deepEqual(schemaErrors(rows[0], 'conn'), []);
      assert.match(r.stderr, /vpnmasq is not running/);
      assert.match(r.stderr, /1 connection listed\./);
      const show = await runCli(['-c', cfg, 'conns', 'show', '7', '--json']);
      assert.equal(JSON.parse(show.stdout).lan.port, 1031);
      const del = await runCli(['-c', cfg, 'conns', 'delete', '7']);
      assert.equal(del.code, 1);
      assert.match(del.stderr, /not running/);
      const stats = await runCli(['-c', cfg, 'stats']);
      assert.equal(stats.code, 1);
      assert.match(stats.stderr, /vpnmasq: vpnmasq is not running/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('config check validates a file without touching the system', async () => {
    const dir = tempDir('cli-cfg');
    try {
      const good = writeConfig(dir, path.join(dir, 'c.sock'));
      const ok = await runCli(['config', 'check', good]);
      assert.equal(ok.code, 0, ok.stderr);
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, JSON.stringify({ wan: { mode: 'dedicated' }, timeouts: { udp: 5 } }));
      const r = await runCli(['config', 'check', bad]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /wan\.interface/);
      assert.match(r.stderr, /timeouts\.udp/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
