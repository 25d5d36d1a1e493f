/**
 * The TUN device deleted under the running daemon (`ip link del`), in
 * shared-address and dedicated mode: the daemon logs it at error level, stops
 * pinging the watchdog, exits non-zero for a restart, and the restarted
 * daemon brings back the mappings made before, on the same public ports, as
 * the WAN peer sees them.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { requireRoot, createLab, Lab } from './lab';
import { peer, peerServer, RouterHandle, startRouter } from './router-harness';

requireRoot();

const SERVER_PORT = 7300;
const LAN_SPORT = 45300;
/** A watchdog ping every 100 ms (half of WATCHDOG_USEC). */
const WATCHDOG_USEC = '200000';

/** Datagram listener standing in for systemd's notify socket; prints every message on one line. */
const NOTIFY_LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`;

async function waitFor<T>(what: string, fn: () => T | undefined | false, timeoutMs = 10000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const modes = [
  { mode: 'shared', wan: (lab: Lab) => ({ interface: lab.routerIfaces.wan, mode: 'shared' }), publicAddr: (lab: Lab) => lab.addr.routerWan },
  { mode: 'dedicated', wan: (lab: Lab) => ({ interface: lab.routerIfaces.wan, mode: 'dedicated', publicAddress: lab.addr.public }), publicAddr: (lab: Lab) => lab.addr.public },
];

for (const m of modes) {
  describe(`TUN device deleted under the daemon (${m.mode} mode)`, { timeout: 120_000 }, () => {
    let lab: Lab;
    let dir: string;
    let notifyProc: ChildProcess | undefined;
    let notified = '';
    const routers: RouterHandle[] = [];

    before(async () => {
      lab = await createLab({ lanHosts: 2, wanHosts: 1, vpnServer: false, farHost: false });
      dir = lab.tempDir('tunfail');
    });

    after(async () => {
      try {
        for (const r of routers) await r.stop();
        notifyProc?.kill('SIGKILL');
      } finally {
        if (lab) await lab.destroy();
      }
    });

    /** Both LAN hosts send from the same source port: the second one gets a public port that only the table remembers. */
    const publicEndpoints = async (): Promise<string[]> => {
      const srv = await peerServer(lab, lab.ns.wan[0], ['udp-server', '--port', String(SERVER_PORT), '--count', '2']);
      const seen: string[] = [];
      for (const l of [0, 1]) {
        const r = await peer(lab, lab.ns.lan[l], ['udp-client', '--host', lab.addr.wan[0], '--port', String(SERVER_PORT), '--sport', String(LAN_SPORT)]);
        seen.push(r.reply.peer as string);
      }
      await srv.result;
      return seen;
    };

    it('logs the failure, stops the watchdog, exits non-zero; the restart keeps the mappings', async () => {
      const tunName = `${lab.prefix}t`;
      const config = {
        tun: { name: tunName, mtu: 1500, offloads: true },
        wan: m.wan(lab),
        state: { path: path.join(dir, 'state.db') },
        log: { level: 'info' },
      };
      const sock = path.join(dir, 'notify.sock');
      notifyProc = lab.spawn(lab.ns.router, ['python3', '-c', NOTIFY_LISTENER, sock]);
      notifyProc.stdout?.on('data', (d: Buffer) => { notified += d.toString(); });
      await waitFor('notify socket', () => fs.existsSync(sock));
      process.env.NOTIFY_SOCKET = sock;
      process.env.WATCHDOG_USEC = WATCHDOG_USEC;
      let first: RouterHandle;
      try {
        first = await startRouter(lab, config);
      } finally {
        delete process.env.NOTIFY_SOCKET;
        delete process.env.WATCHDOG_USEC;
      }
      routers.push(first);
      const before = await publicEndpoints();
      assert.equal(before.length, 2);
      assert.ok(before.every((p) => p.startsWith(`${m.publicAddr(lab)}:`)), `translated to the public address: ${before}`);
      assert.notEqual(before[0], before[1]);
      const mapped = (await first.conns()).filter((c) => c.proto === 'udp' && c.remote.port === SERVER_PORT);
      assert.equal(mapped.length, 2);
      await waitFor('watchdog pings', () => /WATCHDOG=1/.test(notified));

      const exited = new Promise<number | null>((resolve) => first.proc.once('exit', (code) => resolve(code)));
      const del = await lab.exec(lab.ns.router, ['ip', 'link', 'del', tunName]);
      assert.equal(del.code, 0, del.stderr);
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 15000))]);
      assert.equal(code, 1, `exit code after the TUN was deleted\n${first.log()}`);
      assert.match(first.log(), new RegExp(`^<3>TUN ${tunName} is gone \\(deleted or detached\\): (poll|read): File descriptor in bad state \\(EBADFD\\); forwarding has stopped`, 'm'));
      const afterStop = notified.slice(notified.lastIndexOf('STOPPING=1'));
      assert.match(afterStop, /^STOPPING=1\|STATUS=TUN .* is gone/, notified.slice(-500));
      await new Promise((r) => setTimeout(r, 300));
      assert.doesNotMatch(notified.slice(notified.lastIndexOf('STOPPING=1')), /WATCHDOG=1/, 'no watchdog ping after the failure');
      // Fail closed: the steering rules stay and the safety net's blackholes take what the TUN took.
      assert.match((await lab.exec(lab.ns.router, ['ip', 'rule', 'show'])).stdout, /lookup 7100/, 'policy rules kept');
      assert.match((await lab.exec(lab.ns.router, ['ip', 'route', 'show', 'table', '7100'])).stdout, /^blackhole default/m, 'LAN table ends in a blackhole');

      const second = await startRouter(lab, { ...config, control: { socket: first.socket, group: 'root' } });
      routers.push(second);
      const restored = (await second.conns()).filter((c) => c.proto === 'udp' && c.remote.port === SERVER_PORT);
      assert.deepEqual(restored.map((c) => `${c.lan.addr}:${c.lan.port} ${c.public.addr}:${c.public.port}`).sort(),
        mapped.map((c) => `${c.lan.addr}:${c.lan.port} ${c.public.addr}:${c.public.port}`).sort(), 'mappings restored');
      assert.deepEqual(await publicEndpoints(), before, 'the WAN peer sees the same public endpoints after the restart');
      assert.equal(await second.stop(), 0);
    });
  });
}
