/**
 * Shared by the CLI tests: a tiny JSON-schema validator (the subset
 * docs/cli-json-schema.json uses), a fake daemon (a real SessionTable and the
 * real control commands on a real Unix socket, without TUN or netlink), a
 * state database generator, and a runner for the real `vpnmasq` binary.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import Database from 'better-sqlite3';
import { parseConfig, Config } from '../../src/config/schema';
import { ControlServer, startControlServer } from '../../src/daemon/control';
import { ControlCommands, ControlTarget } from '../../src/daemon/control-commands';
import type { JournalObserver } from '../../src/query/journal-feed';
import { Journal } from '../../src/core/journal';
import { ConnRow, sessionRow } from '../../src/query/rows';
import { SessionTable, TABLE_SESSIONS } from '../../src/nat/sessions';
import { Forwards } from '../../src/nat/forwards';
import { CREATE_STATEMENTS, SCHEMA_VERSION } from '../../src/persist/schema';
import { ipv4ToInt32 } from '../../src/core/ipv4-addr';
import { IpsecMasq } from '../../src/helpers/ipsec/ipsec';
import { IpsecRemote, ipsecReport } from '../../src/query/ipsec-report';

export const ROOT = path.resolve(__dirname, '../../..');
export const CLI = path.join(ROOT, 'dist/src/bin/vpnmasq.js');
export const SCHEMA = JSON.parse(fs.readFileSync(path.join(ROOT, 'docs/cli-json-schema.json'), 'utf8')) as Schema;

// ---- validator ---------------------------------------------------------------

type Schema = Record<string, any>;

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

/** Problems of `value` against `schema` (type, enum, required, properties, additionalProperties, items, anyOf, $ref, minimum, maximum, pattern). */
export function validate(value: unknown, schema: Schema, root: Schema = SCHEMA, at = '$'): string[] {
  if (schema.$ref) return validate(value, root.definitions[String(schema.$ref).replace('#/definitions/', '')], root, at);
  const errs: string[] = [];
  if (schema.anyOf) {
    const branches = (schema.anyOf as Schema[]).map((s) => validate(value, s, root, at));
    if (branches.every((b) => b.length > 0)) errs.push(`${at}: matches no anyOf branch (${branches.map((b) => b[0]).join(' | ')})`);
  }
  if (schema.type) {
    const types = ([] as string[]).concat(schema.type);
    const t = typeOf(value);
    if (!types.includes(t) && !(t === 'integer' && types.includes('number'))) return [...errs, `${at}: expected ${types.join('|')}, got ${t}`];
  }
  if (schema.enum && !(schema.enum as unknown[]).includes(value)) errs.push(`${at}: ${JSON.stringify(value)} not in ${JSON.stringify(schema.enum)}`);
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) errs.push(`${at}: ${value} < ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) errs.push(`${at}: ${value} > ${schema.maximum}`);
  }
  if (typeof value === 'string' && schema.pattern && !new RegExp(schema.pattern).test(value)) errs.push(`${at}: "${value}" does not match ${schema.pattern}`);
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => errs.push(...validate(v, schema.items, root, `${at}[${i}]`)));
  if (typeOf(value) === 'object') {
    const obj = value as Record<string, unknown>;
    for (const k of (schema.required ?? []) as string[]) if (!(k in obj)) errs.push(`${at}: missing "${k}"`);
    const props = (schema.properties ?? {}) as Record<string, Schema>;
    for (const [k, v] of Object.entries(obj)) {
      if (props[k]) errs.push(...validate(v, props[k], root, `${at}.${k}`));
      else if (schema.additionalProperties === false) errs.push(`${at}: unexpected "${k}"`);
      else if (typeof schema.additionalProperties === 'object') errs.push(...validate(v, schema.additionalProperties, root, `${at}.${k}`));
    }
  }
  return errs;
}

/** Validates against a named definition of docs/cli-json-schema.json. */
export function schemaErrors(value: unknown, definition: string): string[] {
  return validate(value, { $ref: `#/definitions/${definition}` });
}

// ---- running the CLI -----------------------------------------------------------

export interface CliResult { code: number | null; stdout: string; stderr: string }

/**
 * Runs `fn` over `items` a few at a time, results in order: a CLI process per
 * case all at once starves a small, loaded machine into timeouts.
 */
export async function inBatches<T, R>(items: T[], fn: (item: T) => Promise<R>, width = 4): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += width) out.push(...await Promise.all(items.slice(i, i + width).map(fn)));
  return out;
}

export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; uid?: number; gid?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: opts.env ?? { ...process.env, NO_COLOR: '' }, uid: opts.uid, gid: opts.gid });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`vpnmasq ${args.join(' ')} timed out\n${stderr}`)); }, opts.timeoutMs ?? 20000);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

export function jsonLines(text: string): Array<Record<string, any>> {
  return text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, any>);
}

// ---- a fake daemon ----------------------------------------------------------------

export const PUBLIC = '198.18.0.2';

export function tempDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vpnmasq-${tag}-`));
}

export function writeConfig(dir: string, socket: string, statePath = path.join(dir, 'state.db')): string {
  const file = path.join(dir, 'vpnmasq.json');
  const text = JSON.stringify({
    wan: { interface: 'wan0', mode: 'dedicated', publicAddress: PUBLIC },
    forwards: [{ proto: 'tcp', publicPort: 8443, lanAddress: '10.77.0.13', lanPort: 443 }, { proto: 'gre', lanAddress: '10.77.0.14' }],
    control: { socket, group: 'root' },
    state: { path: statePath },
  });
  fs.writeFileSync(file, text);
  return file;
}

export class FakeDaemon implements ControlTarget {
  now = 1_000_000_000;
  readonly table = new SessionTable(1024, ipv4ToInt32(PUBLIC), { range: [1024, 65535], lowRange: [1, 1023], preserve: true }, new Journal());
  readonly config: Config;
  readonly forwards: Forwards;
  /** Extra rows (standing in for the ISAKMP/ESP/GRE modules' rows). */
  readonly extra: Array<ConnRow & Record<string, unknown>> = [];
  private readonly listeners: JournalObserver[] = [];
  private server: ControlServer | null = null;
  readonly commands: ControlCommands;

  constructor(readonly dir: string, readonly socket = path.join(dir, 'control.sock')) {
    this.config = parseConfig(fs.readFileSync(writeConfig(dir, socket), 'utf8'), 'test');
    this.forwards = new Forwards(this.table, this.config.forwards);
    this.commands = new ControlCommands(this, () => this.now);
  }

  get configPath(): string { return path.join(this.dir, 'vpnmasq.json'); }

  async start(): Promise<void> {
    this.server = await startControlServer(this.socket, null, (req) => this.commands.handle(req), { watch: this.commands.watchers });
  }

  async stop(): Promise<void> {
    await this.server?.close();
  }

  *rows(): Iterable<ConnRow> {
    for (let s = 0; s < this.table.capacity; s++) if (this.table.sInUse[s] === 1) yield sessionRow(this.table, s, this.now);
    yield* this.extra;
  }

  rowOf(table: number, index: number, serial: number): ConnRow | null {
    return table === TABLE_SESSIONS && this.table.sSerial[index] === serial ? sessionRow(this.table, index, this.now) : null;
  }

  connById(id: number): ConnRow | null {
    for (const r of this.rows()) if (r.id === id) return r;
    return null;
  }

  deleteConns(ids: ReadonlySet<number>): number {
    const before = this.extra.length;
    this.extra.splice(0, before, ...this.extra.filter((r) => !ids.has(r.id)));
    return this.table.deleteSerials(ids) + before - this.extra.length;
  }

  async forwardsChanged(): Promise<void> {}

  /** What the next `reload` answers. */
  reloadOutcome: { ok: true; applied: string[]; warnings: string[] } | { ok: false; error: string } = { ok: true, applied: [], warnings: [] };

  reloadFromFile(): Promise<typeof this.reloadOutcome> {
    return Promise.resolve(this.reloadOutcome);
  }

  /** Creates a session the way the packet path does; returns its slot. */
  add(proto: number, lan: string, lanPort: number, rem: string, remPort: number, state = 0, ttlMs = 300_000): number {
    const s = this.table.createOut(proto, ipv4ToInt32(lan), lanPort, ipv4ToInt32(rem), remPort, this.now, state, this.now + ttlMs);
    if (s < 0) throw new Error(`createOut failed: ${s}`);
    return s;
  }

  /** What the daemon's observers see after each batch and sweep. */
  drain(): void {
    const j = this.table.journal as Journal;
    j.drain((k, t, i, serial) => { for (const l of this.listeners) l.event(k, t, i, serial); });
  }

  stats(): Record<string, unknown> {
    return {
      packets: { out: 10, in: 9 }, bytes: { out: 1000, in: 900 },
      mappings: { tcp: 1, udp: 2, icmp: 1 }, sessions: this.table.sessionCount, limit: this.table.capacity,
      drops: { filtered: 3, 'no-mapping': 0 }, tun: { rx_packets: 19 },
    };
  }

  status(): Record<string, unknown> {
    return {
      running: true, pid: process.pid, uptimeSeconds: 3725, tun: { name: 'vmq0', offloads: 17 }, mode: 'dedicated',
      publicAddress: PUBLIC, lanPrefixes: ['10.77.0.0/24'], sessions: this.table.sessionCount, limit: this.table.capacity, state: null,
    };
  }

  /** A real IPsec table for `vpnmasq ipsec` (tests drive it with outEsp/inEsp...). */
  readonly ipsec = new IpsecMasq({ lifetimeMs: 1_800_000, pendingMs: 120_000, squelchMs: 30_000, retries: 5, parallel: true, guessing: true, guessMax: 5, capacity: 64 });

  ipsecRemotes(remote: number | null): IpsecRemote[] {
    return ipsecReport(this.ipsec, this.now, remote);
  }

  addObserver(l: JournalObserver): void { this.listeners.push(l); }
  removeObserver(l: JournalObserver): void { this.listeners.splice(this.listeners.indexOf(l), 1); }
  get watchers(): number { return this.listeners.length; }
}

// ---- a state database ------------------------------------------------------------

/** Writes `n` unexpired UDP sessions into a fresh state database at `file` (schema of src/persist/schema.ts). */
export function generateStateDb(file: string, n: number, now = Date.now()): void {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  for (const sql of CREATE_STATEMENTS) db.exec(sql);
  db.pragma(`user_version = ${SCHEMA_VERSION}`);
  const ins = db.prepare(`INSERT INTO sessions (serial, proto, lan, lan_port, pub_addr, pub_port, rem, rem_port, state, created, last_seen, expires,
    pkts_out, pkts_in, bytes_out, bytes_in) VALUES (?, 17, ?, ?, ?, ?, ?, 53, 0, ?, ?, ?, ?, ?, ?, ?)`);
  const lan0 = ipv4ToInt32('10.77.0.0');
  const pub = ipv4ToInt32(PUBLIC);
  const rem0 = ipv4ToInt32('198.18.1.0');
  db.transaction(() => {
    for (let i = 1; i <= n; i++) {
      ins.run(i, lan0 + 1 + (i % 250), 1024 + (i % 60000), pub, 1024 + (i % 64000), rem0 + (i % 250), now - 1000, now - 1000, now + 3_600_000, i, i - 1, i * 100, i * 90);
    }
  })();
  db.close();
}
