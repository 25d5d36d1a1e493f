// FakeTun lays a batch out as the native loop does: per-device receive rings,
// device tags in, the device each write names out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ringBytes, type TunBuffers } from '../../src/edge/tun/device';
import { FakeTun } from '../../src/edge/tun/fake-tun';
import { Stat } from '../../src/edge/tun/native';

const SLOT = 64;
const RING = 4;

function buffers(devices: number): TunBuffers {
  return {
    arena: new Uint8Array(ringBytes(devices, RING, SLOT) + SLOT), // one slot of memory outside the rings
    slotSize: SLOT, ringSlots: RING,
    rxOffs: new Uint32Array(8), rxLens: new Uint32Array(8), rxDevs: new Uint8Array(8),
    txList: new Uint32Array(16), txDevs: new Uint8Array(8),
  };
}

test('packets land in their device\'s ring with their tag; writes go to the device each entry names', () => {
  const tun = new FakeTun({ names: ['lan0', 'wan0'] });
  const b = buffers(2);
  const seen: Array<[number, number, number]> = [];
  tun.start(b, {
    onBatch(count) {
      for (let i = 0; i < count; i++) {
        seen.push([b.rxOffs[i], b.rxLens[i], b.rxDevs[i]]);
        b.txList[2 * i] = b.rxOffs[i];
        b.txList[2 * i + 1] = b.rxLens[i];
        b.txDevs[i] = 1 - b.rxDevs[i]; // out of the other device
      }
      return count;
    },
    onEvent: () => assert.fail('no event expected'),
  });
  tun.inject(Uint8Array.of(1, 2, 3), 1);
  tun.inject(Uint8Array.of(4, 5), 0);
  tun.inject(Uint8Array.of(6), 1);
  const out = tun.deliver();
  assert.deepEqual(seen, [[RING * SLOT, 3, 1], [0, 2, 0], [(RING + 1) * SLOT, 1, 1]]);
  assert.deepEqual(out.map((w) => [w.dev, [...w.packet]]), [[0, [1, 2, 3]], [1, [4, 5]], [0, [6]]]);
  assert.equal(tun.stats()[Stat.RX_PACKETS], 3);
  assert.equal(tun.stats()[Stat.TX_PACKETS], 3);
});

test('a tx entry with a device tag that does not exist is counted, not written', () => {
  const tun = new FakeTun();
  const b = buffers(1);
  tun.start(b, {
    onBatch() {
      b.txList.set([0, 1, 0, 1]);
      b.txDevs.set([0, 3]);
      return 2;
    },
    onEvent: () => assert.fail('no event expected'),
  });
  tun.inject(Uint8Array.of(9));
  assert.equal(tun.deliver().length, 1);
  assert.equal(tun.stats()[Stat.TX_ERRORS], 1);
});

test('fail() reports one device-error with the device tag and stops the loop', () => {
  const tun = new FakeTun({ names: ['a', 'b'] });
  const events: unknown[] = [];
  tun.start(buffers(2), { onBatch: () => 0, onEvent: (e) => events.push(e) });
  tun.fail('EBADFD', 'read', 'File descriptor in bad state', 1);
  tun.fail();
  assert.deepEqual(events, [{ kind: 'device-error', dev: 1, op: 'read', code: 'EBADFD', message: 'read: File descriptor in bad state' }]);
  assert.throws(() => tun.deliver(), /not running/);
});
