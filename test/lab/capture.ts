/**
 * tcpdump on a lab interface for what a router must never send a peer:
 * TCP resets, ICMP (errors among it) and packets with a private source
 * address. The filter keeps a long transfer's data out of the capture.
 */
import { ChildProcess } from 'node:child_process';
import { Lab } from './lab';

/** Resets, every ICMP packet, and private sources (RFC 1918): what a fail-closed router must not leak. */
export const SUSPECT_FILTER = 'ip and ((tcp[tcpflags] & tcp-rst != 0) or icmp or src net 10.0.0.0/8 or src net 172.16.0.0/12 or src net 192.168.0.0/16)';

export interface Packet {
  /** Seconds since the epoch (tcpdump -tt), comparable with Date.now() / 1000. */
  t: number;
  /** Source and destination addresses (without ports). */
  src: string;
  dst: string;
  /** TCP/UDP ports (0 for other protocols). */
  sport: number;
  dport: number;
  /** The rest of tcpdump's line. */
  what: string;
  line: string;
}

export interface Capture {
  /** Stops tcpdump and returns what it saw. */
  stop(): Promise<Packet[]>;
}

const LINE = /^(\d+\.\d+) IP (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))? > (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))?: (.*)$/;

/** Starts tcpdump in `ns` on `iface` and resolves once it listens (bounded). */
export async function capture(lab: Lab, ns: string, iface = 'eth0', filter = SUSPECT_FILTER): Promise<Capture> {
  // --immediate-mode: piped, tcpdump would take packets from the kernel in blocks (up to 1 s late) and print
  // the last of them only as it exits.
  const proc: ChildProcess = lab.spawn(ns, ['tcpdump', '--immediate-mode', '-l', '-n', '-tt', '-i', iface, filter]);
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  // 'close', not 'exit': the last lines tcpdump wrote are read by then.
  const exited = new Promise<void>((resolve) => proc.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tcpdump in ${ns} not listening: ${err}`)), 10000);
    proc.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      if (/listening on/.test(err)) { clearTimeout(timer); resolve(); }
    });
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`tcpdump in ${ns} exited with ${code}: ${err}`)); });
  });
  return {
    async stop() {
      proc.kill('SIGINT');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      const packets: Packet[] = [];
      for (const line of out.split('\n')) {
        const m = LINE.exec(line);
        if (m) packets.push({ t: Number(m[1]), src: m[2], sport: Number(m[3] ?? 0), dst: m[4], dport: Number(m[5] ?? 0), what: m[6], line });
      }
      return packets;
    },
  };
}

export function isReset(p: Packet): boolean {
  return /Flags \[[^\]]*R/.test(p.what);
}

/** ICMP that reports an error (everything but echo request and reply). */
export function isIcmpError(p: Packet): boolean {
  return /^ICMP /.test(p.what) && !/echo (request|reply)/.test(p.what);
}

export function isPrivateSource(p: Packet): boolean {
  const [a, b] = p.src.split('.').map(Number);
  return a === 10 || (a === 172 && b >= 16 && b < 32) || (a === 192 && b === 168);
}

/**
 * What a peer must not see from a router that is down: a reset or an ICMP
 * error from one of `box` (its addresses), or any packet with a private
 * source. Returns the offending lines within [from, to] (epoch seconds).
 */
export function leaks(packets: Packet[], box: string[], from = 0, to = Infinity): string[] {
  return packets
    .filter((p) => p.t >= from && p.t <= to)
    .filter((p) => isPrivateSource(p) || (box.includes(p.src) && (isReset(p) || isIcmpError(p))))
    .map((p) => p.line);
}
