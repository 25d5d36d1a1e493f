// `vpnmasq ipsec`: the per-remote report built from a crafted IPsec table
// (IKE peers, SPI pairs, the pending queue with the hosts turned away behind
// it, squelches, guess candidates, the reason each host waits), its JSON
// schema, and the CLI over the control socket.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { IpsecMasq, IpsecOptions } from '../../src/helpers/ipsec/ipsec';
import { ipsecReport } from '../../src/query/ipsec-report';
import { Targets } from '../../src/core/targets';
import { NO_FORWARD } from '../../src/nat/forwards';
import { ipv4ToInt32 } from '../../src/core/ipv4-addr';
import { Verdict } from '../../src/core/verdict';
import { FakeDaemon, jsonLines, runCli, schemaErrors, tempDir } from './cli-fixture';

const R1 = '198.18.0.20';
const R2 = '198.18.0.21';
const L1 = '10.77.0.11';
const L2 = '10.77.0.12';
const L3 = '10.77.0.13';
const ip = ipv4ToInt32;
const T0 = 1_000_000_000;
const OK = Verdict.TRANSLATED;

function masq(over: Partial<IpsecOptions> = {}): IpsecMasq {
  return new IpsecMasq({ lifetimeMs: 1_800_000, pendingMs: 120_000, squelchMs: 30_000, retries: 5, parallel: true, guessing: true, guessMax: 5, capacity: 64, ...over });
}

/**
 * R1: L1 has a replied IKE exchange and an established pair; L2's new SPI
 * is pending and has retried twice since L3's new SPI was turned away.
 * R2: L1's SPI was squelched after six retries with L2 turned away; L3's
 * IKE exchange is unanswered.
 */
function craft(m: IpsecMasq, to: Targets): void {
  let t = T0;
  assert.equal(m.outIsakmp(ip(L1), ip(R1), 0x11111111, 0x22222222, 0, 0, t), OK);
  assert.equal(m.inIsakmp(ip(R1), 0x11111111, 0x22222222, 0x33333333, 0x44444444, t, NO_FORWARD, to), OK);
  assert.equal(m.outEsp(ip(L1), ip(R1), 0x1001, t), OK);
  assert.equal(m.inEsp(ip(R1), 0x2001, t, NO_FORWARD, to), OK);
  t += 1000;
  assert.equal(m.outEsp(ip(L2), ip(R1), 0x1002, t), OK);
  t += 1000;
  assert.notEqual(m.outEsp(ip(L3), ip(R1), 0x1003, t), OK, 'L3 waits behind L2');
  for (let i = 0; i < 2; i++) assert.equal(m.outEsp(ip(L2), ip(R1), 0x1002, (t += 1000)), OK);

  assert.equal(m.outEsp(ip(L1), ip(R2), 0x3001, t), OK);
  assert.notEqual(m.outEsp(ip(L2), ip(R2), 0x3002, t), OK);
  for (let i = 0; i < 6; i++) m.outEsp(ip(L1), ip(R2), 0x3001, (t += 100));
  assert.equal(m.outIsakmp(ip(L3), ip(R2), 0x55555555, 0x66666666, 0, 0, t), OK);
}

describe('ipsec report', () => {
  it('lists per remote the IKE peers, SPI pairs, queue, squelches, guesses and why hosts wait', () => {
    const m = masq();
    const to = new Targets();
    craft(m, to);
    const now = T0 + 10_000;
    const report = ipsecReport(m, now);
    for (const r of report) assert.deepEqual(schemaErrors(r, 'ipsecRemote'), []);
    assert.deepEqual(report.map((r) => r.remote), [R1, R2]);
    const [r1, r2] = report;

    assert.equal(r1.ike.length, 1);
    assert.deepEqual([r1.ike[0].lan, r1.ike[0].icookie, r1.ike[0].rcookie, r1.ike[0].state, r1.ike[0].packets],
      [L1, '1111111122222222', '3333333344444444', 'REPLIED', { out: 1, in: 1 }]);
    assert.deepEqual(r1.esp.map((p) => [p.lan, p.spiOut, p.spiIn, p.state]),
      [[L1, '0x00001001', '0x00002001', 'established'], [L2, '0x00001002', null, 'pending']]);
    assert.deepEqual(r1.queue.pending && [r1.queue.pending.lan, r1.queue.pending.blocking, r1.queue.pending.retries, r1.queue.pending.ageSeconds],
      [L2, true, 2, 9]);
    assert.deepEqual(r1.queue.turnedAway, [{ lan: L3, spi: '0x00001003', reason: 'esp-blocked', by: L2, secondsAgo: 8 }]);
    assert.deepEqual(r1.squelched, []);
    assert.deepEqual(r1.guesses, { enabled: true, candidates: [L1] }, 'L1 spoke IKE with R1');
    assert.deepEqual(r1.waiting.map((w) => w.lan), [L2, L3]);
    assert.match(r1.waiting[0].reason, /SPI 0x00001002 sent 9s ago awaits the remote's first ESP .*retry 2 of 5 before it is squelched/);
    assert.match(r1.waiting[1].reason, /new SPI 0x00001003 was refused 8s ago: 10\.77\.0\.12's SPI is pending with this remote/);

    assert.equal(r2.queue.pending, null, 'the squelch freed the slot');
    assert.deepEqual(r2.squelched.map((p) => [p.lan, p.spiOut, p.state, p.retries]), [[L1, '0x00003001', 'squelched', 6]]);
    assert.deepEqual(r2.queue.turnedAway.map((x) => [x.lan, x.reason, x.by]), [[L2, 'esp-blocked', L1]]);
    assert.deepEqual(r2.ike.map((k) => [k.lan, k.state, k.rcookie]), [[L3, 'UNREPLIED', null]]);
    assert.deepEqual(r2.waiting.map((w) => w.lan), [L2, L1, L3]);
    assert.match(r2.waiting[1].reason, /squelched after 6 unanswered retries/);
    assert.match(r2.waiting[2].reason, /IKE exchange 5555555566666666 has no answer from the remote yet \(1 sent, 0 received\)/);

    assert.deepEqual(ipsecReport(m, now, ip(R2)).map((r) => r.remote), [R2], 'one remote');
    assert.deepEqual(ipsecReport(m, now, ip('198.18.0.99')), []);
  });

  it('forgets a refusal once the pending lifetime passed or the host got an entry', () => {
    const m = masq();
    const to = new Targets();
    craft(m, to);
    // R1 answers L2's SPI: the slot is free, L3's next try makes its entry.
    assert.equal(m.inEsp(ip(R1), 0x2002, T0 + 20_000, NO_FORWARD, to), OK);
    assert.equal(m.outEsp(ip(L3), ip(R1), 0x1003, T0 + 21_000), OK);
    const r1 = ipsecReport(m, T0 + 22_000, ip(R1))[0];
    assert.deepEqual(r1.queue.turnedAway, []);
    assert.deepEqual(r1.queue.pending?.lan, L3);
    assert.deepEqual(r1.waiting.map((w) => w.lan), [L3]);
    const r2 = ipsecReport(m, T0 + 3 * 60_000, ip(R2))[0];
    assert.deepEqual(r2.queue.turnedAway, [], 'L2 stopped retrying longer ago than the pending lifetime');
  });

  it('names the host in the way with parallel sessions off, a cookie collision, and guessing off', () => {
    const m = masq({ parallel: false, guessing: false });
    const to = new Targets();
    assert.equal(m.outEsp(ip(L1), ip(R1), 0x1001, T0), OK);
    assert.equal(m.inEsp(ip(R1), 0x2001, T0, NO_FORWARD, to), OK);
    assert.notEqual(m.outEsp(ip(L2), ip(R1), 0x1002, T0 + 1000), OK);
    assert.equal(m.outIsakmp(ip(L1), ip(R1), 7, 8, 0, 0, T0), OK);
    assert.notEqual(m.outIsakmp(ip(L3), ip(R1), 7, 8, 0, 0, T0 + 2000), OK);
    const r = ipsecReport(m, T0 + 3000)[0];
    assert.deepEqual(schemaErrors(r, 'ipsecRemote'), []);
    assert.deepEqual(r.queue.turnedAway.map((x) => [x.lan, x.reason, x.by, x.spi]),
      [[L3, 'isakmp-collision', L1, '0x00000007'], [L2, 'esp-blocked-parallel', L1, '0x00001002']]);
    assert.match(r.waiting.find((w) => w.lan === L2)!.reason, /ipsec\.parallel is false and 10\.77\.0\.11 has live ESP/);
    assert.match(r.waiting.find((w) => w.lan === L3)!.reason, /same cookie awaits the remote's reply \(Rule I-4\)/);
    assert.deepEqual(r.guesses, { enabled: false, candidates: [] });
  });
});

describe('vpnmasq ipsec', () => {
  let d: FakeDaemon;
  before(async () => {
    d = new FakeDaemon(tempDir('ipsec'));
    craft(d.ipsec, new Targets());
    d.now = T0 + 10_000;
    await d.start();
  });
  after(async () => {
    await d.stop();
    fs.rmSync(d.dir, { recursive: true, force: true });
  });
  const cli = (...args: string[]) => runCli(['-c', d.configPath, ...args]);

  it('prints one JSON line per remote (schema ipsecRemote) and a block per remote for people', async () => {
    const j = await cli('ipsec', '--json');
    assert.equal(j.code, 0, j.stderr);
    const rows = jsonLines(j.stdout);
    assert.deepEqual(rows.map((r) => r.remote), [R1, R2]);
    for (const r of rows) assert.deepEqual(schemaErrors(r, 'ipsecRemote'), []);
    const h = await cli('ipsec', R1);
    assert.equal(h.code, 0, h.stderr);
    assert.match(h.stdout, /^198\.18\.0\.20: 1 IKE peer, 2 SPI pairs \(1 pending, 1 established\)$/m);
    assert.match(h.stdout, /^ +IKE +10\.77\.0\.11 +1111111122222222 \/ 3333333344444444 +REPLIED /m);
    assert.match(h.stdout, /^ +ESP +10\.77\.0\.12 +0x00001002 \/ - +pending 9s, retry 2 /m);
    assert.match(h.stdout, /^ +queue: 10\.77\.0\.12 SPI 0x00001002 pending; turned away: 10\.77\.0\.13 \(esp-blocked, 8s ago\)$/m);
    assert.match(h.stdout, /^ +guesses: 10\.77\.0\.11$/m);
    assert.match(h.stdout, /^ +10\.77\.0\.13: its new SPI 0x00001003 was refused/m);
    assert.doesNotMatch(h.stdout, /198\.18\.0\.21/);
    const none = await cli('ipsec', '198.18.0.99');
    assert.equal(none.code, 0);
    assert.equal(none.stdout, 'no IPsec entries with 198.18.0.99\n');
    const bad = await cli('ipsec', '198.18.0');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /not an IPv4 address: "198\.18\.0"/);
  });
});
