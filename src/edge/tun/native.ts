// Typed binding to the vpnmasq_tun N-API addon (native/tun.cc, native/notify.cc).
import fs from 'node:fs';
import path from 'node:path';
import type { TunEvent } from './device';

// TUNSETOFFLOAD flags, include/uapi/linux/if_tun.h.
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
/** UDP segmentation offload, Linux >= 6.2. */
export const TUN_F_USO4 = 0x20;
export const TUN_F_USO6 = 0x40;

/** sizeof(struct virtio_net_hdr): prefixes every read and write (defined with the header's fields in src/wire/vnet.ts). */
export { VNET_HDR_LEN } from '../../wire/vnet';

/** Indexes into the stats Float64Array that start() fills. Bytes include the vnet header. */
export const Stat = {
  RX_PACKETS: 0,
  RX_BYTES: 1,
  RX_BATCHES: 2,
  TX_PACKETS: 3,
  TX_BYTES: 4,
  /** Packets put on the native queue because write() returned EAGAIN/ENOBUFS (cumulative). */
  TX_QUEUED: 5,
  /** Packets dropped because that queue was full (4096 packets or 32 MiB). */
  TX_QUEUE_DROPS: 6,
  /** write() failures other than EAGAIN/ENOBUFS, and invalid txList entries. */
  TX_ERRORS: 7,
  /** read() failures other than EAGAIN, and poll errors (device gone). */
  RX_ERRORS: 8,
  /** onBatch threw or returned an invalid count: that batch was not written (reported to onEvent). */
  ERR_CALLBACK: 9,
  /** Current length of the native queue. */
  TX_QUEUE_LEN: 10,
} as const;
/** Minimum length of the stats array passed to start(). */
export const STATS_COUNT = 11;

export interface TunOpenResult {
  fd: number;
  /** Actual device name (the kernel picks one when the requested name is ''). */
  name: string;
  vnetHdr: boolean;
  /** TUN_F_* mask actually enabled. */
  offloads: number;
  /** Why the requested offloads could not be enabled, or null. */
  offloadError: string | null;
}

/**
 * Called once per batch of `count` packets read into arena slots [0, count)
 * (slot i at byte i*slotSize, length rxLens[i]). Returns the number n of packets
 * to write, described by txList[2k] = arena byte offset, txList[2k+1] = length.
 */
export type OnBatch = (count: number) => number;

export interface TunNative {
  /** Creates or attaches to TUN device `name` (IFF_TUN|IFF_NO_PI, plus IFF_VNET_HDR). */
  open(name: string, vnetHdr: boolean, offloadMask: number): TunOpenResult;
  /**
   * Starts polling `fd` on the Node event loop; returns a handle for flush/stop.
   * A device error stops the loop and is passed to onEvent once.
   */
  start(
    fd: number,
    arena: Uint8Array,
    slotSize: number,
    rxSlots: number,
    rxLens: Uint32Array,
    txList: Uint32Array,
    stats: Float64Array,
    onBatch: OnBatch,
    onEvent: (event: TunEvent) => void,
  ): number;
  /** Writes txList entries [0, n) now, outside a batch. */
  flush(handle: number, n: number): void;
  /** Stops polling; ignores unknown or already stopped handles. */
  stop(handle: number): void;
  /** Closes a device fd; throws while it is still polled. */
  close(fd: number): void;
  /** sd_notify: sends `message` to the datagram socket `socketPath` ('@' = abstract). */
  notify(socketPath: string, message: string): boolean;
}

const ADDON_CANDIDATES = [
  // compiled: dist/src/edge/tun/native.js
  path.join(__dirname, '../../../../build/Release/vpnmasq_tun.node'),
  // run from source: src/edge/tun/native.ts
  path.join(__dirname, '../../../build/Release/vpnmasq_tun.node'),
];

let addon: TunNative | undefined;

/** Loads the addon on first use, so importing the constants needs no build. */
export function loadTunNative(): TunNative {
  if (addon === undefined) {
    const file = ADDON_CANDIDATES.find((candidate) => fs.existsSync(candidate));
    if (file === undefined) {
      throw new Error(`vpnmasq_tun.node not found (run "npx node-gyp rebuild"); looked in ${ADDON_CANDIDATES.join(', ')}`);
    }
    addon = require(file) as TunNative;
  }
  return addon;
}
