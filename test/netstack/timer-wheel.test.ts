import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { Timer, TimerWheel } from '../../netstack/timer-wheel.js';
import { ManualClock } from '../../netstack/clock.js';

describe('TimerWheel', () => {
  it('fires each timer at the first advance at or after its deadline\'s tick, never before (fractional clocks too)', () => {
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 0, max: 12000 }).map((n) => n / 4), { minLength: 1, maxLength: 40 }),
      fc.constantFrom(1, 4, 10), fc.constantFrom(8, 64, 4096),
      fc.array(fc.integer({ min: 1, max: 200 }).map((n) => n / 4), { minLength: 1, maxLength: 200 }),
      fc.constantFrom(1000, 1000.3),
      (delays, tickMs, slots, steps, start) => {
        const clock = new ManualClock(start);
        const wheel = new TimerWheel(clock, tickMs, slots);
        const firedAt = new Map<number, number>();
        delays.forEach((delay, i) => wheel.arm(new Timer(() => firedAt.set(i, clock.now())), delay));
        expect(wheel.size).toBe(delays.length);
        let previous = clock.now();
        for (let k = 0; firedAt.size < delays.length; k++) {
          clock.advance(steps[k % steps.length]!);
          wheel.advance();
          for (const [i, t] of firedAt) {
            if (t !== clock.now()) continue;
            const deadline = start + delays[i]!;
            expect(t).toBeGreaterThanOrEqual(deadline);
            // Not late either: the previous advance came before the end of the
            // tick in which the deadline falls (the wheel's resolution), or of
            // the tick after arming, for a deadline inside the current tick.
            const dueTick = Math.max(Math.ceil(deadline / tickMs), Math.floor(start / tickMs) + 1);
            expect(previous).toBeLessThan(dueTick * tickMs);
          }
          previous = clock.now();
        }
        expect(wheel.size).toBe(0);
      },
    ), { numRuns: 150 });
  });

  it('fires timers in deadline-tick order when advanced by less than a rotation', () => {
    fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: 500 }), { minLength: 2, maxLength: 50 }), fc.integer({ min: 1, max: 511 }), (delays, jump) => {
      const clock = new ManualClock(0);
      const wheel = new TimerWheel(clock, 1, 512);
      const order: number[] = [];
      for (const d of delays) wheel.arm(new Timer(() => order.push(d)), d);
      while (wheel.size > 0) { clock.advance(jump); wheel.advance(); }
      expect(order).toEqual([...delays].sort((a, b) => a - b));
    }));
  });

  // Regression: timers were once filed by floor(deadline / tickMs); an advance()
  // inside that tick but before the deadline marked the slot processed and the
  // timer waited a whole rotation (clock 0.5, arm(3), advance at 3.2: fired at 19
  // on a 16-slot wheel instead of 4). They are now filed by ceil().
  it('fires a timer whose deadline lies inside an already processed tick on time', () => {
    const clock = new ManualClock(0.5);
    const wheel = new TimerWheel(clock, 1, 16);
    let firedAt = -1;
    wheel.arm(new Timer(() => { firedAt = clock.now(); }), 3);
    clock.set(3.2); wheel.advance();
    for (let t = 4; t <= 40 && firedAt < 0; t++) { clock.set(t); wheel.advance(); }
    expect(firedAt).toBe(4);
  });

  it('with tickMs 10, a deadline at 1171 fires by 1180, not a rotation later', () => {
    const clock = new ManualClock(1000);
    const wheel = new TimerWheel(clock, 10, 8);
    let firedAt = -1;
    wheel.arm(new Timer(() => { firedAt = clock.now(); }), 171);
    while (firedAt < 0 && clock.now() < 2000) { clock.advance(1); wheel.advance(); }
    expect(firedAt).toBeLessThanOrEqual(1180);
  });

  it('a timer cancelled by another callback of the same advance does not fire', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel(clock, 1, 16);
    let fired = 0;
    const a: Timer = new Timer(() => { fired++; wheel.cancel(b); });
    const b: Timer = new Timer(() => { fired++; wheel.cancel(a); });
    wheel.arm(a, 5); wheel.arm(b, 5);
    clock.advance(5);
    expect(wheel.advance()).toBe(1);
    expect(fired).toBe(1);
    expect(wheel.size).toBe(0);
  });

  it('cancel prevents firing; cancelling twice or an unarmed timer is harmless', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel(clock, 1, 16);
    let a = 0; let b = 0;
    const ta = new Timer(() => a++);
    const tb = new Timer(() => b++);
    wheel.arm(ta, 5); wheel.arm(tb, 5);
    wheel.cancel(ta); wheel.cancel(ta);
    wheel.cancel(new Timer(() => {}));
    expect(ta.armed).toBe(false);
    expect(wheel.size).toBe(1);
    clock.advance(100);
    expect(wheel.advance()).toBe(1);
    expect([a, b]).toEqual([0, 1]);
  });

  it('re-arming moves the deadline instead of adding a second firing', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel(clock, 1, 16);
    const fired: number[] = [];
    const t = new Timer(() => fired.push(clock.now()));
    wheel.arm(t, 5);
    wheel.arm(t, 40); // crosses two rotations of a 16-slot wheel
    expect(wheel.size).toBe(1);
    for (let i = 0; i < 60; i++) { clock.advance(1); wheel.advance(); }
    expect(fired).toEqual([40]);
  });

  it('a callback may re-arm itself (periodic) and cancel or arm others', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel(clock, 1, 8);
    const ticks: number[] = [];
    let victimFired = false;
    const victim = new Timer(() => { victimFired = true; });
    const late: number[] = [];
    const lateTimer = new Timer(() => late.push(clock.now()));
    const periodic = new Timer(() => {
      ticks.push(clock.now());
      if (ticks.length === 1) { wheel.cancel(victim); wheel.arm(lateTimer, 3); }
      if (ticks.length < 5) wheel.arm(periodic, 7);
    });
    wheel.arm(periodic, 7);
    wheel.arm(victim, 8); // cancelled by the first periodic firing, before it is due
    for (let i = 0; i < 100; i++) { clock.advance(1); wheel.advance(); }
    expect(ticks).toEqual([7, 14, 21, 28, 35]);
    expect(late).toEqual([10]);
    expect(victimFired).toBe(false);
    expect(wheel.size).toBe(0);
  });

  it('a deadline already passed fires on the next tick, not a rotation later', () => {
    const clock = new ManualClock(100);
    const wheel = new TimerWheel(clock, 1, 16);
    let fired = 0;
    const t = new Timer(() => fired++);
    wheel.armAt(t, 50);
    // nextDeadline says when advance() will fire it: the next tick.
    expect(wheel.nextDeadline()).toBe(101);
    clock.advance(1);
    expect(wheel.advance()).toBe(1);
    expect(fired).toBe(1);
  });

  it('after the earliest timer is cancelled, nextDeadline finds the next one, in the same tick or rotations later', () => {
    const clock = new ManualClock(0);
    const wheel = new TimerWheel(clock, 10, 8);
    const a = new Timer(() => {});
    const b = new Timer(() => {});
    const far = new Timer(() => {});
    wheel.armAt(a, 21);
    wheel.armAt(b, 27); // the same 10 ms tick as a
    wheel.armAt(far, 5000); // many rotations later
    expect(wheel.nextDeadline()).toBe(30);
    wheel.cancel(a);
    expect(wheel.nextDeadline()).toBe(30);
    wheel.cancel(b);
    expect(wheel.nextDeadline()).toBe(5000);
    wheel.armAt(a, 45); // arming keeps it exact
    expect(wheel.nextDeadline()).toBe(50);
    wheel.armAt(a, 6000); // re-arming the earliest later
    expect(wheel.nextDeadline()).toBe(5000);
  });

  it('handles long delays across many rotations and huge clock jumps', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel(clock, 1, 8);
    const fired: number[] = [];
    for (const d of [3, 8, 9, 1000, 1003, 123456]) wheel.arm(new Timer(() => fired.push(d)), d);
    clock.set(1002); wheel.advance();
    expect(fired.sort((a, b) => a - b)).toEqual([3, 8, 9, 1000]);
    clock.set(1003); wheel.advance();
    expect(fired).toContain(1003);
    clock.set(123455); wheel.advance();
    expect(fired).not.toContain(123456);
    clock.set(123456); wheel.advance();
    expect(fired).toContain(123456);
    expect(wheel.size).toBe(0);
  });

  it('nextDeadline is when advance() fires the earliest timer, through random arm/cancel/advance', () => {
    type Op = { kind: 'arm'; timer: number; delay: number } | { kind: 'cancel'; timer: number } | { kind: 'advance'; by: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      // Short delays too, so that several timers share a tick (the cached earliest must survive cancelling one of them).
      fc.record({ kind: fc.constant('arm' as const), timer: fc.nat({ max: 9 }), delay: fc.oneof(fc.integer({ min: 0, max: 5000 }), fc.integer({ min: 0, max: 30 })) }),
      fc.record({ kind: fc.constant('cancel' as const), timer: fc.nat({ max: 9 }) }),
      fc.record({ kind: fc.constant('advance' as const), by: fc.integer({ min: 0, max: 700 }) }),
    );
    fc.assert(fc.property(fc.array(op, { maxLength: 80 }), fc.constantFrom(1, 3, 10), fc.constantFrom(4, 32, 200, 512), (ops, tickMs, slots) => {
      const clock = new ManualClock(0);
      const wheel = new TimerWheel(clock, tickMs, slots);
      const model = new Map<number, number>(); // timer index -> deadline
      const dueTick = new Map<number, number>(); // timer index -> the tick whose processing must fire it
      const timers = Array.from({ length: 10 }, (_, i) => new Timer(() => {
        const d = model.get(i);
        expect(d).toBeDefined();
        expect(d!).toBeLessThanOrEqual(clock.now());
        model.delete(i);
      }));
      for (const o of ops) {
        if (o.kind === 'arm') {
          wheel.arm(timers[o.timer]!, o.delay);
          model.set(o.timer, clock.now() + o.delay);
          // A deadline inside the tick already processed waits for the next one.
          dueTick.set(o.timer, Math.max(Math.ceil((clock.now() + o.delay) / tickMs), Math.floor(clock.now() / tickMs) + 1));
        } else if (o.kind === 'cancel') { wheel.cancel(timers[o.timer]!); model.delete(o.timer); }
        else {
          clock.advance(o.by);
          wheel.advance();
          // Everything due by the last whole tick has fired.
          for (const i of model.keys()) expect(dueTick.get(i)!).toBeGreaterThan(Math.floor(clock.now() / tickMs));
        }
        expect(wheel.size).toBe(model.size);
        // nextDeadline is when advance() will fire the earliest: its due tick's start.
        const firing = [...model.keys()].map((i) => dueTick.get(i)! * tickMs);
        expect(wheel.nextDeadline()).toBe(firing.length === 0 ? undefined : Math.min(...firing));
      }
    }), { numRuns: 300 });
  });
});
