/**
 * The fuzzer's world: LAN hosts and servers, remotes on the WAN side, and
 * one daemon configuration per epoch (mode, filtering, table and port
 * limits, forwards, offloads, MTU, MSS clamping), drawn from the seed and
 * checked by the daemon's own config parser.
 */
import { Rng } from './rng';
import { ip4 } from './craft';

export const PUBLIC = ip4('198.18.0.2');
/** The router's own LAN address (its ICMP errors about forwarded packets come from here). */
export const ROUTER_LAN = ip4('10.77.0.1');
export const LAN_HOSTS: readonly number[] = [
  ...Array.from({ length: 16 }, (_, i) => ip4('10.77.0.10') + i),
  ...Array.from({ length: 4 }, (_, i) => ip4('10.88.1.5') + i),
];
/** Servers behind the forwards: PPTP (tcp/1723 + GRE), IPsec (udp/500 + ESP), tcp/8080 -> 80, udp/5060. */
export const PPTP_SERVER = ip4('10.77.0.50');
export const IPSEC_SERVER = ip4('10.77.0.51');
export const WEB_SERVER = ip4('10.77.0.52');
export const SIP_SERVER = ip4('10.77.0.53');
export const REMOTES: readonly number[] = [
  ...Array.from({ length: 8 }, (_, i) => ip4('198.18.0.10') + i),
  ...Array.from({ length: 4 }, (_, i) => ip4('203.0.113.5') + i),
];
/** Routers on the path that send ICMP errors. */
export const ROUTERS: readonly number[] = [ip4('203.0.113.254'), ip4('198.18.0.1')];
/** Neither LAN nor public: not the NAT's business. */
export const STRANGERS: readonly number[] = [ip4('192.0.2.1'), ip4('192.0.2.2'), ip4('100.64.0.9')];

export interface Profile {
  name: string;
  shared: boolean;
  offloads: boolean;
  mtu: number;
  lanPrefixes: string[];
  /** [network, mask] pairs, unsigned. */
  lan: Array<[number, number]>;
  forwards: { proto: string; publicPort?: number; lanAddress: string; lanPort?: number }[];
  /** The JSON the daemon's config parser gets. */
  config: Record<string, unknown>;
}

const FORWARDS = [
  { proto: 'tcp', publicPort: 1723, lanAddress: '10.77.0.50', lanPort: 1723 },
  { proto: 'gre', lanAddress: '10.77.0.50' },
  { proto: 'udp', publicPort: 500, lanAddress: '10.77.0.51', lanPort: 500 },
  { proto: 'esp', lanAddress: '10.77.0.51' },
  { proto: 'tcp', publicPort: 8080, lanAddress: '10.77.0.52', lanPort: 80 },
  { proto: 'udp', publicPort: 5060, lanAddress: '10.77.0.53', lanPort: 5060 },
];

function cidr(prefix: string): [number, number] {
  const [net, len] = prefix.split('/');
  const n = Number(len);
  const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
  return [ip4(net) & mask, mask].map((x) => x >>> 0) as [number, number];
}

/** One epoch's configuration, drawn from `rng`. */
export function drawProfile(rng: Rng): Profile {
  const shared = rng.chance(0.4);
  const offloads = rng.chance(0.6);
  const mtu = rng.pick([1500, 1500, 1280, 9000, 576]);
  const lanPrefixes = rng.chance(0.7) ? ['10.77.0.0/24', '10.88.0.0/16'] : ['10.77.0.0/24'];
  const forwards = rng.chance(0.7) ? FORWARDS.filter(() => rng.chance(0.7)) : [];
  // Dynamic ranges keep clear of the forwarded ports (1723, 500, 8080, 5060).
  let ports: Record<string, unknown>;
  if (shared) {
    ports = rng.chance(0.7) ? {} : { range: [61000, 61063], preserve: rng.chance(0.5) };
  } else {
    ports = rng.pick([
      { range: [20000, 65535], lowRange: [600, 1000], preserve: true },
      { range: [20000, 65535], lowRange: null, preserve: rng.chance(0.5) },
      { range: [40000, 40063], lowRange: [900, 903], preserve: rng.chance(0.5) },
      { range: [40000, 40127], lowRange: null, preserve: false },
    ]);
  }
  const config = {
    tun: { name: 'fuzz0', mtu, offloads },
    lan: { interfaces: ['lan0'], prefixes: lanPrefixes },
    wan: { interface: 'wan0', mode: shared ? 'shared' : 'dedicated', publicAddress: '198.18.0.2' },
    ports,
    timeouts: {
      fragment: rng.range(1, 5),
      espPending: rng.pick([10, 120]),
      espSquelch: rng.pick([0, 5, 30]),
      pptpGrace: rng.pick([0, 5, 30]),
    },
    limits: { maxSessions: rng.pick([1024, 1024, 4096, 16384]), maxHeldFragments: rng.pick([0, 4, 64, 512]) },
    filtering: rng.chance(0.3) ? 'endpoint-independent' : 'address-port',
    ipsec: { parallel: rng.chance(0.7), guessing: rng.chance(0.7), guessMax: rng.range(1, 16), retries: rng.range(1, 8) },
    pptp: { nonPptpGre: rng.chance(0.5) ? 'address-only' : 'drop' },
    forwards,
    mssClamp: rng.pick([null, 'auto', 1200, 536]),
    state: { path: '/nonexistent/vpnmasq-fuzz/state.db' },
    control: { socket: '/nonexistent/vpnmasq-fuzz/control.sock', group: 'root' },
  };
  const name = `${shared ? 'shared' : 'dedicated'} ${config.filtering} offloads=${offloads} mtu=${mtu} sessions=${config.limits.maxSessions} ` +
    `held=${config.limits.maxHeldFragments} forwards=${forwards.map((f) => f.proto + (f.publicPort ?? '')).join(',') || 'none'}`;
  return { name, shared, offloads, mtu, lanPrefixes, lan: lanPrefixes.map(cidr), forwards, config };
}

export function isLanAddr(p: Profile, a: number): boolean {
  for (const [net, mask] of p.lan) if (((a & mask) >>> 0) === net) return true;
  return false;
}
