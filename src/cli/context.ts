/** What every CLI command shares: the config, stdout with back-pressure, messages on stderr. */
import { Command } from 'commander';
import { Config, ConfigError, loadConfig } from '../config/schema';
import { ControlRequest } from '../query/protocol';
import { CliError, DaemonDownError, RowHandler, SocketInfo, streamRequest } from './client';
import { findDaemons } from './locate';

export function config(program: Command): Config {
  const path = program.opts().config as string;
  try {
    return loadConfig(path);
  } catch (e) {
    if (e instanceof ConfigError && /EACCES/.test(e.message)) {
      throw new CliError(`permission denied reading ${path}: run as root or as a member of the "vpnmasq" group`);
    }
    throw new CliError((e as Error).message);
  }
}

/**
 * Sends a request to the daemon on the control socket the config file names.
 * When nobody answers there but a daemon reading the same file runs, the file
 * changed after the daemon read it (a new control.socket not reloaded yet, a
 * rejected reload, or a file that no longer parses): the request goes to the
 * socket that daemon listens on, with a note; if that socket cannot be seen
 * (not root), the answer says the daemon runs and why it cannot be reached,
 * never that it is down.
 */
export async function request(program: Command, req: ControlRequest, onRow?: RowHandler, timeoutMs?: number): Promise<Record<string, unknown>> {
  const file = program.opts().config as string;
  let control: SocketInfo;
  try {
    control = config(program).control;
  } catch (e) {
    const at = findDaemons(file).find((d) => d.socket !== null);
    if (at === undefined) throw e;
    note(`vpnmasq: ${(e as Error).message.split('\n')[0]}${(e as Error).message.includes('\n') ? ' (and more)' : ''}`);
    note(`vpnmasq: the daemon (pid ${at.pid}) runs the config it read before, on ${String(at.socket)}`);
    return streamRequest({ socket: at.socket as string, group: 'vpnmasq' }, req, onRow, timeoutMs);
  }
  try {
    return await streamRequest(control, req, onRow, timeoutMs);
  } catch (e) {
    if (!(e instanceof DaemonDownError)) throw e;
    const running = findDaemons(file);
    if (running.length === 0) throw e;
    const at = running.find((d) => d.socket !== null && d.socket !== control.socket);
    if (at === undefined) {
      throw new CliError(`vpnmasq is running (pid ${running.map((d) => d.pid).join(', ')}) but does not answer on ${control.socket}, ` +
        `the control.socket of ${file}: the file changed after the daemon read it; as root, "vpnmasq status" finds its socket and ` +
        '"vpnmasq reload" applies the file (a rejected reload says why)');
    }
    note(`vpnmasq: the daemon (pid ${at.pid}) listens on ${String(at.socket)}, not on ${control.socket} named in ${file}: ` +
      'the file changed after the daemon read it ("vpnmasq reload" applies it)');
    return streamRequest({ ...control, socket: at.socket as string }, req, onRow, timeoutMs);
  }
}

/** Writes data to stdout; the promise (if any) settles when stdout can take more. */
export function out(text: string): void | Promise<void> {
  if (process.stdout.write(text)) return undefined;
  return new Promise((resolve) => process.stdout.once('drain', resolve));
}

/** A message for the operator (stderr). */
export function note(text: string): void {
  process.stderr.write(`${text}\n`);
}
