import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FlowIndex } from '../../src/core/flow-index';
import { prng } from './packet-builder';

type Key = [number, number, number, number];

/** The index's home slot for a key (a private method, reached for white-box tests). */
const homeOf = (ix: FlowIndex, k: Key): number =>
  (ix as unknown as { slotOf(a: number, b: number, c: number, d: number): number }).slotOf(...k);
const slotsOf = (ix: FlowIndex): number => (ix as unknown as { mask: number }).mask + 1;

function checkAgainst(ix: FlowIndex, model: Map<string, number>, keys: Key[]): void {
  assert.equal(ix.size, model.size);
  for (const k of keys) assert.equal(ix.get(...k), model.get(k.join()) ?? -1, `key ${k.join()}`);
}

describe('FlowIndex', () => {
  it('matches a Map model over 100k seeded random set/delete/get operations', () => {
    // Small tables with a small key space keep probe runs long and wrapping,
    // so deletes exercise backward shift across the end of the table.
    const configs = [
      { maxEntries: 8, keySpace: 24, ops: 20_000 },
      { maxEntries: 100, keySpace: 300, ops: 30_000 },
      { maxEntries: 1000, keySpace: 2500, ops: 50_000 },
    ];
    const rnd = prng(2024);
    for (const { maxEntries, keySpace, ops } of configs) {
      const ix = new FlowIndex(maxEntries);
      const model = new Map<string, number>();
      // Keys differ in one word at a time too, and include negative int32 words.
      const keys: Key[] = Array.from({ length: keySpace }, (_, i) =>
        i % 3 === 0 ? [i, 0, 0, 0] : [(rnd() * 2 ** 32) | 0, i, (rnd() * 2 ** 32) | 0, i % 7]);
      // Replace a few with keys homed at the last slot, whose runs wrap to slot 0.
      for (let i = 0, found = 0; found < 4; i++) {
        const k: Key = [-1 - i, 0x5a5a, i, 3];
        if (homeOf(ix, k) === slotsOf(ix) - 1) keys[1 + 3 * found++] = k;
      }
      let wrapDeletes = 0;
      for (let n = 0; n < ops; n++) {
        const k = keys[Math.floor(rnd() * keySpace)];
        const name = k.join();
        const r = rnd();
        if (r < 0.45) {
          const v = Math.floor(rnd() * 1e6);
          const ok = ix.set(...k, v);
          const canInsert = model.has(name) || model.size < maxEntries;
          assert.equal(ok, canInsert, `set ${name} with ${model.size}/${maxEntries}`);
          if (ok) model.set(name, v);
        } else if (r < 0.85) {
          if (model.has(name) && homeOf(ix, k) === slotsOf(ix) - 1) wrapDeletes++;
          assert.equal(ix.delete(...k), model.delete(name), `delete ${name}`);
        } else {
          assert.equal(ix.get(...k), model.get(name) ?? -1, `get ${name}`);
        }
        if (n % 997 === 0) checkAgainst(ix, model, keys);
      }
      checkAgainst(ix, model, keys);
      assert.ok(wrapDeletes > 0, 'some deleted keys were homed at the last slot');
    }
  });

  it('backward shift across the wrap-around keeps every key reachable', () => {
    const ix = new FlowIndex(8);
    const last = slotsOf(ix) - 1;
    // Find keys that all hash to the last slot, so their probe run wraps to slots 0, 1, ...
    const atEnd: Key[] = [];
    const atZero: Key[] = [];
    for (let i = 0; atEnd.length < 3 || atZero.length < 1; i++) {
      const k: Key = [i, 77, -i, 5];
      const h = homeOf(ix, k);
      if (h === last && atEnd.length < 3) atEnd.push(k);
      else if (h === 0 && atZero.length < 1) atZero.push(k);
    }
    // Layout: last = e0, 0 = e1, 1 = e2, 2 = z0 (its home 0 is taken).
    atEnd.forEach((k, i) => assert.ok(ix.set(...k, 100 + i)));
    assert.ok(ix.set(...atZero[0], 200));
    // Deleting e0 must pull e1 back to `last`, e2 to 0 and z0 to 1 (its home 0 is cyclically before 2).
    assert.ok(ix.delete(...atEnd[0]));
    assert.equal(ix.get(...atEnd[0]), -1);
    assert.equal(ix.get(...atEnd[1]), 101);
    assert.equal(ix.get(...atEnd[2]), 102);
    assert.equal(ix.get(...atZero[0]), 200);
    // And deleting from the middle of the wrapped run.
    assert.ok(ix.delete(...atEnd[2]));
    assert.equal(ix.get(...atEnd[1]), 101);
    assert.equal(ix.get(...atZero[0]), 200);
    assert.ok(ix.delete(...atZero[0]));
    assert.equal(ix.get(...atEnd[1]), 101);
    assert.equal(ix.size, 1);
    assert.equal(ix.delete(...atZero[0]), false);
  });

  it('a full index refuses new keys but still replaces existing ones', () => {
    const ix = new FlowIndex(5);
    for (let i = 0; i < 5; i++) assert.ok(ix.set(i, i, i, i, i));
    assert.equal(ix.size, 5);
    assert.equal(ix.set(9, 9, 9, 9, 9), false);
    assert.equal(ix.get(9, 9, 9, 9), -1);
    assert.equal(ix.size, 5);
    assert.ok(ix.set(3, 3, 3, 3, 33), 'replacing an existing key works when full');
    assert.equal(ix.get(3, 3, 3, 3), 33);
    assert.ok(ix.delete(0, 0, 0, 0));
    assert.ok(ix.set(9, 9, 9, 9, 9));
    assert.equal(ix.get(9, 9, 9, 9), 9);
    ix.clear();
    assert.equal(ix.size, 0);
    assert.equal(ix.get(9, 9, 9, 9), -1);
  });

  it('values 0 and int32 max round-trip (-1 is reserved for "absent")', () => {
    const ix = new FlowIndex(4);
    assert.ok(ix.set(1, 2, 3, 4, 0));
    assert.equal(ix.get(1, 2, 3, 4), 0);
    assert.ok(ix.set(1, 2, 3, 5, 0x7fffffff));
    assert.equal(ix.get(1, 2, 3, 5), 0x7fffffff);
  });
});
