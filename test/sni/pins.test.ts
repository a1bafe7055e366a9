import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { PinTable, DEFAULT_MAX_PIN_ENTRIES } from '../../sni/pins.js';

/** A fake clock: tests move time by assigning `clock.t`. */
function fakeClock(start = 1_000_000): { t: number; now: () => number } {
  const c = { t: start, now: () => c.t };
  return c;
}

const sorted = (xs: readonly string[]): string[] => [...xs].sort();

describe('PinTable basics', () => {
  it('answers both directions for a pin', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('git.example.com', ['192.0.2.10', '192.0.2.11'], 60_000);
    pins.pin('www.example.com', ['192.0.2.10'], 60_000);
    expect(sorted(pins.addressesFor('git.example.com'))).toEqual(['192.0.2.10', '192.0.2.11']);
    expect(sorted(pins.namesFor('192.0.2.10'))).toEqual(['git.example.com', 'www.example.com']);
    expect(pins.namesFor('192.0.2.11')).toEqual(['git.example.com']);
    expect(pins.namesFor('192.0.2.12')).toEqual([]);
    expect(pins.addressesFor('other.example.com')).toEqual([]);
    expect(pins.size).toBe(3);
  });

  it('compares names as given: callers pass canonical names', () => {
    const pins = new PinTable(fakeClock().now);
    pins.pin('git.example.com', ['192.0.2.10'], 60_000);
    expect(pins.addressesFor('GIT.example.com')).toEqual([]);
    expect(pins.namesFor('192.0.2.10')).toEqual(['git.example.com']);
  });

  it('a new pin of a name adds to its addresses, it does not replace them', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('cdn.example.com', ['192.0.2.1'], 10_000);
    pins.pin('cdn.example.com', ['192.0.2.2'], 10_000);
    expect(sorted(pins.addressesFor('cdn.example.com'))).toEqual(['192.0.2.1', '192.0.2.2']);
  });

  it('duplicate addresses in one pin count once', () => {
    const pins = new PinTable(fakeClock().now);
    pins.pin('a.example', ['192.0.2.1', '192.0.2.1'], 1000);
    expect(pins.size).toBe(1);
    expect(pins.addressesFor('a.example')).toEqual(['192.0.2.1']);
  });

  it('clear() removes everything, permanent pins included', () => {
    const pins = new PinTable(fakeClock().now);
    pins.pin('a.example', ['192.0.2.1'], Infinity);
    pins.pin('b.example', ['192.0.2.2'], 1000);
    pins.clear();
    expect(pins.size).toBe(0);
    expect(pins.namesFor('192.0.2.1')).toEqual([]);
    expect(pins.addressesFor('b.example')).toEqual([]);
    pins.pin('a.example', ['192.0.2.1'], 1000);
    expect(pins.namesFor('192.0.2.1')).toEqual(['a.example']);
  });

  it('refuses a bad maxEntries', () => {
    expect(() => new PinTable(() => 0, { maxEntries: 0 })).toThrow(RangeError);
    expect(() => new PinTable(() => 0, { maxEntries: 1.5 })).toThrow(RangeError);
  });

  it('defaults to 65536 entries', () => {
    expect(DEFAULT_MAX_PIN_ENTRIES).toBe(65536);
  });
});

describe('PinTable expiry (fake clock)', () => {
  it('a pair is gone at exactly pin time + ttl', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('a.example', ['192.0.2.1'], 5000);
    clock.t += 4999;
    expect(pins.namesFor('192.0.2.1')).toEqual(['a.example']);
    expect(pins.size).toBe(1);
    clock.t += 1;
    expect(pins.namesFor('192.0.2.1')).toEqual([]);
    expect(pins.addressesFor('a.example')).toEqual([]);
    expect(pins.size).toBe(0);
  });

  it('each pair keeps its latest expiry: a shorter re-pin does not shorten it', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('a.example', ['192.0.2.1'], 10_000);
    pins.pin('a.example', ['192.0.2.1'], 1_000);
    clock.t += 5_000;
    expect(pins.namesFor('192.0.2.1')).toEqual(['a.example']);
    pins.pin('a.example', ['192.0.2.1'], 20_000); // now expires at +25 s
    clock.t += 19_999;
    expect(pins.namesFor('192.0.2.1')).toEqual(['a.example']);
    clock.t += 1;
    expect(pins.namesFor('192.0.2.1')).toEqual([]);
  });

  it('addresses of one name expire independently', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('a.example', ['192.0.2.1'], 1000);
    pins.pin('a.example', ['192.0.2.2'], 3000);
    clock.t += 2000;
    expect(pins.addressesFor('a.example')).toEqual(['192.0.2.2']);
  });

  it('Infinity pins until clear()', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('a.example', ['192.0.2.1'], 1000);
    pins.pin('a.example', ['192.0.2.1'], Infinity);
    clock.t += 1e12;
    expect(pins.namesFor('192.0.2.1')).toEqual(['a.example']);
  });

  it('ttl <= 0 or NaN stores nothing and does not shorten an existing pair', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now);
    pins.pin('a.example', ['192.0.2.1'], 0);
    pins.pin('a.example', ['192.0.2.2'], -5);
    pins.pin('a.example', ['192.0.2.3'], Number.NaN);
    expect(pins.size).toBe(0);
    pins.pin('a.example', ['192.0.2.1'], 1000);
    pins.pin('a.example', ['192.0.2.1'], 0);
    expect(pins.namesFor('192.0.2.1')).toEqual(['a.example']);
  });
});

describe('PinTable bound', () => {
  it('evicts the soonest-expiring pairs first, expired ones before live ones', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now, { maxEntries: 3 });
    pins.pin('long.example', ['192.0.2.1'], 100_000);
    pins.pin('short.example', ['192.0.2.2'], 1_000);
    pins.pin('mid.example', ['192.0.2.3'], 50_000);
    pins.pin('new.example', ['192.0.2.4'], 60_000);
    expect(pins.size).toBe(3);
    expect(pins.addressesFor('short.example')).toEqual([]);
    expect(pins.addressesFor('long.example')).toEqual(['192.0.2.1']);
    expect(pins.addressesFor('new.example')).toEqual(['192.0.2.4']);
    // The newcomer itself goes when it is the one expiring soonest.
    pins.pin('tiny.example', ['192.0.2.5'], 10);
    expect(pins.addressesFor('tiny.example')).toEqual([]);
    expect(pins.addressesFor('mid.example')).toEqual(['192.0.2.3']);
  });

  it('never evicts permanent pins; a permanent pin beyond the bound is not stored', () => {
    const clock = fakeClock();
    const pins = new PinTable(clock.now, { maxEntries: 2 });
    pins.pin('p1.example', ['192.0.2.1'], Infinity);
    pins.pin('t.example', ['192.0.2.2'], 1_000);
    pins.pin('p2.example', ['192.0.2.3'], Infinity); // evicts t.example
    expect(pins.addressesFor('t.example')).toEqual([]);
    pins.pin('p3.example', ['192.0.2.4'], Infinity); // nothing evictable: refused
    pins.pin('t2.example', ['192.0.2.5'], 1e9); // itself the only evictable pair
    expect(pins.size).toBe(2);
    expect(pins.addressesFor('p1.example')).toEqual(['192.0.2.1']);
    expect(pins.addressesFor('p2.example')).toEqual(['192.0.2.3']);
    expect(pins.addressesFor('p3.example')).toEqual([]);
    expect(pins.addressesFor('t2.example')).toEqual([]);
  });

  it('the bound and both indexes stay consistent under random pins and clock moves (property)', () => {
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('pin' as const),
        name: fc.integer({ min: 0, max: 9 }),
        addrs: fc.array(fc.integer({ min: 0, max: 14 }), { maxLength: 5 }),
        ttl: fc.oneof(fc.integer({ min: -10, max: 5000 }), fc.constant(Infinity)),
      }),
      fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 3000 }) }),
      fc.record({ kind: fc.constant('look' as const), name: fc.integer({ min: 0, max: 9 }), addr: fc.integer({ min: 0, max: 14 }) }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 12 }), fc.array(op, { maxLength: 120 }), (max, ops) => {
        const clock = fakeClock(0);
        const pins = new PinTable(clock.now, { maxEntries: max });
        // A model of the latest expiry per pair, to check what is present is right.
        const latest = new Map<string, number>();
        for (const o of ops) {
          if (o.kind === 'pin') {
            const name = `n${o.name}.example`;
            const addrs = o.addrs.map((a) => `192.0.2.${a}`);
            pins.pin(name, addrs, o.ttl);
            if (o.ttl > 0) {
              for (const a of addrs) {
                const k = `${name} ${a}`;
                latest.set(k, Math.max(latest.get(k) ?? -Infinity, clock.t + o.ttl));
              }
            }
          } else if (o.kind === 'tick') {
            clock.t += o.ms;
          } else {
            pins.namesFor(`192.0.2.${o.addr}`);
            pins.addressesFor(`n${o.name}.example`);
          }
          expect(pins.size).toBeLessThanOrEqual(max);
          // Every pair present is unexpired, pinned by the caller, and seen from both sides.
          let pairs = 0;
          for (let n = 0; n < 10; n++) {
            const name = `n${n}.example`;
            for (const a of pins.addressesFor(name)) {
              pairs++;
              const exp = latest.get(`${name} ${a}`);
              expect(exp).toBeDefined();
              expect(exp!).toBeGreaterThan(clock.t);
              expect(pins.namesFor(a)).toContain(name);
            }
          }
          expect(pairs).toBe(pins.size);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('holds the bound under a flood of distinct pairs with refreshes', () => {
    const clock = fakeClock(0);
    const pins = new PinTable(clock.now, { maxEntries: 100 });
    for (let i = 0; i < 20_000; i++) {
      pins.pin(`n${i % 500}.example`, [`10.0.${i % 7}.${i % 250}`], 1000 + (i % 97));
      if (i % 10 === 0) clock.t += 1;
    }
    expect(pins.size).toBeLessThanOrEqual(100);
    expect(pins.size).toBeGreaterThan(0);
    // The expiry heap (private) is compacted, so memory is bounded too, not just the pair count.
    const heap = (pins as unknown as { heap: unknown[] }).heap;
    expect(heap.length).toBeLessThanOrEqual(2 * 100 + 64 + 1);
  });
});
