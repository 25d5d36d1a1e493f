/**
 * Errors that end `vpnmasq run` carry the sd-daemon(3) error prefix when
 * stderr is the journal (JOURNAL_STREAM names it), so `journalctl -p err`
 * shows why a start failed; on a terminal or a pipe they stay plain.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stderrIsJournal } from '../../src/cli/main';
import { CLI, tempDir } from './cli-fixture';

/** Runs the CLI with stderr on a file; `journal` sets JOURNAL_STREAM to that file's device and inode. */
function runWithStderrFile(dir: string, args: string[], journal: boolean): string {
  const errFile = path.join(dir, `stderr-${journal}`);
  const fd = fs.openSync(errFile, 'w');
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    const env = { ...process.env, JOURNAL_STREAM: journal ? `${st.dev}:${st.ino}` : '' };
    spawnSync(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'ignore', fd] });
  } finally {
    fs.closeSync(fd);
  }
  return fs.readFileSync(errFile, 'utf8');
}

describe('start errors in the journal', () => {
  it('recognises the journal stream by device and inode only', () => {
    const dir = tempDir('cli-journal');
    try {
      const fd = fs.openSync(path.join(dir, 'f'), 'w');
      const st = fs.fstatSync(fd, { bigint: true });
      assert.equal(stderrIsJournal({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, fd), true);
      assert.equal(stderrIsJournal({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1n}` }, fd), false);
      assert.equal(stderrIsJournal({ JOURNAL_STREAM: 'garbage' }, fd), false);
      assert.equal(stderrIsJournal({}, fd), false);
      fs.closeSync(fd);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('logs a config syntax error that ends "vpnmasq run" at priority err, every line', () => {
    const dir = tempDir('cli-journal');
    try {
      const config = path.join(dir, 'bad.json');
      fs.writeFileSync(config, '{ x');
      const journal = runWithStderrFile(dir, ['-c', config, 'run'], true);
      const lines = journal.trimEnd().split('\n');
      assert.ok(lines.length >= 1 && lines.every((l) => l.startsWith('<3>vpnmasq: ')), journal);
      assert.match(journal, /syntax error at line 1, column 3/);

      fs.writeFileSync(config, '{ "wan": { "interface": 7 }, "timeouts": { "udp": 1 } }');
      const twoProblems = runWithStderrFile(dir, ['-c', config, 'run'], true).trimEnd().split('\n');
      assert.ok(twoProblems.length >= 2 && twoProblems.every((l) => l.startsWith('<3>vpnmasq: ')), twoProblems.join('\n'));

      const plain = runWithStderrFile(dir, ['-c', config, 'run'], false);
      assert.match(plain, /^vpnmasq: /);
      assert.doesNotMatch(plain, /<\d>/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
