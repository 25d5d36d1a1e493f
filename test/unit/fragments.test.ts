/**
 * FragmentTracker on its own: what the engine tests in napt.test.ts cannot
 * see from the outside (slot reuse across batches, table limits, keys).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FRAGMENT, FragmentTracker, SEGMENT, SOURCE_LIMIT } from '../../src/nat/fragments';
import { addr, pattern } from './packet-builder';

const SRC = addr('10.77.0.10');
const DST = addr('203.0.113.5');
const NEW = addr('198.18.0.2');
const SLOT = 64;

/** A tracker whose hold pool (3 slots) sits after 256 bytes of "receive slots" in a small arena. */
function setUp(maxDatagrams = 4): { f: FragmentTracker; arena: Uint8Array } {
  const arena = new Uint8Array(256 + 3 * SLOT);
  arena.set(pattern(256));
  return { f: new FragmentTracker(maxDatagrams, 256, SLOT, 3), arena };
}

describe('FragmentTracker', () => {
  it('holds copies in the pool and releases them by datagram', () => {
    const { f, arena } = setUp();
    const k1 = FragmentTracker.key(17, 0x1111);
    const k2 = FragmentTracker.key(17, 0x2222);
    assert.ok(f.hold(arena, 0, 40, SRC, DST, k1, 5000));
    assert.ok(f.hold(arena, 40, 50, SRC, DST, k2, 5000));
    assert.ok(f.hold(arena, 100, 30, SRC, DST, k1, 5000));
    assert.equal(f.heldCount, 3);
    assert.deepEqual(arena.subarray(f.heldOffset(1), f.heldOffset(1) + 50), pattern(256).subarray(40, 90));
    const got: number[] = [];
    for (let h = f.takeHeld(SRC, DST, k1, 0); h >= 0; h = f.takeHeld(SRC, DST, k1, h + 1)) got.push(h);
    assert.deepEqual(got, [0, 2]);
    assert.deepEqual(got.map((h) => f.heldLength(h)), [40, 30]);
    assert.equal(f.heldCount, 1);
    assert.equal(f.takeHeld(SRC, DST, k1, 0), -1, 'released only once');
  });

  it('a released slot is not reused until recycleReleased (its bytes are still queued for writing)', () => {
    const { f, arena } = setUp();
    const k = FragmentTracker.key(6, 1);
    for (let i = 0; i < 3; i++) assert.ok(f.hold(arena, i * 10, 10, SRC, DST, k, 5000));
    assert.equal(f.takeHeld(SRC, DST, k, 0), 0);
    const queued = arena.slice(f.heldOffset(0), f.heldOffset(0) + 10);
    assert.equal(f.hold(arena, 200, 10, SRC, DST, FragmentTracker.key(6, 2), 5000), false, 'pool still full in this batch');
    assert.deepEqual(arena.subarray(f.heldOffset(0), f.heldOffset(0) + 10), queued);
    f.recycleReleased();
    assert.ok(f.hold(arena, 200, 10, SRC, DST, FragmentTracker.key(6, 2), 5000));
    assert.deepEqual(arena.subarray(f.heldOffset(0), f.heldOffset(0) + 10), pattern(256).subarray(200, 210));
  });

  it('one source holds at most perSourceLimit fragments (SOURCE_LIMIT); another source still gets the rest; freed slots count down', () => {
    const { f, arena } = setUp();
    f.perSourceLimit = 2;
    const OTHER = addr('198.51.100.9');
    const hold = (src: number, id: number): number => f.holdSlot(arena, 0, 20, src, DST, FragmentTracker.key(17, id), 5000, FRAGMENT, 8, 12, true);
    assert.ok(hold(SRC, 1) >= 0);
    assert.ok(hold(SRC, 2) >= 0);
    assert.equal(hold(SRC, 3), SOURCE_LIMIT, 'its share is used up while the pool has room');
    assert.ok(hold(OTHER, 4) >= 0, 'another source is not affected');
    assert.equal(f.takeHeld(SRC, DST, FragmentTracker.key(17, 1), 0), 0);
    f.recycleReleased();
    assert.ok(hold(SRC, 5) >= 0, 'a released fragment gives its source the slot back');
    f.discard(f.nextHeld(FRAGMENT, SRC, DST, FragmentTracker.key(17, 2), 0));
    assert.ok(hold(SRC, 6) >= 0, 'so does a discarded one');
    assert.equal(hold(SRC, 7), -1, 'and then the pool itself is full');
    assert.ok(f.hold(arena, 0, 20, OTHER, DST, 1, 5000, SEGMENT) === false, 'a helper\'s segment finds the pool full too, and is not counted per source');
  });

  it('refuses a fragment larger than a slot', () => {
    const { f, arena } = setUp();
    assert.equal(f.hold(arena, 0, SLOT + 1, SRC, DST, 1, 5000), false);
    assert.ok(f.hold(arena, 0, SLOT, SRC, DST, 1, 5000));
  });

  it('remembers datagrams until their deadline; the key separates protocols and IP IDs', () => {
    const { f } = setUp();
    const udp = FragmentTracker.key(17, 7);
    const tcp = FragmentTracker.key(6, 7);
    assert.notEqual(udp, tcp);
    f.remember(SRC, DST, udp, NEW, DST, 5000);
    const d = f.find(SRC, DST, udp, 4999);
    assert.ok(d >= 0);
    assert.equal(f.dNewSrc[d], NEW);
    assert.equal(f.dNewDst[d], DST);
    assert.equal(f.find(SRC, DST, tcp, 0), -1);
    assert.equal(f.find(DST, SRC, udp, 0), -1);
    assert.equal(f.find(SRC, DST, udp, 5000), -1, 'expired at its deadline');
    assert.equal(f.find(SRC, DST, udp, 0), -1, 'and forgotten');
  });

  it('when the datagram table is full, new datagrams are not remembered (their later fragments get held instead)', () => {
    const { f } = setUp(2);
    f.remember(SRC, DST, 1, NEW, DST, 5000);
    f.remember(SRC, DST, 2, NEW, DST, 5000);
    f.remember(SRC, DST, 3, NEW, DST, 5000);
    assert.ok(f.find(SRC, DST, 1, 0) >= 0);
    assert.ok(f.find(SRC, DST, 2, 0) >= 0);
    assert.equal(f.find(SRC, DST, 3, 0), -1);
    // Updating a known datagram still works when full, and sweep frees entries.
    f.remember(SRC, DST, 2, SRC, NEW, 9000);
    assert.equal(f.dNewDst[f.find(SRC, DST, 2, 0)], NEW);
    assert.equal(f.sweep(5000), 0, 'no held fragments to drop');
    assert.equal(f.find(SRC, DST, 1, 5000), -1);
    f.remember(SRC, DST, 3, NEW, DST, 9000);
    assert.ok(f.find(SRC, DST, 3, 0) >= 0);
  });

  it('sweep drops only expired held fragments and reports how many', () => {
    const { f, arena } = setUp();
    assert.ok(f.hold(arena, 0, 10, SRC, DST, 1, 1000));
    assert.ok(f.hold(arena, 0, 10, SRC, DST, 2, 2000));
    assert.equal(f.sweep(999), 0);
    assert.equal(f.sweep(1000), 1);
    assert.equal(f.heldCount, 1);
    assert.equal(f.takeHeld(SRC, DST, 1, 0), -1);
    assert.equal(f.takeHeld(SRC, DST, 2, 0), 1);
  });
});
