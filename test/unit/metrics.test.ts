import { test } from 'node:test';
import assert from 'node:assert/strict';
import { get } from 'node:http';
import { Logger } from '../../src/daemon/log';
import { MetricsSource, startMetricsServer } from '../../src/daemon/metrics';

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
    db: () => ({ healthy: true, pendingWrites: 5, lastError: null, rowsRestored: 12, rowsDiscarded: 3 }),
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
