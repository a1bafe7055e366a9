import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../netstack/clock.js';
import { MonotonicClock, TimerDriver, type TimerApi } from '../../src/clock.js';

/** Timers that fire only when the test says so. */
class FakeTimers implements TimerApi {
  armed = new Map<number, { fn: () => void; ms: number }>();
  private next = 1;
  setCount = 0;
  setTimeout(fn: () => void, ms: number): unknown {
    this.setCount++;
    const id = this.next++;
    this.armed.set(id, { fn, ms });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.armed.delete(h as number);
  }
  fireAll(): void {
    const all = [...this.armed.values()];
    this.armed.clear();
    for (const t of all) t.fn();
  }
}

class DeadlineStack {
  deadline: number | undefined;
  advancedAt: (number | undefined)[] = [];
  onAdvance: (() => void) | undefined;
  advance(now?: number): void {
    this.advancedAt.push(now);
    this.onAdvance?.();
  }
  nextDeadline(): number | undefined {
    return this.deadline;
  }
}

describe('TimerDriver', () => {
  it('keeps one timeout armed for the next deadline and calls advance(now) when it fires', () => {
    const clock = new ManualClock(1000);
    const timers = new FakeTimers();
    const stack = new DeadlineStack();
    const driver = new TimerDriver(clock, timers, () => {});
    stack.deadline = 1200;
    driver.attach(stack);
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([200]);

    // Same deadline: nothing re-armed.
    driver.reschedule();
    expect(timers.setCount).toBe(1);

    // Earlier deadline: the one timeout moves.
    stack.deadline = 1050;
    driver.reschedule();
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([50]);

    clock.set(1050);
    stack.onAdvance = () => {
      stack.deadline = 3050;
    };
    timers.fireAll();
    expect(stack.advancedAt).toEqual([1050]);
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([2000]);

    // A later deadline (an ACK pushed the retransmission out) re-arms nothing:
    // the armed timeout fires early instead, finds nothing due and re-arms.
    stack.onAdvance = undefined;
    stack.deadline = 4000;
    driver.reschedule();
    expect(timers.setCount).toBe(3);
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([2000]);
    clock.set(3050);
    timers.fireAll();
    expect(stack.advancedAt).toEqual([1050, 3050]);
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([950]);

    // No deadline: nothing is armed again after the next fire.
    stack.deadline = undefined;
    driver.reschedule();
    clock.set(4000);
    timers.fireAll();
    expect(timers.armed.size).toBe(0);
  });

  it('never fires later than the deadline, however deadlines move', () => {
    const clock = new ManualClock(0);
    const timers = new FakeTimers();
    const stack = new DeadlineStack();
    const driver = new TimerDriver(clock, timers, () => {});
    driver.attach(stack);
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let i = 0; i < 2000; i++) {
      stack.deadline = rand(5) === 0 ? undefined : clock.now() + 1 + rand(300);
      driver.reschedule();
      if (stack.deadline !== undefined) {
        const armedAt = Math.min(...[...timers.armed.values()].map((t) => clock.now() + t.ms));
        expect(armedAt).toBeLessThanOrEqual(stack.deadline);
      }
      if (rand(3) === 0) {
        // Time passes to the armed timeout, which fires.
        const [first] = [...timers.armed.values()];
        if (first !== undefined) {
          clock.set(clock.now() + first.ms);
          timers.fireAll();
        }
      }
    }
    expect(timers.armed.size).toBeLessThanOrEqual(1);
  });

  it('never arms a negative delay for a deadline already past', () => {
    const clock = new ManualClock(5000);
    const timers = new FakeTimers();
    const stack = new DeadlineStack();
    stack.deadline = 4000;
    new TimerDriver(clock, timers, () => {}).attach(stack);
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([0]);
  });

  it('runs deferred work in one scheduled pass and re-arms afterwards', () => {
    const clock = new ManualClock(0);
    const timers = new FakeTimers();
    const soon: (() => void)[] = [];
    const stack = new DeadlineStack();
    const driver = new TimerDriver(clock, timers, (fn) => soon.push(fn));
    driver.attach(stack);
    const ran: string[] = [];
    driver.defer(() => ran.push('a'));
    driver.defer(() => {
      ran.push('b');
      stack.deadline = 10; // the flush armed a retransmission
    });
    expect(soon).toHaveLength(1);
    expect(ran).toEqual([]);
    soon.shift()!();
    expect(ran).toEqual(['a', 'b']);
    expect([...timers.armed.values()].map((t) => t.ms)).toEqual([10]);
  });

  it('hands a throw from advance() or deferred work to onFault (one network closes), and throws without it', () => {
    const clock = new ManualClock(0);
    const timers = new FakeTimers();
    const soon: (() => void)[] = [];
    const stack = new DeadlineStack();
    stack.deadline = 5;
    const faults: string[] = [];
    const driver = new TimerDriver(clock, timers, (fn) => soon.push(fn), (e) => faults.push((e as Error).message));
    driver.attach(stack);
    stack.onAdvance = () => {
      throw new Error('in advance');
    };
    expect(() => timers.fireAll()).not.toThrow();
    driver.defer(() => {
      throw new Error('in deferred');
    });
    driver.defer(() => faults.push('not reached: the pass stops at the fault'));
    expect(() => soon.shift()!()).not.toThrow();
    expect(faults).toEqual(['in advance', 'in deferred']);

    // Without onFault (moat serve's driver before, any embedder): the throw propagates as from any timer.
    const bare = new TimerDriver(clock, new FakeTimers(), (fn) => soon.push(fn));
    bare.defer(() => {
      throw new Error('propagates');
    });
    expect(() => soon.shift()!()).toThrow('propagates');
  });

  it('stop() disarms and ignores later defers and fires', () => {
    const clock = new ManualClock(0);
    const timers = new FakeTimers();
    const soon: (() => void)[] = [];
    const stack = new DeadlineStack();
    stack.deadline = 5;
    const driver = new TimerDriver(clock, timers, (fn) => soon.push(fn));
    driver.attach(stack);
    driver.stop();
    expect(timers.armed.size).toBe(0);
    driver.defer(() => {
      throw new Error('must not run');
    });
    expect(soon).toHaveLength(0);
    driver.reschedule();
    expect(timers.armed.size).toBe(0);
  });

  it('drives a stack with real timers', async () => {
    const stack = new DeadlineStack();
    const clock = new MonotonicClock();
    const deadline = clock.now() + 20;
    stack.deadline = deadline;
    stack.onAdvance = () => {
      stack.deadline = undefined;
    };
    const driver = new TimerDriver(clock);
    driver.attach(stack);
    await new Promise((r) => setTimeout(r, 80));
    expect(stack.advancedAt).toHaveLength(1);
    // Node may fire a timer up to a millisecond early (it rounds); never more.
    expect(stack.advancedAt[0]!).toBeGreaterThanOrEqual(deadline - 1);
    driver.stop();
  });
});

describe('MonotonicClock', () => {
  it('never goes back', () => {
    const c = new MonotonicClock();
    let prev = c.now();
    for (let i = 0; i < 1000; i++) {
      const t = c.now();
      expect(t).toBeGreaterThanOrEqual(prev);
      prev = t;
    }
  });
});
