/**
 * A Transform between two node sockets (moat proxy's tunnels and forwarded
 * requests) that applies a rate limit and a byte budget to what flows
 * through it, the stream way: a chunk over the limiter's allowance passes
 * in part and the rest waits for the limiter, with the transform's callback
 * held meanwhile, so pipe() stops reading the source (its TCP window
 * closes). Nothing is dropped. A budget that runs out passes what it still
 * allowed, then `onCut` ends the flow.
 *
 * Bounded: the transform holds at most one chunk (its callback is not
 * called until the chunk has passed) plus the streams' high-water marks.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { RateLimiter } from './rate-limiter.js';
import type { FlowMeter } from './byte-budgets.js';

export interface MeteredStreamOptions {
  limiter?: RateLimiter | undefined;
  meter?: FlowMeter | undefined;
  direction: 'egress' | 'ingress';
  /** The budget ran out under this flow (it passed what it was allowed): end the flow. Called once. */
  onCut(): void;
}

export class MeteredStream extends Transform {
  private wake: (() => void) | undefined;
  private cut = false;

  constructor(private readonly o: MeteredStreamOptions) {
    super();
  }

  /** Bytes that passed. */
  passed = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.pass(chunk, cb);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (this.wake !== undefined) this.o.limiter?.cancel(this.wake);
    this.wake = undefined;
    cb(err);
  }

  private pass(chunk: Buffer, cb: TransformCallback): void {
    if (this.destroyed || this.cut) return;
    const limiter = this.o.limiter;
    let n = chunk.length;
    if (limiter !== undefined) {
      n = Math.min(n, limiter.allowance());
      limiter.spend(n);
    }
    let ok = n;
    if (this.o.meter !== undefined && n > 0) ok = this.o.meter.charge(n, this.o.direction);
    if (ok > 0) {
      this.passed += ok;
      this.push(ok < chunk.length ? chunk.subarray(0, ok) : chunk);
    }
    if (this.o.meter?.ended === true) {
      this.cut = true;
      this.o.onCut();
      return;
    }
    if (n < chunk.length) {
      const rest = chunk.subarray(n);
      this.wake = () => {
        this.wake = undefined;
        this.pass(rest, cb);
      };
      limiter!.wait(this.wake);
      return;
    }
    cb();
  }
}
