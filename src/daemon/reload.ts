/**
 * Reload: which fields a new config changes, whether the running daemon can
 * take them (each field's kind is declared once, in RELOAD of the config
 * schema) and the sections the daemon then applies.
 */
import { Config, reloadKind } from '../config/schema';
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

/** A field a reload cannot apply, and why. */
export interface RestartNeeded {
  field: string;
  why: string;
}

/** What a reload from `a` to `b` would do: the runtime fields to apply, or the restart fields that block it. */
export interface ReloadPlan {
  changed: string[];
  /** Runtime fields that change, applied by the daemon. */
  apply: string[];
  /** Restart fields that change: the reload is rejected while there is one. */
  restart: RestartNeeded[];
}

export function reloadPlan(a: Config, b: Config): ReloadPlan {
  const changed = configDiff(a, b);
  const apply: string[] = [];
  const restart: RestartNeeded[] = [];
  for (const field of changed) {
    const k = reloadKind(field);
    if (k.kind === 'runtime') apply.push(field);
    else restart.push({ field, why: k.why });
  }
  return { changed, apply, restart };
}

/** The rejection message: one line per field, `FIELD: needs a restart (WHY)`. */
export function restartMessage(blocked: readonly RestartNeeded[]): string {
  return blocked.map((b) => `${b.field}: needs a restart (${b.why})`).join('\n');
}

/** The top-level sections of some field paths (`timeouts.udp` -> `timeouts`), in first-seen order. */
export function sectionsOf(fields: readonly string[]): string[] {
  return [...new Set(fields.map((f) => f.split(/[.[]/)[0]))];
}
