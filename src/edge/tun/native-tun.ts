// Kernel TUN devices with a virtio_net_hdr on every packet, served by the native reader/writer threads.
import type { TunBuffers, TunDevice, TunOptions, TunSink } from './device';
import {
  type LoopSpec,
  type TunIo,
  loadTunNative,
  STATS_COUNT,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_USO4,
  TUN_F_USO6,
} from './native';

/** Offloads requested when enabled; USO is dropped automatically before Linux 6.2. */
const ALL_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
/**
 * Packets the kernel queues on the device for the loop to read: Ethernet's
 * default instead of TUN's 500, so a burst that arrives while the daemon
 * waits for a CPU is held rather than dropped (docs/datapath.md).
 */
const TX_QUEUE_LEN = 1000;

export class NativeTun implements TunDevice {
  readonly queues: number;
  io: { mode: TunIo; fallback: string | null } | null = null;
  private readonly counters = new Float64Array(STATS_COUNT);
  private handle: number | null = null;
  private closed = false;

  private constructor(
    readonly names: readonly string[],
    /** Per device tag, its queue fds. */
    readonly fds: readonly (readonly number[])[],
    readonly offloads: number,
    readonly offloadError: string | null,
    private readonly wantIo: 'uring' | 'threads' | 'auto',
    private readonly busyPollUs: number,
  ) {
    this.queues = fds.reduce((n, q) => n + q.length, 0);
  }

  /**
   * Creates the devices, or attaches to existing ones, in tag order. If one
   * fails, those already opened are closed again.
   */
  static open(o: TunOptions): NativeTun {
    const native = loadTunNative();
    const opened: Array<{ name: string; fds: number[]; offloads: number; offloadError: string | null }> = [];
    try {
      for (const name of o.names) opened.push(native.open(name, true, o.offloads ? ALL_OFFLOADS : 0, o.queues ?? 1, TX_QUEUE_LEN));
    } catch (e) {
      for (const d of opened) for (const fd of d.fds) native.close(fd);
      throw e;
    }
    const offloads = opened.reduce((m, d) => m & d.offloads, ~0);
    const offloadError = opened.map((d) => d.offloadError).find((e) => e !== null) ?? null;
    return new NativeTun(opened.map((d) => d.name), opened.map((d) => d.fds), offloads, offloadError, o.io ?? 'auto', o.busyPollUs ?? 0);
  }

  /** Use VNET_HDR_LEN + 65535 as slotSize with offloads. With io 'auto', falls back to threads when io_uring is refused. */
  start(b: TunBuffers, sink: TunSink): void {
    if (this.closed) throw new Error(`TUN ${this.names.join(',')} is closed`);
    if (this.handle !== null) throw new Error(`TUN ${this.names.join(',')} is already started`);
    const spec = (io: TunIo): LoopSpec => ({
      io,
      devices: this.fds.map((q) => [...q]),
      busyPollUs: this.busyPollUs,
      arena: b.arena, slotSize: b.slotSize, ringSlots: b.ringSlots,
      rxOffs: b.rxOffs, rxLens: b.rxLens, rxDevs: b.rxDevs, txList: b.txList, txDevs: b.txDevs,
      onBatch: (count) => sink.onBatch(count),
      onEvent: (event) => sink.onEvent(event),
    });
    const native = loadTunNative();
    if (this.wantIo === 'threads') {
      this.handle = native.start(spec('threads'));
      this.io = { mode: 'threads', fallback: null };
      return;
    }
    try {
      this.handle = native.start(spec('uring'));
      this.io = { mode: 'uring', fallback: null };
    } catch (e) {
      if (this.wantIo === 'uring' || (e as NodeJS.ErrnoException).code === undefined) throw e;
      this.handle = native.start(spec('threads'));
      this.io = { mode: 'threads', fallback: (e as Error).message };
    }
  }

  stats(): Float64Array {
    if (this.handle !== null) loadTunNative().stats(this.handle, this.counters);
    return this.counters;
  }

  /** Stops the threads and closes the fds; a non-persistent device disappears. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.stats(); // keep the last counters
    this.closed = true;
    const native = loadTunNative();
    if (this.handle !== null) {
      native.stop(this.handle);
      this.handle = null;
    }
    for (const q of this.fds) for (const fd of q) native.close(fd);
  }
}
