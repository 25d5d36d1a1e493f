/**
 * `npm run fuzz`: the fuzz targets from the command line.
 *
 *   npm run fuzz -- [--target packet|restore|all] [--seed N] [--packets N] [--rows N]
 *                   [--epoch N] [--coverage] [--no-minimize] [--out FILE] [--replay FILE]
 *
 * A run is a pure function of its seed: the same --seed and --packets give
 * the same packets and the same verdicts. On a violation the failing epoch is
 * minimized, printed, and written as a case file that --replay runs again.
 * Exit status: 0 no violation, 1 violation, 2 usage error.
 */
import * as fs from 'node:fs';
import { describeFrame, epochPlan, EpochPlan, Failure, FuzzEvent, fuzzPackets, hex, replay, Violation } from './packet-target';
import { minimize } from './minimize';
import { fuzzRestore } from './restore-target';

interface Args {
  target: string;
  seed: number;
  packets: number;
  rows: number;
  epoch: number;
  minimize: boolean;
  out: string | null;
  replay: string | null;
  coverage: boolean;
}

function usage(message: string): never {
  process.stderr.write(`fuzz: ${message}\nusage: npm run fuzz -- [--target packet|restore|all] [--seed N] [--packets N] [--rows N] [--epoch N] [--coverage] [--no-minimize] [--out FILE] [--replay FILE]\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { target: 'all', seed: 1, packets: 1_000_000, rows: 20_000, epoch: 50_000, minimize: true, out: null, replay: null, coverage: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${k} needs a value`);
      return v;
    };
    const count = (name: string, v: string, min: number): number => {
      if (!/^\d+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v))) usage(`${name} must be an integer >= ${min}, got ${JSON.stringify(v.slice(0, 40))}`);
      return Number(v);
    };
    if (k === '--target') { a.target = value(); if (!['packet', 'restore', 'all'].includes(a.target)) usage(`unknown target ${JSON.stringify(a.target.slice(0, 40))}`); }
    else if (k === '--seed') a.seed = count('--seed', value(), 0) >>> 0;
    else if (k === '--packets') a.packets = count('--packets', value(), 1);
    else if (k === '--rows') a.rows = count('--rows', value(), 1);
    else if (k === '--epoch') a.epoch = count('--epoch', value(), 100);
    else if (k === '--no-minimize') a.minimize = false;
    else if (k === '--coverage') a.coverage = true;
    else if (k === '--out') a.out = value();
    else if (k === '--replay') a.replay = value();
    else usage(`unknown option ${JSON.stringify(k.slice(0, 40))}`);
  }
  return a;
}

interface CaseFile {
  what: string;
  seed: number;
  epoch: number;
  plan: EpochPlan;
  events: Array<{ t: string; now?: number; frames?: string[]; req?: Record<string, unknown> }>;
}

function toCase(f: Failure, events: FuzzEvent[]): CaseFile {
  return {
    what: `vpnmasq packet-path fuzz case: node dist/test/fuzz/main.js --replay FILE`,
    seed: f.seed, epoch: f.epoch, plan: f.plan,
    events: events.map((e) => (e.t === 'batch' ? { t: e.t, now: e.now, frames: e.frames.map(hex) } : e)),
  };
}

function fromCase(c: CaseFile): FuzzEvent[] {
  return c.events.map((e) => (e.t === 'batch'
    ? { t: 'batch', now: e.now as number, frames: (e.frames ?? []).map((h) => Uint8Array.from(Buffer.from(h, 'hex'))) }
    : e) as FuzzEvent);
}

function printViolations(v: Violation[]): void {
  for (const x of v.slice(0, 5)) {
    process.stdout.write(`  violation: ${x.problem}\n`);
    if (x.input) process.stdout.write(`    in:  ${x.input.slice(0, 400)}\n`);
    if (x.output) process.stdout.write(`    out: ${x.output.slice(0, 400)}\n`);
  }
  if (v.length > 5) process.stdout.write(`  ... and ${v.length - 5} more\n`);
}

/** Prints the events, at most the last `maxPackets` packets of them. */
function printEvents(events: FuzzEvent[], maxPackets = Infinity): void {
  let total = 0;
  for (const e of events) total += e.t === 'batch' ? e.frames.length : 0;
  let n = 0;
  if (total > maxPackets) process.stdout.write(`  (the last ${maxPackets} of ${total} packets; the case file has them all)\n`);
  let skip = Math.max(0, total - maxPackets);
  for (const e of events) {
    if (e.t === 'batch' && skip >= e.frames.length) { skip -= e.frames.length; n += e.frames.length; continue; }
    if (e.t === 'batch') {
      process.stdout.write(`  batch at t+${e.now - 1_700_000_000_000} ms:\n`);
      for (const f of e.frames) {
        if (skip > 0) { skip--; n++; continue; }
        process.stdout.write(`    #${++n} ${describeFrame(f)}\n      ${hex(f)}\n`);
      }
    } else {
      process.stdout.write(`  ${JSON.stringify(e)}\n`);
    }
  }
}

async function runPacket(a: Args): Promise<boolean> {
  process.stdout.write(`packet path: seed ${a.seed}, ${a.packets} packets, ${a.epoch} per epoch\n`);
  const r = await fuzzPackets({
    seed: a.seed, packets: a.packets, epochPackets: a.epoch,
    progress: (done, rate) => process.stderr.write(`  ${done} packets, ${Math.round(rate)}/s\r`),
  });
  process.stderr.write('\n');
  const rate = Math.round(r.packets / r.seconds);
  process.stdout.write(`packet path: ${r.packets} packets (${r.outputs} written) in ${r.seconds.toFixed(1)} s, ${rate} packets/s, ${r.epochs.length} epochs\n`);
  for (const [i, name] of r.epochs.entries()) process.stdout.write(`  epoch ${i}: ${name}\n`);
  if (a.coverage) {
    for (const [k, v] of Object.entries(r.coverage).sort()) if (v > 0 && !/calls$|controlConnections$|^ipsec\.esp\.|^ipsec\.isakmp$/.test(k)) process.stdout.write(`  ${k} ${v}\n`);
  }
  if (r.failure === null) {
    process.stdout.write('packet path: 0 violations\n');
    return true;
  }
  const f = r.failure;
  process.stdout.write(`packet path: VIOLATION in epoch ${f.epoch} (${f.plan.profile.name}) after ${r.packets} packets\n`);
  printViolations(f.violations);
  let events = f.events;
  if (a.minimize) {
    process.stdout.write('minimizing...\n');
    const m = await minimize(f);
    if (m.reproduced) {
      events = m.events;
      process.stdout.write(`minimized to ${events.reduce((n, e) => n + (e.t === 'batch' ? e.frames.length : 0), 0)} packets and ${events.filter((e) => e.t !== 'batch').length} other events (${m.replays} replays):\n`);
      printViolations(m.violations);
    } else {
      process.stdout.write(`the failure did not show again on a fresh daemon (${m.replays} replays); reproduce with --seed ${a.seed} --packets ${r.packets}\n`);
    }
  }
  printEvents(events, 60);
  const out = a.out ?? `fuzz-failure-${a.seed}.json`;
  fs.writeFileSync(out, JSON.stringify(toCase(f, events)) + '\n');
  process.stdout.write(`case written to ${out}; run it again with: node dist/test/fuzz/main.js --replay ${out}\n`);
  return false;
}

function runRestore(a: Args): boolean {
  process.stdout.write(`restore: seed ${a.seed}, ${a.rows} rows\n`);
  const r = fuzzRestore({ seed: a.seed, rows: a.rows, progress: (n) => process.stderr.write(`  ${n} rows\r`) });
  process.stderr.write('\n');
  process.stdout.write(`restore: ${r.files} files (${r.damaged} damaged as a whole), ${r.rows} rows: ${r.good} good, ${r.bad} hostile, ${r.expired} expired, ` +
    `in ${r.seconds.toFixed(1)} s, ${Math.round(r.rows / r.seconds)} rows/s\n`);
  if (r.failure === null) {
    process.stdout.write('restore: 0 violations\n');
    return true;
  }
  process.stdout.write(`restore: VIOLATION in file ${r.failure.file}: ${r.failure.problem}\n  what made it hostile (reproduce with --target restore --seed ${a.seed} --rows ${a.rows}):\n`);
  for (const h of r.failure.hostile) process.stdout.write(`    ${h}\n`);
  return false;
}

async function runReplay(file: string): Promise<boolean> {
  const c = JSON.parse(fs.readFileSync(file, 'utf8')) as CaseFile;
  const events = fromCase(c);
  const v = await replay(c.plan ?? epochPlan(c.seed, c.epoch), events);
  printEvents(events, 200);
  if (v === null) {
    process.stdout.write('replay: no violation\n');
    return true;
  }
  printViolations(v);
  return false;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  let ok = true;
  if (a.replay !== null) ok = await runReplay(a.replay);
  else {
    if (a.target === 'packet' || a.target === 'all') ok = (await runPacket(a)) && ok;
    if (a.target === 'restore' || a.target === 'all') ok = runRestore(a) && ok;
  }
  process.exitCode = ok ? 0 : 1;
}

void main();
