/**
 * The send side's bytes: everything written by the application and not yet
 * acknowledged by the peer (unacknowledged + unsent), in a ring of fixed
 * capacity allocated once. Offset 0 is always SND.UNA's byte; the connection
 * maps sequence numbers to offsets. Segments are never stored: a
 * (re)transmission copies its range straight from the ring into the frame.
 */
export class SendBuffer {
  private readonly ring: Uint8Array;
  private head = 0;
  private len = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('SendBuffer: capacity must be a positive integer');
    this.ring = new Uint8Array(capacity);
  }

  /** Bytes held (unacknowledged + unsent). */
  get length(): number {
    return this.len;
  }

  get free(): number {
    return this.capacity - this.len;
  }

  /** Appends as much of data as fits; returns the count taken. */
  write(data: Uint8Array): number {
    const n = Math.min(data.length, this.capacity - this.len);
    if (n === 0) return 0;
    let tail = this.head + this.len;
    if (tail >= this.capacity) tail -= this.capacity;
    const first = Math.min(n, this.capacity - tail);
    this.ring.set(first === data.length ? data : data.subarray(0, first), tail);
    if (first < n) this.ring.set(data.subarray(first, n), 0);
    this.len += n;
    return n;
  }

  /** Drops n bytes from the front (acknowledged by the peer). */
  consume(n: number): void {
    if (n < 0 || n > this.len) throw new RangeError('SendBuffer.consume: out of range');
    this.len -= n;
    this.head += n;
    if (this.head >= this.capacity) this.head -= this.capacity;
    if (this.len === 0) this.head = 0; // keep later writes contiguous
  }

  /** Copies bytes [from, from+len) (offsets from the front) into dst at dstOff. */
  copyOut(from: number, dst: Uint8Array, dstOff: number, len: number): void {
    if (from < 0 || len < 0 || from + len > this.len) throw new RangeError('SendBuffer.copyOut: out of range');
    let start = this.head + from;
    if (start >= this.capacity) start -= this.capacity;
    const first = Math.min(len, this.capacity - start);
    dst.set(this.ring.subarray(start, start + first), dstOff);
    if (first < len) dst.set(this.ring.subarray(0, len - first), dstOff + first);
  }
}
