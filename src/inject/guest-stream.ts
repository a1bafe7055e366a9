/**
 * A node Duplex over a guest TCP connection (netstack TcpSocket), so that
 * node:tls can terminate the guest's TLS on it (a TLSSocket wraps any Duplex).
 *
 * Backpressure both ways, bounded like TcpPipe: guest bytes are pushed until
 * push() says the readable buffer is full (highWaterMark), then the guest
 * socket is paused (its window closes) until _read(); a write the guest's
 * send buffer does not take whole keeps its rest (one chunk) and completes
 * only on onDrain, so the writer (TLS) stops at the writable highWaterMark.
 */
import { Duplex } from 'node:stream';
import type { TcpCloseReason, TcpHandlers, TcpSocket } from '../../netstack/api.js';

export class GuestStream extends Duplex {
  readonly handlers: TcpHandlers;
  private pending: { rest: Uint8Array; cb: (err?: Error | null) => void } | undefined;
  private gone = false;

  constructor(private readonly tcp: TcpSocket) {
    super({ allowHalfOpen: true });
    this.handlers = {
      onData: (d) => {
        // The view is only valid during the call.
        if (!this.push(Buffer.from(d))) this.tcp.pause();
      },
      onEnd: () => this.push(null),
      onDrain: () => this.drain(),
      onClose: (r: TcpCloseReason) => {
        this.gone = true;
        if (r === 'closed') this.push(null);
        this.destroy(r === 'closed' ? undefined : new Error(`guest connection ${r}`));
      },
    };
  }

  override _read(): void {
    if (!this.gone) this.tcp.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.gone) {
      cb(new Error('guest connection closed'));
      return;
    }
    const n = this.tcp.write(chunk);
    if (n === chunk.length) cb();
    else this.pending = { rest: chunk.subarray(n), cb };
  }

  private drain(): void {
    const p = this.pending;
    if (p === undefined) return;
    const n = this.tcp.write(p.rest);
    if (n < p.rest.length) {
      p.rest = p.rest.subarray(n);
      return;
    }
    this.pending = undefined;
    p.cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.gone) this.tcp.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const p = this.pending;
    this.pending = undefined;
    p?.cb(err ?? new Error('destroyed'));
    if (!this.gone) {
      this.gone = true;
      // An error on our side (TLS failure, upstream gone): the guest gets a reset, as a failed TcpPipe gives it.
      if (err !== null) this.tcp.abort();
      else this.tcp.end();
    }
    cb(err);
  }
}
