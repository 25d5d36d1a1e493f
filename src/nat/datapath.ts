/**
 * One batch of the packet loop: every packet read from the TUN sits in a
 * slot of one shared arena (rxOffs/rxLens/rxDevs list the batch); each is
 * translated in place and the ones to send are listed as (offset, length,
 * device) for the TUN addon to write. The arena also holds the hold pool, so
 * released fragments and segments are written from where they wait, and the
 * area where a collected datagram is reassembled. Pure: the caller supplies
 * the time.
 */
import { VNET_HDR_LEN } from '../wire/vnet';
import { FragmentTracker, WHOLE_SIZE } from './fragments';
import { Napt, NaptOptions } from './napt';
import { SessionTable } from './sessions';
import { TxList } from '../core/tx-list';

export interface ArenaLayout {
  /** Bytes per receive slot: a whole GSO super-packet plus its vnet header with offloads, else MTU + header. */
  slotSize: number;
  /** Receive slots: the TUN's rings (one per device queue) at the start of the arena. */
  rxSlots: number;
  /** Packets per batch at most. */
  batch: number;
  holdSlots: number;
  holdSlotSize: number;
}

/** Receive slot size for a TUN with or without offloads (a super-packet is at most 64 KiB). */
export function rxSlotSize(offloads: boolean, mtu: number): number {
  const need = offloads ? 65535 + VNET_HDR_LEN : mtu + VNET_HDR_LEN;
  return (need + 63) & ~63;
}

export class Datapath {
  readonly arena: Uint8Array;
  readonly rxOffs: Uint32Array;
  readonly rxLens: Uint32Array;
  /** Tag of the TUN device each packet of the batch was read from. */
  readonly rxDevs: Uint8Array;
  readonly tx: TxList;
  readonly frags: FragmentTracker;
  readonly napt: Napt;
  readonly layout: ArenaLayout;

  constructor(
    readonly table: SessionTable,
    layout: ArenaLayout,
    maxFragmentDatagrams: number,
    options: NaptOptions,
  ) {
    this.layout = layout;
    const holdBase = layout.slotSize * layout.rxSlots;
    const wholeOff = holdBase + layout.holdSlots * layout.holdSlotSize;
    this.arena = new Uint8Array(wholeOff + WHOLE_SIZE);
    this.rxOffs = new Uint32Array(layout.batch);
    this.rxLens = new Uint32Array(layout.batch);
    this.rxDevs = new Uint8Array(layout.batch);
    this.tx = new TxList(layout.batch + layout.holdSlots);
    this.frags = new FragmentTracker(maxFragmentDatagrams, holdBase, layout.holdSlotSize, layout.holdSlots, wholeOff);
    this.napt = new Napt(table, this.frags, this.arena, options);
  }

  /**
   * Translates the `count` packets of the batch; returns how many tx entries
   * to write. A packet whose translation throws is not written (it may be half
   * rewritten): it goes to `onError` with its index and the batch goes on
   * with the next one. A packet's device tag is its side (core/side.ts).
   */
  processBatch(count: number, now: number, onError: (error: unknown, index: number) => void): number {
    const napt = this.napt;
    const tx = this.tx;
    const offs = this.rxOffs;
    const lens = this.rxLens;
    const devs = this.rxDevs;
    napt.now = now;
    napt.warm(offs, lens, devs, count);
    this.frags.recycleReleased();
    tx.count = 0;
    let i = 0;
    while (i < count) {
      try {
        for (; i < count; i++) napt.process(offs[i], lens[i], tx, devs[i]);
      } catch (e) {
        onError(e, i++);
      }
    }
    return tx.count;
  }
}
