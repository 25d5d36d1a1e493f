/**
 * `vpnmasq run` as a systemd service (sd_notify(3), daemon(7)): WATCHDOG=1 at half of
 * WATCHDOG_USEC, SIGHUP reloads the config (RELOADING=1 + MONOTONIC_USEC,
 * then READY=1) keeping every mapping and keeping the old config when the
 * new one is bad, SIGTERM/SIGINT send STOPPING=1, flush and exit cleanly.
 * READY=1 comes once the safety net is in place and the control socket
 * answers, also while the daemon still waits for the WAN; STATUS= says which.
 * No exit, clean or not, removes the safety net (Daemon.start() reconciles it).
 */
import { Config, ConfigError, ConfigProblem, loadConfig } from '../config/schema';
import { Daemon, ReloadOutcome } from './daemon';
import { createLogger, Logger } from './log';
import { loadTunNative } from '../edge/tun/native';

const EXIT_FAILURE = 1;

/** Sends sd_notify messages to $NOTIFY_SOCKET (no-op without it). */
export class Notifier {
  private readonly socket: string | undefined;

  constructor(env: NodeJS.ProcessEnv = process.env) {
    this.socket = env.NOTIFY_SOCKET || undefined;
  }

  send(message: string): boolean {
    return this.socket !== undefined && loadTunNative().notify(this.socket, message);
  }

  /**
   * The watchdog ping interval in ms (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
   * recommends), or 0 when no watchdog is requested for this process.
   */
  static watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number {
    const usec = Number(env.WATCHDOG_USEC);
    if (!Number.isFinite(usec) || usec <= 0) return 0;
    if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return 0;
    return Math.max(1, Math.floor(usec / 2000));
  }
}

/** CLOCK_MONOTONIC in microseconds (libuv's hrtime is CLOCK_MONOTONIC on Linux). */
function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/** Runs the daemon until SIGTERM/SIGINT; exits the process. */
export async function runDaemon(configPath: string, config: Config, opts: { forceDowngrade?: boolean } = {}): Promise<void> {
  const log = createLogger(config.log);
  const notify = new Notifier();
  let reloading: Promise<unknown> = Promise.resolve();
  /** One reload at a time, SIGHUP and `vpnmasq reload` alike; resolves with what it did. */
  const reload = (trigger: string): Promise<ReloadOutcome> => {
    const run = reloading.then(() => doReload(configPath, daemon, notify, log, trigger));
    reloading = run.catch(() => undefined);
    return run;
  };
  let watchdog: NodeJS.Timeout | null = null;
  let stopping = false;

  const stop = (signal: string, code = 0, status?: string): void => {
    if (stopping) return;
    stopping = true;
    if (watchdog) clearInterval(watchdog);
    notify.send(status === undefined ? 'STOPPING=1' : `STOPPING=1\nSTATUS=${status}`);
    log.info('stopping', { signal });
    reloading.then(() => daemon.stop()).then(() => process.exit(code), (e: Error) => {
      log.error('stop failed', { error: e.message });
      process.exit(EXIT_FAILURE);
    });
  };
  // A failed TUN device, a packet path that keeps throwing, or a translation
  // that cannot start once the WAN came: no more watchdog pings, the state
  // flushed by stop(), the safety net left in place, and a non-zero exit for
  // a restart.
  const daemon = new Daemon(config, log, {
    onStatus: (status) => notify.send(`STATUS=${status}`),
    onFatal: (reason) => stop('fatal', EXIT_FAILURE, reason.message),
    newerSchema: opts.forceDowngrade === true ? 'move-aside' : 'refuse',
    reloadFromFile: () => (stopping ? Promise.resolve({ ok: false, error: 'vpnmasq is stopping' }) : reload('vpnmasq reload')),
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => { if (!stopping) void reload('SIGHUP'); });

  try {
    await daemon.start();
  } catch (e) {
    log.error('start failed', { error: (e as Error).message });
    await daemon.stop();
    process.exit(EXIT_FAILURE);
  }
  if (stopping) return;
  // Ready once the safety net is in place and the control socket answers, also while waiting for the WAN.
  notify.send(`READY=1\nSTATUS=${daemon.statusLine()}\nMAINPID=${process.pid}`);
  const interval = Notifier.watchdogIntervalMs();
  if (interval > 0) watchdog = setInterval(() => notify.send('WATCHDOG=1'), interval);
}

/**
 * Reads the config file and hands it to the daemon; systemd hears RELOADING=1
 * first and READY=1 when the answer is known. A file that does not parse or
 * check, or that changes a field needing a restart, is rejected and the
 * running config kept.
 */
async function doReload(configPath: string, daemon: Daemon, notify: Notifier, log: Logger, trigger: string): Promise<ReloadOutcome> {
  notify.send(`RELOADING=1\nMONOTONIC_USEC=${monotonicUsec()}`);
  let outcome: ReloadOutcome;
  const warnings: ConfigProblem[] = [];
  try {
    const next = loadConfig(configPath, warnings);
    outcome = await daemon.reload(next, warnings.map((w) => `${w.field}: ${w.message}`));
  } catch (e) {
    outcome = { ok: false, error: e instanceof ConfigError ? e.message : `reload failed: ${(e as Error).message}` };
  }
  if (outcome.ok) {
    for (const w of outcome.warnings) log.warn('config warning', { warning: w });
    log.info('config reloaded', { trigger, applied: outcome.applied.length > 0 ? outcome.applied.join(', ') : 'nothing changed', mappings: daemon.table.sessionCount });
    notify.send('READY=1\nSTATUS=config reloaded');
  } else {
    log.error('reload rejected, keeping the running config', { trigger, error: outcome.error });
    notify.send('READY=1\nSTATUS=reload rejected, running the previous config');
  }
  return outcome;
}
