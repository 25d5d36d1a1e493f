/** What every CLI command shares: the config, stdout with back-pressure, messages on stderr. */
import { Command } from 'commander';
import { Config, ConfigError, loadConfig } from '../config/schema';
import { ControlRequest } from '../query/protocol';
import { CliError, RowHandler, streamRequest } from './client';

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

export function request(program: Command, req: ControlRequest, onRow?: RowHandler): Promise<Record<string, unknown>> {
  return streamRequest(config(program).control, req, onRow);
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
