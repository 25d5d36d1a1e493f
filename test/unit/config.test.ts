import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkForwards, Config, ConfigError, ConfigProblem, DEFAULTS, loadConfig, parseConfig, RELOAD, reloadFields, reloadKind } from '../../src/config/schema';
import { configDiff, reloadPlan, restartMessage } from '../../src/daemon/reload';

const FILE = '/etc/vpnmasq/vpnmasq.json';

/** A document with the minimum required content, merged with `extra` sections. */
function doc(extra: Record<string, unknown> = {}, wan: Record<string, unknown> = {}): string {
  return JSON.stringify({ ...extra, wan: { interface: 'eth0', ...wan } }, null, 2);
}

/** The error lines parseConfig reports for `text`. */
function errors(text: string): string[] {
  try {
    parseConfig(text, FILE);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.message, err.problems.map((p) => (p.field ? `${FILE}: ${p.field}: ${p.message}` : `${FILE}: ${p.message}`)).join('\n'));
    return err.message.split('\n');
  }
  assert.fail('expected a ConfigError');
}

function parse(text: string): Config {
  return parseConfig(text, FILE);
}

test('syntax error reports line and column of the original file, counting comment lines', () => {
  const text = ['# comment', '{', '  // another', '  "wan": { "interface": "eth0", }', '}'].join('\n');
  assert.deepEqual(errors(text), [`${FILE}: syntax error at line 4, column 33: trailing comma before '}'`]);
});

test('syntax error for an unquoted value names the word', () => {
  assert.deepEqual(errors('{\n  "wan": { "interface": eth0 }\n}'), [
    `${FILE}: syntax error at line 2, column 25: unexpected word eth0; strings must be in double quotes`,
  ]);
});

test('syntax error at end of file', () => {
  assert.deepEqual(errors('{ "wan": {'), [`${FILE}: syntax error at line 1, column 11: expected a double-quoted field name, found end of file`]);
});

test('unknown field with a did-you-mean suggestion', () => {
  assert.deepEqual(errors(doc({ timeouts: { tcpEstablised: 8000 } })), [
    `${FILE}: timeouts.tcpEstablised: unknown field (did you mean "tcpEstablished"?)`,
  ]);
  assert.deepEqual(errors(doc({ colour: 'blue' })), [`${FILE}: colour: unknown field`]);
});

test('wrong type', () => {
  assert.deepEqual(errors(doc({ tun: { mtu: '1400' } })), [`${FILE}: tun.mtu: expected integer, got string "1400"`]);
  assert.deepEqual(errors(doc({ tun: { offloads: 1 } })), [`${FILE}: tun.offloads: expected boolean, got number 1`]);
  assert.deepEqual(errors(doc({ tun: { io: 'epoll' } })), [`${FILE}: tun.io: expected one of "auto", "uring", "threads", got string "epoll"`]);
  assert.deepEqual(errors(doc({ lan: 'lan0' })), [`${FILE}: lan: expected object, got string "lan0"`]);
});

test('out of range', () => {
  assert.deepEqual(errors(doc({ tun: { mtu: 70000 } })), [`${FILE}: tun.mtu: must be between 576 and 65535, got 70000`]);
  assert.deepEqual(errors(doc({ tun: { busyPollUs: 5000 } })), [`${FILE}: tun.busyPollUs: must be between 0 and 1000, got 5000`]);
  assert.deepEqual(errors(doc({ tun: { busyPollUs: 2.5 } })), [`${FILE}: tun.busyPollUs: expected integer, got number 2.5`]);
  assert.deepEqual(errors(doc({ mssClamp: 500 })), [`${FILE}: mssClamp: must be between 536 and 65495, got 500`]);
});

test('timers below the RFC minimums', () => {
  assert.deepEqual(errors(doc({ timeouts: { tcpEstablished: 3600, udp: 30, icmp: 59, ipsec: 600 } })), [
    `${FILE}: timeouts.tcpEstablished: must be at least 7440 (RFC 5382 REQ-5 minimum), got 3600`,
    `${FILE}: timeouts.udp: must be at least 120 (RFC 4787 REQ-5 minimum), got 30`,
    `${FILE}: timeouts.icmp: must be at least 60 (RFC 5508 REQ-2 minimum), got 59`,
    `${FILE}: timeouts.ipsec: must be between 900 and 2147483, got 600`,
  ]);
});

test('missing required fields', () => {
  assert.deepEqual(errors('{}'), [`${FILE}: wan.interface: missing required field`]);
  assert.deepEqual(errors(doc({}, { mode: 'dedicated' })), [`${FILE}: wan.publicAddress: missing required field`]);
  assert.deepEqual(errors(doc({ forwards: [{ proto: 'tcp', lanAddress: '10.77.0.5' }] })), [
    `${FILE}: forwards[0].publicPort: missing required field`,
  ]);
});

test('bad CIDR and host bits set', () => {
  assert.deepEqual(errors(doc({ lan: { prefixes: ['10.77.0/24', '10.77.0.0', '10.77.0.0/33'] } })), [
    `${FILE}: lan.prefixes[0]: invalid IPv4 prefix "10.77.0/24" (expected a.b.c.d/len)`,
    `${FILE}: lan.prefixes[1]: invalid IPv4 prefix "10.77.0.0" (expected a.b.c.d/len)`,
    `${FILE}: lan.prefixes[2]: invalid IPv4 prefix "10.77.0.0/33" (expected a.b.c.d/len)`,
  ]);
  assert.deepEqual(errors(doc({ lan: { prefixes: ['10.77.0.1/24'] } })), [
    `${FILE}: lan.prefixes[0]: host bits set in 10.77.0.1/24 (did you mean 10.77.0.0/24?)`,
  ]);
  assert.deepEqual(errors(doc({ lan: { prefixes: [] } })), [`${FILE}: lan.prefixes: must not be empty`]);
});

test('public address inside a LAN prefix', () => {
  assert.deepEqual(errors(doc({}, { mode: 'dedicated', publicAddress: '10.77.0.9' })), [
    `${FILE}: wan.publicAddress: 10.77.0.9 lies inside LAN prefix 10.77.0.0/24`,
  ]);
});

test('forward lanAddress outside the LAN', () => {
  assert.deepEqual(errors(doc({ forwards: [{ proto: 'esp', lanAddress: '192.168.1.5' }] })), [
    `${FILE}: forwards[0].lanAddress: 192.168.1.5 is not inside a LAN prefix (10.77.0.0/24)`,
  ]);
});

test('duplicate forwards and protocol forwards', () => {
  const forwards = [
    { proto: 'tcp', publicPort: 443, lanAddress: '10.77.0.5' },
    { proto: 'udp', publicPort: 443, lanAddress: '10.77.0.5' },
    { proto: 'tcp', publicPort: 443, lanAddress: '10.77.0.6', lanPort: 8443 },
    { proto: 'gre', lanAddress: '10.77.0.5' },
    { proto: 'gre', lanAddress: '10.77.0.6' },
    { proto: 'esp', publicPort: 50, lanAddress: '10.77.0.6' },
  ];
  assert.deepEqual(errors(doc({ forwards })), [
    `${FILE}: forwards[2].publicPort: tcp port 443 is already forwarded by forwards[0]`,
    `${FILE}: forwards[4].proto: only one gre forward is allowed; forwards[3] already forwards gre`,
    `${FILE}: forwards[5].publicPort: not allowed for esp forwards (esp has no ports)`,
  ]);
});

test('port range too small, inverted, or overlapping the low range', () => {
  assert.deepEqual(errors(doc({ ports: { range: [65500, 65535] } })), [
    `${FILE}: ports.range: must contain at least 64 ports, got 36 (65500-65535)`,
  ]);
  assert.deepEqual(errors(doc({ ports: { range: [2000, 1000] } })), [`${FILE}: ports.range: low port 2000 is above high port 1000`]);
  assert.deepEqual(errors(doc({ ports: { range: [1, 65535] } }, { mode: 'dedicated', publicAddress: '198.51.100.7' })), [
    `${FILE}: ports.lowRange: 1-1023 overlaps ports.range 1-65535 (set ports.lowRange to null to map low ports into ports.range)`,
  ]);
});

test('enum values', () => {
  assert.deepEqual(errors(doc({ filtering: 'full-cone' }, { mode: 'exclusive' })), [
    `${FILE}: wan.mode: expected one of "shared", "dedicated", got string "exclusive"`,
    `${FILE}: filtering: expected one of "address-port", "endpoint-independent", got string "full-cone"`,
  ]);
});

test('tun.name leaves room for the WAN-side device', () => {
  assert.deepEqual(errors(doc({ tun: { name: 'fourteen-chars' } })), [
    `${FILE}: tun.name: "fourteen-chars" is too long: at most 13 characters, so that the WAN-side device (the name plus "-w") fits the 15 of an interface name`,
  ]);
  assert.equal(parseConfig(doc({ tun: { name: 'thirteen-char' } }), FILE).tun.name, 'thirteen-char');
});

test('duplicate fields are reported with their position', () => {
  assert.deepEqual(errors('{\n  "wan": { "interface": "eth0" },\n  "wan": { "interface": "eth1" }\n}'), [
    `${FILE}: wan: duplicate field at line 3, column 3`,
  ]);
});

test('all problems are collected, not just the first', () => {
  const lines = errors(doc({ tun: { name: 'a-name-longer-than-15', mtu: 100 }, metrics: { listen: '[::1]:9469' } }, { interface: 7 }));
  assert.deepEqual(lines, [
    `${FILE}: tun.name: invalid interface name "a-name-longer-than-15" (1-15 characters from A-Z a-z 0-9 _ . -)`,
    `${FILE}: tun.mtu: must be between 576 and 65535, got 100`,
    `${FILE}: wan.interface: expected string, got number 7`,
    `${FILE}: metrics.listen: expected "HOST:PORT" with an IPv4 address or localhost and a port 1-65535, got "[::1]:9469"`,
  ]);
});

test('defaults in shared mode', () => {
  const config = parse(doc());
  assert.deepEqual(config.wan, { interface: 'eth0', mode: 'shared', publicAddress: null, publicAddresses: [], onAddressChange: 'move' });
  assert.deepEqual(config.ports, { range: [36864, 65535], lowRange: null, preserve: true, rangeSet: false, lowRangeSet: false });
  assert.deepEqual(config.limits, {
    maxSessions: 262144, maxHeldFragments: 512, hostSessions: 32768, hostNewPerSecond: 20000, refuse: 'icmp',
    forwardUnanswered: 4096, remoteUnanswered: 64, fragmentsPerSource: 64,
  });
  assert.deepEqual(config.tun, DEFAULTS.tun);
  assert.deepEqual(config.lan, DEFAULTS.lan);
  assert.deepEqual(config.timeouts, DEFAULTS.timeouts);
  assert.equal(config.filtering, 'address-port');
  assert.deepEqual(config.forwards, []);
  assert.equal(config.mssClamp, null);
  assert.equal(config.metrics, null);
  assert.deepEqual(config.state, DEFAULTS.state);
  assert.deepEqual(config.log, { format: 'journal', level: 'info', rateLimitPerMinute: 60 });
  assert.deepEqual(config.control, { socket: '/run/vpnmasq/control.sock', group: 'vpnmasq' });
});

test('defaults in dedicated mode, and lanPort defaulting to publicPort', () => {
  const config = parse(
    doc({ forwards: [{ proto: 'udp', publicPort: 500, lanAddress: '10.77.0.2' }] }, { mode: 'dedicated', publicAddress: '198.51.100.7' }),
  );
  assert.deepEqual(config.ports, { range: [1024, 65535], lowRange: [1, 1023], preserve: true, rangeSet: false, lowRangeSet: false });
  assert.equal(config.wan.publicAddress, '198.51.100.7');
  assert.deepEqual(config.wan.publicAddresses, ['198.51.100.7']);
  assert.deepEqual(config.forwards, [{ proto: 'udp', publicPort: 500, lanAddress: '10.77.0.2', lanPort: 500 }]);
});

test('wan.publicAddresses: a list or a prefix, dedicated mode only, outside the LAN, at most 256', () => {
  const dedicated = (publicAddresses: unknown) => doc({}, { mode: 'dedicated', publicAddresses });
  assert.deepEqual(parse(dedicated(['198.51.100.7', '198.51.100.9'])).wan.publicAddresses, ['198.51.100.7', '198.51.100.9']);
  assert.equal(parse(dedicated(['198.51.100.7', '198.51.100.9'])).wan.publicAddress, '198.51.100.7');
  assert.deepEqual(parse(dedicated('198.51.100.8/30')).wan.publicAddresses, ['198.51.100.9', '198.51.100.10'], 'hosts of a /30');
  assert.deepEqual(parse(dedicated('198.51.100.8/31')).wan.publicAddresses, ['198.51.100.8', '198.51.100.9']);
  assert.equal(parse(dedicated('198.51.100.0/24')).wan.publicAddresses.length, 254);
  assert.deepEqual(errors(dedicated('198.51.100.0/23')), [`${FILE}: wan.publicAddresses: 198.51.100.0/23 has 512 addresses; at most 256 are allowed`]);
  assert.deepEqual(errors(dedicated(['198.51.100.7', '10.77.0.5', '198.51.100.7'])), [
    `${FILE}: wan.publicAddresses[2]: 198.51.100.7 is already listed at wan.publicAddresses[0]`,
    `${FILE}: wan.publicAddresses[1]: 10.77.0.5 lies inside LAN prefix 10.77.0.0/24`,
  ]);
  assert.deepEqual(errors(dedicated([])), [`${FILE}: wan.publicAddresses: must not be empty`]);
  assert.deepEqual(errors(doc({}, { publicAddresses: ['198.51.100.7'] })), [
    `${FILE}: wan.publicAddresses: only in dedicated mode (shared mode uses the WAN interface's address)`,
  ]);
  assert.deepEqual(errors(doc({}, { mode: 'dedicated', publicAddress: '198.51.100.7', publicAddresses: ['198.51.100.8'] })), [
    `${FILE}: wan.publicAddresses: give either wan.publicAddress or wan.publicAddresses`,
  ]);
});

test('forwards may not lie inside a dynamic port range that was set; a default range leaves them out', () => {
  const fw = (publicPort: number) => ({ forwards: [{ proto: 'tcp', publicPort, lanAddress: '10.77.0.2' }] });
  assert.deepEqual(errors(doc({ ports: { range: [20000, 30000] }, ...fw(25000) })), [
    `${FILE}: forwards[0].publicPort: 25000 lies inside ports.range 20000-30000, where LAN hosts get their public ports: move the forward or narrow ports.range`,
  ]);
  assert.deepEqual(errors(doc({ ports: { range: [20000, 30000], lowRange: [1, 1023] }, ...fw(443) }, { mode: 'dedicated', publicAddress: '198.51.100.7' })), [
    `${FILE}: forwards[0].publicPort: 443 lies inside ports.lowRange 1-1023, where LAN hosts' low ports get theirs: move the forward or set ports.lowRange`,
  ]);
  assert.equal(parse(doc({ ports: { range: [20000, 30000] }, ...fw(8080) })).forwards.length, 1);
  assert.equal(parse(doc(fw(40000))).forwards.length, 1, 'inside the default range: left out of it');
  assert.throws(() => checkForwards([{ proto: 'udp', publicPort: 20001, lanAddress: '10.77.0.2' }], null, (i) => `f${i}`, 'forwards add',
    parse(doc({ ports: { range: [20000, 30000] } })).ports), /f0.publicPort: 20001 lies inside ports.range/);
});

test('limits: per-host sessions default to an eighth of the table; the rest are checked', () => {
  assert.equal(parse(doc({ limits: { maxSessions: 1048576 } })).limits.hostSessions, 131072);
  assert.equal(parse(doc({ limits: { maxSessions: 4096 } })).limits.hostSessions, 1024);
  assert.deepEqual(errors(doc({ limits: { maxSessions: 4096, hostSessions: 5000, refuse: 'reject', maxSessions2: 1 } })), [
    `${FILE}: limits.maxSessions2: unknown field (did you mean "maxSessions"?)`,
    `${FILE}: limits.hostSessions: must be between 16 and 4096, got 5000`,
    `${FILE}: limits.refuse: expected one of "icmp", "drop", got string "reject"`,
  ]);
  assert.deepEqual(errors(doc({ limits: { maxSessions: 16777216 } })), [`${FILE}: limits.maxSessions: must be between 1024 and 16777215, got 16777216`]);
  assert.equal(parse(doc({ timeouts: { unanswered: 30 } })).timeouts.unanswered, 30);
});

test('comment lines with # and // are accepted, including indented ones', () => {
  const text = ['# top', '{', '    # indented', '\t// tab-indented', '  "wan": {"interface": "eth0"}', '// last', '}'].join('\r\n');
  assert.equal(parse(text).wan.interface, 'eth0');
});

test('the example config parses', () => {
  const path = join(__dirname, '../../../examples/vpnmasq.json');
  const config = parseConfig(readFileSync(path, 'utf8'), path);
  assert.equal(config.wan.interface, 'eth0');
  assert.equal(config.forwards.length, 2);
});

test('loadConfig reports unreadable files as a ConfigError', () => {
  assert.throws(() => loadConfig('/nonexistent/vpnmasq.json'), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.match(err.message, /^\/nonexistent\/vpnmasq\.json: cannot read file: ENOENT/);
    return true;
  });
});

test('configDiff names the changed fields; reloadPlan sorts them by their declared kind', () => {
  const base = parse(doc());
  assert.deepEqual(configDiff(base, parse(doc())), []);
  assert.deepEqual(reloadPlan(base, parse(doc())), { changed: [], apply: [], restart: [] });

  const tuned = parse(doc({ timeouts: { udp: 600 }, log: { level: 'debug' }, metrics: { listen: 'localhost:9469' }, mssClamp: 'auto' }));
  assert.deepEqual(configDiff(base, tuned), ['timeouts.udp', 'mssClamp', 'log.level', 'metrics']);
  assert.deepEqual(reloadPlan(base, tuned).apply, ['timeouts.udp', 'mssClamp', 'log.level', 'metrics']);
  assert.deepEqual(reloadPlan(base, tuned).restart, []);

  const forwarded = parse(doc({ forwards: [{ proto: 'gre', lanAddress: '10.77.0.3' }], control: { socket: '/run/other.sock' } }));
  assert.deepEqual(reloadPlan(base, forwarded).apply, ['forwards', 'control.socket']);

  const moved = parse(doc({ tun: { name: 'vpnmasq1' }, lan: { prefixes: ['10.78.0.0/24'] }, state: { path: '/srv/state.db' }, timeouts: { udp: 200 } }));
  const plan = reloadPlan(base, moved);
  assert.deepEqual(plan.apply, ['timeouts.udp']);
  assert.deepEqual(restartMessage(plan.restart).split('\n'), [
    'tun.name: needs a restart (the TUN device is created at start)',
    "lan.prefixes: needs a restart (the policy rules and the packet path's direction test are set up at start)",
    'state.path: needs a restart (the state database is opened and restored at start)',
  ]);
  assert.deepEqual(reloadPlan(base, parse(doc({}, { interface: 'eth1' }))).restart.map((r) => r.field), ['wan.interface']);
  // The mode's port defaults change too; those are runtime fields.
  assert.deepEqual(reloadPlan(base, parse(doc({}, { mode: 'dedicated', publicAddress: '198.51.100.7' }))).restart.map((r) => r.field),
    ['wan.mode', 'wan.publicAddress', 'wan.publicAddresses']);
});

test('every config field has exactly one reload kind, and nothing else is declared', () => {
  // The fields of a complete config, as configDiff would name them against an empty one.
  const fields: string[] = [];
  const walk = (v: unknown, prefix: string, kinds: unknown): void => {
    if ('kind' in (kinds as object)) { fields.push(prefix); return; }
    for (const k of Object.keys(v as object)) walk((v as Record<string, unknown>)[k], prefix ? `${prefix}.${k}` : k, (kinds as Record<string, unknown>)[k]);
  };
  walk(parse(doc()), '', RELOAD);
  assert.deepEqual(reloadFields().map(([f]) => f), fields);
  for (const f of fields) assert.ok(['runtime', 'restart'].includes(reloadKind(f).kind), f);
  assert.equal(reloadKind('metrics.listen').kind, 'runtime');
  assert.throws(() => reloadKind('timeouts'), /is a section/);
  assert.throws(() => reloadKind('colour'), /no reload kind declared/);
  assert.deepEqual(reloadFields().filter(([, k]) => k.kind === 'restart').map(([f]) => f),
    ['tun.name', 'tun.mtu', 'tun.offloads', 'tun.io', 'tun.busyPollUs', 'lan.interfaces', 'lan.prefixes', 'lan.ipv6', 'wan.interface', 'wan.mode',
      'wan.publicAddress', 'wan.publicAddresses', 'limits.forwardUnanswered', 'limits.fragmentsPerSource', 'filtering', 'state.path']);
});

test('the README lists exactly the fields that need a restart', () => {
  const readme = readFileSync(join(__dirname, '../../../README.md'), 'utf8');
  const section = /\*\*Needs a restart\*\*[\s\S]*?\n\n/.exec(readme)?.[0] ?? '';
  const listed = [...section.matchAll(/`([a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)?)`/g)].map((m) => m[1])
    // The two limits named after "and raising": runtime downwards (Daemon.reload says when raising needs a restart).
    .filter((f) => f !== 'limits.maxSessions' && f !== 'limits.maxHeldFragments');
  assert.deepEqual(listed, reloadFields().filter(([, k]) => k.kind === 'restart').map(([f]) => f));
});

test('a retired field (state.groupCommitMs) is accepted with a warning, an unknown one is not', () => {
  const warnings: ConfigProblem[] = [];
  const config = parseConfig(doc({ state: { groupCommitMs: 2, flushIntervalMs: 500 } }), FILE, warnings);
  assert.equal(config.state.flushIntervalMs, 500);
  assert.equal('groupCommitMs' in config.state, false);
  assert.deepEqual(warnings.map((w) => w.field), ['state.groupCommitMs']);
  assert.match(warnings[0].message, /^no longer used: .*; remove it$/);
  assert.deepEqual(errors(doc({ state: { groupCommitMS: 2 } })), [`${FILE}: state.groupCommitMS: unknown field`]);
});

test('lan.ipv6: drop by default, route on request, anything else named; a change needs a restart', () => {
  assert.equal(DEFAULTS.lan.ipv6, 'drop');
  assert.equal(parse(doc()).lan.ipv6, 'drop');
  assert.equal(parse(doc({ lan: { ipv6: 'route' } })).lan.ipv6, 'route');
  const bad = errors(doc({ lan: { ipv6: 'nat66' } }));
  assert.equal(bad.length, 1);
  assert.match(bad[0], /^\/etc\/vpnmasq\/vpnmasq\.json: lan\.ipv6: .*"drop".*"route"/);
  assert.equal(reloadKind('lan.ipv6').kind, 'restart');
  assert.deepEqual(restartMessage(reloadPlan(parse(doc()), parse(doc({ lan: { ipv6: 'route' } }))).restart),
    'lan.ipv6: needs a restart (the IPv6 rules for the LAN are installed at start)');
});
