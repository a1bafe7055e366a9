/**
 * Time as the stack sees it: monotonic milliseconds. netstack/ never reads a
 * real clock; the service passes `performance.now`-like time in, tests pass a
 * ManualClock and move it by hand.
 */
export interface Clock {
  now(): number;
}

/** A clock that only moves when told to: for deterministic tests. */
export class ManualClock implements Clock {
  constructor(private t = 0) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    if (ms < 0) throw new RangeError('a clock does not go back');
    this.t += ms;
  }
  set(ms: number): void {
    if (ms < this.t) throw new RangeError('a clock does not go back');
    this.t = ms;
  }
}
