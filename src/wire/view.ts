/**
 * What every checked view shares (smoltcp's Packet<T> with check_len): the
 * buffer, where the header starts and how many bytes follow it. A view is
 * bound only by its own parse, after checking that the bytes its accessors
 * read are present, so no accessor reads past the packet. One instance is
 * reused for every packet: nothing is allocated per packet.
 */
import { read16, read32 } from './checksum';

const EMPTY = new Uint8Array(0);

export class View {
  buf: Uint8Array = EMPTY;
  off = 0;
  /** Bytes present from `off` on. */
  avail = 0;

  /** Binds the view when at least `min` bytes are present; returns whether it did. */
  protected bind(buf: Uint8Array, off: number, avail: number, min: number): boolean {
    if (avail < min) return false;
    this.buf = buf;
    this.off = off;
    this.avail = avail;
    return true;
  }

  /** Big-endian reads at an offset from the start of the header. */
  protected u8(at: number): number { return this.buf[this.off + at]; }
  protected u16(at: number): number { return read16(this.buf, this.off + at); }
  protected i32(at: number): number { return read32(this.buf, this.off + at); }
}
