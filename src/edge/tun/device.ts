/**
 * The TUN edge as the daemon sees it (after wireguard-go's tun.Device): one
 * or more devices whose packets are read in batches into memory the caller
 * owns, each batch handed to a sink that translates it in place, what the
 * sink lists written to the device it names, and device events reported.
 * Implemented by NativeTun (kernel devices, through native/tun.cc) and
 * FakeTun (tests: injected packets, captured writes, injected failures).
 */

/** Memory shared by the devices and the packet path, registered once at start(). */
export interface TunBuffers {
  /**
   * Receive rings at arena[0, ringBytes(queues, ringSlots, slotSize)): one ring
   * of ringSlots slots per device queue. Tx entries may point anywhere in the
   * arena; memory outside the rings is not reused by the device, and the next
   * batch is delivered only once every write from it is done.
   */
  arena: Uint8Array;
  /** Bytes per receive slot: the largest packet (vnet header included) a device may return. */
  slotSize: number;
  /** Slots per receive ring. */
  ringSlots: number;
  /**
   * The batch being delivered, packet i: rxOffs[i] = arena offset of its
   * slot, rxLens[i] = bytes read, rxDevs[i] = tag of the device it came from.
   * Their length is the largest batch.
   */
  rxOffs: Uint32Array;
  rxLens: Uint32Array;
  rxDevs: Uint8Array;
  /** Packet k to write: txList[2k] = arena offset, txList[2k + 1] = length, txDevs[k] = device tag. */
  txList: Uint32Array;
  txDevs: Uint8Array;
}

/** Bytes of the arena the receive rings take. */
export function ringBytes(queues: number, ringSlots: number, slotSize: number): number {
  return queues * ringSlots * slotSize;
}

/** The device failed or disappeared (e.g. `ip link del`): the loop reads and writes nothing more. */
export interface TunDeviceError {
  kind: 'device-error';
  /** Tag of the device that failed. */
  dev: number;
  /** The operation that met the error: 'poll', 'read', 'write' or 'io_uring_enter'. */
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
   * Called once per batch of `count` packets, described by rxOffs/rxLens/rxDevs
   * [0, count). Returns how many txList entries to write, in order per device.
   */
  onBatch(count: number): number;
  /** Device events; called on the event loop, never inside onBatch. */
  onEvent(event: TunEvent): void;
}

export interface TunDevice {
  /** Interface names by device tag. */
  readonly names: readonly string[];
  /** Receive rings, one per queue of every device: the arena must hold ringBytes(queues, ...). */
  readonly queues: number;
  /** TUN_F_* offloads enabled (the same on every device). */
  readonly offloads: number;
  /** Why the requested offloads could not be enabled, or null. */
  readonly offloadError: string | null;
  /** How the running loop does its I/O ('uring', 'threads', 'fake'), and why not io_uring when it was wanted; null before start(). */
  readonly io: { mode: string; fallback: string | null } | null;
  /** Counters indexed by Stat (src/edge/tun/native.ts), current as of the call. */
  stats(): Float64Array;
  /** Starts the packet loop; throws if closed or already started. */
  start(buffers: TunBuffers, sink: TunSink): void;
  /** Stops the loop and releases the devices. Idempotent. */
  close(): void;
}

export interface TunOptions {
  /** Interface names, by device tag. */
  names: string[];
  /** Request checksum and TSO/USO offloads (GSO super-packets up to 64 KiB). */
  offloads: boolean;
  /** Queues per device (IFF_MULTI_QUEUE when more than one); default 1. */
  queues?: number;
  /**
   * 'uring': io_uring on the translating thread (fewest system calls, no
   * thread hand-offs); 'threads': a reader and a writer thread per queue (the
   * kernel's share of the work on other cores); 'auto' (the default):
   * io_uring when the kernel offers it, else threads.
   */
  io?: 'uring' | 'threads' | 'auto';
  /** With io_uring: how long the loop spins for work before it sleeps, µs (tun.busyPollUs; default 0, never). */
  busyPollUs?: number;
}

/** Opens the daemon's TUN devices; DaemonOptions.openTun replaces it in tests. */
export type TunFactory = (options: TunOptions) => TunDevice;
