import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ManualClock } from '../../netstack/clock.js';
import { DEFAULT_LIVE_BUDGET, LiveLookupBudget, MAX_NAME_TEXT, type LiveBudgetLimits } from '../../dns/live-budget.js';

const B32 = 'abcdefghijklmnopqrstuvwxyz234567';
/** A tunnel's name: labels of base32 up to 253 characters below `domain`. */
function tunnelName(i: number, domain: string): string {
  const seed = i.toString(32).padStart(8, 'a');
  const body = (seed + B32.repeat(8)).slice(0, 253 - domain.length - 1);
  const labels = body.match(/.{1,63}/g)!;
  return `${labels.join('.')}.${domain}`.slice(0, 253);
}

function budget(clock: ManualClock, limits: Partial<LiveBudgetLimits> = {}, extra: { maxRemembered?: number; enabled?: boolean } = {}): LiveLookupBudget {
  return new LiveLookupBudget({ ...DEFAULT_LIVE_BUDGET, ...limits, ...extra, now: () => clock.now() });
}

describe('LiveLookupBudget', () => {
  it('a new name costs one name and its length; past either burst it is over budget and nothing is taken', () => {
    const clock = new ManualClock();
    const b = budget(clock, { nameBurst: 3, byteBurst: 260, namesPerSecond: 1, bytesPerSecond: 10 });
    expect(b.spend('a.cdn.test')).toBe('spent');
    expect(b.spend('b.cdn.test')).toBe('spent');
    expect(b.spend('c.cdn.test')).toBe('spent');
    expect(b.spend('d.cdn.test')).toBe('over-budget'); // names bucket empty
    clock.advance(1000); // one name back, 10 bytes back: 240 bytes
    const long = `${'x'.repeat(241)}.cdn.test`; // 250 bytes
    expect(b.spend(long)).toBe('over-budget');
    expect(b.spend('d.cdn.test')).toBe('spent'); // the refusal above took no name token
    expect(b.stats).toMatchObject({ spent: 4, overBudget: 2, spentBytes: 40 });
  });

  it('a name answered and within its TTL is free; after the TTL it costs again', () => {
    const clock = new ManualClock();
    const b = budget(clock, { nameBurst: 1, namesPerSecond: 0 });
    expect(b.spend('img.cdn.test')).toBe('spent');
    b.answered('img.cdn.test', 60);
    for (let i = 0; i < 100; i++) expect(b.spend('img.cdn.test')).toBe('free');
    clock.advance(60_000);
    expect(b.spend('img.cdn.test')).toBe('over-budget');
    expect(b.stats.free).toBe(100);
  });

  it('the same name asked again while its first lookup runs is free (pending), then costs once the pending time is over', () => {
    const clock = new ManualClock();
    const b = new LiveLookupBudget({ ...DEFAULT_LIVE_BUDGET, nameBurst: 1, namesPerSecond: 0, pendingMs: 5_000, now: () => clock.now() });
    expect(b.spend('x.cdn.test')).toBe('spent');
    expect(b.spend('x.cdn.test')).toBe('free');
    clock.advance(5_000);
    expect(b.spend('x.cdn.test')).toBe('over-budget');
  });

  it('remembers at most maxRemembered names, least recently used evicted first; an evicted name costs again', () => {
    const clock = new ManualClock();
    const b = budget(clock, { nameBurst: 1000, byteBurst: 100_000 }, { maxRemembered: 3 });
    for (const n of ['a.t', 'b.t', 'c.t']) {
      b.spend(n);
      b.answered(n, 300);
    }
    expect(b.spend('a.t')).toBe('free'); // a is now the most recently used: b is the oldest
    b.spend('d.t');
    b.answered('d.t', 300);
    expect(b.stats).toMatchObject({ remembered: 3, evicted: 1 });
    expect(b.spend('a.t')).toBe('free');
    expect(b.spend('c.t')).toBe('free');
    expect(b.spend('b.t')).toBe('spent'); // evicted: paid again
    // Driving far past the bound keeps it there.
    for (let i = 0; i < 500; i++) b.spend(`n${i}.t`);
    expect(b.stats.remembered).toBe(3);
    expect(b.stats.evicted).toBeGreaterThan(400);
  });

  it('turned off: a name not remembered is refused as off; nothing is spent', () => {
    const clock = new ManualClock();
    const b = budget(clock, {}, { enabled: false });
    expect(b.spend('img.cdn.test')).toBe('off');
    expect(b.stats).toMatchObject({ off: 1, spent: 0, overBudget: 0 });
  });

  it('reports refusals at most once per interval, with the count since the last report', () => {
    const clock = new ManualClock();
    const b = new LiveLookupBudget({ ...DEFAULT_LIVE_BUDGET, nameBurst: 1, namesPerSecond: 0, reportIntervalMs: 10_000, now: () => clock.now() });
    b.spend('a.t');
    expect(b.takeReport()).toBe(0); // nothing refused yet
    b.spend('b.t');
    expect(b.takeReport()).toBe(1);
    for (let i = 0; i < 50; i++) {
      b.spend(`c${i}.t`);
      expect(b.takeReport()).toBe(0);
    }
    clock.advance(10_000);
    b.spend('d.t');
    expect(b.takeReport()).toBe(51);
    expect(b.stats.overBudget).toBe(52);
  });

  it('rejects limits that could never pay for a name', () => {
    const clock = new ManualClock();
    expect(() => budget(clock, { byteBurst: MAX_NAME_TEXT - 1 })).toThrow(/byteBurst/);
    expect(() => budget(clock, { nameBurst: 0 })).toThrow(/nameBurst/);
    expect(() => budget(clock, { namesPerSecond: -1 })).toThrow(/namesPerSecond/);
    expect(() => budget(clock, { bytesPerSecond: Number.NaN })).toThrow(/bytesPerSecond/);
  });

  it('the defaults hold a tunnel of 253-character names to burst + rate x elapsed, and at most 2 KB/s over 30 s (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 200 }), { minLength: 1, maxLength: 400 }), (gaps) => {
        const clock = new ManualClock();
        const b = budget(clock);
        let bytes = 0;
        let i = 0;
        for (const gap of gaps) {
          clock.advance(gap);
          const name = tunnelName(i++, 'wild.test');
          if (b.spend(name) === 'spent') bytes += name.length;
        }
        const seconds = clock.now() / 1000;
        expect(bytes).toBeLessThanOrEqual(DEFAULT_LIVE_BUDGET.byteBurst + DEFAULT_LIVE_BUDGET.bytesPerSecond * seconds);
      }),
    );
    // The figure: asking as fast as possible for 30 s.
    const clock = new ManualClock();
    const b = budget(clock);
    let bytes = 0;
    for (let i = 0; clock.now() < 30_000; i++) {
      const name = tunnelName(i, 'wild.test');
      if (b.spend(name) === 'spent') bytes += name.length;
      clock.advance(1);
    }
    expect(bytes / 30).toBeLessThanOrEqual(2048);
  });

  it('the defaults let a package manager touch 50 CDN names at once, then 10 new names a second, with repeats free', () => {
    const clock = new ManualClock();
    const b = budget(clock);
    const names = Array.from({ length: 50 }, (_, i) => `pkg-${i}.files.cdn-example-mirror.org`);
    for (const n of names) {
      expect(b.spend(n)).toBe('spent');
      b.answered(n, 60);
    }
    for (const n of names) expect(b.spend(n)).toBe('free');
    for (let s = 0; s < 60; s++) {
      clock.advance(1000);
      for (let k = 0; k < 10; k++) {
        const n = `more-${s}-${k}.cdn-example-mirror.org`;
        expect(b.spend(n), n).toBe('spent');
        b.answered(n, 60);
      }
    }
  });
});
