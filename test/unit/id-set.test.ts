/** IdSet (src/persist/id-set.ts): restore's set of taken ids, with the table that took each. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { IdSet } from '../../src/persist/id-set';

it('keeps each id once, with its holder, through growth', () => {
  const s = new IdSet(4);
  for (let i = 1; i <= 50_000; i++) assert.equal(s.add(i * 7919, i % 4), true);
  assert.equal(s.size, 50_000);
  for (let i = 1; i <= 50_000; i++) assert.equal(s.holder(i * 7919), i % 4);
  assert.equal(s.add(7919, 3), false, 'a second add keeps the first holder');
  assert.equal(s.holder(7919), 1);
  assert.equal(s.holder(7920), -1);
});

it('tells apart ids a double holds exactly, and treats 0 and -0 as one; NaN is never taken', () => {
  const s = new IdSet();
  const big = Number.MAX_SAFE_INTEGER;
  assert.equal(s.add(big, 0), true);
  assert.equal(s.add(big - 1, 1), true);
  assert.equal(s.add(2 ** 32, 2), true);
  assert.equal(s.add(0, 2), true);
  assert.equal(s.add(1.5, 0), true);
  assert.deepEqual([s.holder(big), s.holder(big - 1), s.holder(2 ** 32), s.holder(1), s.holder(1.5)], [0, 1, 2, -1, 0]);
  assert.equal(s.holder(-0), 2);
  assert.equal(s.add(-0, 1), false);
  assert.equal(s.add(NaN, 0), false);
  assert.equal(s.holder(NaN), -1);
});
