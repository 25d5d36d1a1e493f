/**
 * Capacity on the wire: port overlapping (RFC 7857 §3), paired pooling over
 * several public addresses (RFC 4787 REQ-2), per-LAN-host limits and a full
 * table refusing new flows with ICMP code 13 (RFC 5508 REQ-8). Every test
 * runs its own daemon; assertions are about what the hosts saw.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createLab, Lab } from './lab';
import { peer, peerServer, ROOT, RouterHandle, startRouter } from './router-harness';

const CAP_HOST = path.join(ROOT, 'test/hosts/capacity_host.py');
const ROUTER_WAN = '198.18.0.1';
const SECOND_PUBLIC = '198.18.0.3';
const ECHO_PORT = 9000;

type Mode = 'shared' | 'dedicated';
type Got = Array<[number, string, string, number]>;
type Seen = Array<[string, number, string]>;

if (process.getuid?.() !== 0) throw new Error('the capacity lab tests need root (network namespaces)');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function wanConfig(lab: Lab, mode: Mode): Record<string, unknown> {
  return mode === 'shared'
    ? { interface: lab.routerIfaces.wan, mode: 'shared' }
    : { interface: lab.routerIfaces.wan, mode: 'dedicated', publicAddress: lab.addr.public };
}

/**
 * Runs `fn` with a daemon built from `overrides`; the daemon is stopped also
 * when `fn` throws, and torn down: the safety net and the host settings it
 * changed (a narrowed ephemeral port range) are not the next daemon's to find.
 */
async function withRouter(lab: Lab, overrides: Record<string, unknown>, fn: (r: RouterHandle) => Promise<void>): Promise<void> {
  const router = await startRouter(lab, overrides);
  try {
    await fn(router);
  } finally {
    await router.stop();
    const td = await router.teardown();
    assert.equal(td.code, 0, td.stderr);
  }
}

/** An echo server on `ns` for the duration of `fn`; returns what it saw. */
async function withEcho(lab: Lab, ns: string, tag: string, fn: () => Promise<void>, stray = false): Promise<Seen> {
  const srv = await peerServer(lab, ns, ['echo-server', '--port', String(ECHO_PORT), '--tag', tag, '--seconds', '60', ...(stray ? ['--stray'] : [])], CAP_HOST);
  try {
    await fn();
  } finally {
    srv.proc.kill('SIGTERM');
  }
  const line = (await srv.result).trim().split('\n').pop() ?? '{}';
  return (JSON.parse(line) as { seen: Seen }).seen;
}

const host = (lab: Lab, ns: string, args: string[], timeoutMs = 30000) => peer(lab, ns, args, timeoutMs, CAP_HOST);

/** Seen datagrams of one tag: flow index -> [public address, public port] per round. */
function byFlow(seen: Seen, tag: string): Map<number, Array<[string, number]>> {
  const m = new Map<number, Array<[string, number]>>();
  for (const [addr, port, payload] of seen) {
    const [t, i] = payload.split(':');
    if (t !== tag) continue;
    const list = m.get(Number(i)) ?? [];
    list.push([addr, port]);
    m.set(Number(i), list);
  }
  return m;
}

async function waitForLog(router: RouterHandle, re: RegExp, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (re.test(router.log())) return true;
    await sleep(100);
  }
  return re.test(router.log());
}

for (const mode of ['shared', 'dedicated'] as Mode[]) {
  describe(`capacity (${mode} mode)`, () => {
    let lab: Lab;
    const publicAddr = mode === 'shared' ? ROUTER_WAN : '198.18.0.2';

    before(async () => {
      lab = await createLab({ lanHosts: 2, wanHosts: 2, vpnServer: false, farHost: false });
    });
    after(async () => {
      if (lab) await lab.destroy();
    });

    it('two LAN hosts share every public port towards different servers, each gets only its own replies', async () => {
      // 64 public ports, all taken by host A's 64 flows: host B's flows, opened once A's exist, can only be
      // mapped by sharing A's ports (their remote endpoint differs, so the 5-tuples stay unique). B opens 16:
      // a share takes random probes and near 64 flows to one server they would collide with B's own.
      const range = [40960, 41023];
      await withRouter(lab, { wan: wanConfig(lab, mode), ports: { range } }, async (router) => {
        const FLOWS = { A: 64, B: 16 };
        const ROUNDS = 3;
        let gotA: Got = [];
        let gotB: Got = [];
        let seenB: Seen = [];
        const seenA = await withEcho(lab, lab.ns.wan[0], 'SA', async () => {
          seenB = await withEcho(lab, lab.ns.wan[1], 'SB', async () => {
            const flows = (ns: string, server: string, tag: 'A' | 'B', startAt: number) => host(lab, ns, ['flows', '--host', server,
              '--port', String(ECHO_PORT), '--sport', '20000', '--count', String(FLOWS[tag]), '--rounds', String(ROUNDS), '--interval', '1.5',
              '--start-at', String(startAt), '--timeout', '1.5', '--tag', tag]);
            const a = flows(lab.ns.lan[0], lab.addr.wan[0], 'A', 0);
            // B starts once A's first round holds every port, and runs while A's flows live on.
            const end = Date.now() + 10000;
            while (byFlowCount(await router.conns(), lab.addr.lan[0]) < FLOWS.A && Date.now() < end) await sleep(100);
            const b = await flows(lab.ns.lan[1], lab.addr.wan[1], 'B', 0);
            gotA = (await a).got as Got;
            gotB = b.got as Got;
          }, true);
        }, true);

        // On the WAN: each server saw only its host's flows, from the public address, one public port per flow
        // (endpoint-independent mapping), all of them inside the 64-port range.
        const ports = (seen: Seen, tag: 'A' | 'B', other: string) => {
          assert.ok(!seen.some(([, , p]) => p.startsWith(`${other}:`)), `${tag}'s server saw ${other}'s flows`);
          const flowsSeen = byFlow(seen, tag);
          assert.equal(flowsSeen.size, FLOWS[tag], `${tag}: ${flowsSeen.size} flows reached the server`);
          const set = new Set<number>();
          for (const [i, list] of flowsSeen) {
            assert.equal(list.length, ROUNDS, `${tag} flow ${i}: ${JSON.stringify(list)}`);
            assert.ok(list.every(([a, p]) => a === publicAddr && p === list[0][1]), `${tag} flow ${i} changed its mapping: ${JSON.stringify(list)}`);
            assert.ok(list[0][1] >= range[0] && list[0][1] <= range[1], `${tag} flow ${i} port ${list[0][1]}`);
            set.add(list[0][1]);
          }
          return [...set].sort((x, y) => x - y);
        };
        const portsA = ports(seenA, 'A', 'B');
        const portsB = ports(seenB, 'B', 'A');
        assert.equal(portsA.length, FLOWS.A, 'each of A\'s flows has its own public port');
        assert.equal(portsB.length, FLOWS.B, 'each of B\'s flows has its own public port');
        assert.ok(portsB.every((p) => portsA.includes(p)), 'B\'s flows share the public ports of A\'s');

        // On the LAN: every socket got exactly its own reply per round, from its own server, and no stray
        // (sent by the servers from another port to the same public port) got through.
        const expect = (srv: string, tag: 'A' | 'B', server: string) => {
          const list: Got = [];
          for (let r = 0; r < ROUNDS; r++) for (let i = 0; i < FLOWS[tag]; i++) list.push([i, `${srv}|${tag}:${i}:${r}`, server, ECHO_PORT]);
          return list.sort();
        };
        assert.deepEqual([...gotA].sort(), expect('SA', 'A', lab.addr.wan[0]));
        assert.deepEqual([...gotB].sort(), expect('SB', 'B', lab.addr.wan[1]));
      });
    });

    // On both I/O loops. io_uring's once stopped reading after such a burst: one wakeup's bound ran out
    // with deferred work pending, and the kernel signals the eventfd only for new work.
    for (const io of ['uring', 'threads'] as const) it(`a LAN host flooding new flows hits its session limit while another host still opens flows (tun.io ${io})`, async () => {
      const limits = { hostSessions: 16, hostNewPerSecond: 0 };
      const tun = { tun: { name: `${lab.prefix.slice(3)}i${io[0]}`, mtu: 1500, offloads: true, io } };
      await withRouter(lab, { wan: wanConfig(lab, mode), limits, ...tun }, async (router) => {
        const FLOOD = 100;
        let flood: Record<string, any> = {};
        let other: Record<string, any> = {};
        const seen = await withEcho(lab, lab.ns.wan[0], 'S', async () => {
          flood = await host(lab, lab.ns.lan[0], ['spray', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '20000',
            '--count', String(FLOOD), '--gap', '0.003', '--timeout', '1', '--tag', 'A']);
          other = await host(lab, lab.ns.lan[1], ['flows', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '30000',
            '--count', '10', '--timeout', '1.5', '--tag', 'B']);
        });
        const fromA = byFlow(seen, 'A');
        assert.equal(fromA.size, limits.hostSessions, `the flooding host got ${fromA.size} flows through`);
        assert.equal(byFlow(seen, 'B').size, 10, 'the other host opened all its flows');
        assert.equal((other.got as Got).length, 10, `the other host got its replies: ${JSON.stringify(other)}`);
        // The refused flows were answered with ICMP code 13 (rate limited to a burst of 50), never the admitted ones.
        const errors = flood.errors as Array<[number, string, number]>;
        assert.ok(errors.length >= 50 && errors.length <= FLOOD - limits.hostSessions, `${errors.length} refusals`);
        assert.ok(errors.every(([code]) => code === 13), JSON.stringify(errors));
        const admitted = new Set([...fromA.keys()].map((i) => 20000 + i));
        assert.ok(errors.every(([, , sport]) => !admitted.has(sport)), 'an admitted flow was refused');
        const stats = await router.stats();
        assert.equal(stats.drops['host-session-limit'], FLOOD - limits.hostSessions);
        // The first line comes with the next sweep, which may fall inside the flood: it counts the refusals so far (the
        // rest wait for the next line, a minute on); the drop count above has them all.
        const line = /LAN host 10\.77\.0\.11 refused new flows: (\d+) at its limit of 16 sessions/;
        assert.ok(await waitForLog(router, line, 3000), router.log());
        const logged = Number(line.exec(router.log())?.[1]);
        assert.ok(logged >= 1 && logged <= FLOOD - limits.hostSessions, `the line counted ${logged} refusals`);
        assert.doesNotMatch(router.log(), /LAN host 10\.77\.0\.12 refused/);
      });
    });

    it('a LAN host flooding new flows hits its rate limit while another host still opens flows', async () => {
      const rate = 20;
      await withRouter(lab, { wan: wanConfig(lab, mode), limits: { hostNewPerSecond: rate } }, async (router) => {
        const FLOOD = 200;
        let other: Record<string, any> = {};
        let elapsed = 0;
        const seen = await withEcho(lab, lab.ns.wan[0], 'S', async () => {
          const t0 = Date.now();
          await host(lab, lab.ns.lan[0], ['spray', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '20000',
            '--count', String(FLOOD), '--gap', '0.001', '--timeout', '0', '--tag', 'A']);
          elapsed = (Date.now() - t0) / 1000;
          other = await host(lab, lab.ns.lan[1], ['flows', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '30000',
            '--count', '10', '--timeout', '1.5', '--tag', 'B']);
        });
        // A burst of `rate`, then `rate` per second for as long as the spray took (an upper bound).
        const passed = byFlow(seen, 'A').size;
        assert.ok(passed >= rate && passed <= rate + Math.ceil(elapsed * rate), `${passed} of ${FLOOD} in ${elapsed} s`);
        assert.equal((other.got as Got).length, 10, `the other host got its replies: ${JSON.stringify(other)}`);
        const stats = await router.stats();
        assert.equal(stats.drops['host-rate-limit'], FLOOD - passed);
        assert.ok(await waitForLog(router, /LAN host 10\.77\.0\.11 refused new flows: \d+ over 20 new sessions\/s/, 3000), router.log());
        assert.doesNotMatch(router.log(), /LAN host 10\.77\.0\.12 refused/);
      });
    });

    for (const refuse of mode === 'dedicated' ? ['icmp', 'drop'] : ['icmp']) {
      it(`a full table refuses new flows (${refuse === 'icmp' ? 'ICMP code 13' : 'silently'}) while existing flows continue`, async () => {
        const MAX = 1024;
        const EXTRA = 30;
        const limits = { maxSessions: MAX, hostSessions: MAX, hostNewPerSecond: 0, refuse };
        await withRouter(lab, { wan: wanConfig(lab, mode), limits }, async (router) => {
          let early: Record<string, any> = {};
          let fill: Record<string, any> = {};
          let late: Record<string, any> = {};
          const seen = await withEcho(lab, lab.ns.wan[0], 'S', async () => {
            // Host A's flow: one datagram now, one after the table is full.
            const existing = host(lab, lab.ns.lan[0], ['flows', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '30000',
              '--rounds', '2', '--interval', '8', '--timeout', '1.5', '--tag', 'A']);
            const end = Date.now() + 5000;
            while (byFlowCount(await router.conns(), lab.addr.lan[0]) < 1 && Date.now() < end) await sleep(100);
            // Host B fills the table and goes beyond it.
            fill = await host(lab, lab.ns.lan[1], ['spray', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '20000',
              '--count', String(MAX - 1 + EXTRA), '--gap', '0.0005', '--timeout', '1', '--tag', 'B']);
            // A new flow of host A is refused as well.
            late = await host(lab, lab.ns.lan[0], ['spray', '--host', lab.addr.wan[0], '--port', String(ECHO_PORT), '--sport', '31000',
              '--count', '1', '--timeout', '1', '--tag', 'C']);
            early = await existing;
          });
          assert.equal(byFlow(seen, 'B').size, MAX - 1, 'the table held one session per slot');
          assert.equal(byFlow(seen, 'C').size, 0, 'a new flow got through a full table');
          const a = byFlow(seen, 'A').get(0) ?? [];
          assert.equal(a.length, 2, `the existing flow went on: ${JSON.stringify(a)}`);
          assert.deepEqual((early.got as Got).map((g) => g[1]).sort(), ['S|A:0:0', 'S|A:0:1']);
          const refusedB = fill.errors as Array<[number, string, number]>;
          const refusedC = late.errors as Array<[number, string, number]>;
          if (refuse === 'icmp') {
            assert.equal(refusedB.length, EXTRA, JSON.stringify(refusedB));
            assert.ok(refusedB.every(([code, , sport]) => code === 13 && sport >= 20000 + MAX - 1), JSON.stringify(refusedB));
            assert.deepEqual(refusedC.map(([code, , sport]) => [code, sport]), [[13, 31000]]);
          } else {
            assert.deepEqual([refusedB, refusedC], [[], []], 'refuse "drop" sends no ICMP');
          }
          const stats = await router.stats();
          assert.equal(stats.drops['table-full'], EXTRA + 1);
          assert.equal(stats.capacity.refusals.icmpSent, refuse === 'icmp' ? EXTRA + 1 : 0);
        });
      });
    }
  });
}

function byFlowCount(conns: Array<Record<string, any>>, lan: string): number {
  return conns.filter((c) => c.lan?.addr === lan).length;
}

describe('capacity: paired pooling over two public addresses (dedicated mode)', () => {
  let lab: Lab;
  before(async () => {
    lab = await createLab({ lanHosts: 4, wanHosts: 1, vpnServer: false, farHost: false });
  });
  after(async () => {
    if (lab) await lab.destroy();
  });

  it('every LAN host keeps one public address for all its flows, also across a restart; both addresses are used', async () => {
    const state = lab.tempDir('pool');
    const wan = { interface: lab.routerIfaces.wan, mode: 'dedicated', publicAddresses: [lab.addr.public, SECOND_PUBLIC] };
    const config = { wan, state: { path: path.join(state, 'state.db') } };
    const run = async (sport: number): Promise<Map<string, string>> => {
      let got: Got[] = [];
      const seen = await withEcho(lab, lab.ns.wan[0], 'S', async () => {
        got = await Promise.all(lab.ns.lan.map(async (ns, h) => (await host(lab, ns, ['flows', '--host', lab.addr.wan[0],
          '--port', String(ECHO_PORT), '--sport', String(sport), '--count', '8', '--timeout', '1.5', '--tag', `H${h}`])).got as Got));
      });
      const owner = new Map<string, string>();
      lab.ns.lan.forEach((_, h) => {
        const addrs = new Set([...byFlow(seen, `H${h}`).values()].flat().map(([a]) => a));
        assert.equal(byFlow(seen, `H${h}`).size, 8, `host ${h}: ${JSON.stringify(seen)}`);
        assert.equal(addrs.size, 1, `host ${h} used ${[...addrs]}`);
        owner.set(lab.addr.lan[h], [...addrs][0]);
        assert.equal(got[h].length, 8, `host ${h} got its replies: ${JSON.stringify(got[h])}`);
      });
      return owner;
    };
    let first = new Map<string, string>();
    await withRouter(lab, config, async (router) => {
      first = await run(20000);
      assert.deepEqual(new Set(first.values()), new Set([lab.addr.public, SECOND_PUBLIC]), JSON.stringify([...first]));
      for (const c of await router.conns()) if (c.proto === 'udp') assert.equal(c.public.addr, first.get(c.lan.addr), JSON.stringify(c));
    });
    await withRouter(lab, config, async () => {
      assert.deepEqual(await run(21000), first, 'a LAN host changed its public address across a restart');
    });
  });
});
