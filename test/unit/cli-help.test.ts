/** `vpnmasq help COMMAND` for every command, the generated bash completion, filters and the streaming table. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Command } from 'commander';
import { buildProgram } from '../../src/cli/main';
import { AnyConnRow, compileFilter, FilterError, queryRows } from '../../src/query/filters';
import { TableWriter, quantity, seconds } from '../../src/cli/format';
import { lookupGroup } from '../../src/daemon/control';
import { runCli, tempDir } from './cli-fixture';

function paths(cmd: Command, prefix: string[] = []): string[][] {
  return cmd.commands.flatMap((c) => [[...prefix, c.name()], ...paths(c, [...prefix, c.name()])]);
}

function row(id: number, lanPort: number, bytes: number): AnyConnRow {
  return {
    id, proto: 'udp', lan: { addr: '10.77.0.11', port: lanPort }, public: { addr: '198.18.0.2', port: lanPort },
    remote: { addr: '198.18.0.11', port: 53 }, state: 'REPLIED', idleSeconds: 0, expiresInSeconds: 300,
    packets: { out: 1, in: 1 }, bytes: { out: bytes, in: 0 },
  };
}

describe('vpnmasq help and completion', () => {
  it('"vpnmasq help COMMAND" prints the usage of every command and subcommand', async () => {
    const all = paths(buildProgram()).filter((p) => p[p.length - 1] !== 'help');
    assert.ok(all.length >= 14, all.map((p) => p.join(' ')).join(', '));
    const results = await Promise.all(all.map((p) => runCli(['help', ...p])));
    results.forEach((r, i) => {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^Usage: vpnmasq ${all[i].join(' ')}`), all[i].join(' '));
    });
    const list = results[all.findIndex((p) => p.join(' ') === 'conns list')].stdout;
    for (const opt of ['--proto', '--src', '--dst', '--sport', '--dport', '--state', '--lan-host', '--remote', '--public-port', '--spi', '--cookie', '--call-id', '--json', '--limit', '--sort']) {
      assert.ok(list.includes(opt), `conns list help mentions ${opt}`);
    }
    const top = await runCli(['--help']);
    assert.match(top.stdout, /Exit status: 0 success, 1 failure .*2 usage error/);
  });

  it('generates a bash completion that completes commands, options and protocols', () => {
    const dir = tempDir('cli-compl');
    try {
      const script = path.join(dir, 'vpnmasq.bash');
      fs.writeFileSync(script, execFileSync(process.execPath, [path.resolve(__dirname, '../../src/bin/vpnmasq.js'), 'completion', 'bash']).toString());
      const complete = (words: string[]) => execFileSync('bash', ['-c',
        `source ${script}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _vpnmasq; echo "\${COMPREPLY[*]}"`]).toString().trim();
      assert.equal(complete(['vpnmasq', 'co']), 'config conns completion');
      assert.equal(complete(['vpnmasq', 'conns', 'w']), 'watch');
      assert.equal(complete(['vpnmasq', '-c', 'x.json', 'conns', 'list', '--call']), '--call-id');
      assert.equal(complete(['vpnmasq', 'conns', 'list', '-p', '']), 'tcp udp icmp isakmp esp gre');
      assert.equal(complete(['vpnmasq', 'forwards', '']), 'list add remove');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('filters and the streaming table', () => {
  it('rejects bad filter values and unknown keys', () => {
    for (const f of [{ proto: 'sctp' }, { src: '10.0.0' }, { sport: '70000' }, { spi: '0xZZ' }, { callId: '70000' }, { colour: 'red' }]) {
      assert.throws(() => compileFilter(f as never), FilterError, JSON.stringify(f));
    }
  });

  it('streams without a sort, holds only the matches with one, stops at the limit', () => {
    let pulled = 0;
    function* source() { for (let i = 1; i <= 1000; i++) { pulled++; yield row(i, 1000 + i, i % 7); } }
    const first = queryRows(source(), { limit: 3 });
    assert.deepEqual([...first].map((r) => r.id), [1, 2, 3]);
    assert.equal(pulled, 3, 'the source was read only as far as needed');
    const top = [...queryRows(source(), { sort: 'bytes', reverse: true, limit: 2, filter: { sport: 1010 } })];
    assert.deepEqual(top.map((r) => r.id), [10]);
    assert.deepEqual([...queryRows(source(), { sort: 'bytes', reverse: true, limit: 3 })].map((r) => r.id), [6, 13, 20]);
  });

  it('sizes columns from the first rows, then prints each row as it comes', () => {
    const chunks: string[] = [];
    const t = new TableWriter(['A', 'B'], { write: (s) => { chunks.push(s); } }, { legend: true, colour: false });
    for (let i = 0; i < 300; i++) void t.add([String(i), 'x']);
    assert.equal(chunks.length, 1 + 44, 'the first 256 rows in one piece, then one write per row');
    void t.end();
    const lines = chunks.join('').trimEnd().split('\n');
    assert.equal(lines.length, 301);
    assert.equal(lines[0], 'A    B');
    assert.equal(lines[300], '299  x');
    assert.deepEqual([seconds(-1), seconds(59), seconds(300), seconds(7440), quantity(9999), quantity(500000), quantity(5e9)], ['-', '59s', '5m', '2h4m', '9999', '488K', '4.7G']);
  });
});

describe('control socket group', () => {
  it('resolves control.group from the group file', () => {
    const dir = tempDir('cli-group');
    try {
      const file = path.join(dir, 'group');
      fs.writeFileSync(file, 'root:x:0:\nvpnmasq:x:997:alice,bob\n');
      assert.equal(lookupGroup('vpnmasq', file), 997);
      assert.equal(lookupGroup('root', file), 0);
      assert.equal(lookupGroup('vpn', file), null);
      assert.equal(lookupGroup('vpnmasq', path.join(dir, 'absent')), null);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
