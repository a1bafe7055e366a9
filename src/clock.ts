/**
 * Real time for the stack, and the one timer that drives it.
 *
 * netstack/ never reads a clock or sets a timer: it keeps its own timer wheel
 * and says when it next needs attention (nextDeadline()). The TimerDriver
 * keeps exactly one setTimeout armed for that moment and calls advance() when
 * it fires. After anything that may arm a new stack timer (input, a deferred
 * flush, a socket write from the NAT) the owner calls reschedule(), which
 * moves the single timeout only when the deadline came earlier.
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
  // Emptied by count, not `length = 0` (which frees the store, so that the next push allocates).
  private readonly deferred: (() => void)[] = [];
  private deferredCount = 0;
  private deferScheduled = false;

  constructor(
    private readonly clock: Clock,
    private readonly timers: TimerApi = NODE_TIMERS,
    /** How deferred work is scheduled; setImmediate runs after the current I/O callbacks, so their output coalesces. */
    private readonly scheduleSoon: (fn: () => void) => void = (fn) => setImmediate(fn),
    /**
     * A throw from the stack's timers or deferred work: the owner's network
     * closes (one network's fault must not end the process). Without it the
     * throw propagates, as from any timer.
     */
    private readonly onFault?: (e: unknown) => void,
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
    this.deferred[this.deferredCount++] = fn;
    if (this.deferScheduled) return;
    this.deferScheduled = true;
    this.scheduleSoon(this.runDeferredBound);
  };

  private readonly runDeferredBound = (): void => this.guarded(this.runDeferredFn);
  private readonly runDeferredFn = (): void => this.runDeferred();

  private runDeferred(): void {
    this.deferScheduled = false;
    // Work deferred while running is taken in this same pass (bounded by what callers queue).
    // An index walk, not shift(): shift() moves the array's store on every call.
    for (let i = 0; i < this.deferredCount && !this.stopped; i++) this.deferred[i]!();
    this.deferredCount = 0;
    this.reschedule();
  }

  /**
   * Makes sure a timeout fires no later than the stack's next deadline. Cheap
   * when nothing changed. A timeout already armed for an earlier time is left
   * alone (it fires early, finds nothing due, and re-arms for the real
   * deadline): deadlines mostly move later (every ACK pushes the
   * retransmission timer out, a cancelled delayed ACK drops its 4 ms), and
   * clearing and re-creating a timer for each of those moves cost a Timeout
   * allocation per packet.
   */
  reschedule(): void {
    if (this.stopped || this.stack === undefined) return;
    const deadline = this.stack.nextDeadline();
    if (deadline === undefined || (this.armedFor !== undefined && this.armedFor <= deadline)) return;
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.armedFor = deadline;
    const delay = Math.max(0, Math.ceil(deadline - this.clock.now()));
    this.handle = this.timers.setTimeout(this.fireBound, delay);
  }

  private readonly fireBound = (): void => this.guarded(this.fireFn);
  private readonly fireFn = (): void => this.fire();

  private guarded(fn: () => void): void {
    if (this.onFault === undefined) return fn();
    try {
      fn();
    } catch (e) {
      this.deferredCount = 0;
      this.onFault(e);
    }
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
    this.deferredCount = 0;
    this.deferred.length = 0;
  }
}
