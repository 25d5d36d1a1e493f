/**
 * The appliance in the lab: shared-address mode (the router's own WAN
 * address 198.18.0.1 is the NAT's public address), readiness on a notify
 * socket the test opens, SIGHUP reloads, WAN address changes, the metrics
 * endpoint and a clean SIGTERM. Assertions are about what the peers saw.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';

requireRoot();

const ROUTER_WAN = '198.18.0.1';
const NEW_WAN = '198.18.0.3';
const RANGE: [number, number] = [36864, 65535];
const METRICS = '127.0.0.1:9469';

/** Datagram listener standing in for systemd's notify socket; collects every message. */
const NOTIFY_LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", file=sys.stderr, flush=True)
while True:
    msg = s.recv(4096).decode()
    print(msg.replace("\\n", "|"), flush=True)
`;

/** TCP connect with a deadline: "connected", "refused" (RST came back) or "timeout" (silently dropped). */
const TCP_PROBE = `
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except ConnectionRefusedError: print("refused")
except socket.timeout: print("timeout")
`;

const SCRAPE = `
import urllib.request, sys
print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=5).read().decode())
`;

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 10000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function inRange(port: number): boolean {
  return port >= RANGE[0] && port <= RANGE[1];
}

describe('appliance: shared-address mode in the lab', () => {
  let lab: Lab;
  let router: RouterHandle;
  let dir: string;
  let notifyProc: ChildProcess;
  let notified = '';
  let baseConfig: Record<string, any>;
  let portRangeBefore = '';

  const sh = async (ns: string, argv: string[]) => {
    const r = await lab.exec(ns, argv);
    assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const probeTcp = async (ns: string, host: string, port: number) =>
    (await sh(ns, ['python3', '-c', TCP_PROBE, host, String(port), '1.5'])).trim();
  const metrics = async (): Promise<Map<string, number>> => {
    const text = await sh(lab.ns.router, ['python3', '-c', SCRAPE, METRICS]);
    const m = new Map<string, number>();
    for (const line of text.split('\n')) {
      const x = /^(vpnmasq_[a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
      if (x) m.set(x[1], Number(x[2]));
    }
    return m;
  };
  const hup = async (config: Record<string, any>, marker: RegExp) => {
    fs.writeFileSync(router.configPath, typeof config === 'string' ? config : JSON.stringify(config, null, 2));
    const before = router.log().length;
    const notifiedBefore = notified.length;
    router.proc.kill('SIGHUP');
    await waitFor(`log ${marker}`, () => marker.test(router.log().slice(before)));
    await waitFor('READY=1 after RELOADING=1', () => /RELOADING=1\|MONOTONIC_USEC=\d+[\s\S]*READY=1/.test(notified.slice(notifiedBefore)));
  };
  const connIds = async () => (await router.conns()).map((c) => `${c.id}`).sort();

  before(async () => {
    lab = await createLab({ lanHosts: 2, wanHosts: 2 });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-appliance-'));
    const sock = path.join(dir, 'notify.sock');
    notifyProc = lab.spawn(lab.ns.router, ['python3', '-c', NOTIFY_LISTENER, sock]);
    notifyProc.stdout?.on('data', (d: Buffer) => { notified += d.toString(); });
    await waitFor('notify listener', () => fs.existsSync(sock));
    // Keep the other addresses when the primary one is deleted (DHCP-style renumbering below).
    await sh(lab.ns.router, ['sysctl', '-qw', 'net.ipv4.conf.wan0.promote_secondaries=1']);
    portRangeBefore = (await sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_port_range'])).trim();
    process.env.NOTIFY_SOCKET = sock;
    try {
      router = await startRouter(lab, {
        wan: { interface: lab.routerIfaces.wan, mode: 'shared', onAddressChange: 'move' },
        metrics: { listen: METRICS },
        mssClamp: 'auto',
      });
    } finally {
      delete process.env.NOTIFY_SOCKET;
    }
    baseConfig = JSON.parse(fs.readFileSync(router.configPath, 'utf8'));
  });

  after(async () => {
    try {
      if (router) await router.stop();
      notifyProc?.kill('SIGKILL');
    } finally {
      if (lab) await lab.destroy();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sends READY=1 once forwarding', async () => {
    await waitFor('READY=1', () => /READY=1/.test(notified));
    assert.match(notified, new RegExp(`STATUS=forwarding, public address ${ROUTER_WAN.replace(/\./g, '\\.')}`));
    const st = await router.request('status');
    assert.equal(st.mode, 'shared');
    assert.equal(st.publicAddress, ROUTER_WAN);
    // The state store's WAL checkpoints run on their own thread, not in the commits before a batch.
    assert.equal((st.state as { checkpointThread: boolean }).checkpointThread, true);
    // So are the control socket's connections (control-io.ts), at a lower priority than the packet thread.
    assert.equal((st.control as { thread: boolean }).thread, true);
  });

  it('masquerades LAN traffic behind the router\'s own WAN address, in the reserved range', async () => {
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7000', '--count', '2']);
    for (const l of lab.ns.lan) {
      const r = await peer(lab, l, ['udp-client', '--host', lab.addr.wan[0], '--port', '7000', '--size', '200']);
      const [a, p] = r.reply.peer.split(':');
      assert.equal(a, ROUTER_WAN);
      assert.ok(inRange(Number(p)), `public port ${p} outside ${RANGE}`);
      assert.equal(r.reply.sha256, r.sentSha256);
    }
    await srv.result;
    const tsrv = await peerServer(lab, lab.ns.wan[1], ['tcp-server', '--port', '7001']);
    const t = await peer(lab, lab.ns.lan[0], ['tcp-client', '--host', lab.addr.wan[1], '--port', '7001', '--bytes', '2000000']);
    assert.equal(t.reply.sha256, t.sha256);
    assert.equal(t.reply.peer.split(':')[0], ROUTER_WAN);
    assert.ok(inRange(Number(t.reply.peer.split(':')[1])));
    await tsrv.result;
  });

  it('the router still serves and originates its own TCP/UDP on that address', async () => {
    const ssh = await peerServer(lab, lab.ns.router, ['tcp-server', '--port', '2222']);
    const r = await peer(lab, lab.ns.wan[0], ['tcp-client', '--host', ROUTER_WAN, '--port', '2222', '--bytes', '50000']);
    assert.equal(r.reply.sha256, r.sha256);
    assert.equal(r.reply.peer.split(':')[0], lab.addr.wan[0]);
    await ssh.result;
    const usrv = await peerServer(lab, lab.ns.wan[1], ['udp-server', '--port', '7002']);
    const u = await peer(lab, lab.ns.router, ['udp-client', '--host', lab.addr.wan[1], '--port', '7002']);
    const [ua, up] = u.reply.peer.split(':');
    assert.equal(ua, ROUTER_WAN);
    assert.ok(!inRange(Number(up)), `the kernel picked ${up} from vpnmasq's range`);
    await usrv.result;
    const tsrv = await peerServer(lab, lab.ns.wan[1], ['tcp-server', '--port', '7003']);
    const t = await peer(lab, lab.ns.router, ['tcp-client', '--host', lab.addr.wan[1], '--port', '7003', '--bytes', '10000']);
    assert.equal(t.reply.sha256, t.sha256);
    assert.ok(!inRange(Number(t.reply.peer.split(':')[1])));
    await tsrv.result;
  });

  it('drops unsolicited traffic to the range silently (no RST, no port-unreachable)', async () => {
    const before = await metrics();
    assert.equal(await probeTcp(lab.ns.wan[0], ROUTER_WAN, 62001), 'timeout');
    const u = await peer(lab, lab.ns.wan[0], ['udp-refused', '--host', ROUTER_WAN, '--port', '62002', '--timeout', '1.5']);
    assert.deepEqual(u, { refused: false, reply: false });
    // Control: outside the range the kernel answers as usual.
    assert.equal(await probeTcp(lab.ns.wan[0], ROUTER_WAN, 2223), 'refused');
    const v = await peer(lab, lab.ns.wan[0], ['udp-refused', '--host', ROUTER_WAN, '--port', '2224', '--timeout', '1.5']);
    assert.equal(v.refused, true);
    const after = await metrics();
    const key = 'vpnmasq_drops_total{reason="no-mapping"}';
    assert.ok((after.get(key) ?? 0) - (before.get(key) ?? 0) >= 2, 'the probes reached vpnmasq and were counted');
  });

  it('metrics match the traffic sent', async () => {
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7004', '--count', '3']);
    const before = await metrics();
    for (let i = 0; i < 3; i++) {
      const r = await peer(lab, lab.ns.lan[1], ['udp-client', '--host', lab.addr.wan[0], '--port', '7004', '--size', '300']);
      assert.ok(r.reply);
    }
    await srv.result;
    const after = await metrics();
    const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    assert.equal(delta('vpnmasq_packets_total{direction="out"}'), 3);
    assert.equal(delta('vpnmasq_packets_total{direction="in"}'), 3);
    assert.equal(delta('vpnmasq_bytes_total{direction="out"}'), 3 * (20 + 8 + 300));
    const conns = await router.conns();
    assert.equal(after.get('vpnmasq_mappings{proto="udp"}'), new Set(conns.filter((c) => c.proto === 'udp').map((c) => `${c.lan.addr}:${c.lan.port}`)).size);
    assert.equal(after.get('vpnmasq_mappings_limit'), 262144);
    const stats = await router.stats();
    assert.equal(after.get('vpnmasq_packets_total{direction="out"}'), stats.packets.out);
  });

  it('SIGHUP with a good and with a bad config keeps every mapping', async () => {
    const ids = await connIds();
    assert.ok(ids.length > 0);
    await hup({ ...baseConfig, timeouts: { udp: 600 } }, /config reloaded/);
    assert.deepEqual(await connIds(), ids);
    await hup('{ "wan": { "interface": 7 } ' as unknown as Record<string, any>, /reload rejected/);
    assert.deepEqual(await connIds(), ids);
    await hup({ ...baseConfig, tun: { name: 'other0' } }, /reload rejected.*tun\.name/);
    assert.deepEqual(await connIds(), ids);
    // Still forwarding after the rejected ones.
    const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', '7005']);
    const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', '7005']);
    assert.equal(r.reply.peer.split(':')[0], ROUTER_WAN);
    await srv.result;
  });

  it('a WAN address change moves the mappings, or drops them, as configured', async () => {
    const before = await router.conns();
    assert.ok(before.length > 0);
    let mark = router.log().length;
    await sh(lab.ns.router, ['ip', 'addr', 'add', `${NEW_WAN}/24`, 'dev', 'wan0']);
    await sh(lab.ns.router, ['ip', 'addr', 'del', `${ROUTER_WAN}/24`, 'dev', 'wan0']);
    await waitFor('address change logged', () => /WAN address changed/.test(router.log().slice(mark)));
    const moved = await router.conns();
    assert.deepEqual(moved.map((c) => `${c.id}`).sort(), before.map((c) => `${c.id}`).sort());
    assert.ok(moved.every((c) => c.public.addr === NEW_WAN));
    const srv = await peerServer(lab, lab.ns.wan[1], ['udp-server', '--port', '7006']);
    const r = await peer(lab, lab.ns.lan[1], ['udp-client', '--host', lab.addr.wan[1], '--port', '7006']);
    assert.equal(r.reply.peer.split(':')[0], NEW_WAN);
    await srv.result;

    await hup({ ...baseConfig, wan: { ...baseConfig.wan, onAddressChange: 'drop' } }, /config reloaded/);
    mark = router.log().length;
    await sh(lab.ns.router, ['ip', 'addr', 'add', `${ROUTER_WAN}/24`, 'dev', 'wan0']);
    await sh(lab.ns.router, ['ip', 'addr', 'del', `${NEW_WAN}/24`, 'dev', 'wan0']);
    await waitFor('address change logged', () => /WAN address changed/.test(router.log().slice(mark)));
    assert.deepEqual(await router.conns(), []);
    assert.equal((await router.request('status')).publicAddress, ROUTER_WAN);
  });

  it('SIGTERM exits cleanly and keeps the safety net; teardown restores the local rule and the port sysctls', async () => {
    const rulesUp = await sh(lab.ns.router, ['ip', 'rule', 'show']);
    assert.match(rulesUp, /^50:\s+from all to 198\.18\.0\.1 ipproto tcp dport 36864-65534 lookup 7101/m);
    assert.match(rulesUp, /^100:\s+from all lookup local/m);
    assert.doesNotMatch(rulesUp, /^0:/m);
    assert.equal(await router.stop(), 0);
    await waitFor('STOPPING=1', () => /STOPPING=1/.test(notified));
    assert.match(router.log(), /the safety net stays in place/);
    const kept = await sh(lab.ns.router, ['ip', 'rule', 'show']);
    assert.match(kept, /^50:\s+from all to 198\.18\.0\.1 ipproto tcp dport 36864-65534 lookup 7101/m, 'steering survives a planned stop');
    assert.doesNotMatch(kept, /^0:/m);
    assert.equal((await sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_reserved_ports'])).trim(), '36864-65535');
    const td = await router.teardown();
    assert.equal(td.code, 0, td.stderr);
    assert.match(td.stderr, /"lookup local" back at priority 0/);
    assert.match(td.stderr, /restored .*net\.ipv4\.ip_local_reserved_ports=/);
    const rules = await sh(lab.ns.router, ['ip', 'rule', 'show']);
    assert.match(rules, /^0:\s+from all lookup local/m);
    assert.doesNotMatch(rules, /^(49|50|100|7100):/m);
    assert.equal((await sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_reserved_ports'])).trim(), '');
    assert.equal((await sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_port_range'])).trim(), portRangeBefore);
  });

  it('after a crash the next start keeps the safety net and the saved host settings; its teardown restores them', async () => {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-appliance-state-'));
    const shared = { wan: { interface: lab.routerIfaces.wan, mode: 'shared' }, state: { path: path.join(stateDir, 'state.db') } };
    try {
      const crashed = await startRouter(lab, shared);
      await crashed.kill9();
      assert.doesNotMatch(await sh(lab.ns.router, ['ip', 'rule', 'show']), /^0:/m, 'the local rule stays moved after a crash');
      assert.equal((await sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_reserved_ports'])).trim(), '36864-65535');
      const next = await startRouter(lab, { ...shared, control: { socket: crashed.socket, group: 'root' } });
      assert.equal(await next.stop(), 0);
      const saved = JSON.parse(fs.readFileSync(path.join(stateDir, 'host-state.json'), 'utf8'));
      assert.equal(saved.sysctls['net/ipv4/ip_local_reserved_ports'], '', 'the value before the first run, not the crashed run\'s');
      const td = await next.teardown();
      assert.equal(td.code, 0, td.stderr);
      const rules = await sh(lab.ns.router, ['ip', 'rule', 'show']);
      assert.match(rules, /^0:\s+from all lookup local/m);
      assert.doesNotMatch(rules, /^(49|50|100|7100):/m);
      assert.equal((await sh(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_reserved_ports'])).trim(), '');
    } finally {
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
