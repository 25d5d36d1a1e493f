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

export interface MetricsSource {
  /** Current mappings per protocol, e.g. {tcp: 3, udp: 1, icmp: 0, isakmp: 0, esp: 0, gre: 0}. */
  mappingsByProto(): Record<string, number>;
  tableLimit(): number;
  /** Drop reason -> count (monotonic). */
  drops(): Record<string, number>;
  /** Monotonic traffic totals. */
  traffic(): { packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number };
  /** VPN event -> count (monotonic). */
  vpnEvents(): Record<string, number>;
  db(): { healthy: boolean; pendingWrites: number; lastError: string | null; rowsRestored: number; rowsDiscarded: number; rowsQuarantined: number };
}

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

  labeledGauge(registry, 'vpnmasq_mappings', 'Active NAT mappings by protocol.', 'proto', () => source.mappingsByProto());
  gauge(registry, 'vpnmasq_mappings_limit', 'Maximum number of NAT sessions (limits.maxSessions).', () => source.tableLimit());
  labeledCounter(registry, 'vpnmasq_drops_total', 'Dropped packets by reason.', 'reason', () => source.drops());
  labeledCounter(registry, 'vpnmasq_packets_total', 'Translated packets by direction.', 'direction', () => {
    const t = source.traffic();
    return { out: t.packetsOut, in: t.packetsIn };
  });
  labeledCounter(registry, 'vpnmasq_bytes_total', 'Translated bytes by direction.', 'direction', () => {
    const t = source.traffic();
    return { out: t.bytesOut, in: t.bytesIn };
  });
  labeledCounter(registry, 'vpnmasq_vpn_events_total', 'VPN tracking events (IPsec, PPTP) by event.', 'event', () => source.vpnEvents());
  gauge(registry, 'vpnmasq_db_healthy', '1 if the state database accepts writes, else 0.', () => (source.db().healthy ? 1 : 0));
  gauge(registry, 'vpnmasq_db_pending_writes', 'State changes not yet committed to the database.', () => source.db().pendingWrites);
  gauge(registry, 'vpnmasq_db_rows_restored', 'Sessions restored from the database at startup.', () => source.db().rowsRestored);
  gauge(registry, 'vpnmasq_db_rows_discarded', 'Database rows discarded at startup (expired, or dropped by the address policy).', () => source.db().rowsDiscarded);
  gauge(registry, 'vpnmasq_db_rows_quarantined', 'Database rows that could not be restored at startup, kept in the quarantine table.', () => source.db().rowsQuarantined);
  return registry;
}

function gauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}

function labeledGauge(registry: Registry, name: string, help: string, label: string, read: () => Record<string, number>): void {
  new Gauge({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      this.reset();
      for (const [value, figure] of Object.entries(read())) this.set({ [label]: value }, figure);
    },
  });
}

/** A counter mirroring monotonic totals kept by the daemon (exposed with TYPE counter). */
function labeledCounter(registry: Registry, name: string, help: string, label: string, read: () => Record<string, number>): void {
  new Counter({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      this.reset();
      for (const [value, total] of Object.entries(read())) this.inc({ [label]: value }, total);
    },
  });
}
