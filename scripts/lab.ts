/**
 * Namespace lab CLI.
 *   node dist/scripts/lab.js up [--lan N] [--wan N] [--no-vpn-server] [--no-far-host]
 *       creates a lab, prints its JSON, keeps it until Ctrl-C / SIGTERM
 *   node dist/scripts/lab.js sweep
 *       deletes lab namespaces whose creating process is gone
 */
import { Command } from 'commander';
import { createLab, sweepStaleLabs } from '../test/lab/lab';

function intArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`not a non-negative integer: ${v}`);
  return n;
}

async function main(): Promise<void> {
  const program = new Command();
  program.name('lab').description('vpnmasq network-namespace lab');

  program
    .command('up')
    .description('create a lab, print its JSON and keep it until Ctrl-C')
    .option('--lan <n>', 'LAN hosts', intArg, 2)
    .option('--wan <n>', 'WAN hosts', intArg, 2)
    .option('--no-vpn-server', 'no VPN server namespace')
    .option('--no-far-host', 'no WAN router / far host')
    .action(async (o: { lan: number; wan: number; vpnServer: boolean; farHost: boolean }) => {
      await sweepStaleLabs();
      const lab = await createLab({ lanHosts: o.lan, wanHosts: o.wan, vpnServer: o.vpnServer, farHost: o.farHost });
      process.stdout.write(JSON.stringify(lab.info(), null, 2) + '\n');
      process.stderr.write(`lab ${lab.prefix} is up; Ctrl-C to destroy\n`);
      await new Promise<void>((resolve) => {
        const keepAlive = setInterval(() => undefined, 1 << 30);
        const stop = (): void => {
          clearInterval(keepAlive);
          resolve();
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      await lab.destroy();
      process.stderr.write(`lab ${lab.prefix} destroyed\n`);
    });

  program
    .command('sweep')
    .description('delete namespaces of labs whose creating process is dead')
    .action(async () => {
      const removed = await sweepStaleLabs();
      process.stdout.write(JSON.stringify({ removed }) + '\n');
    });

  await program.parseAsync(process.argv);
}

main().catch((e: unknown) => {
  process.stderr.write(`lab: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
