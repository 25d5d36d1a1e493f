/**
 * Finding a running daemon when nobody answers on the control socket the
 * config file names: the file may have been edited since the daemon read it
 * (a new control.socket not yet reloaded, or a reload that was rejected).
 * `vpnmasq run` processes reading the same config file are found through
 * /proc/PID/cmdline (readable by everyone), their listening Unix socket
 * through /proc/PID/fd and /proc/net/unix (root only: others learn the pid).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_CONFIG_PATH } from '../config/schema';

export interface RunningDaemon {
  pid: number;
  /** The path it listens on, or null when this user may not see its sockets. */
  socket: string | null;
}

/** __SO_ACCEPTCON in /proc/net/unix's Flags column: a listening socket. */
const SO_ACCEPTCON = 0x10000;

/** The config file a `vpnmasq run` command line reads, or null when it is not one. */
export function runConfigOf(argv: readonly string[]): string | null {
  const script = argv.findIndex((a, i) => i > 0 && /^vpnmasq(\.js)?$/.test(path.basename(a)));
  if (script < 0) return null;
  let config = DEFAULT_CONFIG_PATH;
  let run = false;
  for (let i = script + 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-c' || a === '--config') config = argv[++i] ?? config;
    else if (a.startsWith('--config=')) config = a.slice('--config='.length);
    else if (a === 'run') run = true;
  }
  return run ? config : null;
}

/** Every `vpnmasq run` (but this process) started with the config file `configPath`. */
export function findDaemons(configPath: string, proc = '/proc'): RunningDaemon[] {
  const want = path.resolve(configPath);
  const found: RunningDaemon[] = [];
  let entries: string[];
  try { entries = fs.readdirSync(proc); } catch { return found; }
  for (const e of entries) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    let argv: string[];
    try { argv = fs.readFileSync(path.join(proc, e, 'cmdline'), 'utf8').split('\0').filter((a) => a !== ''); } catch { continue; }
    const config = runConfigOf(argv);
    if (config === null) continue;
    let cwd = '/';
    try { cwd = fs.readlinkSync(path.join(proc, e, 'cwd')); } catch { /* not ours to see: absolute paths still compare */ }
    if (path.resolve(cwd, config) !== want) continue;
    found.push({ pid: Number(e), socket: listeningSocket(path.join(proc, e), proc) });
  }
  return found;
}

/** The path of a listening Unix socket the process holds, if this user may see its descriptors. */
function listeningSocket(pidDir: string, proc: string): string | null {
  const inodes = new Set<string>();
  try {
    for (const fd of fs.readdirSync(path.join(pidDir, 'fd'))) {
      const m = /^socket:\[(\d+)\]$/.exec(safeReadlink(path.join(pidDir, 'fd', fd)));
      if (m) inodes.add(m[1]);
    }
  } catch {
    return null;
  }
  let table: string;
  try { table = fs.readFileSync(path.join(proc, 'net', 'unix'), 'utf8'); } catch { return null; }
  // Num RefCount Protocol Flags Type St Inode Path
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || !inodes.has(f[6]) || (parseInt(f[3], 16) & SO_ACCEPTCON) === 0 || !f[7].startsWith('/')) continue;
    return f[7];
  }
  return null;
}

function safeReadlink(p: string): string {
  try { return fs.readlinkSync(p); } catch { return ''; }
}
