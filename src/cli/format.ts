/** Human output of the CLI: aligned columns, no colour. */
import { ConnRow } from '../nat/session-rows';

const HEADERS = ['ID', 'PROTO', 'LAN', 'PUBLIC', 'REMOTE', 'STATE', 'IDLE', 'EXPIRES', 'PKTS OUT/IN', 'BYTES OUT/IN'];

function endpoint(e: { addr: string; port: number }): string {
  return `${e.addr}:${e.port}`;
}

function seconds(s: number): string {
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ''}`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

export function connCells(r: ConnRow): string[] {
  return [
    String(r.id), r.proto, endpoint(r.lan), endpoint(r.public), endpoint(r.remote), r.state,
    seconds(r.idleSeconds), seconds(r.expiresInSeconds),
    `${r.packets.out}/${r.packets.in}`, `${r.bytes.out}/${r.bytes.in}`,
  ];
}

/** Renders rows as a table with a header line; columns padded to their widest cell. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ') + '\n';
  return line(headers) + rows.map(line).join('');
}

export function formatConnTable(rows: ConnRow[]): string {
  return formatTable(HEADERS, rows.map(connCells));
}
