/**
 * Runs the real daemon (`vpnmasq run`) inside a lab's router namespace with a
 * generated config, and talks to it over its control socket.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { controlRequest } from '../../src/daemon/control';
import { Lab } from './lab';

export const ROOT = path.resolve(__dirname, '../../..');
export const CLI = path.join(ROOT, 'dist/src/bin/vpnmasq.js');
export const PEER = path.join(ROOT, 'test/hosts/peer.py');
export const PPTP_HOST = path.join(ROOT, 'test/hosts/pptp_host.py');

export interface RouterHandle {
  configPath: string;
  socket: string;
  proc: ChildProcess;
  log(): string;
  request(cmd: string, extra?: Record<string, unknown>): Promise<Record<string, unknown>>;
  conns(): Promise<Array<Record<string, any>>>;
  stats(): Promise<Record<string, any>>;
  /** SIGTERM and wait for exit (bounded); returns the exit code. */
  stop(): Promise<number | null>;
}

export function routerConfig(lab: Lab, dir: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    tun: { name: 'vmq0', mtu: 1500, offloads: true },
    lan: { interfaces: [lab.routerIfaces.lan], prefixes: [lab.lanPrefix] },
    wan: { interface: lab.routerIfaces.wan, mode: 'dedicated', publicAddress: lab.addr.public },
    state: { path: path.join(dir, 'state.db') },
    control: { socket: path.join(dir, 'control.sock'), group: 'root' },
    log: { level: 'debug' },
    ...overrides,
  };
}

export async function startRouter(lab: Lab, overrides: Record<string, unknown> = {}, timeoutMs = 15000): Promise<RouterHandle> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${lab.prefix}-router-`));
  const cfg = routerConfig(lab, dir, overrides);
  const configPath = path.join(dir, 'vpnmasq.json');
  fs.writeFileSync(configPath, JSON.stringify(cfg, null, 2));
  const socket = (cfg.control as { socket: string }).socket;
  const proc = lab.spawn(lab.ns.router, [process.execPath, CLI, '--config', configPath, 'run']);
  let output = '';
  proc.stdout?.on('data', (d: Buffer) => { output += d.toString(); });
  proc.stderr?.on('data', (d: Buffer) => { output += d.toString(); });
  let exited: number | null | undefined;
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => { exited = code; resolve(code); }));
  const request = (cmd: string, extra: Record<string, unknown> = {}) => controlRequest(socket, { cmd, ...extra });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== undefined) throw new Error(`router exited with ${exited} during start:\n${output}`);
    try {
      await request('status');
      break;
    } catch {
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`router not ready within ${timeoutMs} ms:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    configPath,
    socket,
    proc,
    log: () => output,
    request,
    conns: async () => {
      const rows: Array<Record<string, any>> = [];
      await controlRequest(socket, { cmd: 'conns' }, (r) => rows.push(r as Record<string, any>));
      return rows;
    },
    stats: () => request('stats') as Promise<Record<string, any>>,
    stop: async () => {
      if (exited !== undefined) return exited;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
      const code = await exit;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Runs the peer helper (or another test-host `script`) in a namespace and parses its JSON line. */
export async function peer(lab: Lab, ns: string, args: string[], timeoutMs = 30000, script = PEER): Promise<Record<string, any>> {
  const r = await lab.exec(ns, ['python3', script, ...args], { timeoutMs });
  if (r.code !== 0) throw new Error(`peer ${args.join(' ')} in ${ns} failed (${r.code}): ${r.stderr}`);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as Record<string, any>;
}

/** Starts a peer server in the background and waits until it says "ready". */
export async function peerServer(lab: Lab, ns: string, args: string[], script = PEER): Promise<{ result: Promise<string>; proc: ChildProcess }> {
  const proc = lab.spawn(ns, ['python3', script, ...args]);
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  const result = new Promise<string>((resolve) => proc.once('exit', () => resolve(out)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`peer server ${args.join(' ')} not ready`)), 10000);
    proc.stderr?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) { clearTimeout(timer); resolve(); }
    });
    proc.once('exit', () => { clearTimeout(timer); reject(new Error(`peer server ${args.join(' ')} exited`)); });
  });
  return { result, proc };
}
