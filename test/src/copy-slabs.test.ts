import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { CopySlabs } from '../../src/nat/copy-slabs.js';

describe('CopySlabs', () => {
  it('every copy keeps its bytes until released, whatever the order of releases; slabs are reused, boundedly', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ len: fc.integer({ min: 1, max: 300 }), releaseAfter: fc.nat({ max: 6 }) }), { minLength: 1, maxLength: 120 }),
        (ops) => {
          const slabs = new CopySlabs(1024, 2);
          const live: { copy: Buffer; expected: Uint8Array; release: () => void; due: number }[] = [];
          let step = 0;
          for (const [i, o] of ops.entries()) {
            const src = new Uint8Array(o.len).fill((i * 37) & 0xff);
            const copy = slabs.copy(src);
            src.fill(0xee); // the caller's view is reused at once
            live.push({ copy, expected: new Uint8Array(o.len).fill((i * 37) & 0xff), release: slabs.releaseLast(), due: step + o.releaseAfter });
            step++;
            for (const l of live.filter((x) => x.due <= step)) {
              expect(l.copy).toEqual(Buffer.from(l.expected)); // intact until released
              l.release();
              live.splice(live.indexOf(l), 1);
            }
            for (const l of live) expect(l.copy).toEqual(Buffer.from(l.expected));
            expect(slabs.freeSlabs).toBeLessThanOrEqual(2);
          }
          for (const l of live) l.release();
        },
      ),
      { numRuns: 200 },
    );
  });

  it('reuses a slab once all its copies are released', () => {
    const slabs = new CopySlabs(4096, 2);
    const first = [1, 2, 3, 4].map((v) => ({ copy: slabs.copy(new Uint8Array(1000).fill(v)), release: slabs.releaseLast() }));
    expect(new Set(first.map((f) => f.copy.buffer)).size).toBe(1); // four fit in one slab
    const fifth = slabs.copy(new Uint8Array(1000).fill(5)); // the first slab is full
    expect(fifth.buffer).not.toBe(first[0]!.copy.buffer);
    expect(slabs.freeSlabs).toBe(0);
    for (const f of first.slice(0, 3)) f.release();
    expect(slabs.freeSlabs).toBe(0); // one copy of the first slab is still in flight
    first[3]!.release();
    expect(slabs.freeSlabs).toBe(1);
    const more = [6, 7, 8, 9].map((v) => slabs.copy(new Uint8Array(1000).fill(v)));
    expect(more[3]!.buffer).toBe(first[0]!.copy.buffer); // the second slab filled up: the first is reused
    expect(fifth).toEqual(Buffer.alloc(1000, 5));
    expect(more[3]).toEqual(Buffer.alloc(1000, 9));
  });
});
