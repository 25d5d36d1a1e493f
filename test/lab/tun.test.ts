// Lab test of the TUN addon (native/tun.cc) through NativeTun. Needs root,
// /dev/net/tun and iproute2; fails at once otherwise. Each run creates its own network
// namespace and removes it afterwards.
//
// The namespace side runs as child processes of this same file, selected by
// VMQTUN_ROLE: a "router" that opens the TUN and answers UDP echo and TCP
// (handshake + ACKs) for PEER_ADDR, and UDP/TCP clients that generate traffic.
// Children report to the test as JSON lines on stdout.
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import readline from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { Stat, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN } from '../../src/edge/tun/native';
import { ringBytes, type TunEvent } from '../../src/edge/tun/device';
import { NativeTun } from '../../src/edge/tun/native-tun';
import type { TunIo } from '../../src/edge/tun/native';
import { requireRoot } from './lab';

requireRoot();

const ROLE_ENV = 'VMQTUN_ROLE';
/** Comma-separated device names: their tags are their positions. */
const DEV_ENV = 'VMQTUN_DEV';
const OFFLOADS_ENV = 'VMQTUN_OFFLOADS';
const QUEUES_ENV = 'VMQTUN_QUEUES';
/** Device tag every reply is written to (default: the device the request came from). */
const TXDEV_ENV = 'VMQTUN_TXDEV';
/** Address the UDP client sends to (default PEER_ADDR). */
const PEER_ENV = 'VMQTUN_PEER';
/** The loop's I/O: 'uring' or 'threads'. */
const IO_ENV = 'VMQTUN_IO';

const TUN_ADDR = '10.99.0.1';
const TUN_PREFIX = 24;
/** Routed into the TUN; the router answers for it. */
const PEER_ADDR = '10.99.0.2';
const UDP_ECHO_PORT = 7;
const UDP_PAYLOAD = 'vpnmasq tun echo';
const UDP_RESEND_MS = 200;
/** Datagrams a burst client sends at once: more than the ring has slots. */
const BURST_ENV = 'VMQTUN_BURST';
/** Exchanges a ping-pong client makes: one datagram in flight, the next when its echo came back. */
const EXCHANGES_ENV = 'VMQTUN_EXCHANGES';
/** The loop's tun.busyPollUs (default 0). */
const BUSYPOLL_ENV = 'VMQTUN_BUSYPOLL';
/** Idle time between bursts: the loop goes back to sleep on its wakeup. */
const BURST_GAP_MS = 300;
const TCP_SINK_PORT = 5001;
const TCP_SEND_BYTES = 256 * 1024;
const TCP_SERVER_ISN = 0x10000000;
const TCP_WINDOW = 65535;
const MTU = 1500;
const TCP_MSS = MTU - 40;

/** One slot holds a GSO super-packet: virtio_net_hdr + up to 64 KiB. */
const SLOT_SIZE = VNET_HDR_LEN + 65535;
const RING_SLOTS = 16;
const BATCH = 16;

const STEP_TIMEOUT_MS = 5000;
const COMMAND_TIMEOUT_MS = 5000;
const CLIENT_LIFETIME_MS = 15000;
const KILL_WAIT_MS = 2000;

const IPV4_HDR_LEN = 20;
const UDP_HDR_LEN = 8;
const TCP_HDR_LEN = 20;
const TCP_MSS_OPTION_LEN = 4;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IP_DF = 0x4000;
const IP_TTL = 64;
const TCP_FLAG_SYN = 0x02;
const TCP_FLAG_ACK = 0x10;
const TCP_OPT_MSS = 2;
// include/uapi/linux/virtio_net.h
const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// ---------------------------------------------------------------- packets

interface RxSummary {
  len: number;
  /** virtio_net_hdr fields */
  flags: number;
  gsoType: number;
  gsoSize: number;
  /** IPv4 fields; version is 0 when the packet is too short */
  version: number;
  ihl: number;
  totalLen: number;
  ipChecksumOk: boolean;
  proto: number;
  src: string;
  dst: string;
  dport: number;
}

function onesComplementSum(view: DataView, start: number, len: number, initial: number): number {
  let sum = initial;
  for (let i = 0; i + 1 < len; i += 2) sum += view.getUint16(start + i);
  if (len & 1) sum += view.getUint8(start + len - 1) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** Full TCP/UDP checksum over the IPv4 pseudo-header and the segment. */
function l4Checksum(view: DataView, src: number, dst: number, proto: number, start: number, len: number): number {
  const pseudo = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
  return ~onesComplementSum(view, start, len, pseudo) & 0xffff;
}

function formatIpv4(addr: number): string {
  return [addr >>> 24, (addr >>> 16) & 0xff, (addr >>> 8) & 0xff, addr & 0xff].join('.');
}

function summarize(view: DataView, off: number, len: number): RxSummary {
  const ip = off + VNET_HDR_LEN;
  const summary: RxSummary = {
    len,
    flags: view.getUint8(off),
    gsoType: view.getUint8(off + 1),
    gsoSize: view.getUint16(off + 4, true), // host (little-endian) byte order
    version: 0,
    ihl: 0,
    totalLen: 0,
    ipChecksumOk: false,
    proto: 0,
    src: '',
    dst: '',
    dport: 0,
  };
  if (len < VNET_HDR_LEN + IPV4_HDR_LEN) return summary;
  summary.version = view.getUint8(ip) >> 4;
  if (summary.version !== 4) return summary;
  summary.ihl = (view.getUint8(ip) & 0x0f) * 4;
  summary.totalLen = view.getUint16(ip + 2);
  summary.ipChecksumOk = onesComplementSum(view, ip, summary.ihl, 0) === 0xffff;
  summary.proto = view.getUint8(ip + 9);
  summary.src = formatIpv4(view.getUint32(ip + 12));
  summary.dst = formatIpv4(view.getUint32(ip + 16));
  if (len >= VNET_HDR_LEN + summary.ihl + 4) summary.dport = view.getUint16(ip + summary.ihl + 2);
  return summary;
}

/** Writes an option-less IPv4 header with a valid checksum. */
function writeIpv4Header(view: DataView, ip: number, totalLen: number, proto: number, src: number, dst: number): void {
  view.setUint8(ip, 0x45);
  view.setUint8(ip + 1, 0);
  view.setUint16(ip + 2, totalLen);
  view.setUint16(ip + 4, 0);
  view.setUint16(ip + 6, IP_DF);
  view.setUint8(ip + 8, IP_TTL);
  view.setUint8(ip + 9, proto);
  view.setUint16(ip + 10, 0);
  view.setUint32(ip + 12, src);
  view.setUint32(ip + 16, dst);
  view.setUint16(ip + 10, ~onesComplementSum(view, ip, IPV4_HDR_LEN, 0) & 0xffff);
}

/**
 * Turns the packet in the slot at `off` into the reply the peer would send, in
 * place, with complete checksums and a zero vnet header (no offload requested).
 * Returns the reply length including the vnet header, or 0 for no reply.
 */
function answer(arena: Uint8Array, view: DataView, off: number, len: number): number {
  const ip = off + VNET_HDR_LEN;
  if (len < VNET_HDR_LEN + IPV4_HDR_LEN || view.getUint8(ip) >> 4 !== 4) return 0;
  const ihl = (view.getUint8(ip) & 0x0f) * 4;
  const proto = view.getUint8(ip + 9);
  const src = view.getUint32(ip + 12);
  const dst = view.getUint32(ip + 16);
  const l4 = ip + ihl;
  const l4Len = len - VNET_HDR_LEN - ihl;
  const reply = ip + IPV4_HDR_LEN;
  let replyL4Len: number;

  if (proto === IPPROTO_UDP && l4Len >= UDP_HDR_LEN && view.getUint16(l4 + 2) === UDP_ECHO_PORT) {
    const sport = view.getUint16(l4);
    const udpLen = view.getUint16(l4 + 4);
    arena.copyWithin(reply, l4, l4 + udpLen); // drops any IP options
    view.setUint16(reply, UDP_ECHO_PORT);
    view.setUint16(reply + 2, sport);
    view.setUint16(reply + 6, 0);
    view.setUint16(reply + 6, l4Checksum(view, dst, src, IPPROTO_UDP, reply, udpLen) || 0xffff);
    replyL4Len = udpLen;
  } else if (proto === IPPROTO_TCP && l4Len >= TCP_HDR_LEN && view.getUint16(l4 + 2) === TCP_SINK_PORT) {
    const sport = view.getUint16(l4);
    const seq = view.getUint32(l4 + 4);
    const dataOffset = (view.getUint8(l4 + 12) >> 4) * 4;
    const tcpFlags = view.getUint8(l4 + 13);
    const payloadLen = l4Len - dataOffset;
    const isSyn = (tcpFlags & TCP_FLAG_SYN) !== 0 && (tcpFlags & TCP_FLAG_ACK) === 0;
    if (!isSyn && payloadLen <= 0) return 0;
    replyL4Len = TCP_HDR_LEN + (isSyn ? TCP_MSS_OPTION_LEN : 0);
    view.setUint16(reply, TCP_SINK_PORT);
    view.setUint16(reply + 2, sport);
    view.setUint32(reply + 4, isSyn ? TCP_SERVER_ISN : TCP_SERVER_ISN + 1);
    view.setUint32(reply + 8, (seq + (isSyn ? 1 : payloadLen)) >>> 0);
    view.setUint8(reply + 12, (replyL4Len / 4) << 4);
    view.setUint8(reply + 13, isSyn ? TCP_FLAG_SYN | TCP_FLAG_ACK : TCP_FLAG_ACK);
    view.setUint16(reply + 14, TCP_WINDOW);
    view.setUint16(reply + 16, 0);
    view.setUint16(reply + 18, 0);
    if (isSyn) {
      view.setUint8(reply + 20, TCP_OPT_MSS);
      view.setUint8(reply + 21, TCP_MSS_OPTION_LEN);
      view.setUint16(reply + 22, TCP_MSS);
    }
    view.setUint16(reply + 16, l4Checksum(view, dst, src, IPPROTO_TCP, reply, replyL4Len));
  } else {
    return 0;
  }
  writeIpv4Header(view, ip, IPV4_HDR_LEN + replyL4Len, proto, dst, src);
  arena.fill(0, off, ip); // virtio_net_hdr: flags 0, GSO_NONE
  return VNET_HDR_LEN + IPV4_HDR_LEN + replyL4Len;
}

// ---------------------------------------------------------------- child roles

type ChildEvent =
  | { event: 'opened'; name: string; offloads: number; offloadError: string | null }
  | ({ event: 'rx'; dev: number } & RxSummary)
  | { event: 'closed'; stats: number[] }
  | { event: 'tun-event'; tunEvent: Exclude<TunEvent, { kind: 'callback-error' }> | { kind: 'callback-error'; message: string; dropped: number }; stats: number[] }
  | { event: 'udp-reply'; from: string; port: number; payload: string }
  | { event: 'udp-burst'; sent: number; replies: number }
  | { event: 'udp-pingpong'; sent: number; replies: number }
  | { event: 'tcp-connected' };

function emit(e: ChildEvent): void {
  process.stdout.write(`${JSON.stringify(e)}\n`);
}

/** Opens the TUN devices into one loop, answers traffic; stdin "close" closes them, end of stdin exits. */
function runRouter(): void {
  const dev = NativeTun.open({
    names: (process.env[DEV_ENV] ?? '').split(','),
    offloads: process.env[OFFLOADS_ENV] === '1',
    queues: Number(process.env[QUEUES_ENV] ?? 1),
    io: process.env[IO_ENV] as TunIo,
    busyPollUs: Number(process.env[BUSYPOLL_ENV] ?? 0),
  });
  const txDev = process.env[TXDEV_ENV] === undefined ? -1 : Number(process.env[TXDEV_ENV]);
  const arena = new Uint8Array(ringBytes(dev.queues, RING_SLOTS, SLOT_SIZE));
  const view = new DataView(arena.buffer);
  const rxOffs = new Uint32Array(BATCH);
  const rxLens = new Uint32Array(BATCH);
  const rxDevs = new Uint8Array(BATCH);
  const txList = new Uint32Array(2 * BATCH);
  const txDevs = new Uint8Array(BATCH);
  dev.start({ arena, slotSize: SLOT_SIZE, ringSlots: RING_SLOTS, rxOffs, rxLens, rxDevs, txList, txDevs }, {
    onBatch: (count) => {
      let n = 0;
      for (let i = 0; i < count; i++) {
        const off = rxOffs[i];
        emit({ event: 'rx', dev: rxDevs[i], ...summarize(view, off, rxLens[i]) });
        const replyLen = answer(arena, view, off, rxLens[i]);
        if (replyLen > 0) {
          txList[2 * n] = off;
          txList[2 * n + 1] = replyLen;
          txDevs[n] = txDev >= 0 ? txDev : rxDevs[i];
          n++;
        }
      }
      return n;
    },
    onEvent: (e) => {
      const tunEvent = e.kind === 'callback-error' ? { kind: e.kind, message: String(e.error), dropped: e.dropped } : e;
      emit({ event: 'tun-event', tunEvent, stats: Array.from(dev.stats()) });
    },
  });
  if (dev.io?.mode !== process.env[IO_ENV]) throw new Error(`loop runs io ${JSON.stringify(dev.io)}, not ${process.env[IO_ENV]}`);
  emit({ event: 'opened', name: dev.names.join(','), offloads: dev.offloads, offloadError: dev.offloadError });

  const input = readline.createInterface({ input: process.stdin });
  input.on('line', (line) => {
    if (line !== 'close') return;
    dev.close();
    emit({ event: 'closed', stats: Array.from(dev.stats()) });
  });
  input.on('close', () => {
    dev.close();
    process.exit(0);
  });
}

/** Sends UDP_PAYLOAD to PEER_ADDR until the echo comes back. */
function runUdpClient(): void {
  const sock = dgram.createSocket('udp4');
  const peer = process.env[PEER_ENV] ?? PEER_ADDR;
  const send = (): void => sock.send(UDP_PAYLOAD, UDP_ECHO_PORT, peer);
  sock.on('message', (msg, rinfo) => {
    emit({ event: 'udp-reply', from: rinfo.address, port: rinfo.port, payload: msg.toString() });
    process.exit(0);
  });
  send();
  setInterval(send, UDP_RESEND_MS);
  setTimeout(() => process.exit(1), STEP_TIMEOUT_MS);
}

/** Sends BURST_ENV datagrams to PEER_ADDR in one go (no resend) and counts the echoes. */
function runUdpBurst(): void {
  const sock = dgram.createSocket('udp4');
  const sent = Number(process.env[BURST_ENV]);
  const seen = new Set<string>();
  const report = (): never => {
    emit({ event: 'udp-burst', sent, replies: seen.size });
    process.exit(0);
  };
  sock.on('message', (msg) => {
    seen.add(msg.toString());
    if (seen.size === sent) report();
  });
  sock.bind(() => {
    for (let i = 0; i < sent; i++) sock.send(`${UDP_PAYLOAD} ${i}`, UDP_ECHO_PORT, PEER_ADDR);
  });
  setTimeout(report, STEP_TIMEOUT_MS / 2);
}

/** Sends EXCHANGES_ENV datagrams to PEER_ADDR one at a time, each when the echo of the one before came back. */
function runUdpPingPong(): void {
  const sock = dgram.createSocket('udp4');
  const sent = Number(process.env[EXCHANGES_ENV]);
  let replies = 0;
  const report = (): never => {
    emit({ event: 'udp-pingpong', sent, replies });
    process.exit(0);
  };
  sock.on('message', () => {
    if (++replies === sent) report();
    sock.send(`${UDP_PAYLOAD} ${replies}`, UDP_ECHO_PORT, PEER_ADDR);
  });
  sock.bind(() => sock.send(`${UDP_PAYLOAD} 0`, UDP_ECHO_PORT, PEER_ADDR));
  setTimeout(report, STEP_TIMEOUT_MS / 2);
}

/** Connects to PEER_ADDR and writes TCP_SEND_BYTES in one go, then idles. */
function runTcpClient(): void {
  const sock = net.connect(TCP_SINK_PORT, PEER_ADDR, () => {
    emit({ event: 'tcp-connected' });
    sock.write('a'.repeat(TCP_SEND_BYTES));
  });
  sock.on('error', (err) => {
    process.stderr.write(`tcp client: ${err.message}\n`);
    process.exit(1);
  });
  setTimeout(() => process.exit(0), CLIENT_LIFETIME_MS);
}

const ROLES: Record<string, () => void> = {
  router: runRouter,
  'udp-client': runUdpClient,
  'udp-burst': runUdpBurst,
  'udp-pingpong': runUdpPingPong,
  'tcp-client': runTcpClient,
};

// ---------------------------------------------------------------- test side

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] });
}

function linkExists(ns: string, dev: string): boolean {
  try {
    ip('-n', ns, 'link', 'show', 'dev', dev);
    return true;
  } catch {
    return false;
  }
}

type EventOf<K extends ChildEvent['event']> = Extract<ChildEvent, { event: K }>;

/** A child of this file running `role` inside network namespace `ns`. */
class NsChild {
  readonly events: ChildEvent[] = [];
  readonly exited: Promise<void>;
  private readonly child: ChildProcess;
  private stderr = '';
  private readonly listeners = new Set<() => void>();

  constructor(
    ns: string,
    readonly role: string,
    env: Record<string, string> = {},
  ) {
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env, [ROLE_ENV]: role };
    delete childEnv.NODE_TEST_CONTEXT; // the child is not a test file
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, __filename], {
      env: childEnv,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    readline.createInterface({ input: this.child.stdout! }).on('line', (line) => {
      this.events.push(JSON.parse(line) as ChildEvent);
      this.notify();
    });
    this.child.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
    });
    this.exited = new Promise((resolve) => {
      this.child.on('close', () => {
        this.notify();
        resolve();
      });
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get exitCode(): number | null {
    return this.child.exitCode;
  }

  /** First event of kind `kind` matching `pred`, waiting up to timeoutMs. */
  waitFor<K extends ChildEvent['event']>(
    kind: K,
    pred: (e: EventOf<K>) => boolean = () => true,
    timeoutMs = STEP_TIMEOUT_MS,
  ): Promise<EventOf<K>> {
    const find = (): EventOf<K> | undefined =>
      this.events.find((e): e is EventOf<K> => e.event === kind && pred(e as EventOf<K>));
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = find();
        if (found !== undefined) done(() => resolve(found));
        else if (!this.running) done(() => reject(this.failure(`exited before '${kind}'`)));
      };
      const timer = setTimeout(() => done(() => reject(this.failure(`no '${kind}' within ${timeoutMs} ms`))), timeoutMs);
      const done = (settle: () => void): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
        settle();
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Resolves once the child exits, or rejects after timeoutMs. */
  async waitExit(timeoutMs = STEP_TIMEOUT_MS): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(this.failure(`still running after ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }

  endInput(): void {
    this.child.stdin!.end();
  }

  async kill(): Promise<void> {
    if (this.running) this.child.kill('SIGKILL');
    await this.waitExit(KILL_WAIT_MS).catch(() => undefined);
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }

  private failure(what: string): Error {
    return new Error(`${this.role} ${what}; exit ${this.child.exitCode}; stderr: ${this.stderr.trim() || '(empty)'}`);
  }
}

function isUdpEchoRequest(e: RxSummary, peer = PEER_ADDR): boolean {
  return e.proto === IPPROTO_UDP && e.dport === UDP_ECHO_PORT && e.dst === peer;
}

/** The kernel's receive counter of a TUN device: packets written to it by the loop. */
function kernelRxPackets(ns: string, dev: string): number {
  const [link] = JSON.parse(ip('-n', ns, '-s', '-j', 'link', 'show', 'dev', dev)) as Array<{ stats64: { rx: { packets: number } } }>;
  return link.stats64.rx.packets;
}

function assertValidIpv4(e: RxSummary): void {
  assert.equal(e.version, 4);
  assert.ok(e.ihl >= IPV4_HDR_LEN, `ihl ${e.ihl}`);
  assert.equal(e.totalLen, e.len - VNET_HDR_LEN, 'IPv4 total length = read length - vnet header');
  assert.ok(e.ipChecksumOk, 'IPv4 header checksum');
}

function registerTests(io: TunIo): void {
  describe(`TUN device in a network namespace, io ${io}`, { timeout: 60_000 }, () => {
    const suffix = randomBytes(4).toString('hex');
    const ns = `vmqtun-${suffix}`;
    const children: NsChild[] = [];
    let nsCreated = false;

    const startChild = (role: string, env?: Record<string, string>): NsChild => {
      const child = new NsChild(ns, role, { [IO_ENV]: io, ...env });
      children.push(child);
      return child;
    };

    /** Assigns 10.99.<subnet>.1 (TUN_ADDR for subnet 0), brings the device up, and checks a UDP round trip to .2. */
    const udpRoundTrip = async (router: NsChild, dev: string, subnet = 0): Promise<EventOf<'rx'>> => {
      const local = `10.99.${subnet}.1`;
      const peer = `10.99.${subnet}.2`;
      ip('-n', ns, 'addr', 'add', `${local}/${TUN_PREFIX}`, 'dev', dev);
      ip('-n', ns, 'link', 'set', dev, 'up');
      const client = startChild('udp-client', { [PEER_ENV]: peer });
      const request = await router.waitFor('rx', (e) => isUdpEchoRequest(e, peer));
      assert.equal(request.src, local);
      assertValidIpv4(request);
      const reply = await client.waitFor('udp-reply');
      assert.deepEqual(reply, { event: 'udp-reply', from: peer, port: UDP_ECHO_PORT, payload: UDP_PAYLOAD });
      return request;
    };

    /** Closes the device through the router and checks it is gone while the router still runs. */
    const closeAndCheck = async (router: NsChild, dev: string): Promise<number[]> => {
      router.send('close');
      const { stats } = await router.waitFor('closed');
      assert.ok(router.running, 'router still running');
      assert.equal(linkExists(ns, dev), false, `${dev} removed`);
      router.endInput();
      await router.waitExit();
      assert.equal(router.exitCode, 0);
      assert.equal(stats[Stat.ERR_CALLBACK], 0, 'onBatch errors');
      assert.equal(stats[Stat.RX_ERRORS], 0, 'rx errors');
      assert.equal(stats[Stat.TX_ERRORS], 0, 'tx errors');
      assert.equal(stats[Stat.TX_QUEUE_DROPS], 0, 'tx queue drops');
      return stats;
    };

    before(() => {
      ip('netns', 'add', ns);
      nsCreated = true;
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    });

    after(async () => {
      await Promise.all(children.map((c) => c.kill()));
      if (nsCreated) ip('netns', 'del', ns);
    });

    describe('with offloads', () => {
      const dev = `vmq${suffix}o`;
      let router: NsChild;

      it('(a) reports CSUM|TSO4|TSO6 and the device appears in the namespace', async () => {
        router = startChild('router', { [DEV_ENV]: dev, [OFFLOADS_ENV]: '1' });
        const opened = await router.waitFor('opened');
        const required = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        assert.equal(opened.name, dev);
        assert.equal(opened.offloads & required, required, `offloads 0x${opened.offloads.toString(16)}`);
        assert.equal(opened.offloadError, null);
        assert.ok(linkExists(ns, dev), `${dev} in ip -n ${ns} link`);
        assert.match(ip('-n', ns, 'link', 'show', 'dev', dev), / qlen 1000\b/, 'the kernel queues up to 1000 packets for the loop');
      });

      it('(b, c) a UDP datagram arrives with vnet header + IPv4; the written reply is received', async () => {
        const request = await udpRoundTrip(router, dev);
        assert.equal(request.gsoType, 0);
      });

      it('(d) a bulk TCP send yields a GSO super-packet (> MTU, gso_type TCPV4)', async () => {
        const client = startChild('tcp-client');
        await client.waitFor('tcp-connected');
        const isSuperPacket = (e: RxSummary): boolean =>
          e.proto === IPPROTO_TCP && e.dport === TCP_SINK_PORT && e.len - VNET_HDR_LEN > MTU;
        const gso = await router.waitFor('rx', isSuperPacket);
        assert.equal(gso.gsoType & ~VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4);
        assert.ok(gso.gsoSize > 0 && gso.gsoSize <= TCP_MSS, `gso_size ${gso.gsoSize}`);
        assert.equal(gso.src, TUN_ADDR);
        assertValidIpv4(gso);
        await client.kill();
      });

      it('(e) close() removes the device', async () => {
        const stats = await closeAndCheck(router, dev);
        assert.ok(stats[Stat.RX_PACKETS] >= 3, `rx packets ${stats[Stat.RX_PACKETS]}`);
        assert.ok(stats[Stat.TX_PACKETS] >= 2, `tx packets ${stats[Stat.TX_PACKETS]}`);
      });
    });

    describe('several queues and devices in one loop', () => {
      it('(h) a multi-queue device (IFF_MULTI_QUEUE, 2 queues): each queue is read and written', async () => {
        const dev = `vmq${suffix}m`;
        const router = startChild('router', { [DEV_ENV]: dev, [OFFLOADS_ENV]: '1', [QUEUES_ENV]: '2' });
        await router.waitFor('opened');
        assert.match(ip('-n', ns, '-d', 'link', 'show', 'dev', dev), /multi_queue/);
        await udpRoundTrip(router, dev);
        await closeAndCheck(router, dev);
      });

      it('(i) two devices feed one loop: each packet carries the tag of the device it came from, replies go back on it', async () => {
        const [a, b] = [`vmq${suffix}a`, `vmq${suffix}b`];
        const router = startChild('router', { [DEV_ENV]: `${a},${b}`, [OFFLOADS_ENV]: '1' });
        assert.equal((await router.waitFor('opened')).name, `${a},${b}`);
        assert.equal((await udpRoundTrip(router, a, 0)).dev, 0);
        assert.equal((await udpRoundTrip(router, b, 1)).dev, 1);
        assert.ok(kernelRxPackets(ns, a) >= 1 && kernelRxPackets(ns, b) >= 1, 'each reply written to its own device');
        // More packets than the second device's ring holds: its slots are handed back to its own ring and reused.
        for (let k = 0; k < 2 * RING_SLOTS; k++) {
          const client = startChild('udp-client', { [PEER_ENV]: '10.99.1.2' });
          await client.waitFor('udp-reply');
        }
        router.send('close');
        await router.waitFor('closed');
        assert.equal(linkExists(ns, a) || linkExists(ns, b), false, 'both devices removed');
        router.endInput();
        await router.waitExit();
      });

      it('(j) a write goes to the device the tx entry names', async () => {
        const [a, b] = [`vmq${suffix}c`, `vmq${suffix}e`];
        const router = startChild('router', { [DEV_ENV]: `${a},${b}`, [OFFLOADS_ENV]: '1', [TXDEV_ENV]: '0' });
        await router.waitFor('opened');
        assert.equal((await udpRoundTrip(router, a, 0)).dev, 0);
        const written = kernelRxPackets(ns, a);
        // Device b's request is answered through device a: the kernel delivers it to the local client all the same.
        assert.equal((await udpRoundTrip(router, b, 1)).dev, 1);
        assert.equal(kernelRxPackets(ns, b), 0, `nothing written to ${b}`);
        assert.ok(kernelRxPackets(ns, a) > written, `the reply was written to ${a}`);
        await closeAndCheck(router, a);
      });
    });

    describe('bursts larger than the ring', () => {
      const dev = `vmq${suffix}r`;

      it('(k) every slot taken by a write at once, then an idle gap: the reads resume and every burst is answered', async () => {
        const router = startChild('router', { [DEV_ENV]: dev, [OFFLOADS_ENV]: '1' });
        await router.waitFor('opened');
        await udpRoundTrip(router, dev);
        const burst = 4 * RING_SLOTS;
        for (let round = 0; round < 3; round++) {
          await new Promise((r) => setTimeout(r, BURST_GAP_MS));
          const client = startChild('udp-burst', { [BURST_ENV]: String(burst) });
          const result = await client.waitFor('udp-burst');
          assert.deepEqual(result, { event: 'udp-burst', sent: burst, replies: burst }, `burst ${round}`);
        }
        const stats = await closeAndCheck(router, dev);
        assert.ok(stats[Stat.TX_PACKETS] >= 3 * burst + 1, `tx packets ${stats[Stat.TX_PACKETS]}`);
      });
    });

    describe('busy polling', () => {
      // A spin ends a wait before the wakeup would: the exchanges' echoes all come back either way, and only
      // io_uring with tun.busyPollUs spins (one in flight and a 1 ms spin: most gaps are far shorter).
      for (const busyPollUs of [1000, 0]) {
        const dev = `vmq${suffix}b${busyPollUs > 0 ? 'y' : 'n'}`;
        const spins = io === 'uring' && busyPollUs > 0;
        it(`(l) busyPollUs ${busyPollUs}: request after response, every echo back, ${spins ? 'the loop spins and finds work' : 'no spin'}`, async () => {
          const router = startChild('router', { [DEV_ENV]: dev, [OFFLOADS_ENV]: '1', [BUSYPOLL_ENV]: String(busyPollUs) });
          await router.waitFor('opened');
          await udpRoundTrip(router, dev);
          const client = startChild('udp-pingpong', { [EXCHANGES_ENV]: '300' });
          assert.deepEqual(await client.waitFor('udp-pingpong'), { event: 'udp-pingpong', sent: 300, replies: 300 });
          const stats = await closeAndCheck(router, dev);
          const counts = `hits ${stats[Stat.BUSY_POLL_HITS]}, misses ${stats[Stat.BUSY_POLL_MISSES]}`;
          if (spins) assert.ok(stats[Stat.BUSY_POLL_HITS] > 0, counts);
          else assert.equal(stats[Stat.BUSY_POLL_HITS] + stats[Stat.BUSY_POLL_MISSES], 0, counts);
        });
      }
    });

    describe('device removed under the loop', () => {
      const dev = `vmq${suffix}d`;

      it('(g) ip link del: the loop reports a device error once and stops; close() still works', async () => {
        const router = startChild('router', { [DEV_ENV]: dev, [OFFLOADS_ENV]: '1' });
        await router.waitFor('opened');
        await udpRoundTrip(router, dev);
        ip('-n', ns, 'link', 'del', dev);
        const { tunEvent, stats } = await router.waitFor('tun-event');
        assert.equal(tunEvent.kind, 'device-error');
        assert.ok(tunEvent.kind === 'device-error');
        assert.equal(tunEvent.code, 'EBADFD', JSON.stringify(tunEvent));
        assert.match(tunEvent.message, /File descriptor in bad state/);
        assert.ok(stats[Stat.RX_ERRORS] >= 1, `rx errors ${stats[Stat.RX_ERRORS]}`);
        assert.ok(router.running, 'router still running: the owner decides what to do');
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(router.events.filter((e) => e.event === 'tun-event').length, 1, 'reported once, no busy loop');
        router.send('close');
        await router.waitFor('closed');
        router.endInput();
        await router.waitExit();
        assert.equal(router.exitCode, 0);
      });
    });

    describe('without offloads', () => {
      const dev = `vmq${suffix}p`;

      it('(f) opens with offloads 0 and still round-trips UDP with complete checksums', async () => {
        const router = startChild('router', { [DEV_ENV]: dev, [OFFLOADS_ENV]: '0' });
        const opened = await router.waitFor('opened');
        assert.equal(opened.name, dev);
        assert.equal(opened.offloads, 0);
        assert.equal(opened.offloadError, null);
        const request = await udpRoundTrip(router, dev);
        assert.equal(request.flags, 0, 'no VIRTIO_NET_HDR_F_NEEDS_CSUM without TUN_F_CSUM');
        assert.equal(request.gsoType, 0);
        await closeAndCheck(router, dev);
      });
    });
  });
}

const role = process.env[ROLE_ENV];
if (role === undefined) {
  for (const io of ['uring', 'threads'] as const) registerTests(io);
} else {
  const run = ROLES[role];
  if (run === undefined) throw new Error(`unknown ${ROLE_ENV} ${role}`);
  run();
}
