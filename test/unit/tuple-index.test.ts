/**
 * The one-slot-per-entry hash index (src/core/tuple-index.ts) and the port
 * space (src/nat/port-space.ts), against plain reference models.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TupleIndex } from '../../src/core/tuple-index';
import { CLASS_HIGH, CLASS_LOW, MAX_SHARERS, PortSpace } from '../../src/nat/port-space';
import { prng } from './packet-builder';

describe('TupleIndex', () => {
  it('keys are three words and a tag; replace, delete and deleteIf', () => {
    const x = new TupleIndex(8);
    assert.equal(x.set(1, 2, 3, 6, 10), true);
    assert.equal(x.set(1, 2, 3, 17, 11), true, 'another tag is another key');
    assert.equal(x.get(1, 2, 3, 6), 10);
    assert.equal(x.get(1, 2, 3, 17), 11);
    assert.equal(x.get(1, 2, 4, 6), -1);
    x.set(1, 2, 3, 6, 12);
    assert.equal(x.get(1, 2, 3, 6), 12, 'replaced');
    assert.equal(x.size, 2);
    assert.equal(x.deleteIf(1, 2, 3, 6, 10), false, 'another record holds the key');
    assert.equal(x.deleteIf(1, 2, 3, 6, 12), true);
    assert.equal(x.get(1, 2, 3, 6), -1);
    assert.equal(x.delete(1, 2, 3, 17), true);
    assert.equal(x.size, 0);
  });

  it('refuses a new key when full, takes the largest record number and negative words', () => {
    const x = new TupleIndex(2);
    assert.equal(x.set(-1, -2, -0x80000000, 255, 0xfffffe), true);
    assert.equal(x.set(0, 0, 0, 0, 0), true);
    assert.equal(x.set(5, 5, 5, 5, 5), false);
    assert.equal(x.get(-1, -2, -0x80000000, 255), 0xfffffe);
    assert.equal(x.get(0, 0, 0, 0), 0);
    assert.throws(() => new TupleIndex(0x1000000 + 1), RangeError);
  });

  it('peek reads only the home slot: the record of a key that sits there, else -1, and changes nothing', () => {
    const x = new TupleIndex(1024);
    let home = 0;
    let displaced = 0;
    for (let i = 0; i < 1024; i++) x.set(i, i * 7, -i, 17, i);
    for (let i = 0; i < 1024; i++) {
      const r = x.peek(i, i * 7, -i, 17);
      if (r === i) home++;
      else { assert.equal(r, -1, 'a key off its home slot (after a collision) is not found by peek'); displaced++; }
    }
    assert.ok(home > 600 && displaced > 0, `${home} at home, ${displaced} displaced: load 1/2 leaves most keys at home`);
    assert.equal(x.peek(5000, 0, 0, 17), -1, 'an absent key');
    assert.equal(x.peek(3, 21, -3, 6), -1, 'another tag');
    assert.equal(x.size, 1024);
    for (let i = 0; i < 1024; i++) assert.equal(x.get(i, i * 7, -i, 17), i);
  });

  it('matches a Map over random inserts and deletes (backward-shift deletion keeps every key reachable)', () => {
    const rnd = prng(7);
    const x = new TupleIndex(2000);
    const ref = new Map<string, number>();
    for (let i = 0; i < 20000; i++) {
      const k0 = Math.floor(rnd() * 40);
      const k1 = Math.floor(rnd() * 40) - 20;
      const k2 = Math.floor(rnd() * 3);
      const tag = Math.floor(rnd() * 3);
      const key = `${k0},${k1},${k2},${tag}`;
      if (rnd() < 0.55 && ref.size < 2000) {
        x.set(k0, k1, k2, tag, i & 0xffffff);
        ref.set(key, i & 0xffffff);
      } else {
        assert.equal(x.delete(k0, k1, k2, tag), ref.delete(key));
      }
    }
    assert.equal(x.size, ref.size);
    for (const [key, v] of ref) {
      const [k0, k1, k2, tag] = key.split(',').map(Number);
      assert.equal(x.get(k0, k1, k2, tag), v, key);
    }
  });
});

describe('PortSpace', () => {
  it('hands out every unused port of a class once, from a random start, then says none is left', () => {
    const sp = new PortSpace([20000, 20099], [600, 609]);
    const rnd = prng(3);
    const seen = new Set<number>();
    for (let i = 0; i < 100; i++) {
      const p = sp.randomFree(CLASS_HIGH, rnd());
      assert.ok(p >= 20000 && p <= 20099 && !seen.has(p), String(p));
      seen.add(p);
      sp.take(p);
    }
    assert.equal(sp.freeCount[CLASS_HIGH], 0);
    assert.equal(sp.randomFree(CLASS_HIGH, 0.5), -1);
    assert.equal(sp.freeCount[CLASS_LOW], 10, 'the low class is apart (RFC 4787 REQ-3a)');
    assert.equal(sp.classOf(500), CLASS_LOW);
    assert.equal(sp.classOf(1024), CLASS_HIGH);
    sp.release(20042);
    assert.equal(sp.randomFree(CLASS_HIGH, 0.99), 20042, 'wraps around to the one unused port');
  });

  it('counts sharers, stops at MAX_SHARERS, frees a port with its last user', () => {
    const sp = new PortSpace([1024, 65535], null);
    assert.equal(sp.classOf(80), CLASS_HIGH, 'without a low range every port maps into the range');
    for (let i = 0; i < MAX_SHARERS; i++) assert.equal(sp.take(40000), true);
    assert.equal(sp.take(40000), false);
    assert.equal(sp.canShare(40000), false);
    assert.equal(sp.isUnused(40000), false);
    for (let i = 0; i < MAX_SHARERS; i++) sp.release(40000);
    assert.equal(sp.isUnused(40000), true);
    assert.equal(sp.freeCount[CLASS_HIGH], 64512);
  });

  it('never hands out a reserved port dynamically, but a fixed mapping may take it', () => {
    const sp = new PortSpace([20000, 20001], null);
    sp.reserve(20000);
    assert.equal(sp.freeCount[CLASS_HIGH], 1);
    for (let i = 0; i < 10; i++) assert.equal(sp.randomFree(CLASS_HIGH, i / 10), 20001);
    assert.equal(sp.canShare(20000), false);
    assert.equal(sp.canTake(20000), true);
    sp.take(20000);
    sp.release(20000);
    assert.equal(sp.isUnused(20000), false, 'still reserved');
  });
});
