import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { RateLimiter, type LimiterTimers } from '../../src/traffic/rate-limiter.js';

/** Timers on a hand-moved clock: fire() runs what is due. */
function manualTimers(clock: { t: number }): LimiterTimers & { runDue(): void; pending(): number } {
  const timers = new Map<number, { at: number; fn: () => void }>();
  let next = 1;
  return {
    setTimeout(fn, ms) {
      const id = next++;
      timers.set(id, { at: clock.t + ms, fn });
      return id;
    },
    clearTimeout(h) {
      timers.delete(h as number);
    },
    runDue() {
      for (const [id, e] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
        if (e.at > clock.t) continue;
        timers.delete(id);
        e.fn();
      }
    },
    pending: () => timers.size,
  };
}

describe('RateLimiter', () => {
  it('property: over any schedule, bytes passed <= rate x t + burst', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 10_000_000 }),
        fc.integer({ min: 1500, max: 2_000_000 }),
        fc.array(fc.record({ dt: fc.integer({ min: 0, max: 2000 }), want: fc.integer({ min: 0, max: 1 << 20 }) }), { maxLength: 200 }),
        (rate, burst, schedule) => {
          const clock = { t: 0 };
          const l = new RateLimiter({ rate, burst }, () => clock.t, manualTimers(clock));
          let passed = 0;
          for (const step of schedule) {
            clock.t += step.dt;
            // A flow passes at most its allowance, as TcpPipe does.
            const n = Math.min(step.want, l.allowance());
            l.spend(n);
            passed += n;
            expect(passed).toBeLessThanOrEqual((rate * clock.t) / 1000 + burst + 1e-6);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('property: spending more than the allowance is clamped (the invariant holds even for a careless caller)', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ dt: fc.integer({ min: 0, max: 500 }), n: fc.integer({ min: 0, max: 1 << 22 }) }), { maxLength: 100 }), (schedule) => {
        const clock = { t: 0 };
        const l = new RateLimiter({ rate: 1_000_000, burst: 100_000 }, () => clock.t, manualTimers(clock));
        for (const s of schedule) {
          clock.t += s.dt;
          l.spend(s.n);
          expect(l.stats().bytes).toBeLessThanOrEqual(clock.t * 1000 + 100_000);
        }
      }),
    );
  });

  it('a greedy sender over 10 s gets rate x 10 s + burst, within one quantum', () => {
    const clock = { t: 0 };
    const timers = manualTimers(clock);
    const l = new RateLimiter({ rate: 6_250_000, burst: 625_000 }, () => clock.t, timers);
    let passed = 0;
    const pump = (): void => {
      const n = l.allowance();
      l.spend(n);
      passed += n;
      l.wait(pump);
    };
    pump();
    while (clock.t < 10_000) {
      clock.t += 1;
      timers.runDue();
    }
    expect(passed).toBeGreaterThan(6_250_000 * 10 + 625_000 - 20_000);
    expect(passed).toBeLessThanOrEqual(6_250_000 * 10 + 625_000);
  });

  it('waiters are woken in turn with one timer; a cancelled one is not woken', () => {
    const clock = { t: 0 };
    const timers = manualTimers(clock);
    const l = new RateLimiter({ rate: 1000, burst: 2000 }, () => clock.t, timers);
    l.spend(2000);
    const woken: string[] = [];
    const a = (): void => void woken.push('a');
    const b = (): void => void woken.push('b');
    const c = (): void => void woken.push('c');
    l.wait(a);
    l.wait(b);
    l.wait(b); // twice: once
    l.wait(c);
    l.cancel(c);
    expect(timers.pending()).toBe(1);
    expect(l.stats().waiting).toBe(2);
    clock.t += 2000;
    timers.runDue();
    expect(woken).toEqual(['a', 'b']);
    expect(timers.pending()).toBe(0);
  });

  it('datagrams pass whole or are dropped and counted', () => {
    const clock = { t: 0 };
    const l = new RateLimiter({ rate: 1000, burst: 1500 }, () => clock.t, manualTimers(clock));
    expect(l.admitDatagram(1200)).toBe(true);
    expect(l.admitDatagram(1200)).toBe(false);
    clock.t += 1000;
    expect(l.admitDatagram(1200)).toBe(true);
    expect(l.stats()).toMatchObject({ bytes: 2400, droppedDatagrams: 1, droppedBytes: 1200 });
  });
});
