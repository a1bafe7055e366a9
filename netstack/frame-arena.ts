import type { OutputBatch } from './api.js';

/**
 * Where the stack builds the frames of one output batch.
 *
 * Frames are written straight into a staging buffer, each preceded by four
 * bytes of headroom that hold its length (u32 big-endian): the QEMU stream
 * framing that moat-shim speaks too. A transport can then send the whole
 * batch with one write and no copy.
 *
 * The staging buffer is handed over with a large batch (the transport may
 * still be writing it) and comes back to a small pool when the owner calls
 * batch.release(): a fresh buffer costs page faults on first touch. A small
 * batch is copied out into an exact-size buffer so that one ACK does not pin
 * a large staging buffer.
 */
const PREFIX = 4;
const DEFAULT_CHUNK = 256 * 1024;
/** Batches up to this size are copied out and the staging buffer kept. */
const COPY_OUT_LIMIT = 16 * 1024;
/** Released staging buffers kept for reuse (8 MiB of 256 KiB chunks): a full congestion window of 64 KiB frames fits, so steady bulk traffic allocates nothing. */
const POOL_LIMIT = 32;

/**
 * Makes a staging buffer. Every byte of a frame is written before it is sent,
 * so the buffer need not be zeroed: the service passes Node's
 * Buffer.allocUnsafe. The default is the portable, zeroing one.
 */
export type Allocator = (size: number) => Uint8Array;

const zeroedAllocator: Allocator = (size) => new Uint8Array(size);

export class FrameArena {
  /** The buffer the current frame is written into; valid after begin(). */
  buf: Uint8Array;
  private pos = 0;
  private frameStart = -1;
  private readonly done: Uint8Array[] = [];
  private count = 0;
  /** Per frame of the batch being built: its segment size (OutputBatch.forEachFrameAt), 0 for most. */
  private segmentSizes: number[] = [];
  private readonly pool: Uint8Array[] = [];
  /** The one batch object small batches are lent through (lendSmallBatches). */
  private readonly lent = new LentBatch();

  constructor(
    private readonly allocate: Allocator = zeroedAllocator,
    private readonly chunkSize = DEFAULT_CHUNK,
    /** The consumer is done with a batch when onOutput returns: small batches are lent, not copied. */
    private readonly lendSmallBatches = false,
  ) {
    this.buf = allocate(chunkSize);
  }

  /** Frames queued since the last take(). */
  get frameCount(): number {
    return this.count;
  }

  /**
   * Reserves room for a frame of exactly `length` bytes and returns the
   * offset in `this.buf` where the frame (its Ethernet header) starts.
   * Follow with commit() once written, or abandon() to drop it.
   */
  begin(length: number): number {
    if (this.pos + PREFIX + length > this.buf.length) {
      if (this.pos > 0) this.done.push(this.buf.subarray(0, this.pos));
      this.buf = PREFIX + length <= this.chunkSize ? this.freshChunk() : this.allocate(PREFIX + length);
      this.pos = 0;
    }
    const b = this.buf;
    const p = this.pos;
    b[p] = length >>> 24;
    b[p + 1] = (length >>> 16) & 0xff;
    b[p + 2] = (length >>> 8) & 0xff;
    b[p + 3] = length & 0xff;
    this.frameStart = p + PREFIX;
    return this.frameStart;
  }

  /** segmentSize: the frame is a TCP super-segment cut at this size (see OutputBatch.forEachFrameAt), else 0. */
  commit(length: number, segmentSize = 0): void {
    this.pos = this.frameStart + length;
    this.frameStart = -1;
    this.segmentSizes[this.count++] = segmentSize;
  }

  abandon(): void {
    this.frameStart = -1;
  }

  /** Takes everything queued as one batch, or null when nothing is. */
  take(): OutputBatch | null {
    if (this.count === 0) return null;
    let chunks: Uint8Array[];
    let owned = false;
    if (this.done.length === 0 && this.pos <= COPY_OUT_LIMIT && this.lendSmallBatches) {
      // Lent: the staging buffer is next written by begin(), after the
      // consumer has written these frames. One view and one batch per flush.
      this.lent.reset(this.buf, this.pos, this.count, this.segmentSizes);
      this.pos = 0;
      this.count = 0;
      return this.lent;
    }
    if (this.done.length === 0 && this.pos <= COPY_OUT_LIMIT) {
      // An explicit copy: the allocator may hand out Node Buffers, whose
      // slice() is a view, and this staging buffer is about to be reused
      // while the transport may still be writing the batch.
      const copy = new Uint8Array(this.pos);
      copy.set(this.buf.subarray(0, this.pos));
      chunks = [copy];
    } else {
      this.done.push(this.buf.subarray(0, this.pos));
      chunks = this.done.splice(0);
      this.buf = this.freshChunk();
      owned = true;
    }
    this.pos = 0;
    // The batch keeps this batch's sizes; the next batch gets a fresh array (a lent batch shares one: it is done first).
    const batch = new FramedBatch(chunks, this.count, owned ? this : null, this.segmentSizes);
    this.segmentSizes = [];
    this.count = 0;
    return batch;
  }

  /** @internal A batch's chunks are written: keep their full-size buffers for reuse. */
  recycle(chunks: readonly Uint8Array[]): void {
    for (const c of chunks) {
      if (this.pool.length >= POOL_LIMIT) return;
      // Only whole standard chunks are pooled; oversized one-offs are left to the GC.
      if (c.byteOffset === 0 && c.buffer.byteLength === this.chunkSize) {
        this.pool.push(new Uint8Array(c.buffer, 0, this.chunkSize));
      }
    }
  }

  private freshChunk(): Uint8Array {
    return this.pool.pop() ?? this.allocate(this.chunkSize);
  }
}

type FrameAtFn = (buf: Uint8Array, offset: number, length: number, segmentSize: number) => void;

/**
 * Calls fn(buf, offset, length, segmentSize) for each length-prefixed frame
 * in buf[from, to), the first being frame number `index` of its batch;
 * returns the index after the last.
 */
function forEachFramed(buf: Uint8Array, from: number, to: number, sizes: readonly number[], index: number, fn: FrameAtFn): number {
  let p = from;
  let i = index;
  while (p + PREFIX <= to) {
    const len = ((buf[p]! << 24) | (buf[p + 1]! << 16) | (buf[p + 2]! << 8) | buf[p + 3]!) >>> 0;
    fn(buf, p + PREFIX, len, sizes[i++] ?? 0);
    p += PREFIX + len;
  }
  return i;
}

/** An OutputBatch over length-prefixed chunks. */
export class FramedBatch implements OutputBatch {
  constructor(
    readonly framed: readonly Uint8Array[],
    readonly frameCount: number,
    private owner: FrameArena | null = null,
    /** Per frame: its segment size (OutputBatch.forEachFrameAt); missing = 0. */
    private readonly segmentSizes: readonly number[] = [],
  ) {}

  forEachFrameAt(fn: FrameAtFn): void {
    let index = 0;
    for (const chunk of this.framed) index = forEachFramed(chunk, 0, chunk.length, this.segmentSizes, index, fn);
  }

  forEachFrame(fn: (frame: Uint8Array) => void): void {
    this.forEachFrameAt((buf, offset, length) => fn(buf.subarray(offset, offset + length)));
  }

  release(): void {
    const owner = this.owner;
    if (owner === null) return;
    this.owner = null; // at most once
    owner.recycle(this.framed);
  }
}

/**
 * A small batch lent from the staging buffer: valid only until the stack
 * writes its next frame, so only for consumers that finish inside onOutput.
 * Reused for every lent batch.
 */
class LentBatch implements OutputBatch {
  private buf: Uint8Array = new Uint8Array(0);
  private length = 0;
  private segmentSizes: readonly number[] = [];
  frameCount = 0;

  reset(buf: Uint8Array, length: number, frameCount: number, segmentSizes: readonly number[]): void {
    this.buf = buf;
    this.length = length;
    this.frameCount = frameCount;
    this.segmentSizes = segmentSizes;
  }

  get framed(): readonly Uint8Array[] {
    return [this.buf.subarray(0, this.length)];
  }

  forEachFrame(fn: (frame: Uint8Array) => void): void {
    this.forEachFrameAt((buf, offset, length) => fn(buf.subarray(offset, offset + length)));
  }

  forEachFrameAt(fn: FrameAtFn): void {
    forEachFramed(this.buf, 0, this.length, this.segmentSizes, 0, fn);
  }

  release(): void {}
}
