// BatchFaults: when exceptions on the packet path end the process, and how they are logged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BatchFaults } from '../../src/edge/tun/batch-faults';

function faults(limits = { consecutive: 4, perSecond: 10 }) {
  const clock = { t: 1_000_000 };
  const logged: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const fatal: Error[] = [];
  const f = new BatchFaults({ error: (msg, fields = {}) => logged.push({ msg, fields }) }, (e) => fatal.push(e), () => clock.t, limits);
  return { f, clock, logged, fatal };
}

test('a run of failing packets across a batch boundary is fatal at the limit; a packet that goes through ends the run', () => {
  const { f, fatal } = faults();
  f.packet(new Error('x'), 0);
  f.packet(new Error('x'), 1);
  f.batchDone(3); // packet 2 went through
  f.packet(new Error('x'), 1);
  f.packet(new Error('x'), 2);
  f.batchDone(3); // the run reaches the batch's end and goes on
  f.packet(new Error('x'), 0);
  assert.equal(fatal.length, 0);
  f.packet(new Error('last one'), 1);
  assert.equal(fatal.length, 1);
  assert.equal(fatal[0].message, 'packet path failing: 4 packets in a row threw (last: last one)');
  f.packet(new Error('x'), 2);
  assert.equal(fatal.length, 1, 'reported once');
});

test('scattered exceptions are fatal at perSecond within one second, not when spread out', () => {
  const { f, clock, fatal } = faults({ consecutive: 100, perSecond: 5 });
  for (let i = 0; i < 20; i++) {
    f.packet(new Error('x'), 0);
    f.batchDone(2);
    clock.t += 250; // 4 per second
  }
  assert.equal(fatal.length, 0);
  for (let i = 0; i < 5; i++) {
    f.packet(new Error('x'), 0);
    f.batchDone(2);
    clock.t += 10;
  }
  assert.equal(fatal.length, 1);
  assert.match(fatal[0].message, /^packet path failing: 5 exceptions within one second/);
});

test('one log line per second with the stack, the others counted into the next line', () => {
  const { f, clock, logged } = faults({ consecutive: 100, perSecond: 100 });
  for (let i = 0; i < 3; i++) { f.packet(new RangeError(`e${i}`), 0); f.batchDone(2); }
  clock.t += 1000;
  f.batch('not an Error', 7);
  assert.equal(logged.length, 2);
  assert.equal(logged[0].msg, 'packet translation threw; packet dropped');
  assert.equal(logged[0].fields.error, 'e0');
  assert.match(String(logged[0].fields.stack), /^RangeError: e0\n/);
  assert.equal(logged[0].fields.suppressed, undefined);
  assert.equal(logged[1].msg, 'batch callback threw; batch not written');
  assert.deepEqual([logged[1].fields.error, logged[1].fields.dropped, logged[1].fields.suppressed], ['not an Error', 7, 2]);
  assert.deepEqual([f.packetErrors, f.batchErrors, f.batchDropped], [3, 1, 7]);
});
