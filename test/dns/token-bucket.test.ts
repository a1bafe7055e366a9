import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { TokenBucket } from '../../dns/token-bucket.js';

describe('TokenBucket', () => {
  it('starts full, refuses past the burst, and refills at the rate', () => {
    let t = 0;
    const b = new TokenBucket({ rate: 10, burst: 5, now: () => t });
    for (let i = 0; i < 5; i++) expect(b.take(1)).toBe(true);
    expect(b.take(1)).toBe(false);
    t += 100; // 0.1 s at 10/s = 1 token
    expect(b.take(1)).toBe(true);
    expect(b.take(1)).toBe(false);
    t += 10_000; // refill caps at the burst
    expect(b.available()).toBe(5);
  });

  it('a refused take costs nothing', () => {
    let t = 0;
    const b = new TokenBucket({ rate: 1, burst: 10, now: () => t });
    expect(b.take(11)).toBe(false);
    expect(b.available()).toBe(10);
  });

  it('a clock that goes back adds nothing', () => {
    let t = 1000;
    const b = new TokenBucket({ rate: 100, burst: 2, now: () => t });
    expect(b.take(2)).toBe(true);
    t = 0;
    expect(b.take(1)).toBe(false);
  });

  it('rejects a negative or non-finite rate or burst', () => {
    expect(() => new TokenBucket({ rate: -1, burst: 1, now: () => 0 })).toThrow(/rate/);
    expect(() => new TokenBucket({ rate: 1, burst: Infinity, now: () => 0 })).toThrow(/burst/);
  });

  it('over any schedule, what was taken never exceeds burst + rate * elapsed', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(500), fc.integer({ min: 1, max: 50 })), { maxLength: 200 }), fc.integer({ min: 1, max: 100 }), fc.integer({ min: 0, max: 200 }), (steps, rate, burst) => {
        let t = 0;
        const b = new TokenBucket({ rate, burst, now: () => t });
        let taken = 0;
        for (const [dt, cost] of steps) {
          t += dt;
          if (b.take(cost)) taken += cost;
        }
        expect(taken).toBeLessThanOrEqual(burst + (rate * t) / 1000 + 1e-9);
      }),
    );
  });
});
