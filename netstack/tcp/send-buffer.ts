/**
 * The send side's bytes: everything written by the application and not yet
 * acknowledged by the peer (unacknowledged + unsent), in a ring bounded by
 * `capacity` whose memory grows on demand (4 KiB first, doubling), so an idle
 * connection does not hold a full buffer. Offset 0 is always SND.UNA's byte; the connection
 * maps sequence numbers to offsets. Segments are never stored: a
 * (re)transmission copies its range straight from the ring into the frame,
 * or a link that writes frames from pieces takes it as a view (contiguous).
 */
export class SendBuffer {
  /** Physical storage: grows on demand up to `capacity` (see ring-storage note in recv-buffer.ts). */
  private ring: Uint8Array = EMPTY_RING;
  private head = 0;
  private len = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('SendBuffer: capacity must be a positive integer');
  }

  /** Bytes held (unacknowledged + unsent). */
  get length(): number {
    return this.len;
  }

  get free(): number {
    return this.capacity - this.len;
  }

  /** Bytes of memory the ring holds now (for stats and tests): at most capacity. */
  get allocated(): number {
    return this.ring.length;
  }

  /** Appends as much of data as fits; returns the count taken. */
  write(data: Uint8Array): number {
    const n = Math.min(data.length, this.capacity - this.len);
    if (n === 0) return 0;
    if (this.len + n > this.ring.length) this.grow(this.len + n);
    const size = this.ring.length;
    let tail = this.head + this.len;
    if (tail >= size) tail -= size;
    const first = Math.min(n, size - tail);
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
    if (this.head >= this.ring.length) this.head -= this.ring.length;
    if (this.len === 0) this.head = 0; // keep later writes contiguous
  }

  /** Gives the storage back when nothing is buffered (a connection in TIME-WAIT keeps no ring). */
  releaseIfEmpty(): void {
    if (this.len !== 0) return;
    this.ring = EMPTY_RING;
    this.head = 0;
  }

  /** Copies bytes [from, from+len) (offsets from the front) into dst at dstOff. */
  copyOut(from: number, dst: Uint8Array, dstOff: number, len: number): void {
    if (from < 0 || len < 0 || from + len > this.len) throw new RangeError('SendBuffer.copyOut: out of range');
    const size = this.ring.length;
    let start = this.head + from;
    if (start >= size) start -= size;
    const first = Math.min(len, size - start);
    dst.set(this.ring.subarray(start, start + first), dstOff);
    if (first < len) dst.set(this.ring.subarray(0, len - first), dstOff + first);
  }

  /**
   * A view of bytes [from, from+len) (offsets from the front) as far as they
   * lie in one piece: all of them, or up to the end of the ring (call again
   * for the rest). For writing a segment's payload without copying it; the
   * view stays valid until the bytes are consumed and the memory written
   * again, so it must be used at once (the stack's gathered output is
   * written before the turn ends).
   */
  contiguous(from: number, len: number): Uint8Array {
    if (from < 0 || len < 0 || from + len > this.len) throw new RangeError('SendBuffer.contiguous: out of range');
    const size = this.ring.length;
    let start = this.head + from;
    if (start >= size) start -= size;
    return this.ring.subarray(start, start + Math.min(len, size - start));
  }

  private grow(needed: number): void {
    this.ring = grownRing(this.ring, this.head, this.len, needed, this.capacity);
    this.head = 0;
  }
}

/** Storage of a ring that holds nothing yet. */
export const EMPTY_RING = new Uint8Array(0);
/** First allocation: small, so that an idle connection costs little memory. */
const MIN_ALLOCATION = 4096;

/**
 * New storage for a ring that must hold `needed` bytes: at least double the
 * old (4 KiB at first), never more than `capacity`, with the `span` bytes
 * stored from `head` (wrapping) moved to the front.
 */
export function grownRing(ring: Uint8Array, head: number, span: number, needed: number, capacity: number): Uint8Array {
  const next = new Uint8Array(Math.min(capacity, Math.max(needed, ring.length * 2, MIN_ALLOCATION)));
  if (span > 0) {
    const first = Math.min(span, ring.length - head);
    next.set(ring.subarray(head, head + first), 0);
    if (first < span) next.set(ring.subarray(0, span - first), first);
  }
  return next;
}
