/**
 * TCP connection tracking for timer selection (RFC 5382 §5, RFC 7857 §2.2).
 * The state is a set of bits per session: which SYNs and FINs were seen in
 * which direction, and whether a RST was seen.
 */
import { TCP_FIN, TCP_RST, TCP_SYN } from '../wire/tcp';

export const TCP_SYN_OUT = 0x01;
export const TCP_SYN_IN = 0x02;
export const TCP_FIN_OUT = 0x04;
export const TCP_FIN_IN = 0x08;
export const TCP_RST_SEEN = 0x10;
/** Picked up mid-stream (first packet without SYN), treated as established. */
export const TCP_MIDSTREAM = 0x20;

const ESTABLISHED_MASK = TCP_SYN_OUT | TCP_SYN_IN;
const CLOSING_MASK = TCP_FIN_OUT | TCP_FIN_IN | TCP_RST_SEEN;

/** State of a new session created by an outbound segment. */
export function tcpInitialState(flags: number): number {
  return flags & TCP_SYN ? 0 : TCP_MIDSTREAM;
}

export function tcpNextState(state: number, flags: number, outbound: boolean): number {
  if (flags & TCP_RST) return state | TCP_RST_SEEN;
  if (flags & TCP_SYN) {
    // A new SYN after the connection closed starts over (port reuse by the host).
    if (state & CLOSING_MASK) state = 0;
    state |= outbound ? TCP_SYN_OUT : TCP_SYN_IN;
  } else if (outbound) {
    // The LAN host still has the connection after a RST: it was out of
    // window and answered with a challenge ACK (RFC 5961 §3.2), so it did not
    // close the connection (as conntrack keeps ESTABLISHED for inexact RSTs).
    state &= ~TCP_RST_SEEN;
  }
  if (flags & TCP_FIN) state |= outbound ? TCP_FIN_OUT : TCP_FIN_IN;
  return state;
}

/**
 * The connection is over at both ends, so a new connection may take over its
 * 5-tuple: reset (and the LAN host silent since), or closed by FINs both
 * ways. RFC 7857 §2.1 keeps such a session 4 minutes so stray packets still
 * translate; a takeover keeps them from the new host (SessionTable).
 */
export function tcpIsClosed(state: number): boolean {
  return (state & TCP_RST_SEEN) !== 0 || (state & (TCP_FIN_OUT | TCP_FIN_IN)) === (TCP_FIN_OUT | TCP_FIN_IN);
}

export function tcpIsEstablished(state: number): boolean {
  return (state & CLOSING_MASK) === 0 &&
    ((state & ESTABLISHED_MASK) === ESTABLISHED_MASK || (state & TCP_MIDSTREAM) !== 0);
}

/** Established connections get the long timer, handshakes and closes the transitory one. */
export function tcpTimeoutMs(state: number, establishedMs: number, transitoryMs: number): number {
  return tcpIsEstablished(state) ? establishedMs : transitoryMs;
}

/** The names operators see, conntrack-like, indexed by tcpStateClass. */
export const TCP_STATE_NAMES = ['NONE', 'SYN_SENT', 'SYN_RECV', 'ESTABLISHED', 'FIN_WAIT', 'TIME_WAIT', 'CLOSE'] as const;

/**
 * The state an operator sees, as a small number (an index of
 * TCP_STATE_NAMES): a change of it is a state change worth an UPDATE event.
 */
export function tcpStateClass(state: number): number {
  if (state & TCP_RST_SEEN) return 6;
  if ((state & (TCP_FIN_OUT | TCP_FIN_IN)) === (TCP_FIN_OUT | TCP_FIN_IN)) return 5;
  if (state & (TCP_FIN_OUT | TCP_FIN_IN)) return 4;
  if (tcpIsEstablished(state)) return 3;
  if (state & TCP_SYN_OUT) return 1;
  if (state & TCP_SYN_IN) return 2;
  return 0;
}

/** Name for operators, conntrack-like. */
export function tcpStateName(state: number): string {
  return TCP_STATE_NAMES[tcpStateClass(state)];
}
