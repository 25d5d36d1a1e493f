/**
 * The TUN edge as the daemon sees it (after wireguard-go's tun.Device): a
 * device that reads packets in batches into memory the caller owns, hands each
 * batch to a sink that translates it in place, writes what the sink lists, and
 * reports device events. Implemented by NativeTun (the kernel device, through
 * native/tun.cc) and FakeTun (tests: injected packets, captured writes,
 * injected failures).
 */

/** Memory shared by the device and the packet path, registered once at start(). */
export interface TunBuffers {
  /** Receive slots live at arena[0, slotSize * rxSlots); tx entries may point anywhere in the arena. */
  arena: Uint8Array;
  /** Bytes per receive slot: the largest packet (vnet header included) the device may return. */
  slotSize: number;
  rxSlots: number;
  /** rxLens[i]: bytes read into slot i (at i * slotSize) for the batch being delivered. */
  rxLens: Uint32Array;
  /** txList[2k] = arena byte offset, txList[2k + 1] = length of the k-th packet to write. */
  txList: Uint32Array;
}

/** The device failed or disappeared (e.g. `ip link del`): it reads and writes nothing more. */
export interface TunDeviceError {
  kind: 'device-error';
  /** The operation that met the error: 'poll', 'read' or 'write'. */
  op: string;
  /** errno name, e.g. EBADFD once the interface was deleted. */
  code: string;
  message: string;
}

/** onBatch threw, or returned no valid count: nothing of that batch was written. */
export interface TunCallbackError {
  kind: 'callback-error';
  error: unknown;
  /** Packets of the batch that were read and not written. */
  dropped: number;
}

export type TunEvent = TunDeviceError | TunCallbackError;

export interface TunSink {
  /**
   * Called once per batch of `count` packets in receive slots [0, count).
   * Returns how many txList entries to write, in order.
   */
  onBatch(count: number): number;
  /** Device events; called on the event loop, never inside onBatch. */
  onEvent(event: TunEvent): void;
}

export interface TunDevice {
  readonly name: string;
  /** TUN_F_* offloads enabled. */
  readonly offloads: number;
  /** Why the requested offloads could not be enabled, or null. */
  readonly offloadError: string | null;
  /** Counters indexed by Stat (src/edge/tun/native.ts). */
  readonly stats: Float64Array;
  /** Starts the packet loop; throws if closed or already started. */
  start(buffers: TunBuffers, sink: TunSink): void;
  /** Stops the loop and releases the device. Idempotent. */
  close(): void;
}

/** Opens the daemon's TUN device; DaemonOptions.openTun replaces it in tests. */
export type TunFactory = (options: { name: string; offloads: boolean }) => TunDevice;
