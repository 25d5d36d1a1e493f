/**
 * The host settings vpnmasq changed, kept where neither a crash nor a systemd
 * restart can lose them (the state directory, not /run): every sysctl's value
 * before vpnmasq first wrote it, whether `lookup local` sat at pref 0 before
 * shared mode moved it, and the NetSpec of the last safety net (what the
 * early boot stage rebuilds). Each original is written to the file, fsynced
 * and renamed into place before the first change it covers.
 *
 * The record belongs to one network stack: the boot id plus the network
 * namespace. After a reboot the saved originals describe a kernel that no
 * longer exists, so they are dropped and captured again (the spec is kept).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NetSpec, SysctlPlan } from './plan';

const VERSION = 1;

interface HostRecord {
  version: number;
  identity: string;
  /** Path under /proc/sys -> the value before vpnmasq first wrote it. */
  sysctls: Record<string, string>;
  /** Whether `pref 0 lookup local` existed before shared mode moved it; null while it was never moved. */
  localRule: boolean | null;
  spec: NetSpec | null;
}

export interface HostStateOptions {
  /** Root of the sysctl tree (tests use a directory of plain files). */
  procSys?: string;
  /** The network stack's identity (tests inject it). */
  identity?: string;
}

/** What a load found that an operator should hear about. */
export type HostStateNote =
  | { kind: 'earlier-boot' }
  | { kind: 'unreadable'; movedTo: string; reason: string };

/** The kernel's boot id and this process's network namespace: what a saved original is valid for. */
export function networkIdentity(): string {
  const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return `${boot} ${fs.readlinkSync('/proc/self/ns/net')}`;
}

export class HostState {
  private constructor(
    readonly file: string,
    private rec: HostRecord,
    private readonly procSys: string,
    /** Set when the file held something other than this network stack's originals. */
    readonly note: HostStateNote | null,
  ) {}

  /** Reads `file` (absent: an empty record). A damaged file is moved aside, never overwritten. */
  static load(file: string, opts: HostStateOptions = {}): HostState {
    const identity = opts.identity ?? networkIdentity();
    const procSys = opts.procSys ?? '/proc/sys';
    const empty = (spec: NetSpec | null): HostRecord => ({ version: VERSION, identity, sysctls: {}, localRule: null, spec });
    let raw: string;
    try {
      raw = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new HostState(file, empty(null), procSys, null);
      throw new Error(`host state ${file}: ${(e as Error).message}`, { cause: e });
    }
    let rec: HostRecord;
    try {
      rec = JSON.parse(raw) as HostRecord;
      if (rec?.version !== VERSION || typeof rec.identity !== 'string' || typeof rec.sysctls !== 'object' || rec.sysctls === null) {
        throw new Error(`not a version ${VERSION} host state record`);
      }
    } catch (e) {
      const movedTo = `${file}.unreadable-${Date.now()}`;
      fs.renameSync(file, movedTo);
      return new HostState(file, empty(null), procSys, { kind: 'unreadable', movedTo, reason: (e as Error).message });
    }
    if (rec.identity !== identity) return new HostState(file, empty(rec.spec ?? null), procSys, { kind: 'earlier-boot' });
    return new HostState(file, rec, procSys, null);
  }

  /** The spec of the last safety net installed on this host (kept across reboots), or null. */
  get spec(): NetSpec | null {
    return this.rec.spec;
  }

  /** Records the spec about to be installed (before the kernel changes, so a crash in between is rebuilt from it). */
  saveSpec(spec: NetSpec): void {
    if (JSON.stringify(spec) === JSON.stringify(this.rec.spec)) return;
    this.rec.spec = spec;
    this.persist();
  }

  /** Saved originals, path -> value. */
  get sysctls(): Readonly<Record<string, string>> {
    return this.rec.sysctls;
  }

  /** The value this host had before vpnmasq (saved, else current). */
  original(p: string): string {
    return this.rec.sysctls[p] ?? this.read(p);
  }

  /** Applies a plan: each path's original is saved (once, before the first write), then the value is written. */
  apply(plan: SysctlPlan): void {
    for (const [p, value] of plan) {
      if (!(p in this.rec.sysctls)) {
        this.rec.sysctls[p] = this.read(p);
        this.persist();
      }
      const v = value(this.rec.sysctls[p]);
      if (!same(this.read(p), v)) this.write(p, v);
    }
  }

  /** Writes a per-device value that dies with the device (nothing to save). */
  writeDevice(p: string, value: string): void {
    this.write(p, value);
  }

  /**
   * Puts back every saved value whose path is not in `keep` and forgets it.
   * Returns what was restored; a path that no longer exists (its interface is
   * gone) is forgotten silently.
   */
  restoreExcept(keep: ReadonlySet<string>): Array<[string, string]> {
    const restored: Array<[string, string]> = [];
    const errors: string[] = [];
    let forgot = false;
    for (const [p, v] of Object.entries(this.rec.sysctls).reverse()) {
      if (keep.has(p)) continue;
      try {
        if (!same(this.read(p), v)) this.write(p, v);
        restored.push([p, v]);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
          errors.push(`${p}=${v}: ${(e as Error).message}`);
          continue;
        }
      }
      delete this.rec.sysctls[p];
      forgot = true;
    }
    if (forgot) this.persist();
    if (errors.length > 0) throw new Error(`restoring host settings failed: ${errors.join('; ')}`);
    return restored;
  }

  /** Whether pref 0 `lookup local` existed before it was first moved (null: never moved). */
  get localRule(): boolean | null {
    return this.rec.localRule;
  }

  /** Called before moving the local rule: keeps the first answer. */
  recordLocalRule(present: boolean): void {
    if (this.rec.localRule !== null) return;
    this.rec.localRule = present;
    this.persist();
  }

  /** The local rule is back where it was. */
  clearLocalRule(): void {
    if (this.rec.localRule === null) return;
    this.rec.localRule = null;
    this.persist();
  }

  /** Deletes the record (after a complete teardown). */
  remove(): void {
    fs.rmSync(this.file, { force: true });
    this.rec = { ...this.rec, sysctls: {}, localRule: null, spec: null };
  }

  private read(p: string): string {
    return fs.readFileSync(path.join(this.procSys, p), 'utf8').trim();
  }

  private write(p: string, value: string): void {
    fs.writeFileSync(path.join(this.procSys, p), `${value}\n`);
  }

  /** Write to a temporary file, fsync, rename over the record, fsync the directory. */
  private persist(): void {
    const dir = path.dirname(this.file);
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${this.file}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o640);
    try {
      fs.writeSync(fd, `${JSON.stringify(this.rec, null, 1)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }
}

/** Sysctl values as the kernel prints them (ip_local_port_range separates with a tab). */
function same(a: string, b: string): boolean {
  return a.split(/\s+/).join(' ') === b.split(/\s+/).join(' ');
}

/** Where the host state lives: next to the state database, in the state directory. */
export function hostStatePath(statePath: string): string {
  return path.join(path.dirname(statePath), 'host-state.json');
}
