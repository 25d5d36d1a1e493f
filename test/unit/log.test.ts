import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { createLogger, Logger, LoggerOptions } from '../../src/daemon/log';

/** A logger writing into an array of lines, with a settable clock. */
function capture(options: Partial<LoggerOptions> = {}): { log: Logger; lines(): Promise<string[]>; clock: { t: number } } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  const clock = { t: Date.UTC(2025, 0, 2, 3, 4, 5) };
  const log = createLogger({ format: 'journal', level: 'debug', rateLimitPerMinute: 60, now: () => clock.t, stream, ...options });
  return {
    log,
    clock,
    async lines() {
      await tick();
      return chunks.join('').split('\n').filter((line) => line !== '');
    },
  };
}

test('journal format: sd-daemon priority prefixes and key=value fields', async () => {
  const { log, lines } = capture();
  log.error('tun read failed', { errno: 'EIO' });
  log.warn('table 90% full', { used: 235929, limit: 262144 });
  log.info('started', { config: '/etc/vpnmasq/vpnmasq.json', reason: 'config reload', ok: true });
  log.debug('multi\nline', { err: new Error('disk full'), nested: { a: 1 } });
  assert.deepEqual(await lines(), [
    '<3>tun read failed errno=EIO',
    '<4>table 90% full used=235929 limit=262144',
    '<6>started config=/etc/vpnmasq/vpnmasq.json reason="config reload" ok=true',
    '<7>multi\\nline err="disk full" nested={"a":1}',
  ]);
});

test('level filtering drops less severe lines', async () => {
  const { log, lines } = capture({ level: 'warn' });
  log.info('hidden');
  log.debug('hidden');
  log.event('esp', 'hidden');
  log.warn('shown');
  assert.deepEqual(await lines(), ['<4>shown']);
});

test('json format: one parseable object per line with ts, level, msg and fields', async () => {
  const { log, lines } = capture({ format: 'json' });
  log.info('mapping created', { proto: 'udp', publicPort: 61000, msg: 'cannot override' });
  log.error('db write failed', { err: new Error('SQLITE_FULL'), rows: 10n });
  const records = (await lines()).map((line) => JSON.parse(line));
  assert.deepEqual(records, [
    { ts: '2025-01-02T03:04:05.000Z', level: 'info', msg: 'mapping created', proto: 'udp', publicPort: 61000 },
    { ts: '2025-01-02T03:04:05.000Z', level: 'error', msg: 'db write failed', err: 'SQLITE_FULL', rows: '10' },
  ]);
  assert.deepEqual(Object.keys(records[0]), ['ts', 'level', 'msg', 'proto', 'publicPort']);
});

test('events are rate limited per kind and report the suppressed count', async () => {
  const { log, lines, clock } = capture({ rateLimitPerMinute: 2 });
  for (let i = 1; i <= 5; i++) log.event('esp-collision', `collision ${i}`, { spi: i });
  log.event('gre-drop', 'gre 1');
  clock.t += 30_000;
  log.event('esp-collision', 'collision 6');
  clock.t += 30_000; // a minute after the window opened: a new window
  log.event('esp-collision', 'collision 7');
  log.event('esp-collision', 'collision 8');
  log.event('esp-collision', 'collision 9');
  clock.t += 60_000;
  log.event('esp-collision', 'collision 10');
  assert.deepEqual(await lines(), [
    '<6>collision 1 event=esp-collision spi=1',
    '<6>collision 2 event=esp-collision spi=2',
    '<6>gre 1 event=gre-drop',
    '<6>collision 7 event=esp-collision suppressed=4',
    '<6>collision 8 event=esp-collision',
    '<6>collision 10 event=esp-collision suppressed=1',
  ]);
});

test('events in json format carry the suppressed count as a number', async () => {
  const { log, lines, clock } = capture({ format: 'json', rateLimitPerMinute: 1 });
  log.event('drop', 'first');
  log.event('drop', 'second');
  log.event('drop', 'third');
  clock.t += 60_000;
  log.event('drop', 'fourth');
  const records = (await lines()).map((line) => JSON.parse(line));
  assert.deepEqual(
    records.map((r) => [r.msg, r.event, r.suppressed]),
    [['first', 'drop', undefined], ['fourth', 'drop', 2]],
  );
});
