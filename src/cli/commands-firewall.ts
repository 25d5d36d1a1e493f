/** `vpnmasq firewall`: the nftables ruleset that lets the TUN paths through a default-drop firewall (src/edge/netlink/firewall.ts). */
import { Command } from 'commander';
import { tunDevices } from '../config/schema';
import { acceptRule, DEFAULT_FIREWALL_MARK, firewallRuleset, hexMark } from '../edge/netlink/firewall';
import { CliError, EXIT_USAGE } from './client';
import { config, out } from './context';

function parseMark(s: string): number {
  const m = /^(0x[0-9a-f]{1,8}|[0-9]{1,10})$/i.exec(s);
  const v = m ? Number(s) : NaN;
  if (!(v >= 1 && v <= 0xffffffff)) throw new CliError(`--mark: not a mark between 1 and 0xffffffff: "${s}"`, EXIT_USAGE);
  return v;
}

export function firewallCommand(program: Command): void {
  program
    .command('firewall')
    .description('print an nftables ruleset (table inet vpnmasq) that lets the TUN paths through a default-drop firewall')
    .option('--mark <bits>', 'the mark bit(s) set on the TUN paths', hexMark(DEFAULT_FIREWALL_MARK))
    .addHelpText('after', `
Translated traffic crosses the forward hook into and out of the TUN
(LAN -> TUN -> WAN, WAN -> TUN -> LAN), so "iifname lan0 oifname eth0 accept"
never matches it; in shared-address mode the box's own ICMP reaches the input
hook from the TUN. The table marks exactly those packets, ahead of priority
filter, and accepts nothing itself (an accept in one table does not undo
another table's drop). Add to each of your default-drop chains (forward,
input):
  ${acceptRule(DEFAULT_FIREWALL_MARK)}
Load it, and again after a change to tun, lan or wan in the config:
  vpnmasq firewall | nft -f -
Reads only the config file; the daemon need not run.`)
    .action(async (opts: { mark: string }) => {
      const cfg = config(program);
      await out(firewallRuleset({
        tuns: tunDevices(cfg), lanInterfaces: cfg.lan.interfaces, lanPrefixes: cfg.lan.prefixes, wanInterface: cfg.wan.interface,
        mode: cfg.wan.mode, publicAddress: cfg.wan.publicAddress, mark: parseMark(opts.mark), source: program.opts().config as string,
      }));
    });
}
