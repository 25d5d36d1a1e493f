import { test } from 'node:test';
import assert from 'node:assert/strict';
import { get } from 'node:http';
import { Logger } from '../../src/daemon/log';
import { METRICS, MetricsSource, startMetricsServer } from '../../src/daemon/metrics';
import { version } from '../../src/core/version';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

function fakeSource(): MetricsSource & { dropsByReason: Record<string, number> } {
  return {
    dropsByReason: { 'table-full': 7, 'no-mapping': 2 },
    mappingsByProto: () => ({ tcp: 3, udp: 1, icmp: 0, isakmp: 1, esp: 2, gre: 0 }),
    tableLimit: () => 262144,
    drops() {
      return this.dropsByReason;
    },
    traffic: () => ({ packetsOut: 100, packetsIn: 90, bytesOut: 150000, bytesIn: 120000 }),
    vpnEvents: () => ({ 'esp-pending': 4, 'isakmp-collision': 1 }),
    db: () => ({ healthy: true, pendingWrites: 5, lastError: null, rowsRestored: 12, rowsDiscarded: 3, rowsQuarantined: 1 }),
    vpnEntries: () => ({ isakmp: { replied: 1, unreplied: 0 }, esp: { pending: 1, established: 1, squelched: 0 }, gre: { requested: 0, confirmed: 0, clearing: 0 } }),
    tables: () => ({ sessions: { entries: 4, capacity: 262144 }, esp: { entries: 2, capacity: 16384 } }),
    reloads: () => ({ applied: 2, rejected: 1 }),
    forwardingWaits: () => ({ under_64us: 40, under_1ms: 2 }),
    busyPolls: () => ({ hit: 30, miss: 3 }),
    startedAt: 1_700_000_000_000,
    nowMs: () => 1_700_000_090_000,
  };
}

const quietLog: Logger = { error() {}, warn() {}, info() {}, debug() {}, event() {}, lazyEvent() {}, enabled: () => false, configure() {} };

function fetch(port: number, path: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    }).on('error', reject);
  });
}

test('GET /metrics exposes the source figures with the right types', async () => {
  const source = fakeSource();
  const server = await startMetricsServer('127.0.0.1:0', source, quietLog);
  try {
    assert.equal(server.address.host, '127.0.0.1');
    assert.ok(server.address.port > 0);
    const res = await fetch(server.address.port, '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.type, /^text\/plain; version=0\.0\.4/);
    const lines = res.body.split('\n');
    for (const expected of [
      '# TYPE vpnmasq_mappings gauge',
      'vpnmasq_mappings{proto="tcp"} 3',
      'vpnmasq_mappings{proto="esp"} 2',
      'vpnmasq_mappings{proto="gre"} 0',
      '# TYPE vpnmasq_mappings_limit gauge',
      'vpnmasq_mappings_limit 262144',
      '# TYPE vpnmasq_drops_total counter',
      'vpnmasq_drops_total{reason="table-full"} 7',
      'vpnmasq_drops_total{reason="no-mapping"} 2',
      '# TYPE vpnmasq_packets_total counter',
      'vpnmasq_packets_total{direction="out"} 100',
      'vpnmasq_packets_total{direction="in"} 90',
      '# TYPE vpnmasq_bytes_total counter',
      'vpnmasq_bytes_total{direction="out"} 150000',
      'vpnmasq_bytes_total{direction="in"} 120000',
      '# TYPE vpnmasq_vpn_events_total counter',
      'vpnmasq_vpn_events_total{event="esp-pending"} 4',
      '# TYPE vpnmasq_db_healthy gauge',
      'vpnmasq_db_healthy 1',
      'vpnmasq_db_pending_writes 5',
      'vpnmasq_db_rows_restored 12',
      'vpnmasq_db_rows_discarded 3',
      'vpnmasq_db_rows_quarantined 1',
      '# TYPE vpnmasq_vpn_entries gauge',
      'vpnmasq_vpn_entries{proto="esp",state="pending"} 1',
      'vpnmasq_vpn_entries{proto="isakmp",state="replied"} 1',
      'vpnmasq_vpn_entries{proto="gre",state="confirmed"} 0',
      'vpnmasq_table_entries{table="esp"} 2',
      'vpnmasq_table_capacity{table="sessions"} 262144',
      '# TYPE vpnmasq_reloads_total counter',
      'vpnmasq_reloads_total{result="rejected"} 1',
      'vpnmasq_uptime_seconds 90',
      'vpnmasq_start_time_seconds 1700000000',
      `vpnmasq_build_info{version="${version()}",node="${process.versions.node}"} 1`,
    ]) {
      assert.ok(lines.includes(expected), `missing line: ${expected}`);
    }
    assert.ok(lines.some((line) => line.startsWith('process_cpu_user_seconds_total ')), 'process metrics missing');

    source.dropsByReason = { 'table-full': 10, 'no-mapping': 2 };
    const again = (await fetch(server.address.port, '/metrics')).body.split('\n');
    assert.ok(again.includes('vpnmasq_drops_total{reason="table-full"} 10'));
    assert.ok(again.includes('vpnmasq_drops_total{reason="no-mapping"} 2'));
  } finally {
    await server.close();
  }
});

test('other paths are 404 and close() stops the server', async () => {
  const server = await startMetricsServer('localhost:0', fakeSource(), quietLog);
  const { port } = server.address;
  assert.equal((await fetch(port, '/')).status, 404);
  assert.equal((await fetch(port, '/metricsx')).status, 404);
  assert.equal((await fetch(port, '/metrics?x=1')).status, 200);
  await server.close();
  await assert.rejects(fetch(port, '/metrics'), { code: 'ECONNREFUSED' });
});

test('a failing source gives 500 and an error log line', async () => {
  const errors: string[] = [];
  const log: Logger = { ...quietLog, error: (msg) => errors.push(msg) };
  const server = await startMetricsServer('127.0.0.1:0', { ...fakeSource(), tableLimit: () => { throw new Error('boom'); } }, log);
  try {
    assert.equal((await fetch(server.address.port, '/metrics')).status, 500);
    assert.deepEqual(errors, ['metrics collection failed']);
  } finally {
    await server.close();
  }
});

test('invalid listen addresses are rejected', async () => {
  await assert.rejects(startMetricsServer('[::1]:9469', fakeSource(), quietLog), /invalid metrics listen address/);
});

test('every declared metric has samples; the Grafana dashboard uses exactly the declared metrics', async () => {
  const server = await startMetricsServer('127.0.0.1:0', fakeSource(), quietLog);
  try {
    const body = (await fetch(server.address.port, '/metrics')).body;
    const served = new Set([...body.matchAll(/^(vpnmasq_[a-z_]+)[{ ]/gm)].map((m) => m[1]));
    assert.deepEqual([...served].sort(), METRICS.map((m) => m.name).sort(), 'every declared metric, and nothing else, has samples');
  } finally {
    await server.close();
  }
  const dashboard = readFileSync(join(__dirname, '../../../docs/grafana-dashboard.json'), 'utf8');
  const json = JSON.parse(dashboard) as { panels: Array<{ targets?: Array<{ expr: string }> }> };
  const queries = [...json.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)), 'label_values(vpnmasq_build_info, instance)'];
  const used = new Set(queries.flatMap((q) => [...q.matchAll(/\bvpnmasq_[a-z_]+/g)].map((m) => m[0])));
  const declared = new Set(METRICS.map((m) => m.name));
  for (const name of used) assert.ok(declared.has(name), `the dashboard queries ${name}, which vpnmasq does not serve`);
  for (const name of declared) assert.ok(used.has(name), `${name} is not on the dashboard`);
  // Every vpnmasq_ name in the file is in a query (none hides in a title or description).
  for (const m of dashboard.matchAll(/\bvpnmasq_[a-z_]+/g)) assert.ok(used.has(m[0]), m[0]);
});
