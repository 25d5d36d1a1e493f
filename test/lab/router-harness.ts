/**
 * Runs the real daemon (`vpnmasq run`) inside a lab's router namespace with a
 * generated config, and talks to it over its control socket.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { controlRequest } from '../../src/daemon/control';
import { ExecResult, Lab, TestOwner } from './lab';

export const ROOT = path.resolve(__dirname, '../../..');
export const CLI = path.join(ROOT, 'dist/src/bin/vpnmasq.js');
export const PEER = path.join(ROOT, 'test/hosts/peer.py');
export const PPTP_HOST = path.join(ROOT, 'test/hosts/pptp_host.py');
/** The priority the installed service runs the daemon at (systemd/vpnmasq.service, Nice=). */
export const UNIT_NICE = /^Nice=(-?\d+)$/m.exec(fs.readFileSync(path.join(ROOT, 'systemd/vpnmasq.service'), 'utf8'))?.[1] ?? '0';

export interface RouterHandle {
  configPath: string;
  socket: string;
  /** The TUN device (unique per started daemon, so a daemon that outlived its test cannot hold the next one's). */
  tunName: string;
  proc: ChildProcess;
  log(): string;
  request(cmd: string, extra?: Record<string, unknown>): Promise<Record<string, unknown>>;
  conns(): Promise<Array<Record<string, any>>>;
  stats(): Promise<Record<string, any>>;
  /** SIGTERM and wait for exit (bounded); returns the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait until the process is gone (bounded). */
  kill9(): Promise<void>;
  /** `vpnmasq teardown` with this daemon's config, in the router namespace. */
  teardown(): Promise<ExecResult>;
  /** The CLI with this daemon's config, in the router namespace. */
  cli(...args: string[]): Promise<ExecResult>;
}

/**
 * A copy of the built program that any user can read: the checkout may sit
 * where other users cannot (/root is mode 700), and a test that runs the CLI
 * as another user must not depend on that. Returns the copy's CLI entry
 * point; `dir` is removed by the caller.
 */
export function readableCli(dir: string): string {
  const dev = new Set(['typescript', '@types', 'node-gyp']);
  fs.cpSync(path.join(ROOT, 'dist', 'src'), path.join(dir, 'dist', 'src'), { recursive: true });
  fs.cpSync(path.join(ROOT, 'build', 'Release', 'vpnmasq_tun.node'), path.join(dir, 'build', 'Release', 'vpnmasq_tun.node'));
  fs.cpSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), {
    recursive: true,
    filter: (src) => !dev.has(path.relative(path.join(ROOT, 'node_modules'), src).split(path.sep)[0]),
  });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  // Readable by all, whatever the checkout's modes were (directories also searchable).
  const open = (p: string): void => {
    const st = fs.statSync(p);
    fs.chmodSync(p, (st.mode & 0o7777) | (st.isDirectory() ? 0o055 : 0o044));
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) open(path.join(p, e));
  };
  open(dir);
  return path.join(dir, 'dist', 'src', 'bin', 'vpnmasq.js');
}

export interface StartOptions {
  /** Stops the daemon in its after() hook, also when the test fails. */
  owner?: TestOwner;
  timeoutMs?: number;
  /** Wait until the daemon translates (default), or only until its control socket answers (it may wait for the WAN). */
  waitTranslating?: boolean;
  /** Starts the daemon at this nice value (the unit's Nice=, UNIT_NICE): its threads keep their own offsets from it. */
  nice?: string;
}

let started = 0;

export function routerConfig(lab: Lab, dir: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    // VMQ_IO ('auto' | 'uring' | 'threads') runs a lab file on one TUN I/O mode (else the default); the config validates it.
    tun: { name: `${lab.prefix.slice(3)}v${started++}`, mtu: 1500, offloads: true, ...(process.env.VMQ_IO ? { io: process.env.VMQ_IO } : {}) },
    lan: { interfaces: [lab.routerIfaces.lan], prefixes: [lab.lanPrefix] },
    wan: { interface: lab.routerIfaces.wan, mode: 'dedicated', publicAddress: lab.addr.public },
    state: { path: path.join(dir, 'state.db') },
    control: { socket: path.join(dir, 'control.sock'), group: 'root' },
    log: { level: 'debug' },
    ...overrides,
  };
}

export async function startRouter(lab: Lab, overrides: Record<string, unknown> = {}, opts: StartOptions = {}): Promise<RouterHandle> {
  const timeoutMs = opts.timeoutMs ?? 20000;
  const dir = lab.tempDir('router');
  const cfg = routerConfig(lab, dir, overrides);
  const configPath = path.join(dir, 'vpnmasq.json');
  fs.writeFileSync(configPath, JSON.stringify(cfg, null, 2));
  const socket = (cfg.control as { socket: string }).socket;
  const proc = lab.spawn(lab.ns.router, [...(opts.nice === undefined ? [] : ['nice', '-n', opts.nice]), process.execPath, CLI, '--config', configPath, 'run']);
  let output = '';
  proc.stdout?.on('data', (d: Buffer) => { output += d.toString(); });
  proc.stderr?.on('data', (d: Buffer) => { output += d.toString(); });
  let exited: number | null | undefined;
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => { exited = code; resolve(code); }));
  const request = (cmd: string, extra: Record<string, unknown> = {}) => controlRequest(socket, { cmd, ...extra });
  const cli = (...args: string[]) => lab.exec(lab.ns.router, [process.execPath, CLI, '-c', configPath, ...args], { timeoutMs: 30000 });
  const stop = async (): Promise<number | null> => {
    if (exited !== undefined) return exited;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
    const code = await exit;
    clearTimeout(timer);
    return code;
  };
  opts.owner?.after(() => stop());
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== undefined) throw new Error(`router exited with ${exited} during start:\n${output}`);
    try {
      const st = await request('status');
      if (opts.waitTranslating === false || st.translating === true) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`router not ${opts.waitTranslating === false ? 'answering' : 'translating'} within ${timeoutMs} ms:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    configPath,
    socket,
    tunName: (cfg.tun as { name: string }).name,
    proc,
    log: () => output,
    request,
    conns: async () => {
      const rows: Array<Record<string, any>> = [];
      await controlRequest(socket, { cmd: 'conns' }, (r) => rows.push(r as Record<string, any>));
      return rows;
    },
    stats: () => request('stats') as Promise<Record<string, any>>,
    stop,
    kill9: async () => {
      if (exited !== undefined) return;
      proc.kill('SIGKILL');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exit, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('daemon did not die')), 5000); })]);
      clearTimeout(timer);
    },
    teardown: () => cli('teardown'),
    cli,
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
