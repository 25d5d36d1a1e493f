/**
 * Network-namespace lab for vpnmasq tests, the demo and the benchmark.
 *
 *   LAN hosts (<p>-l1..n)  10.77.0.11.. ─┐                     ┌─ WAN hosts (<p>-w1..m) 198.18.0.11..
 *                                       lan0 [<p>-r] wan0 ──────┼─ VPN server (<p>-vs)   198.18.0.20
 *                          10.77.0.1/24 bridge    bridge 198.18.0.1/24
 *                                                               └─ wan router (<p>-wr)   198.18.0.254
 *                                                                     │ MTU 1280, 198.18.1.0/24
 *                                                                   far host (<p>-far)   198.18.1.2
 *
 * Only the "operating system" side is configured (addresses, bridges, host
 * routes). The router namespace has no forwarding, no policy routing and no
 * NAT: that is the daemon's job. The NAT public address 198.18.0.2 is not
 * assigned anywhere. WAN hosts have no route to the LAN prefix.
 *
 * Requires root. Every veth is created directly inside its namespaces, so
 * deleting the namespaces removes everything.
 */
import { ChildProcess, execFile, execFileSync, spawn as cpSpawn, StdioOptions } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export interface LabOptions {
  /** Number of LAN hosts (default 2). */
  lanHosts?: number;
  /** Number of WAN hosts (default 2). */
  wanHosts?: number;
  /** Create the VPN server namespace on the WAN side (default true). */
  vpnServer?: boolean;
  /** Create the WAN-side router and the far host behind a 1280-MTU link (default true). */
  farHost?: boolean;
}

export interface LabNamespaces {
  router: string;
  lan: string[];
  wan: string[];
  /** '' (falsy) if created with vpnServer: false */
  vpnServer: string;
  /** '' (falsy) if created with farHost: false */
  wanRouter: string;
  /** '' (falsy) if created with farHost: false */
  far: string;
}

export interface LabAddresses {
  lan: string[];
  wan: string[];
  vpnServer: string;
  wanRouter: string;
  far: string;
  routerLan: '10.77.0.1';
  routerWan: '198.18.0.1';
  public: '198.18.0.2';
}

export interface ExecOptions {
  /** Kill the command's process group after this many ms (default 20000). */
  timeoutMs?: number;
  /** Written to the command's stdin (stdin is closed either way). */
  input?: string;
}

export interface ExecResult {
  /** Exit code; 128+signal if killed by a signal; -1 if it could not be started. */
  code: number;
  stdout: string;
  stderr: string;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
}

export interface LabSpawnOptions {
  /** default 'pipe' */
  stdio?: StdioOptions;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface PingOptions {
  /** Echo requests to send (default 1). */
  count?: number;
  /** ICMP payload bytes (default 56, like ping). */
  size?: number;
  /**
   * Don't-fragment behaviour: false = IP_PMTUDISC_DONT, true = IP_PMTUDISC_DO
   * (like `ping -M do`; a cached path MTU makes later sends fail locally with
   * EMSGSIZE), 'probe' = IP_PMTUDISC_PROBE (DF set, cached PMTU ignored, so
   * the router on the path always answers with frag-needed). Default false.
   */
  df?: boolean | 'probe';
  /** Per-request reply wait in ms (default 1000). */
  waitMs?: number;
  /** Gap between requests in ms (default 200). */
  intervalMs?: number;
}

export interface PingError {
  /** 'icmp': an ICMP error quoting our request; 'local': sendto() failed. */
  kind: 'icmp' | 'local';
  seq: number;
  /** ICMP type/code for kind 'icmp' */
  icmpType?: number;
  icmpCode?: number;
  from?: string;
  /** Next-hop MTU for fragmentation-needed (type 3 code 4). */
  mtu?: number;
  /** errno name for kind 'local', e.g. EMSGSIZE */
  errno?: string;
  message: string;
}

export interface PingResult {
  sent: number;
  received: number;
  rttMs: number[];
  errors: PingError[];
  /** true if the ping helper itself failed (stderr holds the details). */
  failed: boolean;
  stderr: string;
}

export interface LabInfo {
  prefix: string;
  ns: LabNamespaces;
  addr: LabAddresses;
  lanPrefix: '10.77.0.0/24';
  routerIfaces: { lan: 'lan0'; wan: 'wan0' };
}

export interface Lab extends LabInfo {
  exec(ns: string, argv: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Starts a tracked, detached (own process group) process inside `ns`. */
  spawn(ns: string, argv: string[], opts?: LabSpawnOptions): ChildProcess;
  /** ICMP echo from `ns` to `dst` (python3 raw socket helper; iputils ping is not required). */
  ping(ns: string, dst: string, opts?: PingOptions): Promise<PingResult>;
  /** All namespaces of this lab. */
  namespaces(): string[];
  /** Plain JSON description (what `scripts/lab.ts up` prints). */
  info(): LabInfo;
  /**
   * Deletes the router namespace and builds it again (new bridges, every host re-wired); processes on the hosts live on.
   * `beforeWire` runs in between, in the new and still empty namespace: what a boot does before the network
   * is configured (systemd's network-pre.target). Resolves with the time the router's addresses were in place.
   */
  rebuildRouter(opts?: { beforeWire?: () => Promise<void> }): Promise<{ addressesAt: number }>;
  /** A new directory in the system's temp dir, named after the lab and `label`; destroy() removes it. */
  tempDir(label: string): string;
  /** Kills tracked process groups and everything left in the namespaces, deletes the namespaces and the temp dirs. Idempotent, never throws. */
  destroy(): Promise<void>;
  readonly destroyed: boolean;
}

/** What a test hands to helpers that own resources: node:test's TestContext (its after() runs also when the test fails). */
export interface TestOwner {
  after(fn: () => unknown): void;
}

/**
 * Lab tests need root (network namespaces, TUN devices): without it a lab
 * test file fails at once with this reason instead of skipping (a missing
 * prerequisite is a failure, never a silent skip). scripts/test.sh runs the
 * lab tests only as root.
 */
export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('lab tests need root (network namespaces, TUN devices): run them as root, or run only dist/test/unit');
}

export const LAB_LAN_PREFIX = '10.77.0.0/24' as const;
export const LAB_ROUTER_LAN = '10.77.0.1' as const;
export const LAB_ROUTER_WAN = '198.18.0.1' as const;
export const LAB_PUBLIC = '198.18.0.2' as const;
export const LAB_VPN_SERVER = '198.18.0.20';
export const LAB_WAN_ROUTER = '198.18.0.254';
export const LAB_WAN_ROUTER_FAR = '198.18.1.1';
export const LAB_FAR = '198.18.1.2';
export const LAB_FAR_PREFIX = '198.18.1.0/24';
export const LAB_FAR_MTU = 1280;

const NS_RE = /^(vmq[0-9a-f]{6})-[a-z0-9]+$/;
const SETUP_CMD_TIMEOUT_MS = 10_000;
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

// ----------------------------------------------------------------- helpers

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs a command in the current (root) namespace; rejects on non-zero exit. */
function run(file: string, args: string[], timeoutMs = SETUP_CMD_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${String(stderr).trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

function signalNumber(sig: NodeJS.Signals | null): number {
  if (!sig) return 0;
  return (os.constants.signals as Record<string, number>)[sig] ?? 0;
}

function pidDirs(): string[] {
  const dirs: string[] = [];
  try {
    fs.accessSync('/run', fs.constants.W_OK);
    dirs.push('/run');
  } catch {
    /* not writable */
  }
  dirs.push(os.tmpdir());
  return dirs;
}

function pidFileName(prefix: string): string {
  return `vmq-lab-${prefix}.pid`;
}

/** Process start time (clock ticks since boot) from /proc/<pid>/stat, or null if the process is gone/zombie. */
function procStartTime(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); starttime is field 22 -> rest[19]
    if (rest[0] === 'Z' || rest[0] === 'X') return null;
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

function listNamespaces(): string[] {
  let out = '';
  try {
    out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return [];
  }
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

function nsPidsSync(ns: string): number[] {
  try {
    const out = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split(/\s+/).filter(Boolean).map(Number).filter((n) => Number.isInteger(n) && n > 1 && n !== process.pid);
  } catch {
    return [];
  }
}

function killQuiet(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

/**
 * Who owns a lab namespace, written on its loopback (the interface alias):
 * unlike the pid file, it is visible from any mount namespace that sees
 * /run/netns (a chroot or container running another test suite on the same
 * machine), so a sweep there never takes a live lab for a dead one.
 */
function ownerMarker(): string {
  return `vmq-lab owner=${process.pid} start=${procStartTime(process.pid) ?? ''} pidns=${fs.readlinkSync('/proc/self/ns/pid')}`;
}

const MARKER_RE = /alias vmq-lab owner=(\d+) start=(\d*) pidns=(\S+)/;

/** IPv6 off before any interface exists (default.* is what new interfaces inherit), loopback up, the owner marked. */
async function prepareNamespace(ns: string): Promise<void> {
  await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  await run('ip', ['-n', ns, 'link', 'set', 'lo', 'alias', ownerMarker()]);
  await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
}

/** Kill every process left inside the namespaces (they can only be ours) and delete them. Synchronous; never throws. */
function deleteNamespacesSync(names: string[]): void {
  for (const ns of names) for (const pid of nsPidsSync(ns)) killQuiet(pid, 'SIGKILL');
  for (const ns of names) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { timeout: 5000, stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  }
}

// ----------------------------------------------------------- safety net

const aliveLabs = new Set<LabImpl>();
let safetyNetInstalled = false;

function installSafetyNet(): void {
  if (safetyNetInstalled) return;
  safetyNetInstalled = true;
  process.on('exit', () => {
    for (const lab of [...aliveLabs]) lab.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const handler = (): void => {
      for (const lab of [...aliveLabs]) lab.destroySync();
      // If nobody else handles the signal, restore the default action and re-raise it.
      if (process.listenerCount(sig) <= 1) {
        process.removeListener(sig, handler);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, handler);
  }
}

// ------------------------------------------------------------- ping helper

const PING_PY = String.raw`
import errno, json, os, select, socket, struct, sys, time
dst, count, size, df, wait, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
IP_MTU_DISCOVER = 10
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, {'dont': 0, 'do': 2, 'probe': 3}[df])
ident = os.getpid() & 0xffff
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
res = {'sent': 0, 'received': 0, 'rttMs': [], 'errors': []}
for seq in range(1, count + 1):
    payload = bytes((i & 0xff) for i in range(size))
    hdr = struct.pack('!BBHHH', 8, 0, 0, ident, seq)
    pkt = struct.pack('!BBHHH', 8, 0, csum(hdr + payload), ident, seq) + payload
    t0 = time.monotonic()
    try:
        s.sendto(pkt, (dst, 0))
        res['sent'] += 1
    except OSError as e:
        res['errors'].append({'kind': 'local', 'seq': seq, 'errno': errno.errorcode.get(e.errno, str(e.errno)), 'message': str(e)})
        if seq < count: time.sleep(interval)
        continue
    deadline = t0 + wait
    while True:
        rem = deadline - time.monotonic()
        if rem <= 0: break
        r, _, _ = select.select([s], [], [], rem)
        if not r: break
        data, addr = s.recvfrom(65535)
        ihl = (data[0] & 15) * 4
        icmp = data[ihl:]
        if len(icmp) < 8: continue
        t, code = icmp[0], icmp[1]
        if t == 0:
            rid, rseq = struct.unpack('!HH', icmp[4:8])
            if rid == ident and rseq == seq and addr[0] == dst:
                res['received'] += 1
                res['rttMs'].append((time.monotonic() - t0) * 1000.0)
                break
        elif t in (3, 4, 5, 11, 12):
            inner = icmp[8:]
            if len(inner) < 28: continue
            iihl = (inner[0] & 15) * 4
            if socket.inet_ntoa(inner[16:20]) != dst: continue
            q = inner[iihl:iihl + 8]
            if len(q) < 8 or q[0] != 8: continue
            qid, qseq = struct.unpack('!HH', q[4:8])
            if qid != ident or qseq != seq: continue
            err = {'kind': 'icmp', 'seq': seq, 'icmpType': t, 'icmpCode': code, 'from': addr[0]}
            if t == 3 and code == 4:
                err['mtu'] = struct.unpack('!H', icmp[6:8])[0]
                err['message'] = 'Frag needed and DF set (mtu = %d)' % err['mtu']
            elif t == 3:
                err['message'] = 'Destination unreachable (code %d)' % code
            elif t == 11:
                err['message'] = 'Time exceeded (code %d)' % code
            else:
                err['message'] = 'ICMP type %d code %d' % (t, code)
            res['errors'].append(err)
            break
    spent = time.monotonic() - t0
    if seq < count and spent < interval: time.sleep(interval - spent)
print(json.dumps(res))
`;

// ---------------------------------------------------------------- the lab

interface Tracked {
  child: ChildProcess;
  exited: Promise<void>;
}

class LabImpl implements Lab {
  readonly prefix: string;
  readonly ns: LabNamespaces;
  readonly addr: LabAddresses;
  readonly lanPrefix = LAB_LAN_PREFIX;
  readonly routerIfaces = { lan: 'lan0', wan: 'wan0' } as const;
  private readonly tracked = new Set<Tracked>();
  private readonly created: string[] = [];
  private readonly dirs: string[] = [];
  private pidFile: string | null = null;
  private destroying: Promise<void> | null = null;
  private _destroyed = false;

  constructor(prefix: string, opts: Required<LabOptions>) {
    this.prefix = prefix;
    const n = (s: string): string => `${prefix}-${s}`;
    this.ns = {
      router: n('r'),
      lan: Array.from({ length: opts.lanHosts }, (_, i) => n(`l${i + 1}`)),
      wan: Array.from({ length: opts.wanHosts }, (_, i) => n(`w${i + 1}`)),
      vpnServer: opts.vpnServer ? n('vs') : '',
      wanRouter: opts.farHost ? n('wr') : '',
      far: opts.farHost ? n('far') : '',
    };
    this.addr = {
      lan: Array.from({ length: opts.lanHosts }, (_, i) => `10.77.0.${11 + i}`),
      wan: wanHostAddresses(opts.wanHosts),
      vpnServer: LAB_VPN_SERVER,
      wanRouter: LAB_WAN_ROUTER,
      far: LAB_FAR,
      routerLan: LAB_ROUTER_LAN,
      routerWan: LAB_ROUTER_WAN,
      public: LAB_PUBLIC,
    };
  }

  get destroyed(): boolean {
    return this._destroyed;
  }

  namespaces(): string[] {
    const all = [this.ns.router, ...this.ns.lan, ...this.ns.wan];
    if (this.ns.vpnServer) all.push(this.ns.vpnServer);
    if (this.ns.wanRouter) all.push(this.ns.wanRouter);
    if (this.ns.far) all.push(this.ns.far);
    return all;
  }

  info(): LabInfo {
    return {
      prefix: this.prefix,
      ns: { ...this.ns, lan: [...this.ns.lan], wan: [...this.ns.wan] },
      addr: { ...this.addr, lan: [...this.addr.lan], wan: [...this.addr.wan] },
      lanPrefix: this.lanPrefix,
      routerIfaces: { ...this.routerIfaces },
    };
  }

  toJSON(): LabInfo {
    return this.info();
  }

  // ------------------------------------------------------------- build

  async build(): Promise<void> {
    // Ownership marker first, so a crash during creation is still sweepable.
    const start = procStartTime(process.pid) ?? '';
    for (const dir of pidDirs()) {
      const file = path.join(dir, pidFileName(this.prefix));
      try {
        fs.writeFileSync(file, JSON.stringify({ pid: process.pid, start }) + '\n');
        this.pidFile = file;
        break;
      } catch {
        /* try the next dir */
      }
    }

    const all = this.namespaces();
    for (const ns of all) {
      await run('ip', ['netns', 'add', ns]);
      this.created.push(ns);
    }
    await Promise.all(all.map((ns) => prepareNamespace(ns)));

    if (this.ns.wanRouter && this.ns.far) {
      const WR = this.ns.wanRouter;
      const FAR = this.ns.far;
      await run('ip', ['link', 'add', 'eth1', 'netns', WR, 'mtu', String(LAB_FAR_MTU), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', FAR, 'mtu', String(LAB_FAR_MTU)]);
      await run('ip', ['-n', WR, 'addr', 'add', `${LAB_WAN_ROUTER_FAR}/24`, 'dev', 'eth1']);
      await run('ip', ['-n', WR, 'link', 'set', 'eth1', 'up']);
      await run('ip', ['netns', 'exec', WR, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      await run('ip', ['-n', FAR, 'addr', 'add', `${LAB_FAR}/24`, 'dev', 'eth0']);
      await run('ip', ['-n', FAR, 'link', 'set', 'eth0', 'up']);
      await run('ip', ['-n', FAR, 'route', 'add', 'default', 'via', LAB_WAN_ROUTER_FAR]);
    }
    await this.wireRouter();
  }

  /**
   * Deletes the router namespace (everything in it is killed; the hosts'
   * veths die with it) and builds it again from scratch: bridges, every
   * host's link, addresses and routes, as after createLab. A "reboot" of the
   * router that the hosts, and the processes on them, survive.
   */
  async rebuildRouter(opts: { beforeWire?: () => Promise<void> } = {}): Promise<{ addressesAt: number }> {
    const R = this.ns.router;
    for (const pid of nsPidsSync(R)) killQuiet(pid, 'SIGKILL');
    await run('ip', ['netns', 'del', R]);
    // The namespace (and with it the hosts' ends of the veths) goes away once its last user is gone.
    const hosts = this.wiredHosts().map(([ns]) => ns);
    for (const deadline = Date.now() + 10_000; ;) {
      const left = await Promise.all(hosts.map((ns) => run('ip', ['-n', ns, 'link', 'show', 'eth0']).then(() => true, () => false)));
      if (!left.includes(true)) break;
      if (Date.now() > deadline) throw new Error('host links of the deleted router namespace did not go away');
      await sleep(50);
    }
    await run('ip', ['netns', 'add', R]);
    await prepareNamespace(R);
    await opts.beforeWire?.();
    return { addressesAt: await this.wireRouter() };
  }

  /** Namespaces with an eth0 to one of the router's bridges, with their router-side port and bridge. */
  private wiredHosts(): [ns: string, port: string, bridge: string][] {
    const hosts: [string, string, string][] = [];
    this.ns.lan.forEach((ns, i) => hosts.push([ns, `l${i + 1}`, 'lan0']));
    this.ns.wan.forEach((ns, i) => hosts.push([ns, `w${i + 1}`, 'wan0']));
    if (this.ns.vpnServer) hosts.push([this.ns.vpnServer, 'vs', 'wan0']);
    if (this.ns.wanRouter) hosts.push([this.ns.wanRouter, 'wr', 'wan0']);
    return hosts;
  }

  /**
   * The router namespace's bridges and every host's link to them, with addresses and routes (build and
   * rebuildRouter). Returns when (Date.now()) the router's own addresses went up.
   */
  private async wireRouter(): Promise<number> {
    const R = this.ns.router;
    const ipR = (...a: string[]): Promise<string> => run('ip', ['-n', R, ...a]);
    await ipR('link', 'add', 'lan0', 'type', 'bridge');
    await ipR('link', 'add', 'wan0', 'type', 'bridge');

    /** veth: `port` in the router ns enslaved to `bridge`, `eth0` in `hostNs`. */
    const attach = async (port: string, bridge: string, hostNs: string): Promise<void> => {
      await run('ip', ['link', 'add', port, 'netns', R, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', hostNs]);
      await ipR('link', 'set', port, 'master', bridge);
      await ipR('link', 'set', port, 'up');
      await run('ip', ['-n', hostNs, 'link', 'set', 'eth0', 'up']);
    };

    for (const [ns, port, bridge] of this.wiredHosts()) await attach(port, bridge, ns);

    await ipR('addr', 'add', `${LAB_ROUTER_LAN}/24`, 'dev', 'lan0');
    await ipR('addr', 'add', `${LAB_ROUTER_WAN}/24`, 'dev', 'wan0');
    await ipR('link', 'set', 'lan0', 'up');
    await ipR('link', 'set', 'wan0', 'up');
    const addressesAt = Date.now();

    await Promise.all(
      this.ns.lan.map(async (ns, i) => {
        await run('ip', ['-n', ns, 'addr', 'add', `${this.addr.lan[i]}/24`, 'dev', 'eth0']);
        await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', LAB_ROUTER_LAN]);
      }),
    );

    const wanSide: [string, string][] = this.ns.wan.map((ns, i) => [ns, this.addr.wan[i]!]);
    if (this.ns.vpnServer) wanSide.push([this.ns.vpnServer, LAB_VPN_SERVER]);
    await Promise.all(
      wanSide.map(async ([ns, a]) => {
        await run('ip', ['-n', ns, 'addr', 'add', `${a}/24`, 'dev', 'eth0']);
        if (this.ns.wanRouter) await run('ip', ['-n', ns, 'route', 'add', LAB_FAR_PREFIX, 'via', LAB_WAN_ROUTER]);
      }),
    );

    if (this.ns.wanRouter) {
      await run('ip', ['-n', this.ns.wanRouter, 'addr', 'add', `${LAB_WAN_ROUTER}/24`, 'dev', 'eth0']);
      // 198.18.0.0/24 is connected on wr's eth0; the router knows the far net via wr.
      await ipR('route', 'add', LAB_FAR_PREFIX, 'via', LAB_WAN_ROUTER);
    }
    return addressesAt;
  }

  // ------------------------------------------------------- processes

  exec(ns: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? 20_000;
    return new Promise((resolve) => {
      let timedOut = false;
      let settled = false;
      let out = '';
      let err = '';
      // Like execFile('ip', ['netns','exec',ns,...argv]), but in its own process
      // group so a timeout kills the whole command tree (sh -c ... children too).
      const child = cpSpawn('ip', ['netns', 'exec', ns, ...argv], { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
      const tracked = this.track(child);
      const timer = setTimeout(() => {
        timedOut = true;
        this.killGroup(tracked, 'SIGKILL');
      }, timeoutMs);
      const finish = (code: number, signal: NodeJS.Signals | null, extraErr = ''): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({
          code,
          stdout: out,
          stderr: err + extraErr,
          signal,
          timedOut,
        });
      };
      child.stdout?.setEncoding('utf8');
      child.stderr?.setEncoding('utf8');
      child.stdout?.on('data', (d: string) => (out += d));
      child.stderr?.on('data', (d: string) => (err += d));
      child.on('error', (e) => finish(-1, null, e.message));
      // 'close' (not 'exit'): all output has been read.
      child.on('close', (code, signal) => finish(code ?? 128 + signalNumber(signal), signal));
      child.stdin?.on('error', () => undefined);
      if (opts.input !== undefined) child.stdin?.end(opts.input);
      else child.stdin?.end();
    });
  }

  spawn(ns: string, argv: string[], opts: LabSpawnOptions = {}): ChildProcess {
    if (this._destroyed || this.destroying) throw new Error(`lab ${this.prefix} is destroyed`);
    const child = cpSpawn('ip', ['netns', 'exec', ns, ...argv], {
      detached: true,
      stdio: opts.stdio ?? 'pipe',
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });
    this.track(child);
    return child;
  }

  async ping(ns: string, dst: string, opts: PingOptions = {}): Promise<PingResult> {
    const count = opts.count ?? 1;
    const size = opts.size ?? 56;
    const df = opts.df === 'probe' ? 'probe' : opts.df ? 'do' : 'dont';
    const waitMs = opts.waitMs ?? 1000;
    const intervalMs = opts.intervalMs ?? 200;
    const budget = count * (waitMs + intervalMs) + 5000;
    const r = await this.exec(ns, [PYTHON, '-c', PING_PY, dst, String(count), String(size), df, String(waitMs / 1000), String(intervalMs / 1000)], { timeoutMs: budget });
    try {
      const parsed = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Omit<PingResult, 'failed' | 'stderr'>;
      return { ...parsed, failed: false, stderr: r.stderr };
    } catch {
      return { sent: 0, received: 0, rttMs: [], errors: [], failed: true, stderr: r.stderr || `ping helper exited with ${r.code}` };
    }
  }

  private track(child: ChildProcess): Tracked {
    const t: Tracked = {
      child,
      exited: new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.once('error', () => resolve());
      }),
    };
    this.tracked.add(t);
    void t.exited.then(() => this.tracked.delete(t));
    return t;
  }

  private killGroup(t: Tracked, sig: NodeJS.Signals): void {
    const pid = t.child.pid;
    if (!pid) return;
    try {
      process.kill(-pid, sig);
    } catch {
      killQuiet(pid, sig);
    }
  }

  tempDir(label: string): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${this.prefix}-${label}-`));
    this.dirs.push(dir);
    return dir;
  }

  // --------------------------------------------------------- teardown

  destroy(): Promise<void> {
    if (this._destroyed && !this.destroying) return Promise.resolve();
    if (!this.destroying) {
      this.destroying = this.doDestroy().catch(() => undefined);
    }
    return this.destroying;
  }

  private async doDestroy(): Promise<void> {
    const tracked = [...this.tracked];
    for (const t of tracked) this.killGroup(t, 'SIGTERM');
    const allExited = Promise.all(tracked.map((t) => t.exited));
    const graceful = await Promise.race([allExited.then(() => true), sleep(2000).then(() => false)]);
    if (!graceful) {
      for (const t of this.tracked) this.killGroup(t, 'SIGKILL');
      await Promise.race([Promise.all([...this.tracked].map((t) => t.exited)), sleep(1000)]);
    }
    // Anything else still living in our namespaces (e.g. started by a tracked process that escaped its group).
    const names = this.created.length ? [...this.created] : this.namespaces();
    for (const ns of names) {
      let pids: number[] = [];
      try {
        pids = (await run('ip', ['netns', 'pids', ns], 5000)).split(/\s+/).filter(Boolean).map(Number).filter((n) => n > 1 && n !== process.pid);
      } catch {
        /* namespace gone */
      }
      for (const pid of pids) killQuiet(pid, 'SIGKILL');
    }
    for (const ns of names) {
      try {
        await run('ip', ['netns', 'del', ns], 5000);
      } catch {
        /* already gone */
      }
    }
    this.finish();
  }

  /** Synchronous last-resort cleanup for 'exit' / signal handlers. */
  destroySync(): void {
    if (this._destroyed) return;
    for (const t of this.tracked) this.killGroup(t, 'SIGKILL');
    deleteNamespacesSync(this.created.length ? [...this.created] : this.namespaces());
    this.finish();
  }

  private finish(): void {
    for (const dir of this.dirs.splice(0)) {
      try {
        fs.rmSync(dir, { recursive: true, force: true });
      } catch {
        /* still in use (a mount): left for the operator */
      }
    }
    if (this.pidFile) {
      try {
        fs.unlinkSync(this.pidFile);
      } catch {
        /* gone */
      }
    }
    this._destroyed = true;
    aliveLabs.delete(this);
  }
}

function wanHostAddresses(n: number): string[] {
  const out: string[] = [];
  // .11 upwards, skipping the VPN server (.20) and wr (.254); .1/.2 are the router/public.
  for (let h = 11; out.length < n && h < 254; h++) {
    if (h === 20) continue;
    out.push(`198.18.0.${h}`);
  }
  if (out.length < n) throw new Error(`too many WAN hosts (${n})`);
  return out;
}

function checkCount(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new Error(`createLab: ${name} must be an integer 0..${max}`);
}

// ------------------------------------------------------------------ API

export async function createLab(opts: LabOptions = {}): Promise<Lab> {
  if (process.getuid?.() !== 0) throw new Error('createLab: requires root');
  const o: Required<LabOptions> = {
    lanHosts: opts.lanHosts ?? 2,
    wanHosts: opts.wanHosts ?? 2,
    vpnServer: opts.vpnServer ?? true,
    farHost: opts.farHost ?? true,
  };
  checkCount('lanHosts', o.lanHosts, 200);
  checkCount('wanHosts', o.wanHosts, 200);
  installSafetyNet();
  const lab = new LabImpl(`vmq${randomBytes(3).toString('hex')}`, o);
  aliveLabs.add(lab);
  try {
    await lab.build();
  } catch (e) {
    await lab.destroy();
    throw e;
  }
  return lab;
}

/** Creates a lab, runs `fn`, always destroys the lab afterwards. */
export async function withLab<T>(opts: LabOptions | undefined, fn: (lab: Lab) => Promise<T>): Promise<T> {
  const lab = await createLab(opts);
  try {
    return await fn(lab);
  } finally {
    await lab.destroy();
  }
}

/**
 * Deletes namespaces named `vmq??????-*` whose creating process is dead
 * (pid file missing, pid gone, or pid reused by another process). Labs of
 * this process and of other live processes are left alone.
 * Returns the deleted namespace names.
 */
export async function sweepStaleLabs(): Promise<string[]> {
  const mine = new Set([...aliveLabs].map((l) => l.prefix));
  const byPrefix = new Map<string, string[]>();
  for (const ns of listNamespaces()) {
    const m = NS_RE.exec(ns);
    if (!m) continue;
    const p = m[1]!;
    if (mine.has(p)) continue;
    byPrefix.set(p, [...(byPrefix.get(p) ?? []), ns]);
  }
  const removed: string[] = [];
  const dirs = pidDirs();
  for (const [prefix, names] of byPrefix) {
    // A process still running in one of its namespaces means the lab is in
    // use, whether or not its owner's pid file is visible from here (a test
    // run in another root sees the namespaces but not this root's /run).
    if (ownerAlive(prefix, dirs, names) || names.some((ns) => nsPidsSync(ns).length > 0)) continue;
    deleteNamespacesSync(names);
    removed.push(...names);
    removePidFiles(prefix, dirs);
  }
  // Pid files whose labs are gone entirely.
  for (const dir of dirs) {
    let entries: string[] = [];
    try {
      entries = fs.readdirSync(dir);
    } catch {
      continue;
    }
    for (const f of entries) {
      const m = /^vmq-lab-(vmq[0-9a-f]{6})\.pid$/.exec(f);
      if (!m || mine.has(m[1]!) || byPrefix.has(m[1]!)) continue;
      if (!pidFileOwnerAlive(m[1]!, [dir])) removePidFiles(m[1]!, [dir]);
    }
  }
  return removed;
}

/** A namespace nobody can be told the owner of is left alone this long (it may be another environment's). */
const UNMARKED_GRACE_MS = 30 * 60 * 1000;

/**
 * Whether a lab of `prefix` may still be in use: its pid file (this mount
 * namespace), else the marker on one of its namespaces' loopback; an owner in
 * another PID namespace cannot be checked and counts as alive; an unmarked
 * namespace counts as alive while it is young.
 */
function ownerAlive(prefix: string, dirs: string[], names: string[] = []): boolean {
  if (dirs.some((dir) => fs.existsSync(path.join(dir, pidFileName(prefix))))) return pidFileOwnerAlive(prefix, dirs);
  for (const ns of names) {
    let link = '';
    try {
      link = execFileSync('ip', ['-n', ns, '-o', 'link', 'show', 'lo'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      continue;
    }
    const m = MARKER_RE.exec(link);
    if (!m) continue;
    if (m[3] !== fs.readlinkSync('/proc/self/ns/pid')) return true;
    const now = procStartTime(Number(m[1]));
    return now !== null && (m[2] === '' || now === m[2]);
  }
  for (const ns of names) {
    try {
      if (Date.now() - fs.statSync(`/run/netns/${ns}`).mtimeMs < UNMARKED_GRACE_MS) return true;
    } catch {
      /* gone */
    }
  }
  return false;
}

function pidFileOwnerAlive(prefix: string, dirs: string[]): boolean {
  for (const dir of dirs) {
    let raw: string;
    try {
      raw = fs.readFileSync(path.join(dir, pidFileName(prefix)), 'utf8');
    } catch {
      continue;
    }
    try {
      const { pid, start } = JSON.parse(raw) as { pid: number; start: string };
      if (!Number.isInteger(pid) || pid <= 0) return false;
      const now = procStartTime(pid);
      return now !== null && (start === '' || now === start);
    } catch {
      return false;
    }
  }
  return false;
}

function removePidFiles(prefix: string, dirs: string[]): void {
  for (const dir of dirs) {
    try {
      fs.unlinkSync(path.join(dir, pidFileName(prefix)));
    } catch {
      /* none */
    }
  }
}
