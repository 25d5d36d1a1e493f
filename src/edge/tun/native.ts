// Typed binding to the vpnmasq_tun N-API addon (native/tun.cc, native/notify.cc).
import fs from 'node:fs';
import path from 'node:path';
import type { TunBuffers, TunEvent } from './device';

// TUNSETOFFLOAD flags, include/uapi/linux/if_tun.h.
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
/** UDP segmentation offload, Linux >= 6.2. */
export const TUN_F_USO4 = 0x20;
export const TUN_F_USO6 = 0x40;

/** sizeof(struct virtio_net_hdr): prefixes every read and write (defined with the header's fields in src/wire/vnet.ts). */
export { VNET_HDR_LEN } from '../../wire/vnet';

/** Indexes into the counters stats() fills, summed over every queue of the loop. Bytes include the vnet header. */
export const Stat = {
  RX_PACKETS: 0,
  RX_BYTES: 1,
  RX_BATCHES: 2,
  TX_PACKETS: 3,
  TX_BYTES: 4,
  /** Writes that met EAGAIN/ENOBUFS and waited in their ring for the device (cumulative). */
  TX_QUEUED: 5,
  /** Packets not written because their writer's ring was full (a writer that far behind). */
  TX_QUEUE_DROPS: 6,
  /** write() failures other than EAGAIN/ENOBUFS, and invalid tx entries. */
  TX_ERRORS: 7,
  /** read() failures other than EAGAIN, and poll errors (device gone). */
  RX_ERRORS: 8,
  /** onBatch threw or returned an invalid count: that batch was not written (reported to onEvent). */
  ERR_CALLBACK: 9,
  /** Writes queued and not yet done, now. */
  TX_QUEUE_LEN: 10,
  /** Times a reader found its next slot still in use and waited (backpressure: the kernel queues or drops meanwhile). */
  RX_RING_FULL: 11,
  /**
   * io 'threads': batches by how long their oldest packet waited for the JS
   * thread, from its read until the batch was gathered: the forwarding delay
   * whatever else the event loop runs adds. With io 'uring' they stay 0 (the
   * kernel holds what arrived until the next io_uring_enter; nothing stamps it).
   */
  RX_WAIT_UNDER_64US: 12,
  RX_WAIT_UNDER_256US: 13,
  RX_WAIT_UNDER_1MS: 14,
  RX_WAIT_UNDER_4MS: 15,
  RX_WAIT_4MS_OR_MORE: 16,
  /** The longest such wait, µs. */
  RX_WAIT_MAX_US: 17,
  /** io 'uring' with tun.busyPollUs: idle moments the loop spun through and found work in (no sleep, no wakeup). */
  BUSY_POLL_HITS: 18,
  /** ... and those it spun through in vain (it then sleeps until a wakeup comes soon enough again). */
  BUSY_POLL_MISSES: 19,
} as const;
/** The RX_WAIT_* buckets in order (Stat key, and the name metrics and tests give it: "under_64us" ...). */
export const RX_WAIT_BUCKETS: ReadonlyArray<{ stat: number; name: string }> = Object.entries(Stat)
  .filter(([k]) => k.startsWith('RX_WAIT_') && k !== 'RX_WAIT_MAX_US')
  .map(([k, stat]) => ({ stat, name: k.slice('RX_WAIT_'.length).toLowerCase() }));
/** Length of the array stats() fills. */
export const STATS_COUNT = 20;

export interface TunOpenResult {
  /** One fd per queue (IFF_MULTI_QUEUE when more than one). */
  fds: number[];
  /** Actual device name (the kernel picks one when the requested name is ''). */
  name: string;
  vnetHdr: boolean;
  /** TUN_F_* mask actually enabled. */
  offloads: number;
  /** Why the requested offloads could not be enabled, or null. */
  offloadError: string | null;
}

/** How a loop does its I/O (native/tun.cc): io_uring on the JS thread, or a reader and a writer thread per queue. */
export type TunIo = 'uring' | 'threads';

/** What start() takes: see TunBuffers (src/edge/tun/device.ts) for the memory. */
/** The loop's buffers are the TunBuffers the daemon hands the device (device.ts). */
export interface LoopSpec extends TunBuffers {
  io: TunIo;
  /** Per device tag, the fds of its queues; their rings follow each other from arena byte 0. */
  devices: number[][];
  /** io 'uring': how long the loop spins for work before it sleeps, µs (0: never; ignored with 'threads'). */
  busyPollUs: number;
  onBatch: (count: number) => number;
  onEvent: (event: TunEvent) => void;
}

export interface TunNative {
  /**
   * Creates or attaches to TUN device `name` (IFF_TUN|IFF_NO_PI, plus
   * IFF_VNET_HDR) with `queues` fds; sets its tx_queue_len (the packets the
   * kernel holds for us to read) unless txQueueLen is 0.
   */
  open(name: string, vnetHdr: boolean, offloadMask: number, queues: number, txQueueLen: number): TunOpenResult;
  /**
   * Starts the loop's I/O; returns a handle for stats/stop. A device error
   * stops the loop and is passed to onEvent once. With io 'uring', throws
   * (error.code set) when the kernel refuses it (Linux < 6.7, io_uring
   * disabled, seccomp), with nothing started.
   */
  start(spec: LoopSpec): number;
  /** Fills `out` (at least STATS_COUNT long) with the loop's counters. */
  stats(handle: number, out: Float64Array): void;
  /** Stops and joins the loop's threads; ignores unknown or already stopped handles. */
  stop(handle: number): void;
  /** Closes a device fd; throws while a running loop uses it. */
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
