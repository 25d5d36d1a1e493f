/**
 * `vpnmasq teardown | safety-net`, and what `vpnmasq status` says about the
 * safety net (src/edge/netlink/plan.ts) when the daemon is down or waits.
 */
import { Command } from 'commander';
import { Config, DEFAULTS, loadConfig } from '../config/schema';
import { HostState, hostStatePath } from '../edge/netlink/host-state';
import { RouterNet, SafetyNetStatus } from '../edge/netlink/router-net';
import { CliError, DaemonDownError, streamRequest } from './client';
import { note } from './context';

/** The config, or the defaults with a warning: teardown and the boot stage must work with a broken config file. */
function configOrDefaults(program: Command): Pick<Config, 'state' | 'control'> {
  const file = program.opts().config as string;
  try {
    return loadConfig(file);
  } catch (e) {
    note(`vpnmasq: ${(e as Error).message.split('\n')[0]}; using the default paths (${DEFAULTS.state.path}, ${DEFAULTS.control.socket})`);
    return { state: { ...DEFAULTS.state }, control: { ...DEFAULTS.control } };
  }
}

/** Fails when a daemon answers on the control socket. */
async function ensureDown(cfg: Pick<Config, 'control'>, what: string): Promise<void> {
  let st: Record<string, unknown>;
  try {
    st = await streamRequest(cfg.control, { cmd: 'status' });
  } catch (e) {
    if (e instanceof DaemonDownError) return;
    throw e;
  }
  throw new CliError(`the daemon is running (pid ${String(st.pid)}): stop it before ${what} (systemctl stop vpnmasq)`);
}

function permissionHint(e: unknown): never {
  const msg = (e as Error).message;
  if (/EPERM|EACCES/.test(msg)) throw new CliError(`${msg}: run as root (CAP_NET_ADMIN)`);
  throw e;
}

/** One human line about the safety net. */
export function safetyNetText(net: SafetyNetStatus | { error: string }): string {
  if ('error' in net) return `unknown (${net.error})`;
  if (net.blackholes.length === 0 && net.rules.length === 0) return 'none: nothing vpnmasq added is in place';
  const parts = `${net.rules.length} rules, blackholes in table ${net.blackholes.join(', ') || 'none'}`;
  if (net.tunRoutes.length > 0) return `in place (${parts}); the TUN carries the traffic`;
  return `in place (${parts}): nothing translates; LAN traffic and inbound traffic for vpnmasq are dropped`;
}

export function netCommands(program: Command): void {
  program
    .command('teardown')
    .description('remove the safety net and put back every host setting vpnmasq changed (the daemon must be stopped)')
    .addHelpText('after', `
Stopping or restarting the daemon, and a crash, leave the safety net in place:
policy rules and blackhole routes that drop LAN traffic and inbound traffic for
vpnmasq's ports and VPN protocols while nothing translates. This command removes
them and every rule (IPv4 and IPv6), route and proxy neighbour vpnmasq added
(protocol 247), puts "lookup local" back at priority 0, and writes back the
sysctls it changed
(ip_forward, rp_filter, proxy_delay, ip_local_port_range,
ip_local_reserved_ports) with the values saved in the state directory before
its first change. scripts/uninstall.sh runs it.`)
    .action(async () => {
      const cfg = configOrDefaults(program);
      await ensureDown(cfg, 'tearing down');
      const file = hostStatePath(cfg.state.path);
      const host = HostState.load(file);
      const r = await RouterNet.teardown(host).catch(permissionHint);
      const restored = r.sysctls.map(([p, v]) => `${p.replace(/\//g, '.')}=${v.replace(/\s+/g, ' ')}`);
      note(`vpnmasq: removed ${r.rules} rules, ${r.routes} routes, ${r.proxyNeighbours} proxy neighbours` +
        `${r.localRule ? '; "lookup local" back at priority 0' : ''}`);
      if (restored.length > 0) note(`vpnmasq: restored ${restored.join(', ')}`);
      else if (host.note?.kind === 'earlier-boot') note('vpnmasq: the saved host settings were from an earlier boot: nothing to restore');
      else note(`vpnmasq: no changed host settings saved in ${file}`);
    });

  program
    .command('safety-net')
    .description('install the safety net saved by the last run (at boot, before the network: vpnmasq-safety-net.service)')
    .addHelpText('after', `
Reads the spec of the last safety net from the state directory and installs it:
the LAN rules (with lan.ipv6's IPv6 refusal) and blackholes, the steering of
the last public address (its ports, UDP 500, ESP, GRE, forwards) and the port
reservation. Run before any interface has an address, it leaves no moment in
which a packet for a restored mapping meets the box's own stack. Without saved state it does nothing.`)
    .action(async () => {
      const cfg = configOrDefaults(program);
      const file = hostStatePath(cfg.state.path);
      const host = HostState.load(file);
      const spec = host.spec;
      if (spec === null) {
        note(`vpnmasq: no saved safety net in ${file}: nothing to install`);
        return;
      }
      const net = RouterNet.open(host);
      try {
        const c = await net.installSafetyNet(spec).catch(permissionHint);
        note(`vpnmasq: safety net in place (${spec.mode} mode, public address ${spec.publicAddress ?? 'none yet'}): ` +
          `${c.added.length} entries added, ${c.removed.length} stale ones removed`);
      } finally {
        net.close();
      }
    });
}
