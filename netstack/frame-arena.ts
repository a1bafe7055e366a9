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
  /** What the batch being built says beside its bytes, per frame (segment sizes, gathered payload). */
  private sides = new FrameSides();
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
    // A lent batch is done by now (its consumer returned): drop its references into send rings.
    if (this.count === 0 && this.sides.gathered > 0) this.sides.clear();
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
    this.sides.set(this.count++, segmentSize, null, null);
  }

  /**
   * Commits a frame begun with its whole length of which only the first
   * `headLength` bytes were written: the rest is `payload` then `payload2`
   * (null: none), memory the caller keeps unchanged until the batch is
   * written (OutputBatch.forEachFramePart). Its length prefix counts the head only.
   */
  commitGathered(headLength: number, segmentSize: number, payload: Uint8Array, payload2: Uint8Array | null): void {
    const b = this.buf;
    const p = this.frameStart - PREFIX;
    b[p] = headLength >>> 24;
    b[p + 1] = (headLength >>> 16) & 0xff;
    b[p + 2] = (headLength >>> 8) & 0xff;
    b[p + 3] = headLength & 0xff;
    this.pos = this.frameStart + headLength;
    this.frameStart = -1;
    this.sides.set(this.count++, segmentSize, payload, payload2);
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
      this.lent.reset(this.buf, this.pos, this.count, this.sides);
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
    // The batch keeps this batch's sides; the next batch gets fresh ones (a lent batch shares them: it is done first).
    const batch = new FramedBatch(chunks, this.count, owned ? this : null, this.sides);
    this.sides = new FrameSides();
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
type FramePartFn = (buf: Uint8Array, offset: number, headLength: number, payload: Uint8Array | null, payload2: Uint8Array | null, segmentSize: number) => void;

/**
 * Per frame of a batch, what is not in its bytes: the segment size of a TCP
 * super-segment (0 for every other frame), and for a gathered frame the
 * payload slices that follow its head (FrameArena.commitGathered).
 */
class FrameSides {
  readonly sizes: number[] = [];
  readonly payload: (Uint8Array | null)[] = [];
  readonly payload2: (Uint8Array | null)[] = [];
  /** Gathered frames set since the last clear(). */
  gathered = 0;

  set(i: number, segmentSize: number, payload: Uint8Array | null, payload2: Uint8Array | null): void {
    this.sizes[i] = segmentSize;
    if (payload === null && this.gathered === 0) return; // no gathered frame yet: the payload lists stay empty
    this.payload[i] = payload;
    this.payload2[i] = payload2;
    if (payload !== null) this.gathered++;
  }

  clear(): void {
    this.payload.length = 0;
    this.payload2.length = 0;
    this.gathered = 0;
  }
}

const NO_SIDES = new FrameSides();

/**
 * Calls fn(buf, offset, headLength, payload, payload2, segmentSize) for each
 * length-prefixed frame in buf[from, to), the first being frame number
 * `index` of its batch; returns the index after the last.
 */
function forEachFramed(buf: Uint8Array, from: number, to: number, sides: FrameSides, index: number, fn: FramePartFn): number {
  let p = from;
  let i = index;
  const gathered = sides.gathered > 0;
  while (p + PREFIX <= to) {
    const len = ((buf[p]! << 24) | (buf[p + 1]! << 16) | (buf[p + 2]! << 8) | buf[p + 3]!) >>> 0;
    fn(buf, p + PREFIX, len, gathered ? (sides.payload[i] ?? null) : null, gathered ? (sides.payload2[i] ?? null) : null, sides.sizes[i] ?? 0);
    i++;
    p += PREFIX + len;
  }
  return i;
}

/** A gathered frame made whole (head, then its payload slices) in a buffer of its own, for consumers that want whole frames. */
export function wholeFrame(buf: Uint8Array, offset: number, headLength: number, payload: Uint8Array, payload2: Uint8Array | null): Uint8Array {
  const frame = new Uint8Array(headLength + payload.length + (payload2?.length ?? 0));
  frame.set(buf.subarray(offset, offset + headLength), 0);
  frame.set(payload, headLength);
  if (payload2 !== null) frame.set(payload2, headLength + payload.length);
  return frame;
}

/** The OutputBatch methods over length-prefixed chunks and their frames' sides. */
abstract class ChunkBatch implements OutputBatch {
  abstract readonly frameCount: number;
  protected abstract chunks(): readonly Uint8Array[];
  protected abstract frameSides(): FrameSides;
  abstract release(): void;

  get framed(): readonly Uint8Array[] {
    if (this.frameSides().gathered === 0) return this.chunks();
    // Gathered frames are only headers here: frame them whole (a stream writer never gets these; tests and fallbacks may).
    const out: Uint8Array[] = [];
    this.forEachFrameAt((buf, offset, length) => {
      const framed = new Uint8Array(PREFIX + length);
      new DataView(framed.buffer).setUint32(0, length);
      framed.set(buf.subarray(offset, offset + length), PREFIX);
      out.push(framed);
    });
    return out;
  }

  forEachFramePart(fn: FramePartFn): void {
    const sides = this.frameSides();
    let index = 0;
    for (const chunk of this.chunks()) index = forEachFramed(chunk, 0, chunk.length, sides, index, fn);
  }

  forEachFrameAt(fn: FrameAtFn): void {
    this.forEachFramePart((buf, offset, headLength, payload, payload2, segmentSize) => {
      if (payload === null) fn(buf, offset, headLength, segmentSize);
      else fn(wholeFrame(buf, offset, headLength, payload, payload2), 0, headLength + payload.length + (payload2?.length ?? 0), segmentSize);
    });
  }

  forEachFrame(fn: (frame: Uint8Array) => void): void {
    this.forEachFrameAt((buf, offset, length) => fn(buf.subarray(offset, offset + length)));
  }
}

/** An OutputBatch over length-prefixed chunks. */
export class FramedBatch extends ChunkBatch {
  constructor(
    private readonly framedChunks: readonly Uint8Array[],
    readonly frameCount: number,
    private owner: FrameArena | null = null,
    private readonly sides: FrameSides = NO_SIDES,
  ) {
    super();
  }

  protected chunks(): readonly Uint8Array[] {
    return this.framedChunks;
  }

  protected frameSides(): FrameSides {
    return this.sides;
  }

  release(): void {
    const owner = this.owner;
    if (owner === null) return;
    this.owner = null; // at most once
    owner.recycle(this.framedChunks);
  }
}

/**
 * A small batch lent from the staging buffer: valid only until the stack
 * writes its next frame, so only for consumers that finish inside onOutput.
 * Reused for every lent batch.
 */
class LentBatch extends ChunkBatch {
  private buf: Uint8Array = new Uint8Array(0);
  private length = 0;
  private sides: FrameSides = NO_SIDES;
  private readonly one: Uint8Array[] = [new Uint8Array(0)];
  frameCount = 0;

  reset(buf: Uint8Array, length: number, frameCount: number, sides: FrameSides): void {
    this.buf = buf;
    this.length = length;
    this.frameCount = frameCount;
    this.sides = sides;
  }

  protected chunks(): readonly Uint8Array[] {
    this.one[0] = this.buf.subarray(0, this.length);
    return this.one;
  }

  protected frameSides(): FrameSides {
    return this.sides;
  }

  /** The one chunk, walked where it lies (no view made: this runs for every batch a TAP writes). */
  override forEachFramePart(fn: FramePartFn): void {
    forEachFramed(this.buf, 0, this.length, this.sides, 0, fn);
  }

  release(): void {}
}
