/**
 * Shrinks a failing epoch to a small input that still shows the same
 * violation (same signature): first everything after the failing event goes,
 * then the longest prefix that can go, then chunks of ever smaller size
 * (delta debugging), each candidate replayed on a fresh daemon of the same
 * profile and seed. Bounded in time; the smallest case found so far is kept.
 */
import { EpochPlan, Failure, FuzzEvent, Violation, replay } from './packet-target';

type Item = { kind: 'packet'; batch: number; now: number; frame: Uint8Array } | { kind: 'op'; event: FuzzEvent };

function flatten(events: readonly FuzzEvent[]): Item[] {
  const items: Item[] = [];
  events.forEach((e, i) => {
    if (e.t === 'batch') for (const frame of e.frames) items.push({ kind: 'packet', batch: i, now: e.now, frame });
    else items.push({ kind: 'op', event: e });
  });
  return items;
}

function rebuild(items: readonly Item[]): FuzzEvent[] {
  const events: FuzzEvent[] = [];
  let open: { t: 'batch'; now: number; frames: Uint8Array[] } | null = null;
  let openBatch = -1;
  for (const it of items) {
    if (it.kind === 'op') {
      open = null;
      events.push(it.event);
      continue;
    }
    if (open === null || openBatch !== it.batch) {
      open = { t: 'batch', now: it.now, frames: [] };
      openBatch = it.batch;
      events.push(open);
    }
    open.frames.push(it.frame);
  }
  return events;
}

export interface Minimized {
  events: FuzzEvent[];
  violations: Violation[];
  replays: number;
  /** False when the failure did not show again on a fresh daemon (it depends on more than this epoch's events). */
  reproduced: boolean;
}

export async function minimize(f: Failure, budgetMs = 120_000): Promise<Minimized> {
  const plan: EpochPlan = f.plan;
  const target = f.violations[0].signature;
  const deadline = Date.now() + budgetMs;
  let replays = 0;
  let deep = false;
  const test = async (items: readonly Item[]): Promise<Violation[] | null> => {
    replays++;
    const v = await replay(plan, rebuild(items), deep);
    return v !== null && v.some((x) => x.signature === target) ? v : null;
  };
  let items = flatten(f.events);
  let found = await test(items);
  if (found === null) {
    deep = true;
    found = await test(items);
  }
  if (found === null) return { events: f.events, violations: f.violations, replays, reproduced: false };
  // The longest prefix that can go.
  let cut = Math.floor(items.length / 2);
  while (cut > 0 && Date.now() < deadline) {
    const v = await test(items.slice(cut));
    if (v !== null) { items = items.slice(cut); found = v; cut = Math.floor(items.length / 2); } else cut = Math.floor(cut / 2);
  }
  // Delta debugging: remove chunks, halving their size when nothing more can go.
  let chunk = Math.max(1, Math.floor(items.length / 4));
  while (chunk >= 1 && Date.now() < deadline) {
    let removed = false;
    for (let start = 0; start < items.length && Date.now() < deadline;) {
      const candidate = [...items.slice(0, start), ...items.slice(start + chunk)];
      const v = candidate.length > 0 ? await test(candidate) : null;
      if (v !== null) { items = candidate; found = v; removed = true; } else start += chunk;
    }
    if (!removed) chunk = Math.floor(chunk / 2);
  }
  return { events: rebuild(items), violations: found, replays, reproduced: true };
}
