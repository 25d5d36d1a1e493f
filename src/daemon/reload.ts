/**
 * Reload policy: which config changes the running daemon applies on SIGHUP
 * and which need a restart.
 */
import type { Config } from '../config/schema';
import { isPlainObject } from '../config/checks';
import { childField } from '../config/json';

/** Paths of the fields whose values differ between two configs, e.g. `['timeouts.udp', 'forwards']`. */
export function configDiff(a: Config, b: Config): string[] {
  const changed: string[] = [];
  const walk = (x: unknown, y: unknown, field: string): void => {
    if (isPlainObject(x) && isPlainObject(y)) {
      for (const key of new Set([...Object.keys(x), ...Object.keys(y)])) walk(x[key], y[key], childField(field, key));
    } else if (JSON.stringify(x) !== JSON.stringify(y)) {
      changed.push(field);
    }
  };
  walk(a, b, '');
  return changed;
}

/** Fields that only take effect on restart: they define the interfaces, address plan and database. */
const RESTART_ONLY_FIELDS = ['tun.name', 'wan.mode', 'wan.interface', 'lan.interfaces', 'lan.prefixes', 'state.path'];

/** Whether the running daemon can switch from config `a` to config `b` without a restart. */
export function reloadable(a: Config, b: Config): { ok: true } | { ok: false; reason: string } {
  const blocked = configDiff(a, b).filter((field) => RESTART_ONLY_FIELDS.includes(field));
  if (blocked.length === 0) return { ok: true };
  return { ok: false, reason: `${blocked.join(', ')} cannot change while running; restart vpnmasq to apply` };
}
