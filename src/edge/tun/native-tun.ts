// The kernel TUN device with a virtio_net_hdr on every packet, driven by the native poll loop.
import type { TunBuffers, TunDevice, TunSink } from './device';
import {
  loadTunNative,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_USO4,
  TUN_F_USO6,
  VNET_HDR_LEN,
} from './native';

/** Offloads requested when enabled; USO is dropped automatically before Linux 6.2. */
const ALL_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
/** Room for all Stat indexes, with spare slots. */
export const STATS_LENGTH = 16;

export interface TunOpenOptions {
  /** Request checksum and TSO/USO offloads (GSO super-packets up to 64 KiB). */
  offloads: boolean;
}

export class NativeTun implements TunDevice {
  readonly vnetHdrLen = VNET_HDR_LEN;
  readonly stats = new Float64Array(STATS_LENGTH);
  private handle: number | null = null;
  private closed = false;

  private constructor(
    readonly name: string,
    readonly fd: number,
    readonly offloads: number,
    readonly offloadError: string | null,
  ) {}

  /** Creates the device, or attaches to an existing one named `name`. */
  static open(name: string, options: TunOpenOptions): NativeTun {
    const r = loadTunNative().open(name, true, options.offloads ? ALL_OFFLOADS : 0);
    return new NativeTun(r.name, r.fd, r.offloads, r.offloadError);
  }

  /** Use VNET_HDR_LEN + 65535 as slotSize with offloads. */
  start(b: TunBuffers, sink: TunSink): void {
    if (this.closed) throw new Error(`TUN ${this.name} is closed`);
    if (this.handle !== null) throw new Error(`TUN ${this.name} is already started`);
    this.handle = loadTunNative().start(this.fd, b.arena, b.slotSize, b.rxSlots, b.rxLens, b.txList, this.stats,
      (count) => sink.onBatch(count), (event) => sink.onEvent(event));
  }

  /** Writes txList entries [0, n) now, e.g. packets released by a timer. */
  flush(n: number): void {
    if (this.handle === null) throw new Error(`TUN ${this.name} is not started`);
    loadTunNative().flush(this.handle, n);
  }

  /** Stops polling and closes the fd; a non-persistent device disappears. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const native = loadTunNative();
    if (this.handle !== null) {
      native.stop(this.handle);
      this.handle = null;
    }
    native.close(this.fd);
  }
}
