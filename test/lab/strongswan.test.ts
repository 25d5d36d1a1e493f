/**
 * Real IPsec peers through vpnmasq: three LAN hosts run strongSwan (IKEv2,
 * kernel-libipsec, PSK, virtual IPs) to one strongSwan server on the WAN
 * side at the same time. IKE_SA_INIT leaves from public port 500 for all
 * three (ISAKMP masquerade, demultiplexed by SPI), then the peers float to
 * NAT-T on 4500 (plain NAPT). Traffic is checked at the far end: the server
 * sees each client's virtual IP, which only exists inside the tunnel.
 * See /work/shared/reference/strongswan-in-namespaces.md.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';

const isRoot = process.getuid?.() === 0;
const hasCharon = fs.existsSync('/usr/lib/ipsec/charon') && fs.existsSync('/usr/sbin/swanctl');
const PROTECTED = '10.99.0.0/24';
const PROTECTED_HOST = '10.99.0.1';
const POOL = '100.64.0.0/24';
const PSK = 'vpnmasq-lab-psk';

interface Charon { dir: string; uri: string }

describe('strongSwan peers through vpnmasq', { skip: (!isRoot && 'needs root') || (!hasCharon && 'strongSwan not installed') }, () => {
  let lab: Lab;
  let router: RouterHandle;
  let base: string;

  before(async () => {
    lab = await createLab({ lanHosts: 3, wanHosts: 1, farHost: false });
    router = await startRouter(lab);
    base = fs.mkdtempSync(path.join(os.tmpdir(), `${lab.prefix}-swan-`));
  });

  after(async () => {
    try {
      if (router) await router.stop();
    } finally {
      if (lab) await lab.destroy();
      if (base) fs.rmSync(base, { recursive: true, force: true });
    }
  });

  /** Starts charon in `ns` with its own strongswan.conf, /run and vici socket; loads `swanctl` once it answers. */
  async function charon(ns: string, name: string, swanctl: string): Promise<Charon> {
    const dir = path.join(base, name);
    fs.mkdirSync(dir);
    const uri = `unix://${dir}/charon.vici`;
    fs.writeFileSync(path.join(dir, 'strongswan.conf'), `charon {
  plugins {
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec { load = yes }
    vici { socket = ${uri} }
  }
  filelog { log { path = ${dir}/charon.log
    default = 1
    append = no } }
}
`);
    fs.writeFileSync(path.join(dir, 'swanctl.conf'), swanctl);
    lab.spawn(ns, ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs tmpfs /run && exec /usr/lib/ipsec/charon'], {
      env: { ...process.env, STRONGSWAN_CONF: path.join(dir, 'strongswan.conf') },
      stdio: 'ignore',
    });
    const deadline = Date.now() + 15000;
    for (;;) {
      const r = await lab.exec(ns, ['swanctl', '--load-all', '--uri', uri, '--file', path.join(dir, 'swanctl.conf')], { timeoutMs: 10000 });
      if (r.code === 0) break;
      if (Date.now() > deadline) throw new Error(`charon ${name} not ready: ${r.stderr}${r.stdout}`);
      await new Promise((res) => setTimeout(res, 250));
    }
    return { dir, uri };
  }

  it('three LAN hosts bring up tunnels to one server at once; ping and TCP through each are seen at the far end', async () => {
    const server = lab.ns.vpnServer;
    await lab.exec(server, ['ip', 'addr', 'add', `${PROTECTED_HOST}/32`, 'dev', 'lo']);
    await charon(server, 'server', `connections {
  rw {
    local_addrs = ${lab.addr.vpnServer}
    pools = p
    proposals = aes128-sha256-modp2048
    local { auth = psk
      id = server.test }
    remote { auth = psk }
    children { net { local_ts = ${PROTECTED}
      esp_proposals = aes128gcm16 } }
  }
}
pools { p { addrs = ${POOL} } }
secrets { ike-1 { secret = "${PSK}" } }
`);
    const clients = await Promise.all(lab.ns.lan.map((ns, i) => charon(ns, `client${i}`, `connections {
  c {
    remote_addrs = ${lab.addr.vpnServer}
    vips = 0.0.0.0
    proposals = aes128-sha256-modp2048
    local { auth = psk
      id = client${i}.test }
    remote { auth = psk
      id = server.test }
    children { net { remote_ts = ${PROTECTED}
      esp_proposals = aes128gcm16 } }
  }
}
secrets { ike-1 { secret = "${PSK}"
  id-1 = server.test
  id-2 = client${i}.test } }
`)));
    const started = Date.now();
    const up = await Promise.all(clients.map((c, i) =>
      lab.exec(lab.ns.lan[i], ['swanctl', '--initiate', '--uri', c.uri, '--child', 'net', '--timeout', '25'], { timeoutMs: 30000 })));
    up.forEach((r, i) => assert.match(r.stdout, /initiate completed successfully/, `client ${i}: ${r.stdout}${r.stderr}\n${fs.readFileSync(path.join(clients[i].dir, 'charon.log'), 'utf8').slice(-3000)}`));
    const upMs = Date.now() - started;

    for (const ns of lab.ns.lan) {
      const p = await lab.ping(ns, PROTECTED_HOST, { count: 3 });
      assert.equal(p.received, 3, `${ns}: ${JSON.stringify(p)}`);
    }
    const srv = await peerServer(lab, server, ['tcp-server', '--port', '7100', '--count', '3', '--timeout', '30']);
    const tcp = await Promise.all(lab.ns.lan.map((ns) =>
      peer(lab, ns, ['tcp-client', '--host', PROTECTED_HOST, '--port', '7100', '--bytes', String(2 * 1024 * 1024), '--timeout', '30'], 40000)));
    await srv.result;
    const vips = new Set<string>();
    for (const r of tcp) {
      assert.equal(r.reply.sha256, r.sha256, 'bytes arrived intact');
      const seenFrom = r.reply.peer.split(':')[0] as string;
      assert.match(seenFrom, /^100\.64\.0\./, 'the server saw the virtual IP: the connection ran inside the tunnel');
      assert.equal(r.local.split(':')[0], seenFrom);
      vips.add(seenFrom);
    }
    assert.equal(vips.size, 3, 'three distinct tunnels');
    const st = await router.stats();
    assert.ok(st.ipsec.isakmp >= 3, `three ISAKMP entries on port 500: ${JSON.stringify(st.ipsec)}`);
    assert.equal(st.ipsec.events['isakmp-collision'], 0);
    console.log(`# strongSwan: 3 tunnels up in ${upMs} ms`);
  });
});
