/** `vpnmasq run|check-native|status|stats|forwards|config check`. */
import { Command } from 'commander';
import { Config, ConfigError, ConfigProblem, loadConfig } from '../config/schema';
import { checkNativeModules, nodeDescription } from '../edge/native-modules';
import { CliError, DaemonDownError, EXIT_FAILURE, EXIT_USAGE } from './client';
import { config, note, out, request } from './context';
import { flatten, formatTable, keyValues, seconds } from './format';
import { RouterNet, SafetyNetStatus } from '../edge/netlink/router-net';
import { safetyNetText } from './commands-net';
import type { DbHealth } from '../persist/health';
import { FilterError, portNumber, shown } from '../query/filters';

/**
 * Starts the router in this process (src/daemon/lifecycle.ts: readiness,
 * watchdog, reload, SIGTERM). The entry point hands it in, so the CLI never
 * imports the daemon.
 */
export type RunDaemon = (configPath: string, config: Config, opts: { forceDowngrade?: boolean }) => Promise<void>;

export function runCommand(program: Command, runDaemon: RunDaemon): void {
  program
    .command('run')
    .description('run the router in the foreground (as a systemd service)')
    .option('--force-downgrade', 'a state database written by a newer vpnmasq is moved aside (kept) and the router starts with an empty table; without it such a file is left untouched and nothing is persisted')
    .action(async (opts: { forceDowngrade?: boolean }) => {
      const cfg = config(program);
      const problems = checkNativeModules().flatMap((r) => (r.problem === null ? [] : [r.problem]));
      if (problems.length > 0) throw new CliError(problems.join('\n'));
      return runDaemon(program.opts().config as string, cfg, { forceDowngrade: opts.forceDowngrade === true });
    });

  program
    .command('check-native')
    .description('load the native modules (SQLite, TUN) with this Node, as "run" does first; run after an install or a Node upgrade')
    .addHelpText('after', '\nExit status: 0 when every module loads, 1 otherwise (the message says how to rebuild).')
    .action(() => {
      const reports = checkNativeModules();
      for (const r of reports) note(r.problem ?? `${r.module}: ok`);
      if (reports.some((r) => r.problem !== null)) throw new CliError(`native modules do not match Node ${nodeDescription()}`);
      note(`native modules load in Node ${nodeDescription()}`);
    });
}

const rows = (n: number): string => `${n} row${n === 1 ? '' : 's'}`;

/**
 * The state database in plain words: its health and what restore did, then
 * one line for each thing an operator must know (a file moved aside, rows
 * quarantined, a file not used).
 */
function databaseLines(db: (DbHealth & { path: string }) | null): Array<[string, string]> {
  if (db === null) return [['Database', 'none (not persisted)']];
  const health = db.refused !== null ? 'NOT USED' : db.healthy ? 'healthy' : `FAILING (${String(db.lastError)})`;
  const lines: Array<[string, string]> = [
    ['Database', `${db.path}: ${health}; ${rows(db.rowsRestored)} restored, ${db.rowsDiscarded} discarded at start (expired or dropped by policy)`],
  ];
  if (db.refused !== null) lines.push(['', db.refused]);
  if (db.rowsQuarantined > 0) {
    lines.push(['', `${rows(db.rowsQuarantined)} could not be restored and ${db.rowsQuarantined === 1 ? 'is' : 'are'} kept in the file's "quarantine" table with the reason (see the log)`]);
  }
  if (db.movedAside !== null) lines.push(['', `the previous file was moved aside to ${db.movedAside}: ${String(db.movedAsideReason)}`]);
  if (db.healthy && db.refused === null && !db.checkpointThread) lines.push(['', 'checkpoints run inside commits: the checkpoint thread stopped (see the log)']);
  return lines;
}

/** Human status: a headline, then the known facts, then anything else the daemon reports. */
function statusText(st: Record<string, unknown>): string {
  const {
    running: _r, translating: _t, waitingFor: _w, statusText: line, safetyNet, pid, uptimeSeconds, tun, mode, publicAddress, lanPrefixes, lanIpv6,
    sessions, limit, state, control, lastReload, ...rest
  } = st;
  const reload = lastReload as { at: string; ok: boolean; applied?: string[]; error?: string } | null | undefined;
  const ctl = control as { socket?: string; connections?: number; watchers?: number; refused?: number; thread?: boolean } | null | undefined;
  const t = tun as { name: string; devices?: string[]; offloads: number } | null;
  const used = Number(sessions);
  const cap = Number(limit);
  const pairs: Array<[string, string]> = [
    ...(line === undefined ? [] : [['State', String(line)] as [string, string]]),
    ...(safetyNet == null ? [] : [['Safety net', safetyNetText(safetyNet as SafetyNetStatus | { error: string })] as [string, string]]),
    ['TUN', t ? `${t.devices?.length === 2 ? `${t.devices[0]} (LAN), ${t.devices[1]} (WAN)` : t.name} (offloads 0x${t.offloads.toString(16)})` : '-'],
    ['Mode', `${String(mode)}, public address ${String(publicAddress)}`],
    ['LAN', (lanPrefixes as string[]).join(', ')],
    ...(lanIpv6 === undefined ? [] : [['LAN IPv6', ipv6Text(lanIpv6 as { policy: string; rules: string[] })] as [string, string]]),
    ['Table', `${used} of ${cap} sessions (${((100 * used) / cap).toFixed(1)}%)`],
    ...databaseLines(state as (DbHealth & { path: string }) | null),
    ...(ctl == null ? [] : [['Control', controlText(ctl)] as [string, string]]),
    ...(reload ? [['Reload', reload.ok ? `applied at ${reload.at}: ${reload.applied?.length ? reload.applied.join(', ') : 'nothing changed'}`
      : `REJECTED at ${reload.at}, running the previous config: ${String(reload.error).split('\n').join('; ')}`] as [string, string]] : []),
    ...flatten(rest),
  ];
  return `vpnmasq is running (pid ${String(pid)}, up ${seconds(Number(uptimeSeconds))})\n${keyValues(pairs)}`;
}

/** The control socket and its clients. */
function controlText(c: { socket?: string; connections?: number; watchers?: number; refused?: number; thread?: boolean }): string {
  const clients = `${c.connections ?? 0} connections, ${c.watchers ?? 0} watching, ${c.refused ?? 0} refused since start`;
  const where = c.thread === false ? '; served on the packet thread: the control thread stopped (see the log)' : '';
  return (c.socket === undefined ? clients : `${c.socket} (${clients})`) + where;
}

/** lan.ipv6 as the status line says it. */
function ipv6Text(v: { policy: string; rules: string[] }): string {
  if (v.policy === 'route') return 'route (left to the kernel\'s IPv6 routing, not translated)';
  return `drop (refused, ICMPv6 administratively prohibited${v.rules.length > 0 ? `: ${v.rules.join('; ')}` : ''})`;
}

/** Human stats: one aligned line per counter; zero drop counters are left out. */
function statsText(st: Record<string, unknown>): string {
  return keyValues(flatten(st).filter(([k, v]) => !(k.startsWith('drops.') && v === '0')));
}

/** A reload waits for the daemon to apply everything (rules, a retime of every entry). */
const RELOAD_TIMEOUT_MS = 60_000;

export function systemCommands(program: Command): void {
  program
    .command('status')
    .description('whether the daemon runs and translates, the safety net, its uptime, TUN, addresses, mode, table usage and state database')
    .option('--json', 'one JSON object (schema "status"); {"running": false, "safetyNet": ...} when the daemon is down')
    .addHelpText('after', '\nExit status: 0 when the daemon runs, 1 when it does not.')
    .action(async (opts: { json?: boolean }) => {
      try {
        const st = await request(program, { cmd: 'status' });
        await out(opts.json ? JSON.stringify(st) + '\n' : statusText(st));
      } catch (e) {
        if (!(e instanceof DaemonDownError)) throw e;
        // What the kernel still holds: the safety net keeps the box closed while nothing translates.
        const net = await RouterNet.inspect().catch((err: Error) => ({ error: err.message }));
        await out(opts.json ? JSON.stringify({ running: false, safetyNet: net }) + '\n'
          : `vpnmasq is not running\n${keyValues([['Safety net', safetyNetText(net)]])}`);
        process.exitCode = EXIT_FAILURE;
      }
    });

  program
    .command('reload')
    .description('reload the config file in the running daemon and wait for its answer (systemctl reload runs this)')
    .addHelpText('after', `
Every changed field is applied at once, to the existing connections too
(timeouts, limits, ports, filtering, IPsec/PPTP options, forwards, log,
metrics, state flushing, the control socket), or the whole file is rejected
and the running config kept: a field that needs a restart is named with the
reason, as is every problem "vpnmasq config check" would find.
Exit status: 0 when the config was applied, 1 when it was rejected or the
daemon could not be reached. SIGHUP reloads the same way but answers only in
the log.`)
    .action(async () => {
      const r = await request(program, { cmd: 'reload' }, undefined, RELOAD_TIMEOUT_MS);
      for (const w of (r.warnings as string[] | undefined) ?? []) note(`warning: ${w}`);
      const applied = (r.applied as string[] | undefined) ?? [];
      note(applied.length > 0 ? `config reloaded; applied: ${applied.join(', ')}` : 'config reloaded; nothing changed');
    });

  program
    .command('stats')
    .description('packets, bytes, mappings per protocol, drops by reason, VPN events, TUN counters')
    .option('--json', 'one JSON object (schema "stats")')
    .action(async (opts: { json?: boolean }) => {
      const st = await request(program, { cmd: 'stats' });
      await out(opts.json ? JSON.stringify(st) + '\n' : statsText(st));
    });

  const fwd = program.command('forwards').description('port and protocol forwards to LAN hosts')
    .addHelpText('after', `
Forwards come from "forwards" in the config file and from "forwards add" at
runtime. A runtime forward is checked exactly like a config entry (LAN prefix,
one forward per public port or protocol) and takes effect at once, on the
packet path and, in shared-address mode, in the steering rules. Runtime
forwards are NOT written to the config file: they end when the daemon stops
or restarts (a reload keeps them unless the new config claims their port).
"forwards remove" removes runtime forwards only; connections already made
through a forward stay until they expire or "conns delete --public-port N".

Examples:
  vpnmasq forwards add tcp 10.77.0.13 8443 443
  vpnmasq forwards add esp 10.77.0.14
  vpnmasq forwards remove tcp 8443
  vpnmasq forwards list --json`);
  fwd.command('list')
    .description('list the forwards in effect')
    .option('--json', 'one JSON object per line (schema "forward")')
    .action(async (opts: { json?: boolean }) => {
      const rows: string[][] = [];
      await request(program, { cmd: 'forwards-list' }, (f) => {
        if (opts.json) return out(JSON.stringify(f) + '\n');
        rows.push([String(f.proto), f.publicPort === undefined ? '-' : String(f.publicPort), String(f.lanAddress),
          f.lanPort === undefined ? '-' : String(f.lanPort), String(f.source)]);
        return undefined;
      });
      if (!opts.json) await out(formatTable(['PROTO', 'PUBLIC PORT', 'LAN ADDRESS', 'LAN PORT', 'SOURCE'], rows));
    });
  fwd.command('add')
    .description('add a runtime forward (tcp/udp need ports; esp/gre forward the whole protocol); not saved to the config file')
    .argument('<proto>', 'tcp, udp, esp or gre')
    .argument('<lan-address>', 'LAN host that receives the traffic')
    .argument('[public-port]', 'public port (tcp, udp)')
    .argument('[lan-port]', 'LAN port (tcp, udp; default: the public port)')
    .action(async (proto: string, lanAddress: string, publicPort?: string, lanPort?: string) => {
      const forward: Record<string, unknown> = { proto, lanAddress };
      if (proto === 'tcp' || proto === 'udp') {
        if (publicPort === undefined) throw new CliError(`${proto} forwards need a public port`, EXIT_USAGE);
        forward.publicPort = usagePort('public-port', publicPort);
        forward.lanPort = usagePort('lan-port', lanPort ?? publicPort);
      } else if (proto !== 'esp' && proto !== 'gre') {
        throw new CliError(`unknown forward protocol ${shown(proto)} (tcp, udp, esp or gre)`, EXIT_USAGE);
      }
      await request(program, { cmd: 'forwards-add', forward });
      note('forward added.');
    });
  fwd.command('remove')
    .description('remove a runtime forward (config-file forwards are edited in the file)')
    .argument('<proto>', 'tcp, udp, esp or gre')
    .argument('[public-port]', 'public port (tcp, udp)')
    .action(async (proto: string, publicPort?: string) => {
      await request(program, { cmd: 'forwards-remove', proto, publicPort: publicPort === undefined ? undefined : usagePort('public-port', publicPort) });
      note('forward removed.');
    });

  program
    .command('config')
    .description('configuration file tools')
    .command('check')
    .description('validate a config file without touching the system; prints every problem')
    .argument('<file>', 'config file')
    .action((file: string) => {
      const warnings: ConfigProblem[] = [];
      const show = (p: ConfigProblem, kind = '') => note(p.field ? `${file}: ${p.field}: ${kind}${p.message}` : `${file}: ${kind}${p.message}`);
      try {
        loadConfig(file, warnings);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        for (const p of e.problems) show(p);
        for (const w of warnings) show(w, 'warning: ');
        throw new CliError(`${file}: ${e.problems.length} problem${e.problems.length === 1 ? '' : 's'}`);
      }
      for (const w of warnings) show(w, 'warning: ');
      note(`${file}: ok`);
    });
}

/** A port argument (0-65535), or a usage error that quotes it cut short. */
function usagePort(name: string, text: string): number {
  try {
    return portNumber(name, text);
  } catch (e) {
    if (e instanceof FilterError) throw new CliError(e.message, EXIT_USAGE);
    throw e;
  }
}
