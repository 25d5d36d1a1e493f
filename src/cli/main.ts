#!/usr/bin/env node
/**
 * The `vpnmasq` command. Exit codes: 0 success, 1 failure, 2 usage error.
 * Data goes to stdout, messages to stderr.
 */
import { Command, CommanderError } from 'commander';
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfig } from '../daemon/config';
import { controlRequest } from '../daemon/control';
import { Daemon } from '../daemon/daemon';
import { createLogger } from '../daemon/log';
import { ConnRow } from '../nat/session-rows';
import { formatConnTable } from './format';

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

function fail(message: string): never {
  process.stderr.write(`vpnmasq: ${message}\n`);
  process.exit(EXIT_FAILURE);
}

function load(path: string) {
  try {
    return loadConfig(path);
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    fail(`cannot read config ${path}: ${(e as Error).message}`);
  }
}

async function request(configPath: string, cmd: string, extra: Record<string, unknown> = {}, onRow?: (row: unknown) => void) {
  const cfg = load(configPath);
  try {
    return await controlRequest(cfg.control.socket, { cmd, ...extra }, onRow);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') fail(`the daemon is not running (no control socket at ${cfg.control.socket})`);
    if (code === 'EACCES') fail(`permission denied on ${cfg.control.socket}: run as root or as a member of group ${cfg.control.group}`);
    fail((e as Error).message);
  }
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('vpnmasq')
    .description('VPN-aware masquerading router on a TUN device')
    .option('-c, --config <path>', 'config file', DEFAULT_CONFIG_PATH)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('run')
    .description('run the router in the foreground')
    .action(async () => {
      const cfg = load(program.opts().config as string);
      const log = createLogger(cfg.log);
      const daemon = new Daemon(cfg, log);
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info('stopping', { signal });
        daemon.stop().then(() => process.exit(0), () => process.exit(EXIT_FAILURE));
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      try {
        await daemon.start();
      } catch (e) {
        log.error('start failed', { error: (e as Error).message });
        await daemon.stop();
        process.exit(EXIT_FAILURE);
      }
    });

  program
    .command('status')
    .description('show whether the daemon runs, its TUN, addresses and table usage')
    .option('--json', 'JSON output')
    .action(async (opts: { json?: boolean }) => {
      const st = await request(program.opts().config as string, 'status');
      process.stdout.write(opts.json ? JSON.stringify(st) + '\n' : Object.entries(st).filter(([k]) => k !== 'ok' && k !== 'end')
        .map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join('\n') + '\n');
    });

  program
    .command('stats')
    .description('packets, bytes, mappings per protocol and drops by reason')
    .option('--json', 'JSON output')
    .action(async (opts: { json?: boolean }) => {
      const st = await request(program.opts().config as string, 'stats');
      delete st.ok;
      delete st.end;
      process.stdout.write(JSON.stringify(st, null, opts.json ? undefined : 2) + '\n');
    });

  const conns = program.command('conns').description('inspect and manage the connection table');
  conns
    .command('list')
    .description('list connections')
    .option('--json', 'one JSON object per line')
    .action(async (opts: { json?: boolean }) => {
      const rows: ConnRow[] = [];
      await request(program.opts().config as string, 'conns', {}, (row) => {
        if (opts.json) process.stdout.write(JSON.stringify(row) + '\n');
        else rows.push(row as ConnRow);
      });
      if (!opts.json) {
        process.stdout.write(formatConnTable(rows));
        process.stderr.write(`${rows.length} connections listed.\n`);
      }
    });

  return program;
}

async function main(): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : EXIT_USAGE);
    fail((e as Error).message);
  }
}

if (require.main === module) void main();
