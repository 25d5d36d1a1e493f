/**
 * An in-memory TunDevice for tests (after wireguard-go's tuntest): packets
 * injected with inject() are delivered to the sink as one batch by deliver(),
 * exactly as the native loop delivers them (receive slots, rxLens, txList);
 * what the sink lists is copied to `written`; fail() reports a device error
 * and stops the loop as a deleted interface would.
 */
import type { TunBuffers, TunDevice, TunSink } from './device';
import { Stat } from './native';
import { STATS_LENGTH } from './native-tun';

export interface FakeTunOptions {
  name?: string;
  /** TUN_F_* mask to report as enabled (default 0). */
  offloads?: number;
}

export class FakeTun implements TunDevice {
  readonly name: string;
  readonly offloads: number;
  readonly offloadError = null;
  readonly stats = new Float64Array(STATS_LENGTH);
  /** Packets the loop wrote, oldest first (copies, vnet header included). */
  readonly written: Uint8Array[] = [];
  private readonly pending: Uint8Array[] = [];
  private buffers: TunBuffers | null = null;
  private sink: TunSink | null = null;
  private failed = false;
  private closed = false;

  constructor(options: FakeTunOptions = {}) {
    this.name = options.name ?? 'fake0';
    this.offloads = options.offloads ?? 0;
  }

  get started(): boolean { return this.sink !== null; }

  start(buffers: TunBuffers, sink: TunSink): void {
    if (this.closed) throw new Error(`TUN ${this.name} is closed`);
    if (this.sink !== null) throw new Error(`TUN ${this.name} is already started`);
    this.buffers = buffers;
    this.sink = sink;
  }

  /** Queues one packet (vnet header included) for the next deliver(). */
  inject(packet: Uint8Array): void {
    this.pending.push(Uint8Array.from(packet));
  }

  /**
   * Delivers up to rxSlots queued packets as one batch and captures what is
   * written; returns the packets written by this batch.
   */
  deliver(): Uint8Array[] {
    const b = this.buffers;
    const sink = this.sink;
    if (b === null || sink === null || this.closed || this.failed) throw new Error(`TUN ${this.name} is not running`);
    const count = Math.min(this.pending.length, b.rxSlots);
    if (count === 0) return [];
    for (let i = 0; i < count; i++) {
      const p = this.pending.shift() as Uint8Array;
      if (p.length > b.slotSize) throw new Error(`injected packet of ${p.length} bytes exceeds the ${b.slotSize}-byte slot`);
      b.arena.set(p, i * b.slotSize);
      b.rxLens[i] = p.length;
      this.stats[Stat.RX_PACKETS]++;
      this.stats[Stat.RX_BYTES] += p.length;
    }
    this.stats[Stat.RX_BATCHES]++;
    let n: number;
    try {
      n = sink.onBatch(count);
    } catch (error) {
      this.stats[Stat.ERR_CALLBACK]++;
      sink.onEvent({ kind: 'callback-error', error, dropped: count });
      return [];
    }
    if (!Number.isInteger(n) || n < 0 || n > b.txList.length / 2) {
      this.stats[Stat.ERR_CALLBACK]++;
      sink.onEvent({ kind: 'callback-error', error: new Error(`onBatch returned ${n}, not a tx count`), dropped: count });
      return [];
    }
    const out: Uint8Array[] = [];
    for (let k = 0; k < n; k++) {
      const off = b.txList[2 * k];
      const len = b.txList[2 * k + 1];
      if (len === 0 || off + len > b.arena.length) {
        this.stats[Stat.TX_ERRORS]++;
        continue;
      }
      out.push(b.arena.slice(off, off + len));
      this.stats[Stat.TX_PACKETS]++;
      this.stats[Stat.TX_BYTES] += len;
    }
    this.written.push(...out);
    return out;
  }

  /** Simulates a failing or deleted device: the loop stops and the sink hears of it once. */
  fail(code = 'EBADFD', op = 'read', message = 'File descriptor in bad state'): void {
    if (this.failed || this.sink === null) return;
    this.failed = true;
    this.stats[Stat.RX_ERRORS]++;
    this.sink.onEvent({ kind: 'device-error', op, code, message: `${op}: ${message}` });
  }

  close(): void {
    this.closed = true;
    this.sink = null;
    this.buffers = null;
  }
}
