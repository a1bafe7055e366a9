/**
 * Real time for the stack, and the one timer that drives it.
 *
 * netstack/ never reads a clock or sets a timer: it keeps its own timer wheel
 * and says when it next needs attention (nextDeadline()). The TimerDriver
 * keeps exactly one setTimeout armed for that moment and calls advance() when
 * it fires. After anything that may arm a new stack timer (input, a deferred
 * flush, a socket write from the NAT) the owner calls reschedule(), which
 * moves the single timeout only when the deadline changed.
 */
import type { Clock } from '../netstack/clock.js';

/** Monotonic milliseconds (performance.now): never jumps with the wall clock. */
export class MonotonicClock implements Clock {
  now(): number {
    return performance.now();
  }
}

/** The part of NetStack the driver needs. */
export interface TimedStack {
  advance(now?: number): void;
  nextDeadline(): number | undefined;
}

/** setTimeout/clearTimeout, injectable so that tests can drive time by hand. */
export interface TimerApi {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const NODE_TIMERS: TimerApi = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    // The listening sockets keep the process alive; a stack timer alone must not.
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export class TimerDriver {
  private stack: TimedStack | undefined;
  private handle: unknown;
  /** The deadline the armed timeout is for (undefined: none armed). */
  private armedFor: number | undefined;
  private stopped = false;
  private readonly deferred: (() => void)[] = [];
  private deferScheduled = false;

  constructor(
    private readonly clock: Clock,
    private readonly timers: TimerApi = NODE_TIMERS,
    /** How deferred work is scheduled; setImmediate runs after the current I/O callbacks, so their output coalesces. */
    private readonly scheduleSoon: (fn: () => void) => void = (fn) => setImmediate(fn),
  ) {}

  /** The stack is created after the driver (it needs `defer`), so it is attached afterwards. */
  attach(stack: TimedStack): void {
    this.stack = stack;
    this.reschedule();
  }

  /**
   * The `defer` createStack takes: runs fn soon, after the current event
   * callbacks, then re-arms the timer for whatever fn scheduled. Several defers
   * in one turn share one setImmediate.
   */
  readonly defer = (fn: () => void): void => {
    if (this.stopped) return;
    this.deferred.push(fn);
    if (this.deferScheduled) return;
    this.deferScheduled = true;
    this.scheduleSoon(() => this.runDeferred());
  };

  private runDeferred(): void {
    this.deferScheduled = false;
    // Work deferred while running is taken in this same pass (bounded by what callers queue).
    while (this.deferred.length > 0 && !this.stopped) {
      const fn = this.deferred.shift()!;
      fn();
    }
    this.reschedule();
  }

  /** Arms the timeout for the stack's next deadline (or disarms it). Cheap when nothing changed. */
  reschedule(): void {
    if (this.stopped || this.stack === undefined) return;
    const deadline = this.stack.nextDeadline();
    if (deadline === this.armedFor) return;
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.handle = undefined;
    this.armedFor = deadline;
    if (deadline === undefined) return;
    const delay = Math.max(0, Math.ceil(deadline - this.clock.now()));
    this.handle = this.timers.setTimeout(() => this.fire(), delay);
  }

  private fire(): void {
    this.handle = undefined;
    this.armedFor = undefined;
    if (this.stopped || this.stack === undefined) return;
    this.stack.advance(this.clock.now());
    this.reschedule();
  }

  /** Disarms the timer and drops deferred work: the service is shutting down. */
  stop(): void {
    this.stopped = true;
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.handle = undefined;
    this.armedFor = undefined;
    this.deferred.length = 0;
  }
}
