/**
 * The LAN hosts one inbound packet goes to: one for a mapped flow, several
 * when a helper guesses (an ESP SPI or ISAKMP cookie that matches no entry
 * goes to the hosts that recently spoke IKE with the remote, spec §4.3 step 4).
 * Owned by the caller and filled by the helper: a result, not shared state.
 */
export const MAX_TARGETS = 16;

export class Targets {
  readonly addr = new Int32Array(MAX_TARGETS);
  count = 0;

  /** Empties the list and adds one host. */
  one(addr: number): void {
    this.addr[0] = addr;
    this.count = 1;
  }

  /** Adds a host unless the list is full; returns whether it was added. */
  add(addr: number): boolean {
    if (this.count >= MAX_TARGETS) return false;
    this.addr[this.count++] = addr;
    return true;
  }
}
