import { describe, expect, it } from 'vitest';
import { FrameArena } from '../../netstack/frame-arena.js';

function writeFrame(arena: FrameArena, length: number, fill: number): void {
  const off = arena.begin(length);
  arena.buf.fill(fill, off, off + length);
  arena.commit(length);
}

describe('FrameArena', () => {
  it('prefixes every frame with its length (u32 big-endian) and lists them back', () => {
    const arena = new FrameArena();
    writeFrame(arena, 60, 1);
    writeFrame(arena, 1514, 2);
    const batch = arena.take()!;
    expect(batch.frameCount).toBe(2);
    const framed = Buffer.concat(batch.framed.map((c) => Buffer.from(c)));
    expect(framed.readUInt32BE(0)).toBe(60);
    expect(framed.readUInt32BE(64)).toBe(1514);
    const seen: number[][] = [];
    batch.forEachFrame((f) => seen.push([f.length, f[0]!, f[f.length - 1]!]));
    expect(seen).toEqual([[60, 1, 1], [1514, 2, 2]]);
    expect(arena.take()).toBeNull();
  });

  it('spills into a new chunk when a frame does not fit, up to a 64 KiB frame', () => {
    const arena = new FrameArena(undefined, 1024);
    writeFrame(arena, 900, 3);
    writeFrame(arena, 65534, 4);
    const batch = arena.take()!;
    expect(batch.framed).toHaveLength(2);
    const sizes: number[] = [];
    batch.forEachFrame((f) => sizes.push(f.length));
    expect(sizes).toEqual([900, 65534]);
  });

  // Regression: take() copied small batches with .slice(), which is a view on
  // Node Buffers (the service's allocator). The next batch overwrote bytes the
  // socket had not written yet, and moat-shim read payload as a frame length.
  it('a taken batch never changes when later frames reuse the staging buffer (Buffer allocator)', () => {
    const arena = new FrameArena((n) => Buffer.allocUnsafe(n));
    writeFrame(arena, 100, 0xaa);
    const first = arena.take()!;
    const before = Buffer.concat(first.framed.map((c) => Buffer.from(c))).toString('hex');
    writeFrame(arena, 100, 0x78);
    arena.take();
    expect(Buffer.concat(first.framed.map((c) => Buffer.from(c))).toString('hex')).toBe(before);
  });
});

describe('FrameArena buffer reuse', () => {
  it('reuses a released staging buffer, and never one still held by an unreleased batch', () => {
    const arena = new FrameArena((n) => new Uint8Array(n), 4096);
    const big = () => {
      writeFrame(arena, 3000, 1);
      writeFrame(arena, 3000, 2); // spills: the batch owns its staging buffers
      return arena.take()!;
    };
    const a = big();
    const aBuffers = a.framed.map((c) => c.buffer);
    const b = big();
    // a was not released: b must not share memory with it.
    for (const c of b.framed) expect(aBuffers).not.toContain(c.buffer);
    const aBytes = Buffer.concat(a.framed.map((c) => Buffer.from(c))).toString('hex');
    a.release();
    a.release(); // idempotent
    const c = big();
    // Now a's memory may come back...
    expect(c.framed.some((chunk) => aBuffers.includes(chunk.buffer))).toBe(true);
    // ...and b, unreleased, is untouched by c's frames.
    b.forEachFrame((f) => expect(f[0] === 1 || f[0] === 2).toBe(true));
    expect(aBytes.length).toBeGreaterThan(0);
  });
});

describe('FrameArena lending (a consumer that writes inside onOutput)', () => {
  const framesOf = (batch: { forEachFrameAt(fn: (b: Uint8Array, o: number, l: number) => void): void }): string[] => {
    const out: string[] = [];
    batch.forEachFrameAt((b, o, l) => out.push(Buffer.from(b.subarray(o, o + l)).toString('hex')));
    return out;
  };

  it('lends small batches from the staging buffer: same frames, no copy, one batch object', () => {
    const arena = new FrameArena((n) => Buffer.allocUnsafe(n), 4096, true);
    writeFrame(arena, 60, 0x11);
    writeFrame(arena, 70, 0x22);
    const a = arena.take()!;
    expect(a.frameCount).toBe(2);
    expect(framesOf(a)).toEqual(['11'.repeat(60), '22'.repeat(70)]);
    const aView = a.framed[0]!;
    expect(aView.buffer).toBe(arena.buf.buffer); // lent, not copied
    writeFrame(arena, 80, 0x33);
    const b = arena.take()!;
    expect(b).toBe(a); // the one lent batch object, reset
    expect(framesOf(b)).toEqual(['33'.repeat(80)]);
    const seen: number[] = [];
    b.forEachFrame((f) => seen.push(f.length));
    expect(seen).toEqual([80]);
  });

  it('without lending, the same sequence copies (the batch outlives the next frame)', () => {
    const arena = new FrameArena((n) => Buffer.allocUnsafe(n), 4096, false);
    writeFrame(arena, 60, 0x11);
    const a = arena.take()!;
    expect(a.framed[0]!.buffer).not.toBe(arena.buf.buffer);
    writeFrame(arena, 60, 0x44);
    expect(arena.take()).not.toBe(a);
    expect(framesOf(a)).toEqual(['11'.repeat(60)]);
  });

  it('still hands over large batches (they own their buffers until release)', () => {
    const arena = new FrameArena((n) => new Uint8Array(n), 4096, true);
    writeFrame(arena, 3000, 1);
    writeFrame(arena, 3000, 2);
    const big = arena.take()!;
    expect(big.framed).toHaveLength(2);
    writeFrame(arena, 100, 3);
    arena.take();
    expect(framesOf(big).map((h) => h.length / 2)).toEqual([3000, 3000]);
    expect(framesOf(big)[1]!.slice(0, 2)).toBe('02');
  });

  it('gathered frames (head in the arena, payload elsewhere) are whole again for every consumer but forEachFramePart, across chunks', () => {
    const arena = new FrameArena(undefined, 1024, true);
    const payload = Uint8Array.from({ length: 700 }, (_, i) => i & 0xff);
    writeFrame(arena, 60, 1);
    for (let i = 0; i < 3; i++) {
      const off = arena.begin(40 + payload.length); // reserves the whole frame, writes only the head
      arena.buf.fill(9, off, off + 40);
      arena.commitGathered(40, 500, payload.subarray(0, 300), i === 1 ? payload.subarray(300) : null);
    }
    writeFrame(arena, 70, 2);
    const batch = arena.take()!;
    expect(batch.frameCount).toBe(5);
    const parts: unknown[] = [];
    batch.forEachFramePart!((_b, _o, head, p, p2, seg) => parts.push([head, p?.length ?? null, p2?.length ?? null, seg]));
    expect(parts).toEqual([[60, null, null, 0], [40, 300, null, 500], [40, 300, 400, 500], [40, 300, null, 500], [70, null, null, 0]]);
    const whole: number[][] = [];
    batch.forEachFrameAt((b, o, len, seg) => whole.push([len, b[o]!, b[o + len - 1]!, seg]));
    expect(whole).toEqual([[60, 1, 1, 0], [340, 9, 43, 500], [740, 9, 187, 500], [340, 9, 43, 500], [70, 2, 2, 0]]);
    // framed: the same whole frames, length-prefixed (what a stream writer would send).
    const framed = Buffer.concat(batch.framed.map((c) => Buffer.from(c)));
    expect(framed.length).toBe(5 * 4 + 60 + 340 + 740 + 340 + 70);
    expect(framed.readUInt32BE(4 + 60)).toBe(340);
  });

  it('a lent batch\'s references to gathered payload are dropped once the next batch begins', () => {
    const arena = new FrameArena(undefined, undefined, true);
    const off = arena.begin(100);
    arena.buf.fill(1, off, off + 40);
    arena.commitGathered(40, 0, new Uint8Array(60), null);
    arena.take()!;
    const sides = (arena as unknown as { sides: { payload: unknown[]; gathered: number } }).sides;
    expect(sides.payload.length).toBe(1);
    writeFrame(arena, 60, 1);
    expect(sides.payload.length).toBe(0);
    expect(sides.gathered).toBe(0);
  });
});
