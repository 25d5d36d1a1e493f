/**
 * Exceptions on the packet path. Translation mutates table state as it goes
 * (a mapping may be created, a TCP state advanced) before a packet is listed
 * for writing, so a throw cannot be undone. The packet that threw is dropped
 * (it may be half rewritten), the packets translated before it are written
 * after the journal drain commits their new mappings (write-ahead holds, and
 * their peers see the mappings the table now has), and the batch goes on
 * with the next packet. Each exception is logged with its stack (at most one
 * line per second, the rest counted into the next line); a run of
 * exceptions means the state itself is broken, so `consecutive` packets in a
 * row or `perSecond` within one second end the process for a restart from
 * the last committed state.
 */

/** The part of the daemon's logger this needs (edge imports nothing above core). */
export interface FaultLog {
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface FaultLimits {
  /** Packets in a row whose translation threw (no packet between them went through). */
  consecutive: number;
  /** Exceptions within one second. */
  perSecond: number;
}

export const DEFAULT_FAULT_LIMITS: FaultLimits = { consecutive: 32, perSecond: 200 };

const LOG_INTERVAL_MS = 1000;

export class BatchFaults {
  /** Packets dropped because their translation threw. */
  packetErrors = 0;
  /** Batches the TUN did not write at all because the batch callback itself threw. */
  batchErrors = 0;
  /** Packets lost with those batches. */
  batchDropped = 0;
  private run = 0;
  private lastIndex = -1;
  private windowStart = -Infinity;
  private windowCount = 0;
  private loggedAt = -Infinity;
  private suppressed = 0;
  private fatal = false;

  constructor(
    private readonly log: FaultLog,
    private readonly onFatal: (reason: Error) => void,
    private readonly now: () => number,
    private readonly limits: FaultLimits = DEFAULT_FAULT_LIMITS,
  ) {}

  /** Translating packet `index` of the current batch threw; the packet is dropped. */
  packet(error: unknown, index: number): void {
    this.packetErrors++;
    this.run = index === this.lastIndex + 1 ? this.run + 1 : 1;
    this.lastIndex = index;
    this.report(error, 'packet translation threw; packet dropped', { index });
  }

  /** The batch callback threw outside translation (e.g. a journal listener): none of its `dropped` packets were written. */
  batch(error: unknown, dropped: number): void {
    this.batchErrors++;
    this.batchDropped += dropped;
    this.run++;
    this.report(error, 'batch callback threw; batch not written', { dropped });
  }

  /** End of a batch of `count` packets: a run of exceptions ends unless it reached the batch's last packet. */
  batchDone(count: number): void {
    if (this.lastIndex !== count - 1) this.run = 0;
    this.lastIndex = -1;
  }

  private report(error: unknown, msg: string, fields: Record<string, unknown>): void {
    const now = this.now();
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.windowCount = 0;
    }
    this.windowCount++;
    const e = error instanceof Error ? error : new Error(String(error));
    if (now - this.loggedAt >= LOG_INTERVAL_MS) {
      this.loggedAt = now;
      this.log.error(msg, { ...fields, error: e.message, stack: e.stack ?? '', ...(this.suppressed > 0 ? { suppressed: this.suppressed } : {}) });
      this.suppressed = 0;
    } else {
      this.suppressed++;
    }
    if (this.fatal) return;
    const why = this.run >= this.limits.consecutive ? `${this.run} packets in a row threw`
      : this.windowCount >= this.limits.perSecond ? `${this.windowCount} exceptions within one second` : null;
    if (why === null) return;
    this.fatal = true;
    this.onFatal(new Error(`packet path failing: ${why} (last: ${e.message})`, { cause: e }));
  }
}
