/**
 * lan.ipv6: "drop" (the default) refuses IPv6 that the box would forward
 * from the LAN with ICMPv6 administratively prohibited, keeps IPv6 to the
 * box itself, and keeps refusing while the daemon is down (the rule is part
 * of the safety net: `vpnmasq teardown` removes it); "route" leaves LAN IPv6 to
 * the kernel's routing. The lab turns IPv6 on for one LAN host, one WAN host
 * and the router's two bridges (the lab keeps it off everywhere else).
 * Asserted on the wire: what the WAN host received.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLab, Lab, requireRoot } from './lab';
import { peerServer, RouterHandle, startRouter } from './router-harness';

requireRoot();
const R_LAN6 = '2001:db8:77::1';
const R_WAN6 = '2001:db8:18::1';
const LAN6 = '2001:db8:77::11';
const WAN6 = '2001:db8:18::11';

/** A python one-liner on the WAN host: counts ICMPv6 echo requests for `seconds`. */
const LISTEN6 = `
import socket, sys, time, json
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(0.2)
print("ready", file=sys.stderr, flush=True)
end = time.time() + float(sys.argv[1]); n = 0
while time.time() < end:
    try:
        d = s.recv(65535)
        n += d[0] == 128
    except socket.timeout:
        pass
print(json.dumps({"echoRequests": n}), flush=True)
`;

describe('lan.ipv6 in the lab', () => {
  let lab: Lab;
  let router: RouterHandle | undefined;
  const listener = path.join(os.tmpdir(), `vpnmasq-listen6-${process.pid}.py`);

  const sh = async (ns: string, script: string) => {
    const r = await lab.exec(ns, ['sh', '-c', script], { timeoutMs: 20000 });
    assert.equal(r.code, 0, `${script}: ${r.stderr}`);
    return r.stdout;
  };
  const ping6 = (dst: string) => lab.exec(lab.ns.lan[0], ['ping', '-6', '-n', '-c', '2', '-i', '0.2', '-W', '1', dst], { timeoutMs: 10000 });
  /** Pings the WAN host from the LAN host; returns the ping and what the WAN host received. */
  const pingWan = async () => {
    const l = await peerServer(lab, lab.ns.wan[0], ['2.5'], listener);
    const p = await ping6(WAN6);
    return { p, got: JSON.parse((await l.result).trim().split('\n').pop() as string).echoRequests as number };
  };

  before(async () => {
    fs.writeFileSync(listener, LISTEN6);
    lab = await createLab({ lanHosts: 1, wanHosts: 1, vpnServer: false });
    const on = (ifs: string[]) => ['all', ...ifs].map((i) => `net.ipv6.conf.${i}.disable_ipv6=0`).join(' ');
    await sh(lab.ns.router, `sysctl -q -w ${on(['lan0', 'wan0'])} net.ipv6.conf.all.forwarding=1 && ip addr add ${R_LAN6}/64 dev lan0 nodad && ip addr add ${R_WAN6}/64 dev wan0 nodad`);
    await sh(lab.ns.lan[0], `sysctl -q -w ${on(['eth0'])} && ip addr add ${LAN6}/64 dev eth0 nodad && ip -6 route add default via ${R_LAN6}`);
    await sh(lab.ns.wan[0], `sysctl -q -w ${on(['eth0'])} && ip addr add ${WAN6}/64 dev eth0 nodad && ip -6 route add default via ${R_WAN6}`);
    const before = await pingWan();
    assert.equal(before.got, 2, `without vpnmasq the box routes IPv6 (the control): ${before.p.stdout}${before.p.stderr}`);
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      fs.rmSync(listener, { force: true });
      if (lab) await lab.destroy();
    }
  });

  it('drop (the default): forwarded IPv6 is refused as administratively prohibited, the box itself still answers, the rule stays while down, teardown removes it', async () => {
    router = await startRouter(lab);
    const status = await router.request('status');
    assert.deepEqual(status.lanIpv6, { policy: 'drop', rules: ['7100: from all iif lan0 prohibit'] });
    assert.match(await sh(lab.ns.router, 'ip -6 rule show'), /^7100:\s+from all iif lan0 prohibit proto 247/m);
    const { p, got } = await pingWan();
    assert.notEqual(p.code, 0);
    assert.match(p.stdout, /Administratively prohibited/i, p.stdout);
    assert.equal(got, 0, 'nothing reached the WAN host');
    const own = await ping6(R_LAN6);
    assert.equal(own.code, 0, `the box's own LAN address: ${own.stdout}`);
    const handle = router;
    await handle.stop();
    router = undefined;
    // Fail-closed: the daemon is down, the refusal stays.
    assert.match(await sh(lab.ns.router, 'ip -6 rule show'), /^7100:\s+from all iif lan0 prohibit proto 247/m, 'kept while the daemon is down');
    const down = await pingWan();
    assert.match(down.p.stdout, /Administratively prohibited/i, down.p.stdout);
    assert.equal(down.got, 0, 'nothing reached the WAN host while vpnmasq was down');
    const td = await handle.teardown();
    assert.equal(td.code, 0, td.stderr);
    assert.doesNotMatch(await sh(lab.ns.router, 'ip -6 rule show'), /7100:/, 'removed by teardown');
  });

  it('route: LAN IPv6 is the kernel\'s, forwarded untouched', async () => {
    router = await startRouter(lab, { lan: { interfaces: [lab.routerIfaces.lan], prefixes: [lab.lanPrefix], ipv6: 'route' } });
    assert.deepEqual((await router.request('status')).lanIpv6, { policy: 'route', rules: [] });
    assert.doesNotMatch(await sh(lab.ns.router, 'ip -6 rule show'), /7100:/);
    const { p, got } = await pingWan();
    assert.equal(p.code, 0, p.stdout + p.stderr);
    assert.equal(got, 2);
    await router.stop();
    router = undefined;
  });
});
