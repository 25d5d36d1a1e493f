/**
 * Real strongSwan peers (charon + swanctl, IKEv2, kernel-libipsec, PSK) in lab
 * namespaces, shared by the strongSwan lab tests. Each daemon gets its own
 * strongswan.conf, a private /run and its own vici socket. The log is for
 * failure messages only (flushed per line; without flush_line, charon's
 * stdio buffer holds the last 4 KiB back while it runs): tests assert on the
 * wire and on `swanctl --list-sas`, never on log text.
 * See /work/shared/reference/strongswan-in-namespaces.md.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExecResult, Lab } from './lab';

export const hasCharon = fs.existsSync('/usr/lib/ipsec/charon') && fs.existsSync('/usr/sbin/swanctl');

/** strongSwan lab tests fail at once without charon and swanctl (scripts/ensure-deps.sh installs them). */
export function requireCharon(): void {
  if (!hasCharon) throw new Error('strongSwan is not installed (/usr/lib/ipsec/charon, /usr/sbin/swanctl): run scripts/ensure-deps.sh as root');
}
/** The network behind the server, reachable only through the tunnel. */
export const PROTECTED = '10.99.0.0/24';
export const PROTECTED_HOST = '10.99.0.1';
const POOL = '100.64.0.0/24';
const PSK = 'vpnmasq-lab-psk';

export interface Charon { ns: string; dir: string; uri: string; log(): string }

/** Starts charon in `ns` with its own strongswan.conf, /run and vici socket under `base`; loads `swanctl` once it answers. */
export async function startCharon(lab: Lab, base: string, ns: string, name: string, swanctl: string): Promise<Charon> {
  const dir = path.join(base, name);
  fs.mkdirSync(dir);
  const uri = `unix://${dir}/charon.vici`;
  fs.writeFileSync(path.join(dir, 'strongswan.conf'), `charon {
  plugins {
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec { load = yes }
    vici { socket = ${uri} }
  }
  filelog { log { path = ${dir}/charon.log
    default = 1
    flush_line = yes
    append = no } }
}
`);
  fs.writeFileSync(path.join(dir, 'swanctl.conf'), swanctl);
  lab.spawn(ns, ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs tmpfs /run && exec /usr/lib/ipsec/charon'], {
    env: { ...process.env, STRONGSWAN_CONF: path.join(dir, 'strongswan.conf') },
    stdio: 'ignore',
  });
  const deadline = Date.now() + 15000;
  for (;;) {
    const r = await lab.exec(ns, ['swanctl', '--load-all', '--uri', uri, '--file', path.join(dir, 'swanctl.conf')], { timeoutMs: 10000 });
    if (r.code === 0) break;
    if (Date.now() > deadline) throw new Error(`charon ${name} not ready: ${r.stderr}${r.stdout}`);
    await new Promise((res) => setTimeout(res, 250));
  }
  const log = (): string => {
    try {
      return fs.readFileSync(path.join(dir, 'charon.log'), 'utf8');
    } catch {
      return '';
    }
  };
  return { ns, dir, uri, log };
}

/** A responder on `localAddr` handing out virtual IPs and protecting PROTECTED_HOST (added to its lo). */
export async function startServer(lab: Lab, base: string, ns: string, localAddr: string): Promise<Charon> {
  await lab.exec(ns, ['ip', 'addr', 'add', `${PROTECTED_HOST}/32`, 'dev', 'lo']);
  return startCharon(lab, base, ns, 'server', `connections {
  rw {
    local_addrs = ${localAddr}
    pools = p
    proposals = aes128-sha256-modp2048
    local { auth = psk
      id = server.test }
    remote { auth = psk }
    children { net { local_ts = ${PROTECTED}
      esp_proposals = aes128gcm16 } }
  }
}
pools { p { addrs = ${POOL} } }
secrets { ike-1 { secret = "${PSK}" } }
`);
}

/** An initiator (connection `c`, child `net`) towards `remoteAddr` asking for a virtual IP. */
export function startClient(lab: Lab, base: string, ns: string, name: string, remoteAddr: string): Promise<Charon> {
  return startCharon(lab, base, ns, name, `connections {
  c {
    remote_addrs = ${remoteAddr}
    vips = 0.0.0.0
    proposals = aes128-sha256-modp2048
    local { auth = psk
      id = ${name}.test }
    remote { auth = psk
      id = server.test }
    children { net { remote_ts = ${PROTECTED}
      esp_proposals = aes128gcm16 } }
  }
}
secrets { ike-1 { secret = "${PSK}"
  id-1 = server.test
  id-2 = ${name}.test } }
`);
}

/** `swanctl --initiate` of child `net` (bounded); a tunnel is up when it prints "initiate completed successfully". */
export function initiate(lab: Lab, c: Charon): Promise<ExecResult> {
  return lab.exec(c.ns, ['swanctl', '--initiate', '--uri', c.uri, '--child', 'net', '--timeout', '25'], { timeoutMs: 30000 });
}

/** `swanctl --list-sas` output: endpoints with ports (`198.18.0.2[4500]`) and the child mode (`TUNNEL-in-UDP`). */
export async function listSas(lab: Lab, c: Charon): Promise<string> {
  const r = await lab.exec(c.ns, ['swanctl', '--list-sas', '--uri', c.uri], { timeoutMs: 10000 });
  return r.stdout;
}
