/**
 * What every checked view has (smoltcp's Packet<T> with check_len): the
 * buffer, where the header starts and how many bytes follow it. A view is
 * bound only by its own parse, after checking that the bytes its accessors
 * read are present, so no accessor reads past the packet. One instance is
 * reused for every packet: nothing is allocated per packet. Each view reads
 * its fields in its own methods (not through methods shared here), so every
 * property access on the packet path sees one object shape.
 */
export class View {
  buf: Uint8Array = new Uint8Array(0);
  off = 0;
  /** Bytes present from `off` on. */
  avail = 0;
}
