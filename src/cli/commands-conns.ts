/** `vpnmasq conns list|show|delete|flush|watch`. */
import * as readline from 'node:readline';
import { Command } from 'commander';
import type { StoredConns } from '../query/stored';
import { CliError, DaemonDownError, EXIT_USAGE } from './client';
import { config, note, out, request } from './context';
import {
  AnyConnRow, checkQuery, compileFilter, ConnFilter, FILTER_KEYS, FilterError, isEmptyFilter, ListQuery, parseConnId, parseLimit, PROTOCOLS,
  queryRows, SORT_KEYS,
} from '../query/filters';
import { CONN_HEADERS, connCells, flatten, keyValues, TableWriter, useColour, vpnDetail } from './format';
import { prefixPairs } from '../core/ipv4-addr';

/** The state database, read-only (for reads while the daemon is down; loaded only then), with the rows the daemon would restore. */
async function openStore(program: Command, why: string): Promise<StoredConns> {
  const cfg = config(program);
  const path = cfg.state.path;
  note(`${why}; reading ${path} read-only`);
  const { openReadOnly } = await import('../query/stored');
  try {
    return openReadOnly(path, prefixPairs(cfg.lan.prefixes));
  } catch (e) {
    throw new CliError(`cannot read the state database ${path}: ${(e as Error).message}`);
  }
}

export function addFilterOptions(cmd: Command): Command {
  return cmd
    .option('-p, --proto <proto>', `protocol: ${PROTOCOLS.join(', ')} (or its IP protocol number)`)
    .option('-s, --src <addr>', 'original source (the LAN host): ADDR, ADDR/LEN or ADDR:PORT')
    .option('-d, --dst <addr>', 'original destination (the remote host): ADDR, ADDR/LEN or ADDR:PORT')
    .option('--sport <port>', 'original source port (LAN side)')
    .option('--dport <port>', 'original destination port (remote side)')
    .option('--state <state>', 'state: a TCP state (ESTABLISHED, SYN_SENT, ...), REPLIED or UNREPLIED, or a VPN state')
    .option('--lan-host <addr>', 'LAN host: ADDR, ADDR/LEN or ADDR:PORT')
    .option('--remote <addr>', 'remote host: ADDR, ADDR/LEN or ADDR:PORT')
    .option('--public-port <port>', 'public (translated) port')
    .option('--spi <hex>', 'ESP SPI, either direction (hex, 0x optional)')
    .option('--cookie <hex>', 'ISAKMP initiator or responder cookie (hex, 0x optional)')
    .option('--call-id <id>', 'PPTP Call ID, LAN or public side (decimal or 0x hex)');
}

/** The filter given on the command line; validated here so a typo is a usage error (exit 2). */
export function filterFrom(opts: Record<string, unknown>): ConnFilter {
  const f: Record<string, unknown> = {};
  for (const k of FILTER_KEYS) if (opts[k] !== undefined) f[k] = opts[k];
  usage(() => compileFilter(f));
  return f as ConnFilter;
}

function usage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof FilterError) throw new CliError(e.message, EXIT_USAGE);
    throw e;
  }
}

interface ListOpts extends Record<string, unknown> {
  json?: boolean;
  legend: boolean;
  limit?: string;
  sort?: string;
  reverse?: boolean;
}

async function list(program: Command, opts: ListOpts): Promise<void> {
  const q: ListQuery = { filter: filterFrom(opts), sort: opts.sort, reverse: opts.reverse === true };
  if (opts.limit !== undefined) q.limit = usage(() => parseLimit(opts.limit));
  usage(() => checkQuery(q));
  const table = new TableWriter(CONN_HEADERS, { write: out }, { legend: opts.legend, colour: useColour(process.stdout) });
  const emit = (row: AnyConnRow) => (opts.json ? out(JSON.stringify(row) + '\n') : table.add(connCells(row)));
  let count: number;
  try {
    const result = await request(program, { cmd: 'conns', ...q }, (r) => emit(r as unknown as AnyConnRow));
    count = Number(result.count);
  } catch (e) {
    if (!(e instanceof DaemonDownError)) throw e;
    const store = await openStore(program, e.message);
    count = 0;
    try {
      for (const r of queryRows(store.iterate() as Iterable<AnyConnRow>, q)) {
        count++;
        const full = emit(r);
        if (full) await full;
      }
    } finally {
      store.close();
    }
  }
  if (!opts.json) await table.end();
  if (opts.legend) note(`${count} connection${count === 1 ? '' : 's'} listed.`);
}

async function show(program: Command, idText: string, opts: { json?: boolean }): Promise<void> {
  const id = usage(() => parseConnId(idText));
  let conn: AnyConnRow | null;
  try {
    conn = (await request(program, { cmd: 'conns-show', id })).conn as AnyConnRow;
  } catch (e) {
    if (!(e instanceof DaemonDownError)) throw e;
    const store = await openStore(program, e.message);
    try {
      conn = store.byId(id);
    } finally {
      store.close();
    }
    if (conn === null) throw new CliError(`no connection with id ${id}`);
  }
  if (opts.json) await out(JSON.stringify(conn) + '\n');
  else await out(keyValues(flatten({ ...conn, vpn: vpnDetail(conn.vpn) } as Record<string, unknown>)));
}

async function confirm(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await new Promise<string>((resolve) => rl.question(`${question} [y/N] `, resolve));
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

async function remove(program: Command, cmd: 'conns-delete' | 'conns-flush', req: Record<string, unknown>, json: boolean): Promise<void> {
  const result = await request(program, { cmd, ...req });
  const n = Number(result.deleted);
  if (json) await out(JSON.stringify({ deleted: n }) + '\n');
  note(`${n} connection${n === 1 ? '' : 's'} deleted.`);
}

function watchLine(ev: Record<string, unknown>, timestamp: boolean): string {
  const time = timestamp ? `${String(ev.time)} ` : '';
  const c = ev.conn as AnyConnRow;
  const tag = `[${String(ev.event)}]`.padEnd(9);
  if (!c.proto) return `${time}${tag} id=${c.id}\n`;
  return `${time}${tag} ${connCells(c).slice(0, 7).join(' ')}\n`;
}

async function watch(program: Command, opts: Record<string, unknown>): Promise<void> {
  const filter = filterFrom(opts);
  process.once('SIGINT', () => process.exit(0));
  await request(program, { cmd: 'watch', filter }, async (ev) => {
    if (ev.watching === true) { note('watching connection events (Ctrl-C to stop)'); return; }
    // Fell behind (like conntrack -E's ENOBUFS): the daemon says how many events were lost and disconnects.
    if (ev.event === 'LOST') {
      if (opts.json) await out(JSON.stringify(ev) + '\n');
      throw new CliError(String(ev.error));
    }
    await out(opts.json ? JSON.stringify(ev) + '\n' : watchLine(ev, opts.timestamp === true));
  });
}

export function connsCommand(program: Command): Command {
  const conns = program.command('conns').description('inspect and manage the connection table');

  addFilterOptions(conns.command('list').alias('ls'))
    .description('list connections (streams; reads the state database read-only when the daemon is down)')
    .option('--json', 'one JSON object per line (schema: docs/cli-json-schema.json, "conn")')
    .option('--no-legend', 'no header line and no summary line')
    .option('-n, --limit <n>', 'show at most N connections')
    .option('--sort <key>', `sort by ${SORT_KEYS.join(', ')} (holds the matching rows in memory)`)
    .option('-r, --reverse', 'reverse the sort order')
    .addHelpText('after', '\nThe summary line ("N connections listed.") goes to stderr.\nExamples:\n  vpnmasq conns list -p udp --dport 500\n  vpnmasq conns list --sort bytes -r -n 10\n  vpnmasq conns list --spi 0xc0ffee01 --json')
    .action((opts: ListOpts) => list(program, opts));

  conns.command('show').argument('<id>', 'connection id (the ID column)')
    .description('show one connection in full')
    .option('--json', 'one JSON object (schema "conn")')
    .action((id: string, opts: { json?: boolean }) => show(program, id, opts));

  addFilterOptions(conns.command('delete').argument('[id]', 'connection id'))
    .description('delete a connection by id, or every connection matching the filters; its translation stops at once')
    .option('--json', 'print {"deleted": N}')
    .addHelpText('after', `
Every row can be deleted, VPN rows too (ids are unique across protocols). The
entry goes as if it had expired: the next outbound packet makes a new one
(TCP/UDP/ICMP: a new mapping; ESP: a new pending entry; ISAKMP: a new entry),
inbound packets for it are dropped. A deleted PPTP call (gre) stays gone: its
GRE is dropped until the client places a new call.
Examples:
  vpnmasq conns delete 42
  vpnmasq conns delete -p esp --spi 0xc0ffee01`)
    .action(async (id: string | undefined, opts: Record<string, unknown>) => {
      const filter = filterFrom(opts);
      if (id === undefined && isEmptyFilter(filter)) throw new CliError('conns delete needs an id or at least one filter (use "conns flush" to delete all)', EXIT_USAGE);
      await remove(program, 'conns-delete', id !== undefined ? { id: usage(() => parseConnId(id)) } : { filter }, opts.json === true);
    });

  addFilterOptions(conns.command('flush'))
    .description('delete every connection (or every one matching the filters)')
    .option('-y, --yes', 'do not ask for confirmation')
    .option('--json', 'print {"deleted": N}')
    .action(async (opts: Record<string, unknown>) => {
      const filter = filterFrom(opts);
      if (opts.yes !== true && process.stdin.isTTY) {
        const what = isEmptyFilter(filter) ? 'ALL connections' : 'every connection matching the filters';
        if (!(await confirm(`Delete ${what}?`))) throw new CliError('aborted');
      }
      await remove(program, 'conns-flush', { filter }, opts.json === true);
    });

  addFilterOptions(conns.command('watch'))
    .description('print NEW / UPDATE / DESTROY events as they happen, one line each; a watcher that falls behind is told how many events it lost and stopped (exit 1)')
    .option('--json', 'one JSON object per event (schema "event")')
    .option('-t, --timestamp', 'prefix each line with its time')
    .action((opts: Record<string, unknown>) => watch(program, opts));

  return conns;
}
