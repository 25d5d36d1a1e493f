/**
 * Honest reload in the lab, in shared and dedicated mode: `vpnmasq reload`
 * (what ExecReload runs) waits for the daemon and exits non-zero when the
 * config is rejected; a changed timeouts.udp reaches the existing mapping and
 * new ones; in shared mode a new ports.range moves the steering rules and the
 * box's ephemeral range, and the next mapping uses it on the wire; a moved
 * control socket keeps `vpnmasq status` truthful.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createLab, Lab } from './lab';
import { CLI, peer, peerServer, RouterHandle, startRouter } from './router-harness';

const MODES = ['shared', 'dedicated'] as const;

for (const mode of MODES) {
  describe(`reload in ${mode} mode`, () => {
    let lab: Lab;
    let router: RouterHandle;
    let base: Record<string, any>;
    let publicAddr: string;

    /** `vpnmasq ARGS` in the router namespace, as root. */
    const cli = (...args: string[]) => lab.exec(lab.ns.router, [process.execPath, CLI, '-c', router.configPath, ...args], { timeoutMs: 70000 });
    const writeConfig = (cfg: Record<string, any> | string) =>
      fs.writeFileSync(router.configPath, typeof cfg === 'string' ? cfg : JSON.stringify(cfg, null, 2));
    const conns = async () => {
      const r = await cli('conns', 'list', '--json');
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.split('\n').filter((l) => l).map((l) => JSON.parse(l) as Record<string, any>);
    };
    /** One UDP exchange from LAN host 0's port `sport`; returns the public port the server saw. */
    const udp = async (sport: number, port: number) => {
      const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', String(port)]);
      const r = await peer(lab, lab.ns.lan[0], ['udp-client', '--host', lab.addr.wan[0], '--port', String(port), '--sport', String(sport)]);
      await srv.result;
      assert.ok(r.reply, `no reply through the NAT from port ${sport}`);
      const [addr, pub] = String(r.reply.peer).split(':');
      assert.equal(addr, publicAddr);
      return Number(pub);
    };

    before(async () => {
      lab = await createLab({ lanHosts: 1, wanHosts: 1, vpnServer: false, farHost: false });
      const wan = mode === 'shared' ? { interface: lab.routerIfaces.wan, mode: 'shared' } : undefined;
      router = await startRouter(lab, wan ? { wan } : {});
      publicAddr = mode === 'shared' ? lab.addr.routerWan : lab.addr.public;
      base = JSON.parse(fs.readFileSync(router.configPath, 'utf8')) as Record<string, any>;
    });

    after(async () => {
      try {
        if (router) await router.stop();
      } finally {
        if (lab) await lab.destroy();
      }
    });

    it('a changed timeouts.udp applies to the existing mapping and to new ones', async () => {
      await udp(40100, 7100);
      const before = (await conns()).find((c) => c.lan.port === 40100);
      assert.ok(before && before.expiresInSeconds > 250, `expires in ${before?.expiresInSeconds}`);
      writeConfig({ ...base, timeouts: { udp: 120 } });
      const r = await cli('reload');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /^config reloaded; applied: timeouts\.udp$/m);
      const existing = (await conns()).find((c) => c.lan.port === 40100);
      assert.ok(existing && existing.expiresInSeconds <= 120 && existing.expiresInSeconds > 100, `existing mapping expires in ${existing?.expiresInSeconds}`);
      assert.equal(existing.id, before.id, 'the same mapping');
      await udp(40101, 7101);
      const fresh = (await conns()).find((c) => c.lan.port === 40101);
      assert.ok(fresh && fresh.expiresInSeconds <= 120 && fresh.expiresInSeconds >= 118, `new mapping expires in ${fresh?.expiresInSeconds}`);
      base = { ...base, timeouts: { udp: 120 } };
    });

    it('a rejected reload exits non-zero, names the field, and keeps the running config and every mapping', async () => {
      const ids = (await conns()).map((c) => c.id).sort();
      writeConfig({ ...base, tun: { ...base.tun, name: 'other0' }, timeouts: { udp: 600 } });
      let r = await cli('reload');
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^vpnmasq: tun\.name: needs a restart \(the TUN device is created at start\)$/m);
      const st = JSON.parse((await cli('status', '--json')).stdout) as Record<string, any>;
      assert.equal(st.lastReload.ok, false);
      assert.match(st.lastReload.error, /tun\.name/);
      assert.deepEqual((await conns()).map((c) => c.id).sort(), ids);
      assert.ok((await conns()).every((c) => c.expiresInSeconds <= 120), 'timeouts.udp 600 was not applied');
      // A file that does not parse: the daemon still gets the request (found through /proc) and says why.
      writeConfig('{ "wan": { "interface": 7 } ');
      r = await cli('reload');
      assert.equal(r.code, 1);
      assert.match(r.stderr, /syntax error/);
      assert.match(router.log(), /reload rejected, keeping the running config/);
      writeConfig(base);
      assert.equal((await cli('reload')).code, 0);
      assert.ok((await udp(40102, 7102)) > 0, 'still forwarding');
    });

    if (mode === 'shared') {
      it('a new ports.range moves the steering rules and the box\'s ports, and the next mapping uses it on the wire', async () => {
        // The default shared range is 36864-65535: the earlier mappings kept their LAN ports (40100-40102), outside the new range.
        const outside = (c: Record<string, any>) => c.public.port < 50000 || c.public.port > 50999;
        const old = (await conns()).filter((c) => c.proto === 'udp');
        assert.ok(old.length > 0 && old.every((c) => c.public.port >= 36864 && outside(c)), JSON.stringify(old.map((c) => c.public)));
        writeConfig({ ...base, ports: { range: [50000, 50999] } });
        const r = await cli('reload');
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /applied: ports\.range/);
        const rules = (await lab.exec(lab.ns.router, ['ip', 'rule', 'show'])).stdout;
        assert.match(rules, /ipproto udp dport 50000-50999 lookup/);
        assert.match(rules, /ipproto tcp dport 50000-50999 lookup/);
        assert.doesNotMatch(rules, /dport 36864-/);
        assert.match((await lab.exec(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_reserved_ports'])).stdout, /50000-50999/);
        const [lo, hi] = (await lab.exec(lab.ns.router, ['cat', '/proc/sys/net/ipv4/ip_local_port_range'])).stdout.trim().split(/\s+/).map(Number);
        assert.ok(hi < 50000 || lo > 50999, `the box's ephemeral range ${lo}-${hi} avoids the new range`);
        // The mappings on the old range are gone (nothing steers their replies now); the next one is in the new range.
        assert.deepEqual((await conns()).filter((c) => c.proto === 'udp' && outside(c)), []);
        const pub = await udp(40103, 7103);
        assert.ok(pub >= 50000 && pub <= 50999, `public port ${pub}`);
        base = { ...base, ports: { range: [50000, 50999] } };
      });
    }

    it('a moved control socket: reload applies it and status finds the daemon on it', async () => {
      const moved = path.join(path.dirname(router.socket), 'moved.sock');
      writeConfig({ ...base, control: { socket: moved, group: 'root' } });
      // The file already names the new socket: the CLI finds the daemon on its old one through /proc.
      let st = await cli('status');
      assert.equal(st.code, 0, st.stderr);
      assert.match(st.stdout, /^vpnmasq is running/);
      assert.match(st.stderr, /listens on .*control\.sock, not on .*moved\.sock/);
      const r = await cli('reload');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /applied: control\.socket/);
      assert.equal(fs.existsSync(router.socket), false);
      st = await cli('status', '--json');
      assert.equal(st.code, 0, st.stderr);
      assert.equal(st.stderr, '');
      assert.equal(JSON.parse(st.stdout).control.socket, moved);
      // Let the harness stop the daemon by signal; its socket is the new one now.
      router.socket = moved;
    });
  });
}
