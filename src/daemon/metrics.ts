/**
 * Prometheus endpoint: GET /metrics on a local address. Figures are read from
 * the daemon (a {@link MetricsSource}) at scrape time, so the packet path
 * never touches prom-client.
 */
import { createServer, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { parseListenAddress } from '../config/checks';
import type { Logger } from './log';
import { version } from '../core/version';

export interface MetricsSource {
  /** Live entries per protocol: tcp, udp, icmp (NAPT sessions), isakmp, esp (IPsec entries), gre (PPTP calls). */
  mappingsByProto(): Record<string, number>;
  tableLimit(): number;
  /** VPN entries by protocol and state, e.g. {esp: {pending: 1, established: 2, squelched: 0}}. */
  vpnEntries(): Record<string, Record<string, number>>;
  /** Every bounded table: entries in use and capacity. */
  tables(): Record<string, { entries: number; capacity: number }>;
  /** Drop reason -> count (monotonic). */
  drops(): Record<string, number>;
  /** Monotonic traffic totals. */
  traffic(): { packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number };
  /** VPN event -> count (monotonic). */
  vpnEvents(): Record<string, number>;
  /** TUN batches by how long their oldest packet waited for the event loop (bucket name -> count, monotonic; none before the TUN is open or with tun.io uring). */
  forwardingWaits(): Record<string, number>;
  /** The io_uring loop's busy-poll spins by result (hit, miss; monotonic; none before the TUN is open or with tun.io threads). */
  busyPolls(): Record<string, number>;
  /** Reloads by result (applied, rejected), since start. */
  reloads(): Record<string, number>;
  /** Wall-clock ms when the daemon started. */
  readonly startedAt: number;
  /** Wall-clock ms now (the daemon's clock). */
  nowMs(): number;
  db(): { healthy: boolean; pendingWrites: number; lastError: string | null; rowsRestored: number; rowsDiscarded: number; rowsQuarantined: number };
}

/** Label values -> value; a metric without labels has one entry with no labels. */
type Samples = Array<[labels: Record<string, string>, value: number]>;

interface MetricDef {
  name: string;
  help: string;
  type: 'gauge' | 'counter';
  labels: readonly string[];
  read(source: MetricsSource): Samples;
}

const one = (v: number): Samples => [[{}, v]];
const by = (label: string, values: Record<string, number>): Samples => Object.entries(values).map(([k, v]) => [{ [label]: k }, v]);

/**
 * Every vpnmasq metric, declared once: the endpoint serves exactly these
 * (plus prom-client's process and Node metrics), and docs/grafana-dashboard.json
 * is built on exactly these names (test/unit/metrics.test.ts checks both).
 */
export const METRICS: readonly MetricDef[] = [
  {
    name: 'vpnmasq_build_info', help: 'Always 1; the vpnmasq version and the Node.js version running it.', type: 'gauge',
    labels: ['version', 'node'], read: () => [[{ version: version(), node: process.versions.node }, 1]],
  },
  { name: 'vpnmasq_start_time_seconds', help: 'When the daemon started (Unix time).', type: 'gauge', labels: [], read: (s) => one(s.startedAt / 1000) },
  { name: 'vpnmasq_uptime_seconds', help: 'Seconds since the daemon started.', type: 'gauge', labels: [], read: (s) => one(Math.max(0, (s.nowMs() - s.startedAt) / 1000)) },
  {
    name: 'vpnmasq_mappings', help: 'Live entries by protocol: NAPT sessions (tcp, udp, icmp), IPsec entries (isakmp, esp), PPTP calls (gre).',
    type: 'gauge', labels: ['proto'], read: (s) => by('proto', s.mappingsByProto()),
  },
  { name: 'vpnmasq_mappings_limit', help: 'Most NAPT sessions at once (limits.maxSessions).', type: 'gauge', labels: [], read: (s) => one(s.tableLimit()) },
  {
    name: 'vpnmasq_vpn_entries', help: 'VPN entries by protocol and state (isakmp: replied/unreplied; esp: pending/established/squelched; gre: requested/confirmed/clearing).',
    type: 'gauge', labels: ['proto', 'state'],
    read: (s) => Object.entries(s.vpnEntries()).flatMap(([proto, states]) => Object.entries(states).map(([state, v]): Samples[number] => [{ proto, state }, v])),
  },
  {
    name: 'vpnmasq_table_entries', help: 'Entries in use per bounded table.', type: 'gauge', labels: ['table'],
    read: (s) => Object.entries(s.tables()).map(([table, t]) => [{ table }, t.entries]),
  },
  {
    name: 'vpnmasq_table_capacity', help: 'Capacity of each bounded table (what it refuses beyond).', type: 'gauge', labels: ['table'],
    read: (s) => Object.entries(s.tables()).map(([table, t]) => [{ table }, t.capacity]),
  },
  { name: 'vpnmasq_drops_total', help: 'Dropped packets by reason.', type: 'counter', labels: ['reason'], read: (s) => by('reason', s.drops()) },
  {
    name: 'vpnmasq_packets_total', help: 'Translated packets by direction.', type: 'counter', labels: ['direction'],
    read: (s) => { const t = s.traffic(); return by('direction', { out: t.packetsOut, in: t.packetsIn }); },
  },
  {
    name: 'vpnmasq_bytes_total', help: 'Translated bytes by direction.', type: 'counter', labels: ['direction'],
    read: (s) => { const t = s.traffic(); return by('direction', { out: t.bytesOut, in: t.bytesIn }); },
  },
  {
    name: 'vpnmasq_vpn_events_total', help: 'VPN tracking events (IPsec, PPTP) by event; kept across restarts.', type: 'counter', labels: ['event'],
    read: (s) => by('event', s.vpnEvents()),
  },
  {
    name: 'vpnmasq_forwarding_wait_batches_total',
    help: 'Packet batches by how long their oldest packet waited in the TUN ring for the event loop (under_64us ... 4ms_or_more; tun.io threads only).',
    type: 'counter', labels: ['wait'], read: (s) => by('wait', s.forwardingWaits()),
  },
  {
    name: 'vpnmasq_busy_polls_total',
    help: 'Idle moments the io_uring loop spun through for work (tun.busyPollUs), by result: hit (work came, no sleep, no wakeup) or miss (it slept).',
    type: 'counter', labels: ['result'], read: (s) => by('result', s.busyPolls()),
  },
  { name: 'vpnmasq_reloads_total', help: 'Config reloads by result (applied, rejected).', type: 'counter', labels: ['result'], read: (s) => by('result', s.reloads()) },
  { name: 'vpnmasq_db_healthy', help: '1 if the state database accepts writes, else 0.', type: 'gauge', labels: [], read: (s) => one(s.db().healthy ? 1 : 0) },
  { name: 'vpnmasq_db_pending_writes', help: 'State changes not yet committed to the database.', type: 'gauge', labels: [], read: (s) => one(s.db().pendingWrites) },
  { name: 'vpnmasq_db_rows_restored', help: 'Entries restored from the database at startup.', type: 'gauge', labels: [], read: (s) => one(s.db().rowsRestored) },
  { name: 'vpnmasq_db_rows_discarded', help: 'Database rows discarded at startup (expired or invalid).', type: 'gauge', labels: [], read: (s) => one(s.db().rowsDiscarded) },
  {
    name: 'vpnmasq_db_rows_quarantined', help: 'Database rows that could not be restored at startup, kept in the quarantine table.', type: 'gauge', labels: [],
    read: (s) => one(s.db().rowsQuarantined),
  },
];

export interface MetricsServer {
  close(): Promise<void>;
  address: { host: string; port: number };
}

/** Serves GET /metrics on `listen` (`HOST:PORT`; port 0 picks a free port). */
export async function startMetricsServer(listen: string, source: MetricsSource, log: Logger): Promise<MetricsServer> {
  const address = parseListenAddress(listen);
  if (!address) throw new Error(`invalid metrics listen address ${JSON.stringify(listen)}`);
  const registry = createMetricsRegistry(source);
  const server = createServer((req, res) => void respond(registry, req, res, log));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  log.info('metrics endpoint listening', { address: `${bound.address}:${bound.port}` });
  return {
    address: { host: bound.address, port: bound.port },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}

async function respond(registry: Registry, req: IncomingMessage, res: ServerResponse, log: Logger): Promise<void> {
  const path = (req.url ?? '').split('?')[0];
  if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
    return;
  }
  try {
    const body = await registry.metrics();
    res.writeHead(200, { 'Content-Type': registry.contentType }).end(body);
  } catch (err) {
    log.error('metrics collection failed', { error: err });
    res.writeHead(500, { 'Content-Type': 'text/plain' }).end('metrics collection failed\n');
  }
}

function createMetricsRegistry(source: MetricsSource): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  for (const def of METRICS) {
    const labelNames = [...def.labels];
    if (def.type === 'gauge') {
      new Gauge({
        name: def.name, help: def.help, labelNames, registers: [registry],
        collect() {
          this.reset();
          for (const [labels, v] of def.read(source)) this.set(labels, v);
        },
      });
    } else {
      // Monotonic totals kept by the daemon, exposed with TYPE counter.
      new Counter({
        name: def.name, help: def.help, labelNames, registers: [registry],
        collect() {
          this.reset();
          for (const [labels, v] of def.read(source)) this.inc(labels, v);
        },
      });
    }
  }
  return registry;
}
