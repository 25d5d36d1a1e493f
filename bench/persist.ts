/**
 * Persistence benchmarks (issue 6).
 *
 *   node dist/bench/persist.js restore 100000 1000000
 *       fill a table, persist it through the store (group commits of 1000 new
 *       sessions), restore it into a fresh table; prints JSON timings.
 *   node dist/bench/persist.js cps [seconds]        (root)
 *       new TCP connections per second through vpnmasq in the lab, with
 *       persistence on and off (a connect + RST-close loop, SO_LINGER {1,0}).
 *   node dist/bench/persist.js daemon CONFIG on|off
 *       internal: runs the daemon with or without the store (used by cps).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadConfig, StateConfig } from '../src/config/schema';
import { Daemon } from '../src/daemon/daemon';
import { createLogger, Logger } from '../src/daemon/log';
import { Journal } from '../src/core/journal';
import { SessionTable } from '../src/nat/sessions';
import { Store } from '../src/persist/store';
import { SessionCodec } from '../src/persist/tables';
import { PROTO_UDP } from '../src/wire/ipv4';
import { ipv4ToInt32, prefixPairs } from '../src/core/ipv4-addr';
import { createLab } from '../test/lab/lab';
import { routerConfig } from '../test/lab/router-harness';

const quiet: Logger = {
  error: () => undefined, warn: () => undefined, info: () => undefined, debug: () => undefined, event: () => undefined,
  lazyEvent: () => undefined, enabled: () => false, configure: () => undefined,
};
const PUB = ipv4ToInt32('198.18.0.2');
/** Remote endpoints per mapping: 1 M sessions need more than the 64 k public ports of one address. */
const SESSIONS_PER_MAPPING = 20;

function table(n: number): SessionTable {
  return new SessionTable(n, PUB, { range: [1024, 65535], lowRange: null, preserve: false }, new Journal());
}

function restoreBench(n: number): Record<string, number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-bench-'));
  const cfg: StateConfig = { path: path.join(dir, 'state.db'), synchronous: 'normal', flushIntervalMs: 1000 };
  try {
    const now = Date.now();
    const t = table(n);
    let store = new Store(cfg, quiet);
    store.registerTable(new SessionCodec(t));
    const journal = t.journal as Journal;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      const m = Math.floor(i / SESSIONS_PER_MAPPING);
      const lan = ipv4ToInt32('10.0.0.0') + (m >> 10);
      t.createOut(PROTO_UDP, lan, 1024 + (m & 1023), 0x0a000000 + (i % SESSIONS_PER_MAPPING), 53, now, 0, now + 3600000);
      if (journal.length === 1000) {
        journal.drain((k, tb, ix, s) => store.event(k, tb, ix, s));
        store.flush();
      }
    }
    journal.drain((k, tb, ix, s) => store.event(k, tb, ix, s));
    store.flush();
    const persistMs = Number(process.hrtime.bigint() - t0) / 1e6;
    store.close();
    const fileMb = fs.statSync(cfg.path).size / 1e6;

    const t2 = table(n);
    const t1 = process.hrtime.bigint();
    store = new Store(cfg, quiet);
    const openMs = Number(process.hrtime.bigint() - t1) / 1e6;
    store.registerTable(new SessionCodec(t2));
    const r = store.restore({ now: Date.now(), isPublic: (a) => t2.publicIndexOf(a) >= 0, onAddressChange: 'move', lanPrefixes: prefixPairs(['10.0.0.0/8']) });
    const totalMs = Number(process.hrtime.bigint() - t1) / 1e6;
    store.close();
    if (r.restored !== t.sessionCount) throw new Error(`restored ${r.restored} of ${t.sessionCount}`);
    return { sessions: t.sessionCount, mappings: t.mappingCount, persistMs: Math.round(persistMs), fileMb: Math.round(fileMb),
      openAndCheckMs: Math.round(openMs), restoreTotalMs: Math.round(totalMs) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Connect + abortive close loop, several processes in parallel; prints total connections. */
const CPS_PY = String.raw`
import socket, struct, sys, time, os
host, port, secs, procs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
r, w = os.pipe()
for p in range(procs):
    if os.fork() == 0:
        n = 0; end = time.monotonic() + secs
        while time.monotonic() < end:
            s = socket.socket(); s.settimeout(2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            try:
                s.connect((host, port)); n += 1
            except OSError:
                pass
            s.close()
        os.write(w, struct.pack('i', n)); os._exit(0)
total = 0
for p in range(procs):
    total += struct.unpack('i', os.read(r, 4))[0]
    os.wait()
print(total)
`;

async function cpsBench(seconds: number): Promise<Record<string, number>> {
  const lab = await createLab({ lanHosts: 1, wanHosts: 1 });
  const out: Record<string, number> = {};
  try {
    // A listener with a large backlog: the kernel completes handshakes, the client resets.
    const srv = lab.spawn(lab.ns.wan[0], ['python3', '-c',
      'import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(("0.0.0.0",7200))\ns.listen(4096)\n' +
      'while True:\n  c,_=s.accept(); c.close()']);
    await new Promise((r) => setTimeout(r, 300));
    for (const mode of ['off', 'on'] as const) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-cps-'));
      const cfg = routerConfig(lab, dir, { log: { level: 'warn' }, limits: { maxSessions: 1048576 } });
      const cfgPath = path.join(dir, 'vpnmasq.json');
      fs.writeFileSync(cfgPath, JSON.stringify(cfg));
      const d = lab.spawn(lab.ns.router, [process.execPath, __filename, 'daemon', cfgPath, mode], { stdio: 'inherit' });
      const sock = (cfg.control as { socket: string }).socket;
      for (let i = 0; i < 100 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
      const r = await lab.exec(lab.ns.lan[0], ['python3', '-c', CPS_PY, lab.addr.wan[0], '7200', String(seconds), '4'], { timeoutMs: (seconds + 20) * 1000 });
      out[`persistence_${mode}_cps`] = Math.round(Number(r.stdout.trim()) / seconds);
      d.kill('SIGTERM');
      await new Promise((res) => d.once('exit', res));
      fs.rmSync(dir, { recursive: true, force: true });
    }
    srv.kill();
  } finally {
    await lab.destroy();
  }
  return out;
}

async function runDaemon(cfgPath: string, mode: string): Promise<void> {
  const cfg = loadConfig(cfgPath);
  const d = new Daemon(cfg, createLogger(cfg.log), { persist: mode === 'on' });
  process.on('SIGTERM', () => void d.stop().then(() => process.exit(0)));
  await d.start();
}

async function main(): Promise<void> {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === 'restore') {
    for (const n of (args.length ? args : ['100000', '1000000']).map(Number)) process.stdout.write(JSON.stringify(restoreBench(n)) + '\n');
  } else if (cmd === 'cps') {
    process.stdout.write(JSON.stringify(await cpsBench(Number(args[0] ?? 10))) + '\n');
  } else if (cmd === 'daemon') {
    await runDaemon(args[0], args[1]);
  } else {
    process.stderr.write('usage: persist.js restore [N...] | cps [seconds]\n');
    process.exit(2);
  }
}

void main().catch((e: Error) => { process.stderr.write(`${e.stack}\n`); process.exit(1); });
