// The fuzz targets' short seeded passes, run by `npm test`; `npm run fuzz`
// runs long ones. Also checks that the oracle catches what it is there for.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzPackets } from './packet-target';
import { fuzzRestore } from './restore-target';
import { checkOutput } from './oracle';
import { UDP, ICMP, F_NEEDS_CSUM, NO_VNET, icmpError, ip4, ipHeaderChecksum, ipv4, l4Checksum, partialChecksum, udp, withVnet } from './craft';
import { Rng } from './rng';
import { drawProfile, PUBLIC } from './world';

const SEED = 20250601;

describe('packet-path fuzzing', () => {
  it('100,000 seeded packets through the daemon hold every invariant', async () => {
    const r = await fuzzPackets({ seed: SEED, packets: 100_000, epochPackets: 25_000 });
    const f = r.failure;
    assert.equal(f, null, f === null ? '' : `violations with seed ${SEED} in epoch ${f.epoch} (${f.plan.profile.name}):\n` +
      `${f.violations.slice(0, 3).map((v) => `${v.problem}\n  in: ${v.input ?? ''}\n  out: ${v.output ?? ''}`).join('\n')}\n` +
      `reproduce and minimize: npm run fuzz -- --target packet --seed ${SEED} --packets 100000 --epoch 25000`);
    assert.equal(r.packets, 100_000);
    assert.ok(r.outputs > 20_000, `only ${r.outputs} packets written`);
    for (const k of ['pptp.events.rewrites', 'ipsec.events.esp-established', 'pptp.events.gre-in', 'drops.pptp-out-of-order']) {
      assert.ok((r.coverage[k] ?? 0) > 0, `the packets never reached ${k}`);
    }
  });
});

describe('restore fuzzing', () => {
  it('3,000 seeded rows in hostile and damaged files: every good row restored, every bad one quarantined, nothing thrown', () => {
    const r = fuzzRestore({ seed: SEED, rows: 3000 });
    const f = r.failure;
    assert.equal(f, null, f === null ? '' : `file ${f.file}: ${f.problem}\n  ${f.hostile.join('\n  ')}\nreproduce: npm run fuzz -- --target restore --seed ${SEED} --rows 3000`);
    assert.ok(r.bad > 100 && r.good > 1000 && r.damaged > 0, JSON.stringify(r));
  });
});

describe('the fuzzer oracle', () => {
  const profile = drawProfile(new Rng(1));
  const sides = { profile: { ...profile, shared: false }, publicAddr: PUBLIC, mssClamp: 0 };
  const out = (src: string, dst: string): Uint8Array => {
    const p = ipv4({ src: ip4(src), dst: ip4(dst), proto: UDP, ttl: 64 }, udp(40000, 53, Uint8Array.of(1, 2, 3)));
    l4Checksum(p);
    return withVnet(NO_VNET, p);
  };

  it('passes a well-formed packet leaving from the public address', () => {
    assert.deepEqual(checkOutput(sides, out('198.18.0.2', '198.18.0.11'), null), []);
  });

  it('flags a broken IPv4 or UDP checksum, a LAN source on the WAN side, and a packet back to the public address', () => {
    const a = out('198.18.0.2', '198.18.0.11');
    a[10 + 10] ^= 1;
    assert.match(checkOutput(sides, a, null).join(), /IPv4 header checksum is wrong/);
    const b = out('198.18.0.2', '198.18.0.11');
    b[10 + 20 + 6] ^= 1;
    assert.match(checkOutput(sides, b, null).join(), /UDP checksum is wrong/);
    assert.match(checkOutput(sides, out('10.77.0.10', '198.18.0.11'), null).join(), /with source 10\.77\.0\.10, not the public address/);
    assert.match(checkOutput(sides, out('198.18.0.11', '198.18.0.2'), null).join(), /addressed to the public address/);
  });

  it('flags a partial checksum that no longer matches the pseudo-header, and a TTL not given back', () => {
    const inDg = ipv4({ src: ip4('10.77.0.10'), dst: ip4('198.18.0.11'), proto: UDP, ttl: 63 }, udp(40000, 53, Uint8Array.of(9)));
    partialChecksum(inDg);
    const origin = withVnet({ ...NO_VNET, flags: F_NEEDS_CSUM, csumStart: 20, csumOffset: 6 }, inDg);
    const outDg = inDg.slice();
    outDg.set([198, 18, 0, 2], 12);
    outDg[8] = 64;
    ipHeaderChecksum(outDg);
    const written = withVnet({ ...NO_VNET, flags: F_NEEDS_CSUM, csumStart: 20, csumOffset: 6 }, outDg);
    assert.match(checkOutput(sides, written, origin).join(), /partial UDP checksum no longer matches/);
    partialChecksum(outDg);
    outDg[8] = 63;
    ipHeaderChecksum(outDg);
    assert.match(checkOutput(sides, withVnet({ ...NO_VNET, flags: F_NEEDS_CSUM, csumStart: 20, csumOffset: 6 }, outDg), origin).join(), /TTL 63 after 63/);
  });

  it('flags an ICMP error whose quoted header checksum is broken', () => {
    const quoted = ipv4({ src: ip4('10.77.0.10'), dst: ip4('198.18.0.11'), proto: UDP }, udp(40000, 53, new Uint8Array(8)));
    quoted[10] ^= 0xff;
    const err = ipv4({ src: ip4('198.18.0.11'), dst: ip4('10.77.0.10'), proto: ICMP, ttl: 64 }, icmpError(3, 3, quoted, 28));
    assert.match(checkOutput(sides, withVnet(NO_VNET, err), null).join(), /quoted IPv4 header checksum is wrong/);
  });
});
