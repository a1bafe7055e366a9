import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FrameDecoder, MAX_FRAME_LEN, type FramingError } from '../../src/transport/frame-decoder.js';

/** The decoder's result as before: the frames, or the error if this push broke framing. */
function pushOne(d: FrameDecoder, chunk: Uint8Array): readonly Uint8Array[] | FramingError {
  const frames = d.push(chunk);
  return d.error ?? frames;
}
function isFramingError(x: readonly Uint8Array[] | FramingError): x is FramingError {
  return !Array.isArray(x);
}
import { frameStream } from './shell-fakes.js';

/** Feeds `chunks` and collects copies of every frame (views die at the next push). */
function decodeAll(chunks: Uint8Array[]): { frames: Uint8Array[]; batches: number[]; error?: string } {
  const d = new FrameDecoder();
  const frames: Uint8Array[] = [];
  const batches: number[] = [];
  for (const c of chunks) {
    const r = d.push(c);
    batches.push(r.length);
    for (const f of r) frames.push(f.slice());
    if (d.error !== undefined) return { frames, batches, error: d.error.reason };
  }
  return { frames, batches };
}

function frameOf(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (seed * 31 + i * 7) & 0xff;
  return f;
}

function cut(bytes: Uint8Array, points: number[]): Uint8Array[] {
  const sorted = [...new Set(points)].filter((p) => p > 0 && p < bytes.length).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const p of sorted) {
    out.push(bytes.slice(prev, p));
    prev = p;
  }
  out.push(bytes.slice(prev));
  return out;
}

describe('FrameDecoder', () => {
  it('returns several frames of one chunk as one batch of views into the chunk', () => {
    const frames = [frameOf(60, 1), frameOf(1514, 2), frameOf(14, 3)];
    const chunk = frameStream(frames);
    const d = new FrameDecoder();
    const r = pushOne(d, chunk);
    if (isFramingError(r)) throw new Error(r.reason);
    expect(r.map((f) => f.slice())).toEqual(frames);
    // No copy: the views share the chunk's memory.
    for (const f of r) expect(f.buffer).toBe(chunk.buffer);
  });

  it('reassembles two frames split at every byte boundary', () => {
    const frames = [frameOf(100, 1), frameOf(61, 2)];
    const bytes = frameStream(frames);
    for (let p = 1; p < bytes.length; p++) {
      const r = decodeAll(cut(bytes, [p]));
      expect(r.error).toBeUndefined();
      expect(r.frames).toEqual(frames);
    }
  });

  it('reassembles a stream fed one byte at a time', () => {
    const frames = [frameOf(64, 1), frameOf(1, 9), frameOf(300, 2)];
    const bytes = frameStream(frames);
    const r = decodeAll(Array.from(bytes, (b) => Uint8Array.of(b)));
    expect(r.frames).toEqual(frames);
  });

  it('keeps a reassembled frame intact while the same chunk starts the next straddling frame', () => {
    const a = frameOf(200, 1);
    const b = frameOf(200, 2);
    const c = frameOf(200, 3);
    const bytes = frameStream([a, b, c]);
    // chunk 2 finishes `a` (reassembled) and ends inside `b`; chunk 3 finishes b (reassembled), ends in c.
    const d = new FrameDecoder();
    expect(d.push(bytes.slice(0, 100))).toEqual([]);
    const r1 = pushOne(d, bytes.slice(100, 300));
    if (isFramingError(r1)) throw new Error(r1.reason);
    expect(r1).toHaveLength(1);
    const held = r1[0]!;
    expect(held.slice()).toEqual(a); // before more input
    const r2 = pushOne(d, bytes.slice(300, 500));
    if (isFramingError(r2)) throw new Error(r2.reason);
    expect(r2.map((f) => f.slice())).toEqual([b]);
    const r3 = pushOne(d, bytes.slice(500));
    if (isFramingError(r3)) throw new Error(r3.reason);
    expect(r3.map((f) => f.slice())).toEqual([c]);
  });

  it('accepts the largest frame (65549 bytes) and refuses one byte more', () => {
    const big = frameOf(MAX_FRAME_LEN, 5);
    expect(MAX_FRAME_LEN).toBe(65535 + 14);
    const got = decodeAll(cut(frameStream([big]), [3, 20000, 40000])).frames;
    expect(got).toHaveLength(1);
    expect(Buffer.from(got[0]!).equals(big)).toBe(true);
    const bad = new Uint8Array(8);
    new DataView(bad.buffer).setUint32(0, MAX_FRAME_LEN + 1);
    expect(decodeAll([bad]).error).toBe('framing:too-long');
  });

  it('refuses a zero length, also when it straddles chunks, and stays failed', () => {
    expect(decodeAll([new Uint8Array(4)]).error).toBe('framing:zero-length');
    // Good frames before the bad length in the same chunk are still delivered.
    const same = decodeAll([Uint8Array.of(...frameStream([frameOf(20, 1)]), 0, 0, 0, 0)]);
    expect(same).toEqual({ frames: [frameOf(20, 1)], batches: [1], error: 'framing:zero-length' });
    const stream = new Uint8Array([...frameStream([frameOf(20, 1)]), 0, 0, 0, 0, 1, 2, 3]);
    const r = decodeAll(cut(stream, [25, 26]));
    expect(r.frames).toEqual([frameOf(20, 1)]);
    expect(r.error).toBe('framing:zero-length');
    const d = new FrameDecoder();
    expect(d.push(Uint8Array.of(0xff, 0xff, 0xff, 0xff))).toEqual([]);
    const first = d.error;
    expect(first?.reason).toBe('framing:too-long');
    expect(d.push(frameStream([frameOf(20, 1)]))).toEqual([]);
    expect(d.error).toBe(first);
  });

  it('property: any split of any frame sequence yields the same frames', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (lengths, rawCuts) => {
          const frames = lengths.map((l, i) => frameOf(l, i));
          const bytes = frameStream(frames);
          const r = decodeAll(cut(bytes, rawCuts.map((c) => c % (bytes.length + 1))));
          expect(r.error).toBeUndefined();
          // Byte comparison through Buffer: toEqual walks typed arrays element by element and is slow here.
          expect(r.frames.length).toBe(frames.length);
          r.frames.forEach((f, i) => expect(Buffer.from(f).equals(frames[i]!)).toBe(true));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('property: random bytes never throw; the result is frames or a framing error', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 10 }), (chunks) => {
        const d = new FrameDecoder();
        for (const c of chunks) {
          const r = d.push(c);
          for (const f of r) expect(f.length).toBeGreaterThan(0);
          if (d.error !== undefined) {
            expect(['framing:zero-length', 'framing:too-long']).toContain(d.error.reason);
            return;
          }
        }
        expect(d.pendingBytes).toBeLessThanOrEqual(4 + MAX_FRAME_LEN);
      }),
    );
  });
});
