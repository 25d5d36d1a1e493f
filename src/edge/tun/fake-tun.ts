/**
 * An in-memory TunDevice for tests (after wireguard-go's tuntest): packets
 * injected with inject() are delivered to the sink as one batch by deliver(),
 * laid out as the native loop lays them out (a receive ring per device in
 * the arena, rxOffs/rxLens/rxDevs, tx entries with a device tag); what the
 * sink lists is copied to `written`; fail() reports a device error and stops
 * the loop as a deleted interface would.
 */
import { ringBytes, type TunBuffers, type TunDevice, type TunSink } from './device';
import { Stat, STATS_COUNT } from './native';

export interface FakeTunOptions {
  /** Interface names by device tag (default one device, 'fake0'). */
  names?: string[];
  /** TUN_F_* mask to report as enabled (default 0). */
  offloads?: number;
}

/** A packet the loop wrote: the device tag it was written to and a copy of its bytes (vnet header included). */
export interface FakeTunWrite {
  dev: number;
  packet: Uint8Array;
}

export class FakeTun implements TunDevice {
  readonly names: readonly string[];
  readonly queues: number;
  readonly offloads: number;
  readonly offloadError = null;
  readonly io = { mode: 'fake', fallback: null };
  /** Everything the loop wrote, oldest first. */
  readonly written: FakeTunWrite[] = [];
  private readonly counters = new Float64Array(STATS_COUNT);
  private readonly pending: FakeTunWrite[] = [];
  /** Next ring slot per device. */
  private readonly ringPos: number[];
  private buffers: TunBuffers | null = null;
  private sink: TunSink | null = null;
  private failed = false;
  private closed = false;

  constructor(options: FakeTunOptions = {}) {
    this.names = options.names ?? ['fake0'];
    this.queues = this.names.length;
    this.ringPos = this.names.map(() => 0);
    this.offloads = options.offloads ?? 0;
  }

  stats(): Float64Array { return this.counters; }

  start(buffers: TunBuffers, sink: TunSink): void {
    if (this.closed) throw new Error(`TUN ${this.names.join(',')} is closed`);
    if (this.sink !== null) throw new Error(`TUN ${this.names.join(',')} is already started`);
    if (ringBytes(this.queues, buffers.ringSlots, buffers.slotSize) > buffers.arena.length) {
      throw new RangeError('arena smaller than the receive rings');
    }
    this.buffers = buffers;
    this.sink = sink;
  }

  /** Queues one packet (vnet header included) as read from device `dev`, for the next deliver(). */
  inject(packet: Uint8Array, dev = 0): void {
    if (dev >= this.names.length) throw new RangeError(`no device ${dev}`);
    this.pending.push({ dev, packet: Uint8Array.from(packet) });
  }

  /**
   * Delivers the queued packets (up to a batch) as one batch and captures what
   * is written; returns the writes of this batch.
   */
  deliver(): FakeTunWrite[] {
    const b = this.buffers;
    const sink = this.sink;
    if (b === null || sink === null || this.closed || this.failed) throw new Error(`TUN ${this.names.join(',')} is not running`);
    const count = Math.min(this.pending.length, b.rxOffs.length, b.ringSlots);
    if (count === 0) return [];
    const c = this.counters;
    for (let i = 0; i < count; i++) {
      const { dev, packet } = this.pending.shift() as FakeTunWrite;
      if (packet.length > b.slotSize) throw new Error(`injected packet of ${packet.length} bytes exceeds the ${b.slotSize}-byte slot`);
      const slot = dev * b.ringSlots + this.ringPos[dev];
      this.ringPos[dev] = (this.ringPos[dev] + 1) % b.ringSlots;
      b.arena.set(packet, slot * b.slotSize);
      b.rxOffs[i] = slot * b.slotSize;
      b.rxLens[i] = packet.length;
      b.rxDevs[i] = dev;
      c[Stat.RX_PACKETS]++;
      c[Stat.RX_BYTES] += packet.length;
    }
    c[Stat.RX_BATCHES]++;
    let n: number;
    try {
      n = sink.onBatch(count);
    } catch (error) {
      c[Stat.ERR_CALLBACK]++;
      sink.onEvent({ kind: 'callback-error', error, dropped: count });
      return [];
    }
    if (!Number.isInteger(n) || n < 0 || n > b.txList.length / 2) {
      c[Stat.ERR_CALLBACK]++;
      sink.onEvent({ kind: 'callback-error', error: new Error(`onBatch returned ${n}, not a tx count`), dropped: count });
      return [];
    }
    const out: FakeTunWrite[] = [];
    for (let k = 0; k < n; k++) {
      const off = b.txList[2 * k];
      const len = b.txList[2 * k + 1];
      const dev = b.txDevs[k];
      if (len === 0 || off + len > b.arena.length || dev >= this.names.length) {
        c[Stat.TX_ERRORS]++;
        continue;
      }
      out.push({ dev, packet: b.arena.slice(off, off + len) });
      c[Stat.TX_PACKETS]++;
      c[Stat.TX_BYTES] += len;
    }
    this.written.push(...out);
    return out;
  }

  /** Simulates a failing or deleted device: the loop stops and the sink hears of it once. */
  fail(code = 'EBADFD', op = 'read', message = 'File descriptor in bad state', dev = 0): void {
    if (this.failed || this.sink === null) return;
    this.failed = true;
    this.counters[Stat.RX_ERRORS]++;
    this.sink.onEvent({ kind: 'device-error', dev, op, code, message: `${op}: ${message}` });
  }

  close(): void {
    this.closed = true;
    this.sink = null;
    this.buffers = null;
  }
}
