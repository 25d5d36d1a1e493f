/**
 * `npm run demo`: builds a lab of network namespaces, runs vpnmasq in it,
 * sends ping, TCP and UDP from two LAN hosts to two WAN hosts, prints the
 * connection table and the counters, and tears everything down.
 * `npm run demo -- --keep` leaves the lab and the router running until Ctrl-C.
 */
import { createLab, Lab } from '../test/lab/lab';
import { peer, peerServer, PPTP_HOST, RouterHandle, startRouter } from '../test/lab/router-harness';
import { formatConnTable } from '../src/cli/format';
import { ConnRow } from '../src/query/rows';

const keep = process.argv.includes('--keep');

function say(text: string): void {
  process.stdout.write(`\n== ${text}\n`);
}

async function traffic(lab: Lab): Promise<void> {
  say('ping from both LAN hosts to both WAN hosts');
  for (const l of lab.ns.lan) {
    for (const w of lab.addr.wan) {
      const r = await lab.ping(l, w, { count: 2 });
      console.log(`  ${l} -> ${w}: ${r.received}/${r.sent} replies`);
    }
  }

  say('UDP from both LAN hosts; the WAN host reports the source it saw');
  const udp = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '5353', '--count', '2']);
  for (const l of lab.ns.lan) {
    const r = await peer(lab, l, ['udp-client', '--host', lab.addr.wan[0], '--port', '5353', '--sport', '5000']);
    console.log(`  ${l} sent from ${r.local}; ${lab.addr.wan[0]} saw ${r.reply.peer}`);
  }
  await udp.result;

  say('TCP: 20 MB from each LAN host, checked by SHA-256 at the far end');
  const tcp = await peerServer(lab, lab.ns.wan[1], ['tcp-server', '--port', '8080', '--count', '2', '--timeout', '60']);
  const results = await Promise.all(lab.ns.lan.map((l) =>
    peer(lab, l, ['tcp-client', '--host', lab.addr.wan[1], '--port', '8080', '--bytes', String(20 << 20), '--timeout', '60'], 90000)));
  await tcp.result;
  for (const r of results) {
    console.log(`  ${r.local} -> ${r.remote}: server saw ${r.reply.peer}, ${r.reply.bytes} bytes, hash ${r.reply.sha256 === r.sha256 ? 'matches' : 'DIFFERS'}`);
  }
}

/** IPsec without NAT-T and PPTP from both LAN hosts to the VPN server host, all at once. */
async function vpnTraffic(lab: Lab): Promise<void> {
  say('IPsec without NAT-T: both LAN hosts run IKE from port 500 and raw ESP to one remote');
  const ike = await peerServer(lab, lab.ns.vpnServer, ['ike-esp-responder', '--seconds', '20', '--idle', '3']);
  const cookies = ['d0d0d0d000000001', 'd0d0d0d000000002'];
  const esp = await Promise.all(lab.ns.lan.map((l, i) =>
    peer(lab, l, ['ike-esp-client', '--host', lab.addr.vpnServer, '--icookie', cookies[i], '--spi', String(0x2000 + i), '--packets', '5', '--timeout', '20'], 30000)));
  const seen = JSON.parse((await ike.result).trim().split('\n').pop() as string);
  esp.forEach((r, i) => console.log(`  ${lab.ns.lan[i]} cookie ${cookies[i]} SPI 0x${(0x2000 + i).toString(16)}: ${r.flow?.good ?? 0} ESP replies back, foreign ${JSON.stringify(r.foreign ?? [])}`));
  console.log(`  the remote saw ISAKMP from ${seen.ikeFrom.join(', ')}`);

  say('PPTP: both LAN hosts call one server with the same Call ID 0x1234');
  const pptp = await peerServer(lab, lab.ns.vpnServer, ['server', '--seconds', '15', '--clients', '2'], PPTP_HOST);
  const calls = await Promise.all(lab.ns.lan.map((l) =>
    peer(lab, l, ['client', '--server', lab.addr.vpnServer, '--call-id', String(0x1234), '--gre-count', '3', '--seconds', '8'], 20000, PPTP_HOST)));
  const srv = JSON.parse((await pptp.result).trim().split('\n').pop() as string);
  calls.forEach((r, i) => console.log(`  ${lab.ns.lan[i]}: ${r.calls.map((c: any) => `call 0x${c.callId.toString(16)} result ${c.result}, GRE back ${c.dataBack} data + ${c.ackBack} ack`).join('; ')}`));
  const seenIds = (srv.connections as Array<{ peer: string; callIds: number[] }>).map((c) => `${c.callIds.map((id) => `0x${id.toString(16)}`).join(',')} from ${c.peer}`);
  console.log(`  the server saw Call IDs ${seenIds.join('; ')}`);
}

/** The metrics endpoint, in the router namespace. */
const METRICS = '127.0.0.1:9640';
const SCRAPE = 'import urllib.request, sys\nprint(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=5).read().decode())';

/** The VPN series of the Prometheus endpoint (what `curl http://METRICS/metrics` shows), non-zero ones only. */
async function vpnMetrics(lab: Lab): Promise<void> {
  say(`VPN metrics (curl http://${METRICS}/metrics in the router namespace)`);
  const r = await lab.exec(lab.ns.router, ['python3', '-c', SCRAPE, METRICS]);
  const lines = r.stdout.split('\n').filter((l) => /^vpnmasq_(vpn_|mappings\{proto="(isakmp|esp|gre)")/.test(l) && !/ 0$/.test(l));
  for (const l of lines) console.log(`  ${l}`);
  if (lines.length === 0) console.log(`  no VPN series: ${r.stderr.trim() || 'empty'}`);
}

async function show(router: RouterHandle): Promise<void> {
  say('connection table (vpnmasq conns list)');
  const rows = (await router.conns()) as unknown as ConnRow[];
  process.stdout.write(formatConnTable(rows));
  console.log(`${rows.length} connections listed.`);
  say('counters (vpnmasq stats)');
  const st = await router.stats();
  console.log(`  packets out/in: ${st.packets.out}/${st.packets.in}   bytes out/in: ${st.bytes.out}/${st.bytes.in}`);
  console.log(`  mappings: ${JSON.stringify(st.mappings)}   sessions ${st.sessions} of ${st.limit}`);
  const drops = Object.entries(st.drops as Record<string, number>).filter(([, n]) => n > 0);
  console.log(`  drops: ${drops.length ? drops.map(([k, n]) => `${k}=${n}`).join(' ') : 'none'}`);
  console.log(`  TUN: ${st.tun.rx_packets} reads in ${st.tun.rx_batches} batches, ${st.tun.tx_packets} writes, queued ${st.tun.tx_queued}, errors ${st.tun.tx_errors}`);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('npm run demo needs root (network namespaces, a TUN device).');
    process.exit(1);
  }
  say('building the lab: 2 LAN hosts, router, 2 WAN hosts, a VPN server host');
  const lab = await createLab({ lanHosts: 2, wanHosts: 2 });
  let router: RouterHandle | undefined;
  const cleanup = async () => {
    if (router) await router.stop();
    await lab.destroy();
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    console.log(`  namespaces: ${lab.namespaces().join(' ')}`);
    console.log(`  LAN ${lab.lanPrefix}, public address ${lab.addr.public}, WAN hosts ${lab.addr.wan.join(' ')}`);
    say('starting vpnmasq in the router namespace');
    router = await startRouter(lab, { metrics: { listen: METRICS } });
    console.log(`  control socket ${router.socket}`);
    await traffic(lab);
    await vpnTraffic(lab);
    await show(router);
    await vpnMetrics(lab);
    if (keep) {
      say(`lab kept; try: ip netns exec ${lab.ns.lan[0]} ping ${lab.addr.wan[0]}`);
      console.log(`  node dist/src/bin/vpnmasq.js --config ${router.configPath} conns list`);
      console.log('  Ctrl-C tears everything down.');
      await new Promise(() => undefined);
    }
  } finally {
    if (!keep) {
      say('tearing down');
      await cleanup();
    }
  }
}

main().catch((e) => {
  console.error(`demo failed: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
