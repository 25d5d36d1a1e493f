/**
 * Direction by ingress interface (core/side.ts), in dedicated and shared
 * mode: packets from the WAN with a LAN source create nothing and reach no
 * LAN host (the kernel's strict reverse-path filter on the WAN drops them;
 * with it relaxed, vpnmasq's WAN device drops and counts them), and traffic
 * between LAN hosts that crosses the router keeps its real source.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';

requireRoot();

const SPOOFED = '10.77.0.99';
const ROUTER_LAN = '10.77.0.1';
const SPOOFS = 50;

const MODES: Array<{ mode: 'dedicated' | 'shared'; dport: number }> = [
  { mode: 'dedicated', dport: 40000 },
  // Inside the shared default range (36864-65535), so the steering sends it to vpnmasq.
  { mode: 'shared', dport: 50000 },
];

for (const { mode, dport } of MODES) {
  describe(`direction by interface (${mode})`, { timeout: 120_000 }, () => {
    let lab: Lab;
    let router: RouterHandle;
    let pub: string;

    const sh = async (ns: string, argv: string[]): Promise<string> => {
      const r = await lab.exec(ns, argv);
      assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const connRows = async (): Promise<Array<Record<string, unknown>>> => {
      const r = await router.cli('conns', 'list', '--json');
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
    };
    /** The kernel's count of packets its reverse-path filter dropped (TcpExt IPReversePathFilter). */
    const rpFilterDrops = async (): Promise<number> => {
      const lines = (await sh(lab.ns.router, ['cat', '/proc/net/netstat'])).split('\n').filter((l) => l.startsWith('TcpExt:'));
      const names = lines[0].split(/\s+/);
      const values = lines[1].split(/\s+/);
      return Number(values[names.indexOf('IPReversePathFilter')]);
    };
    /** Sends the spoofs from the WAN host while both LAN hosts count the UDP that reaches them. */
    const spoof = async (): Promise<number[]> => {
      const listeners = await Promise.all(lab.ns.lan.map((ns) => peerServer(lab, ns, ['listen-raw', '--proto', '17', '--seconds', '3'])));
      const sent = await peer(lab, lab.ns.wan[0], ['udp-spoof', '--src', SPOOFED, '--dst', pub, '--sport', '41000', '--dport', String(dport), '--count', String(SPOOFS)]);
      assert.equal(sent.sent, SPOOFS);
      return Promise.all(listeners.map(async (l) => (JSON.parse((await l.result).trim().split('\n').pop() ?? '{}') as { received: number }).received));
    };

    before(async () => {
      lab = await createLab({ lanHosts: 2, wanHosts: 1, vpnServer: false, farHost: false });
      router = await startRouter(lab, mode === 'shared' ? { wan: { interface: lab.routerIfaces.wan, mode: 'shared' } } : {});
      pub = mode === 'shared' ? lab.addr.routerWan : lab.addr.public;
    });

    after(async () => {
      await router?.stop();
      await lab?.destroy();
    });

    it('the WAN interface has strict reverse-path filtering; each side has its own TUN device', async () => {
      assert.equal((await sh(lab.ns.router, ['cat', `/proc/sys/net/ipv4/conf/${lab.routerIfaces.wan}/rp_filter`])).trim(), '1');
      const status = await router.request('status') as { tun: { name: string; devices: string[] } };
      assert.deepEqual([status.tun.name, status.tun.devices], [router.tunName, [router.tunName, `${router.tunName}-w`]]);
      const human = await router.cli('status');
      assert.match(human.stdout, new RegExp(`^TUN +${router.tunName} \\(LAN\\), ${router.tunName}-w \\(WAN\\) \\(offloads 0x`, 'm'));
      const routes = await sh(lab.ns.router, ['ip', 'route', 'show', 'table', 'all']);
      assert.match(routes, new RegExp(`^default dev ${router.tunName} table 7100 `, 'm'));
      assert.match(routes, new RegExp(`^default dev ${router.tunName}-w table 7101 `, 'm'));
    });

    it('LAN sources sent from the WAN create no mapping and reach no LAN host; the kernel drops them, and without its filter vpnmasq counts them', async () => {
      const rpBefore = await rpFilterDrops();
      const counted = (await router.stats()).drops['spoofed-source'];
      assert.deepEqual(await spoof(), [0, 0], 'no LAN host received a datagram');
      assert.ok(await rpFilterDrops() - rpBefore >= SPOOFS, 'strict rp_filter on the WAN dropped them');
      assert.equal((await router.stats()).drops['spoofed-source'], counted, 'none reached vpnmasq');
      assert.deepEqual((await connRows()).filter((r) => JSON.stringify(r).includes(SPOOFED)), []);

      // An operator relaxes the filter: the WAN device still tells vpnmasq where they came from.
      await sh(lab.ns.router, ['sysctl', '-qw', `net.ipv4.conf.${lab.routerIfaces.wan}.rp_filter=0`]);
      try {
        assert.deepEqual(await spoof(), [0, 0], 'no LAN host received a datagram');
        const stats = await router.stats();
        assert.equal(stats.drops['spoofed-source'], counted + SPOOFS, JSON.stringify(stats.drops));
        assert.deepEqual((await connRows()).filter((r) => JSON.stringify(r).includes(SPOOFED)), [], 'no session for the spoofed host');
        assert.equal(stats.sessions, (await connRows()).filter((r) => ['tcp', 'udp', 'icmp'].includes(String(r.proto))).length);
        const deadline = Date.now() + 3000;
        while (!/spoofed-source: \d+ packets dropped/.test(router.log()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        assert.match(router.log(), new RegExp(`spoofed-source: \\d+ packets dropped since last report, last from ${SPOOFED.replace(/\./g, '\\.')} on the wan side`));
      } finally {
        await sh(lab.ns.router, ['sysctl', '-qw', `net.ipv4.conf.${lab.routerIfaces.wan}.rp_filter=1`]);
      }
    });

    it('LAN -> LAN through the router is routed, not masqueraded: the receiver sees the real source and port', async () => {
      // The hosts share a bridge; a host route through the router (and no redirects) makes the datagram cross it.
      await sh(lab.ns.router, ['sysctl', '-qw', 'net.ipv4.conf.all.send_redirects=0', `net.ipv4.conf.${lab.routerIfaces.lan}.send_redirects=0`]);
      await sh(lab.ns.lan[0], ['ip', 'route', 'add', `${lab.addr.lan[1]}/32`, 'via', ROUTER_LAN]);
      await sh(lab.ns.lan[1], ['ip', 'route', 'add', `${lab.addr.lan[0]}/32`, 'via', ROUTER_LAN]);
      assert.match(await sh(lab.ns.lan[0], ['ip', 'route', 'get', lab.addr.lan[1]]), new RegExp(`via ${ROUTER_LAN.replace(/\./g, '\\.')}`));
      const before = (await router.stats()).packets.out;
      const srv = await peerServer(lab, lab.ns.lan[1], ['udp-server', '--port', '7000']);
      const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.lan[1], '--port', '7000', '--sport', '45000']);
      await srv.result;
      assert.equal(r.reply?.peer, `${lab.addr.lan[0]}:45000`, JSON.stringify(r));
      assert.equal(r.from, `${lab.addr.lan[1]}:7000`);
      assert.equal((await router.stats()).packets.out, before, 'nothing went through the TUN');
      assert.deepEqual((await connRows()).filter((row) => JSON.stringify(row).includes(lab.addr.lan[1])), [], 'no mapping for LAN -> LAN');
    });
  });
}
