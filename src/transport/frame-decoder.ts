/**
 * QEMU stream framing, incoming side: a byte stream of
 *   [u32 big-endian length][Ethernet frame of that length] ...
 * as QEMU's `-netdev stream` (net/stream.c) and moat-shim send it, cut into
 * frames.
 *
 * Frames that lie wholly inside one socket chunk are returned as subarray
 * views of that chunk (no copy). Only a frame (or length prefix) that
 * straddles chunks is copied, into a reassembly buffer of fixed size. Two such
 * buffers alternate: a chunk can both finish a straddling frame (a view of
 * buffer A, handed out in this batch) and end with the start of the next one
 * (copied into buffer B), and the returned view must stay intact until the
 * caller is done with the batch.
 *
 * A length of 0 or above MAX_FRAME_LEN cannot be a frame: the stream is out
 * of step and nothing after it can be trusted. push() still returns the good
 * frames before it, and sets `error`; the caller delivers them and then drops
 * the connection.
 */

/** Ethernet II header: destination MAC, source MAC, EtherType. */
export const ETHERNET_HEADER_LEN = 14;
/**
 * The largest frame accepted by the framing: an Ethernet header plus the
 * largest IPv4 datagram (the 16-bit Total Length, RFC 791 3.1) = 65549.
 * The largest MTU Moat configures (65520) gives 65534-byte frames; anything
 * between that and this limit is still a well-framed frame, so the stack
 * drops and counts it (oversized for the link) without losing the stream.
 * Above it no valid frame exists and the length prefix must be garbage.
 */
export const MAX_FRAME_LEN = 65535 + ETHERNET_HEADER_LEN;
export const LENGTH_PREFIX_LEN = 4;

export type FramingErrorReason = 'framing:zero-length' | 'framing:too-long';

export interface FramingError {
  readonly reason: FramingErrorReason;
  /** The impossible length that was read. */
  readonly length: number;
}

export class FrameDecoder {
  /** Where the current straddling frame is assembled (prefix included). */
  private asm = new Uint8Array(LENGTH_PREFIX_LEN + MAX_FRAME_LEN);
  /** The other buffer: may hold a frame handed out in the previous batch. */
  private spare = new Uint8Array(LENGTH_PREFIX_LEN + MAX_FRAME_LEN);
  /** Bytes of a straddling frame (prefix included) held in `asm`. */
  private asmLen = 0;
  /** Reused for every batch: callers consume it before the next push(). */
  private readonly frames: Uint8Array[] = [];
  private failed: FramingError | undefined;

  /** Set once the stream broke framing; every later push() returns no frames. */
  get error(): FramingError | undefined {
    return this.failed;
  }

  /** Bytes held for a frame that is not complete yet. */
  get pendingBytes(): number {
    return this.asmLen;
  }

  /**
   * Cuts a chunk into frames. The returned array and the views in it are only
   * valid until the next push(). Check `error` afterwards: once set, the
   * stream cannot be resynchronised and later pushes return nothing.
   */
  push(chunk: Uint8Array): readonly Uint8Array[] {
    const frames = this.frames;
    frames.length = 0;
    if (this.failed !== undefined) return frames;
    let off = 0;

    if (this.asmLen > 0) {
      // Finish the frame that straddled the previous chunk(s).
      if (this.asmLen < LENGTH_PREFIX_LEN) {
        const take = Math.min(LENGTH_PREFIX_LEN - this.asmLen, chunk.length);
        this.asm.set(chunk.subarray(0, take), this.asmLen);
        this.asmLen += take;
        off = take;
        if (this.asmLen < LENGTH_PREFIX_LEN) return frames;
      }
      const len = readLength(this.asm, 0);
      const bad = checkLength(len);
      if (bad !== undefined) return this.fail(bad);
      const total = LENGTH_PREFIX_LEN + len;
      const take = Math.min(total - this.asmLen, chunk.length - off);
      this.asm.set(chunk.subarray(off, off + take), this.asmLen);
      this.asmLen += take;
      off += take;
      if (this.asmLen < total) return frames;
      frames.push(this.asm.subarray(LENGTH_PREFIX_LEN, total));
      this.asmLen = 0;
      // The view just handed out lives in `asm`; a new straddler goes to the other buffer.
      const t = this.asm;
      this.asm = this.spare;
      this.spare = t;
    }

    // Whole frames: views of the chunk.
    while (chunk.length - off >= LENGTH_PREFIX_LEN) {
      const len = readLength(chunk, off);
      const bad = checkLength(len);
      if (bad !== undefined) return this.fail(bad);
      const end = off + LENGTH_PREFIX_LEN + len;
      if (end > chunk.length) break;
      frames.push(chunk.subarray(off + LENGTH_PREFIX_LEN, end));
      off = end;
    }

    // A partial frame at the end: copy it (the chunk may be reused by whoever gave it to us).
    if (off < chunk.length) {
      this.asm.set(chunk.subarray(off), 0);
      this.asmLen = chunk.length - off;
    }
    return frames;
  }

  /** Records the error; the frames found before it in this chunk are still returned. */
  private fail(error: FramingError): readonly Uint8Array[] {
    this.failed = error;
    this.asmLen = 0;
    return this.frames;
  }
}

function readLength(buf: Uint8Array, off: number): number {
  return ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
}

function checkLength(len: number): FramingError | undefined {
  if (len === 0) return { reason: 'framing:zero-length', length: len };
  if (len > MAX_FRAME_LEN) return { reason: 'framing:too-long', length: len };
  return undefined;
}
