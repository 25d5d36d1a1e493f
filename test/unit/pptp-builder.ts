/** Test helpers for PPTP: control messages, enhanced GRE packets, a Napt with the PPTP modules attached. */
import { NatHarness, w16, w32 } from './packet-builder';
import { Forward } from '../../src/core/forward';
import { Forwards } from '../../src/nat/forwards';
import { PptpCalls } from '../../src/helpers/pptp/calls';
import { PptpControl } from '../../src/helpers/pptp/control';
import { GreNat } from '../../src/helpers/pptp/gre';
import { PptpMasq } from '../../src/helpers/pptp/pptp';
import { PPTP_MSG_LEN } from '../../src/wire/pptp';

const GRE = 47;

export function pptpMsg(type: number, callId = 0, peer = 0, result = 0): Uint8Array {
  const m = new Uint8Array(PPTP_MSG_LEN[type]);
  w16(m, 0, m.length);
  w16(m, 2, 1);
  w32(m, 4, 0x1a2b3c4d);
  w16(m, 8, type);
  if (m.length >= 14) w16(m, 12, callId);
  if (m.length >= 16 && peer >= 0) w16(m, 14, peer);
  if (m.length >= 18) m[16] = result;
  for (let i = 18; i < m.length; i++) m[i] = (i * 7) & 0xff;
  return m;
}

export function grePacket(src: string, dst: string, callId: number, seq: number | null, ack: number | null): Uint8Array {
  const hl = 8 + (seq !== null ? 4 : 0) + (ack !== null ? 4 : 0);
  const data = seq !== null ? 20 : 0;
  const g = new Uint8Array(hl + data);
  g[0] = 0x20 | (seq !== null ? 0x10 : 0);
  g[1] = 0x01 | (ack !== null ? 0x80 : 0);
  w16(g, 2, 0x880b);
  w16(g, 4, data);
  w16(g, 6, callId);
  let o = 8;
  if (seq !== null) { w32(g, o, seq); o += 4; }
  if (ack !== null) w32(g, o, ack);
  return ipPacket(src, dst, GRE, g);
}

export function ipPacket(src: string, dst: string, proto: number, payload: Uint8Array): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  p[0] = 0x45; w16(p, 2, p.length); p[8] = 64; p[9] = proto;
  w32(p, 12, ipInt(src)); w32(p, 16, ipInt(dst));
  p.set(payload, 20);
  let s = 0;
  for (let i = 0; i < 20; i += 2) s += (p[i] << 8) | p[i + 1];
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  w16(p, 10, ~s & 0xffff);
  return p;
}

export const ipInt = (a: string): number => a.split('.').reduce((v, x) => (v << 8) | Number(x), 0) | 0;

export function pptpHarness(forwardRules: Forward[] = []): { h: NatHarness; calls: PptpCalls; ctl: PptpControl; gre: GreNat; pptp: PptpMasq } {
  const h = new NatHarness();
  const forwards = forwardRules.length > 0 ? new Forwards(h.table, forwardRules) : null;
  const pptp = new PptpMasq(64, h.table, h.journal);
  pptp.attach(h.napt);
  h.napt.forwards = forwards;
  return { h, calls: pptp.calls, ctl: pptp.control, gre: pptp.gre, pptp };
}

