import { describe, expect, it } from 'vitest';
import { TtlCache } from '../../dns/ttl-cache.js';

describe('TtlCache', () => {
  it('returns a value with its remaining lifetime until it expires', () => {
    const c = new TtlCache<string>(4);
    c.set('a', 'x', 1_000);
    expect(c.get('a', 400)).toEqual({ value: 'x', remainingMs: 600 });
    expect(c.get('a', 1_000)).toBeUndefined();
    expect(c.size).toBe(0); // an expired entry is dropped when seen
  });

  it('holds at most its bound, evicting the least recently used, however far it is driven past it', () => {
    const c = new TtlCache<number>(3);
    for (const k of ['a', 'b', 'c']) c.set(k, 1, 10_000);
    c.get('a', 0); // b is now the oldest
    c.set('d', 1, 10_000);
    expect(c.get('b', 0)).toBeUndefined();
    expect(c.get('a', 0)).toBeDefined();
    for (let i = 0; i < 1000; i++) c.set(`k${i}`, i, 10_000);
    expect(c.size).toBe(3);
    expect(c.evicted).toBe(1001);
  });

  it('refuses a bound below 1', () => {
    expect(() => new TtlCache(0)).toThrow(RangeError);
  });
});
