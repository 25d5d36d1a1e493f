/** A Logger for unit tests that keeps every line it is given, in order. */
import type { Logger } from '../../src/daemon/log';

export interface Logged { level: string; msg: string; fields?: Record<string, unknown> }

export function recordingLogger(lines: Logged[]): Logger {
  const w = (level: string) => (msg: string, fields?: Record<string, unknown>) => { lines.push({ level, msg, fields }); };
  return {
    error: w('error'), warn: w('warn'), info: w('info'), debug: w('debug'), event: (_k, msg, fields) => lines.push({ level: 'event', msg, fields }),
    lazyEvent: () => undefined, enabled: () => true, configure: () => undefined,
  };
}
