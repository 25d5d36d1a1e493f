/**
 * `node dist/bench/ipsec-tunnels.js` (root): how long N LAN hosts take until
 * all their raw-ESP tunnels to one remote carry traffic through vpnmasq.
 * Each host runs IKEv1-style Main + Quick Mode from port 500, then sends ESP
 * every 100 ms until its own reply comes back (test/hosts/peer.py), all hosts
 * starting at the same instant; time is counted from that instant. New SPIs
 * to one remote are serialized (vpn-masquerade-spec §4.2), so the time grows
 * with N. A fresh router per run; RUNS runs per N, median and max reported.
 */
import { createLab } from '../test/lab/lab';
import { peer, peerServer, startRouter } from '../test/lab/router-harness';

const SIZES = [1, 3, 8];
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
/** All hosts start their exchange at the same instant, after every helper process is up. */
const START_DELAY_MS = 3000;

async function main(): Promise<void> {
  const lab = await createLab({ lanHosts: Math.max(...SIZES), wanHosts: 1, farHost: false });
  const lines: string[] = [];
  try {
    for (const n of SIZES) {
      const times: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        const router = await startRouter(lab);
        try {
          const srv = await peerServer(lab, lab.ns.vpnServer, ['ike-esp-responder', '--seconds', '60', '--idle', '5']);
          const startAt = (Date.now() + START_DELAY_MS) / 1000;
          const res = await Promise.all(lab.ns.lan.slice(0, n).map((ns, i) => peer(lab, ns, [
            'ike-esp-client', '--host', lab.addr.vpnServer, '--icookie', `be${run}${n}0000000000${i.toString(16).padStart(2, '0')}`.slice(0, 16),
            '--spi', String(0x10000 + (run << 8) + i), '--packets', '1', '--timeout', '30', '--start-at', String(startAt),
          ], 40000)));
          await srv.result;
          for (const r of res) if (r.error || r.flow.good !== 1 || r.foreign.length > 0) throw new Error(`tunnel failed: ${JSON.stringify(r)}\n${router.log().slice(-3000)}`);
          times.push(Math.max(...res.map((r) => r.flow.ms as number)));
        } finally {
          await router.stop();
        }
      }
      times.sort((a, b) => a - b);
      lines.push(`N=${n}: all ${n} raw-ESP tunnel(s) carry traffic after median ${times[Math.floor(times.length / 2)]} ms, max ${times[times.length - 1]} ms (runs: ${times.join(', ')})`);
    }
  } finally {
    await lab.destroy();
  }
  for (const l of lines) console.log(l);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
