/**
 * Operator-facing rows of the connection table (CLI, control socket, store).
 * Not on the packet path: builds objects and strings freely.
 */
import { PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { SessionTable } from '../nat/sessions';
import { tcpStateName } from '../nat/tcp-tracker';
import { int32ToIpv4 } from '../core/ipv4-addr';

export interface ConnRow {
  /** Stable identifier of the session (unique for the daemon's lifetime and across restarts once persisted). */
  id: number;
  /**
   * 'gre': a PPTP call (src/helpers/pptp/calls.ts greConnRow), ports 0 and its Call IDs in `vpn`;
   * 'isakmp' / 'esp': an IPsec entry (src/helpers/ipsec/ipsec.ts rows()), cookies or SPIs in `vpn`.
   */
  proto: 'tcp' | 'udp' | 'icmp' | 'isakmp' | 'esp' | 'gre';
  lan: { addr: string; port: number };
  public: { addr: string; port: number };
  remote: { addr: string; port: number };
  state: string;
  idleSeconds: number;
  expiresInSeconds: number;
  packets: { out: number; in: number };
  bytes: { out: number; in: number };
  /** VPN detail of isakmp/esp/gre rows (docs/cli-json-schema.json); null: not learnt yet. */
  vpn?: Record<string, string | number | null>;
}

const PROTO_NAMES: Record<number, ConnRow['proto']> = { [PROTO_TCP]: 'tcp', [PROTO_UDP]: 'udp', [PROTO_ICMP]: 'icmp' };

export function sessionRow(t: SessionTable, s: number, now: number): ConnRow {
  const m = t.sMap[s];
  const proto = PROTO_NAMES[t.mProto[m]];
  return {
    id: t.sSerial[s],
    proto,
    lan: { addr: int32ToIpv4(t.mLan[m]), port: t.mLanPort[m] },
    public: { addr: int32ToIpv4(t.publicAddr), port: t.mPubPort[m] },
    remote: { addr: int32ToIpv4(t.sRem[s]), port: t.sRemPort[s] },
    state: proto === 'tcp' ? tcpStateName(t.sState[s]) : t.sPktsIn[s] > 0 ? 'REPLIED' : 'UNREPLIED',
    idleSeconds: Math.max(0, Math.round((now - t.sLastSeen[s]) / 1000)),
    expiresInSeconds: Math.max(0, Math.round((t.sExpires[s] - now) / 1000)),
    packets: { out: t.sPktsOut[s], in: t.sPktsIn[s] },
    bytes: { out: t.sBytesOut[s], in: t.sBytesIn[s] },
  };
}
