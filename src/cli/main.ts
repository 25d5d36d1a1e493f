/**
 * The `vpnmasq` command. Exit codes: 0 success, 1 failure, 2 usage error
 * (conntrack's convention). Data goes to stdout, messages to stderr.
 */
import * as fs from 'node:fs';
import { Command, CommanderError } from 'commander';
import { DEFAULT_CONFIG_PATH } from '../config/schema';
import { CliError, EXIT_FAILURE, EXIT_USAGE } from './client';
import { connsCommand } from './commands-conns';
import { netCommands } from './commands-net';
import { RunDaemon, runCommand, systemCommands } from './commands-system';
import { completionCommand } from './completion';
import { shown } from '../query/filters';
import { ipsecCommand } from './commands-ipsec';
import { firewallCommand } from './commands-firewall';
import { version } from '../core/version';

/** `runDaemon` is what `vpnmasq run` does; the entry point (src/bin/vpnmasq.ts) supplies it. */
export function buildProgram(runDaemon: RunDaemon = notWired): Command {
  const program = new Command();
  program
    .name('vpnmasq')
    .description('VPN-aware masquerading router on a TUN device')
    .version(`vpnmasq ${version()}`, '-V, --version', 'print the version and exit')
    .option('-c, --config <path>', 'config file', DEFAULT_CONFIG_PATH)
    .exitOverride()
    .showHelpAfterError('(run "vpnmasq help COMMAND" for its usage)')
    .configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: (s, write) => write(cutLines(s)) })
    .addHelpText('after', `
Exit status: 0 success, 1 failure (daemon down, permission denied, not found), 2 usage error.
Data goes to stdout, messages to stderr; no colour unless stdout is a terminal and NO_COLOR is unset.
The daemon's control socket (control.socket in the config) is open to root and the control.group group.`);
  runCommand(program, runDaemon);
  systemCommands(program);
  netCommands(program);
  connsCommand(program);
  ipsecCommand(program);
  firewallCommand(program);
  completionCommand(program);
  program.helpCommand(false);
  program
    .command('help')
    .description('show the help of a command, e.g. "vpnmasq help conns list"')
    .argument('[command...]', 'command path')
    .action((path: string[]) => {
      let cmd: Command = program;
      for (const name of path) {
        const sub = cmd.commands.find((c) => c.name() === name || c.aliases().includes(name));
        if (!sub) throw new CliError(`unknown command ${shown(path.join(' '))}`, EXIT_USAGE);
        cmd = sub;
      }
      cmd.outputHelp();
    });
  return program;
}

/**
 * Whether stderr is the journal: systemd.exec(5) sets JOURNAL_STREAM to the
 * "DEVICE:INODE" of the stream it connected, so services can tell it apart
 * from a terminal or a pipe they were redirected to.
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]) && st.ino === BigInt(m[2]);
  } catch {
    return false;
  }
}

/**
 * Writes `vpnmasq: message` (one line per line of it) and exits. In the
 * journal every line carries the sd-daemon(3) error prefix, so the reason a
 * start failed shows in `journalctl -p err`.
 */
function fail(message: string, code: number): never {
  const prefix = stderrIsJournal() ? '<3>vpnmasq: ' : 'vpnmasq: ';
  process.stderr.write(message.split('\n').map((line) => prefix + line + '\n').join(''));
  process.exit(code);
}

async function notWired(): Promise<void> {
  throw new CliError('this program was built without the router (run it through src/bin/vpnmasq.ts)');
}

/** Runs the command line in `process.argv` and exits with its status. */
export async function main(runDaemon: RunDaemon): Promise<void> {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0); // reader went away (| head)
    fail(e.message, EXIT_FAILURE);
  });
  try {
    await buildProgram(runDaemon).parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : EXIT_USAGE);
    if (e instanceof CliError) fail(e.message, e.exitCode);
    fail((e as Error).message, EXIT_FAILURE);
  }
}

/** Commander's usage errors quote the argument whole: each line is cut to a sane length. */
function cutLines(text: string): string {
  return text.replace(/^(.{200}).+$/gm, (_, head: string) => `${head}... (cut)`);
}
