/** `vpnmasq ipsec`: the IPsec tables per remote, with the reason a host waits (src/query/ipsec-report.ts). */
import { Command } from 'commander';
import { isIPv4 } from '../core/ipv4-addr';
import type { IpsecRemote, SpiPair } from '../query/ipsec-report';
import { CliError, EXIT_USAGE } from './client';
import { out, request } from './context';
import { formatTable, seconds } from './format';

function espCells(p: SpiPair): string[] {
  const st = p.state === 'pending' ? `pending ${seconds(p.ageSeconds)}${p.blocking ? `, retry ${p.retries}` : ''}`
    : p.state === 'squelched' ? `squelched, ${p.retries} retries` : p.state;
  return ['ESP', p.lan, `${p.spiOut} / ${p.spiIn ?? '-'}`, st, seconds(p.expiresInSeconds), `${p.packets.out}/${p.packets.in}`];
}

/** One remote as a block: a headline, its IKE peers and SPI pairs, guesses, then who waits and why. */
export function remoteText(r: IpsecRemote): string {
  const counts = (['pending', 'established', 'squelched'] as const).map((s) => [s, r.esp.filter((p) => p.state === s).length] as const)
    .filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`);
  const head = `${r.remote}: ${r.ike.length} IKE peer${r.ike.length === 1 ? '' : 's'}, ${r.esp.length} SPI pair${r.esp.length === 1 ? '' : 's'}` +
    `${counts.length > 0 ? ` (${counts.join(', ')})` : ''}`;
  const rows = [
    ...r.ike.map((k) => ['IKE', k.lan, `${k.icookie} / ${k.rcookie ?? '-'}`, k.state + (k.server ? ', forwarded server' : ''),
      seconds(k.expiresInSeconds), `${k.packets.out}/${k.packets.in}`]),
    ...r.esp.map(espCells),
  ];
  const lines = [head];
  if (rows.length > 0) lines.push(formatTable(['', 'LAN', 'COOKIES / SPIS (OUT / IN)', 'STATE', 'EXPIRES', 'PKTS OUT/IN'], rows).trimEnd().split('\n').map((l) => `  ${l}`).join('\n'));
  lines.push(`  queue: ${r.queue.pending === null ? 'no pending SPI' : `${r.queue.pending.lan} SPI ${r.queue.pending.spiOut} pending`}` +
    `${r.queue.turnedAway.length > 0 ? `; turned away: ${r.queue.turnedAway.map((t) => `${t.lan} (${t.reason}, ${seconds(t.secondsAgo)} ago)`).join(', ')}` : ''}`);
  lines.push(`  guesses: ${!r.guesses.enabled ? 'off (ipsec.guessing false)' : r.guesses.candidates.length === 0 ? 'no candidate host' : r.guesses.candidates.join(', ')}`);
  if (r.waiting.length > 0) {
    lines.push('  waiting:');
    for (const w of r.waiting) lines.push(`    ${w.lan}: ${w.reason}`);
  }
  return lines.join('\n') + '\n';
}

export function ipsecCommand(program: Command): void {
  program
    .command('ipsec')
    .description('IPsec per remote: IKE peers, SPI pairs and their state, the pending queue, squelches, guesses, and why a host waits')
    .argument('[remote]', 'only this remote address')
    .option('--json', 'one JSON object per remote per line (schema "ipsecRemote")')
    .addHelpText('after', `
A remote pairs one new SPI at a time: the first unknown inbound SPI from it
answers its one pending entry (vpn-masquerade-spec §4.2). Other hosts' new
SPIs are turned away meanwhile; the pending host retries, and is squelched
after ipsec.retries retries while others wait. "waiting" says, per LAN host,
what it waits for. "guesses" are the hosts an unknown inbound SPI would be
copied to (ipsec.guessing).

Examples:
  vpnmasq ipsec
  vpnmasq ipsec 198.51.100.7 --json`)
    .action(async (remote: string | undefined, opts: { json?: boolean }) => {
      if (remote !== undefined && !isIPv4(remote)) throw new CliError(`not an IPv4 address: "${remote}"`, EXIT_USAGE);
      let n = 0;
      await request(program, { cmd: 'ipsec', ...(remote === undefined ? {} : { remote }) }, (row) => {
        const text = opts.json ? JSON.stringify(row) + '\n' : (n > 0 ? '\n' : '') + remoteText(row as unknown as IpsecRemote);
        n++;
        return out(text);
      });
      if (!opts.json && n === 0) await out(remote === undefined ? 'no IPsec entries\n' : `no IPsec entries with ${remote}\n`);
    });
}
