/**
 * `npm run bench`: vpnmasq against the kernel's own masquerade (nftables),
 * measured in the same run on the same lab, reported as ratios.
 * Method (perf-anchors §5): endpoints pinned to CPU 0, the NAT to CPU 1;
 * iperf3 TCP bulk (offloads on and off) and 64-byte UDP received rate.
 */
import { ChildProcess } from 'node:child_process';
import { createLab, Lab } from '../test/lab/lab';
import { RouterHandle, startRouter } from '../test/lab/router-harness';
import { engineSection } from './engine';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);

interface Result { tcpGbps: number; tcpRetrans: number; udpKpps: number; rssMiB?: number }

async function iperf(lab: Lab, args: string[]): Promise<any> {
  const r = await lab.exec(lab.ns.lan[0], ['taskset', '-c', '0', 'iperf3', '-c', lab.addr.wan[0], '-J', '-t', String(SECONDS), '-O', '1', ...args], { timeoutMs: (SECONDS + 20) * 1000 });
  if (r.code !== 0) throw new Error(`iperf3 failed: ${r.stdout.slice(0, 500)} ${r.stderr}`);
  return JSON.parse(r.stdout);
}

async function measure(lab: Lab): Promise<Result> {
  const tcp = await iperf(lab, []);
  const udp = await iperf(lab, ['-u', '-l', '18', '-b', '0']);
  const udpSum = udp.end.sum;
  const received = udpSum.packets - udpSum.lost_packets;
  return {
    tcpGbps: tcp.end.sum_received.bits_per_second / 1e9,
    tcpRetrans: tcp.end.sum_sent.retransmits ?? 0,
    udpKpps: received / udpSum.seconds / 1000,
  };
}

async function kernelMasquerade(lab: Lab, on: boolean): Promise<void> {
  const rules = on
    ? 'table ip vmqbench {\n chain masq {\n type nat hook postrouting priority 100; policy accept;\n oifname "wan0" masquerade\n }\n}'
    : 'delete table ip vmqbench';
  const r = await lab.exec(lab.ns.router, ['nft', '-f', '-'], { input: `${rules}\n` });
  if (r.code !== 0) throw new Error(`nft: ${r.stderr}`);
  await lab.exec(lab.ns.router, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
}

function rssMiB(pid: number): number {
  const status = require('node:fs').readFileSync(`/proc/${pid}/status`, 'utf8') as string;
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : NaN;
}

async function withRouter(lab: Lab, offloads: boolean): Promise<Result> {
  const router: RouterHandle = await startRouter(lab, { tun: { name: 'vmq0', mtu: 1500, offloads } });
  try {
    const pid = router.proc.pid as number;
    // The router runs `node` under `ip netns exec`; pin the whole process group to CPU 1.
    await lab.exec(lab.ns.router, ['sh', '-c', `for p in $(pgrep -g ${pid}); do taskset -a -p -c 1 $p >/dev/null; done`]);
    const r = await measure(lab);
    const nodePid = (await lab.exec(lab.ns.router, ['pgrep', '-g', String(pid), '-f', 'main.js'])).stdout.trim().split('\n')[0];
    r.rssMiB = rssMiB(Number(nodePid));
    return r;
  } finally {
    await router.stop();
  }
}

function row(name: string, r: Result, k: Result): string {
  return `${name.padEnd(28)} ${r.tcpGbps.toFixed(2).padStart(7)} Gbit/s (${(r.tcpGbps / k.tcpGbps).toFixed(2)}x)  retrans ${String(r.tcpRetrans).padStart(6)}  ` +
    `${r.udpKpps.toFixed(0).padStart(5)} kpps (${(r.udpKpps / k.udpKpps).toFixed(2)}x)${r.rssMiB ? `  RSS ${r.rssMiB.toFixed(0)} MiB` : ''}`;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('npm run bench needs root');
  engineSection();
  const lab = await createLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false });
  let server: ChildProcess | undefined;
  try {
    server = lab.spawn(lab.ns.wan[0], ['taskset', '-c', '0', 'iperf3', '-s']);
    await new Promise((r) => setTimeout(r, 500));
    await kernelMasquerade(lab, true);
    const kernel = await measure(lab);
    await kernelMasquerade(lab, false);
    const on = await withRouter(lab, true);
    const off = await withRouter(lab, false);
    console.log(`\nvpnmasq vs kernel nftables masquerade, same lab, ${SECONDS} s per run, endpoints on CPU 0, NAT on CPU 1`);
    console.log(row('kernel nftables masquerade', kernel, kernel));
    console.log(row('vpnmasq, TUN offloads on', on, kernel));
    console.log(row('vpnmasq, TUN offloads off', off, kernel));
  } finally {
    server?.kill();
    await lab.destroy();
  }
}

main().catch((e) => {
  console.error(`bench failed: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
