/**
 * Human output of the CLI: aligned columns, plain text unless stdout is a
 * terminal and NO_COLOR is unset (https://no-color.org, clig.dev).
 */
import { AnyConnRow } from '../query/filters';

export const CONN_HEADERS = ['ID', 'PROTO', 'LAN', 'PUBLIC', 'REMOTE', 'VPN', 'STATE', 'IDLE', 'EXPIRES', 'PKTS OUT/IN', 'BYTES OUT/IN'];

/** Rows a table holds back to size its columns before it starts printing. */
const SIZING_ROWS = 256;

export function useColour(stream: { isTTY?: boolean }): boolean {
  return stream.isTTY === true && !('NO_COLOR' in process.env && process.env.NO_COLOR !== '');
}

function endpoint(e: { addr: string; port: number }): string {
  return `${e.addr}:${e.port}`;
}

/** Durations; a negative one means no timer runs (e.g. a PPTP call held by its control connection). */
export function seconds(s: number): string {
  if (s < 0) return '-';
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ''}`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

/** 1234 -> "1234", 123456 -> "121K", 5e9 -> "4.7G" (powers of 1024, like `ip -h`). */
export function quantity(n: number): string {
  if (n < 10000) return String(n);
  const units = ['K', 'M', 'G', 'T', 'P'];
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)}${units[u]}`;
}

/** The VPN detail column: "icookie=... rcookie=...", "spiOut=0x... spiIn=0x...", "callIdLan=..."; "-" for none. */
export function vpnDetail(vpn: AnyConnRow['vpn']): string {
  if (!vpn) return '-';
  const parts = Object.entries(vpn).map(([k, v]) => `${k}=${v === null ? 'pending' : v}`);
  return parts.length ? parts.join(' ') : '-';
}

export function connCells(r: AnyConnRow): string[] {
  return [
    String(r.id), r.proto, endpoint(r.lan), endpoint(r.public), endpoint(r.remote), vpnDetail(r.vpn), r.state,
    seconds(r.idleSeconds), seconds(r.expiresInSeconds),
    `${quantity(r.packets.out)}/${quantity(r.packets.in)}`, `${quantity(r.bytes.out)}/${quantity(r.bytes.in)}`,
  ];
}

export interface Sink {
  /** Returns a promise when the sink is full (wait for it before writing more). */
  write(text: string): void | Promise<void>;
}

/**
 * A table printed while its rows arrive: the first SIZING_ROWS rows set the
 * column widths, later rows reuse them (a wider cell widens the columns from
 * then on), so a million-row listing needs no more memory than a short one.
 */
export class TableWriter {
  private readonly widths: number[];
  private held: string[][] | null = [];

  constructor(private readonly headers: string[], private readonly out: Sink, private readonly opts: { legend: boolean; colour: boolean }) {
    this.widths = headers.map((h) => (opts.legend ? h.length : 0));
  }

  add(cells: string[]): void | Promise<void> {
    if (this.held !== null) {
      this.held.push(cells);
      if (this.held.length < SIZING_ROWS) return undefined;
      return this.release();
    }
    return this.out.write(this.line(cells));
  }

  /** Prints whatever is held (and the header if nothing was printed yet). */
  end(): void | Promise<void> {
    return this.held !== null ? this.release() : undefined;
  }

  private release(): void | Promise<void> {
    const held = this.held as string[][];
    this.held = null;
    for (const r of held) this.measure(r);
    let text = '';
    if (this.opts.legend) {
      const head = this.line(this.headers);
      text += this.opts.colour ? `\x1b[1m${head.slice(0, -1)}\x1b[0m\n` : head;
    }
    for (const r of held) text += this.line(r);
    return this.out.write(text);
  }

  private measure(cells: string[]): void {
    for (let i = 0; i < cells.length; i++) if (cells[i].length > this.widths[i]) this.widths[i] = cells[i].length;
  }

  private line(cells: string[]): string {
    this.measure(cells);
    return cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(this.widths[i]))).join('  ') + '\n';
  }
}

/** Renders a small, complete table (status, stats, forwards). */
export function formatTable(headers: string[], rows: string[][]): string {
  let text = '';
  const t = new TableWriter(headers, { write: (s) => { text += s; } }, { legend: true, colour: false });
  for (const r of rows) void t.add(r);
  void t.end();
  return text;
}

/** Nested object -> ["a.b", "value"] pairs, in key order. */
export function flatten(obj: Record<string, unknown>, prefix = ''): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) out.push(...flatten(v as Record<string, unknown>, key));
    else out.push([key, Array.isArray(v) ? v.join(', ') : String(v)]);
  }
  return out;
}

/** "key   value" lines aligned on the value column. */
export function keyValues(pairs: Array<[string, string]>): string {
  const w = Math.max(0, ...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join('');
}

/** A complete connection table as text (for short listings such as the demo's). */
export function formatConnTable(rows: AnyConnRow[]): string {
  return formatTable(CONN_HEADERS, rows.map(connCells));
}
