/**
 * The receive side's bytes.
 *
 * One ring holds both the in-order bytes waiting for the application (while
 * paused) and the out-of-order bytes beyond them: a byte with sequence number
 * s lives at ring position `tail + (s - RCV.NXT)`. Because the advertised
 * window never exceeds the ring's free space, every acceptable byte has its
 * place, and filling a hole is just moving `tail` forward, with no copy and
 * no per-segment allocation. `OooRanges` (below) remembers which parts beyond
 * RCV.NXT hold data; it is bounded in bytes and in ranges, so a peer sending
 * holes cannot make us do unbounded work.
 */
import { EMPTY_RING, grownRing } from './send-buffer.js';
import { seqDiff, seqGe, seqGt, seqLe, seqLt } from './seq.js';

export class RecvRing {
  /**
   * Physical storage, grown on demand up to `capacity`: an idle connection
   * holds none of it. Positions wrap at the storage's current size; growing
   * moves everything from `head` up to the highest byte written (in-order and
   * out-of-order alike) to the front of the new storage.
   */
  private ring: Uint8Array = EMPTY_RING;
  private head = 0;
  private len = 0;
  /** Bytes from head that may hold data: in-order plus the farthest out-of-order byte written. */
  private extent = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('RecvRing: capacity must be a positive integer');
  }

  /** In-order bytes waiting to be read. */
  get length(): number {
    return this.len;
  }

  /** Room after the in-order bytes (where out-of-order bytes go too). */
  get free(): number {
    return this.capacity - this.len;
  }

  /** Bytes of memory the ring holds now (for stats and tests): at most capacity. */
  get allocated(): number {
    return this.ring.length;
  }

  /** Gives the storage back when it holds no byte, in order or out of order. */
  releaseIfEmpty(): void {
    if (this.len !== 0 || this.extent !== 0) return;
    this.ring = EMPTY_RING;
    this.head = 0;
  }

  /** Copies data to `offset` bytes past the in-order tail, without committing it. */
  writeAt(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.length > this.capacity - this.len) throw new RangeError('RecvRing.writeAt: beyond free space');
    const end = this.len + offset + data.length;
    if (end > this.ring.length) this.grow(end);
    if (end > this.extent) this.extent = end;
    const size = this.ring.length;
    let pos = this.head + this.len + offset;
    pos %= size;
    const first = Math.min(data.length, size - pos);
    this.ring.set(first === data.length ? data : data.subarray(0, first), pos);
    if (first < data.length) this.ring.set(data.subarray(first), 0);
  }

  /** Makes n bytes already written at the tail part of the in-order data. */
  commit(n: number): void {
    if (n < 0 || n > this.capacity - this.len) throw new RangeError('RecvRing.commit: beyond free space');
    this.len += n;
    if (this.len > this.extent) this.extent = this.len;
  }

  /**
   * The ring is empty and n in-order bytes were handed to the application
   * straight from the segment: move both ends so that the out-of-order bytes
   * already stored keep their positions relative to the tail.
   */
  skip(n: number): void {
    if (this.len !== 0) throw new RangeError('RecvRing.skip: not empty');
    this.extent = Math.max(0, this.extent - n);
    if (this.ring.length === 0) return;
    this.head = this.extent === 0 ? 0 : (this.head + n) % this.ring.length;
  }

  /** The first contiguous run of in-order bytes (a view, valid until the next mutation). */
  peek(): Uint8Array {
    const first = Math.min(this.len, this.ring.length - this.head);
    return this.ring.subarray(this.head, this.head + first);
  }

  consume(n: number): void {
    if (n < 0 || n > this.len) throw new RangeError('RecvRing.consume: out of range');
    this.len -= n;
    this.extent -= n;
    this.head += n;
    if (this.head >= this.ring.length) this.head -= this.ring.length;
    if (this.extent === 0) this.head = 0; // nothing stored: restart at the front
  }

  private grow(needed: number): void {
    this.ring = grownRing(this.ring, this.head, this.extent, needed, this.capacity);
    this.head = 0;
  }
}

/**
 * Sorted, disjoint, non-adjacent ranges [start, end) of sequence numbers
 * received beyond RCV.NXT. Also produces SACK blocks (RFC 2018 §4): the range
 * holding the most recently received segment first, then the others.
 */
export class OooRanges {
  private readonly starts: number[];
  private readonly ends: number[];
  private n = 0;
  private total = 0;
  /** Start of the range that holds the latest accepted segment, or -1. */
  private latest = -1;

  constructor(readonly maxBytes: number, readonly maxRanges: number) {
    this.starts = new Array<number>(maxRanges).fill(0);
    this.ends = new Array<number>(maxRanges).fill(0);
  }

  get count(): number {
    return this.n;
  }

  /** Bytes covered by all ranges. */
  get bytes(): number {
    return this.total;
  }

  /**
   * Adds [start, end). Returns false, changing nothing, if the result would
   * exceed the byte or range bound ("drop the newest").
   */
  insert(start: number, end: number): boolean {
    if (!seqLt(start, end)) return true;
    // First range that ends at or after start (may merge), and the first after those that merge.
    let i = 0;
    while (i < this.n && seqLt(this.ends[i]!, start)) i++;
    let j = i;
    let s = start;
    let e = end;
    let removedBytes = 0;
    while (j < this.n && seqLe(this.starts[j]!, e)) {
      if (seqLt(this.starts[j]!, s)) s = this.starts[j]!;
      if (seqGt(this.ends[j]!, e)) e = this.ends[j]!;
      removedBytes += seqDiff(this.ends[j]!, this.starts[j]!);
      j++;
    }
    const removed = j - i;
    const newCount = this.n - removed + 1;
    const newTotal = this.total - removedBytes + seqDiff(e, s);
    if (newCount > this.maxRanges || newTotal > this.maxBytes) return false;
    // Replace ranges i..j-1 by [s, e).
    const shift = 1 - removed;
    if (shift > 0) {
      for (let k = this.n - 1; k >= j; k--) {
        this.starts[k + shift] = this.starts[k]!;
        this.ends[k + shift] = this.ends[k]!;
      }
    } else if (shift < 0) {
      for (let k = j; k < this.n; k++) {
        this.starts[k + shift] = this.starts[k]!;
        this.ends[k + shift] = this.ends[k]!;
      }
    }
    this.starts[i] = s >>> 0;
    this.ends[i] = e >>> 0;
    this.n = newCount;
    this.total = newTotal;
    this.latest = s >>> 0;
    return true;
  }

  /**
   * RCV.NXT moved to rcvNxt: removes every range that starts at or before it
   * and returns the new RCV.NXT (the end of a range it reached, else rcvNxt).
   */
  advance(rcvNxt: number): number {
    let next = rcvNxt;
    let k = 0;
    while (k < this.n && seqLe(this.starts[k]!, next)) {
      if (seqGt(this.ends[k]!, next)) next = this.ends[k]!;
      this.total -= seqDiff(this.ends[k]!, this.starts[k]!);
      k++;
    }
    if (k > 0) {
      for (let m = k; m < this.n; m++) {
        this.starts[m - k] = this.starts[m]!;
        this.ends[m - k] = this.ends[m]!;
      }
      this.n -= k;
    }
    return next;
  }

  /** Whether [start, end) is entirely held already. */
  covers(start: number, end: number): boolean {
    for (let k = 0; k < this.n; k++) {
      if (seqLe(this.starts[k]!, start) && seqGe(this.ends[k]!, end)) return true;
    }
    return false;
  }

  clear(): void {
    this.n = 0;
    this.total = 0;
    this.latest = -1;
  }

  /** Fills out (reused) with up to maxBlocks SACK blocks as [start, end, ...]; returns out. */
  sackBlocks(out: number[], maxBlocks: number): number[] {
    out.length = 0;
    if (this.n === 0 || maxBlocks <= 0) return out;
    let first = -1;
    for (let k = 0; k < this.n; k++) {
      if (this.starts[k] === this.latest) first = k;
    }
    if (first >= 0) out.push(this.starts[first]!, this.ends[first]!);
    for (let k = 0; k < this.n && out.length < maxBlocks * 2; k++) {
      if (k !== first) out.push(this.starts[k]!, this.ends[k]!);
    }
    return out;
  }
}
