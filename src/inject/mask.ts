/**
 * Masks secret values a server echoes back (a debugging endpoint that
 * returns the request's headers, an error that quotes them): every
 * occurrence in response header values and in the response body is replaced
 * by as many '*' as it has bytes. Same length, so Content-Length and every
 * other framing stays right.
 *
 * The body is scanned as it streams; the only bytes held back are a chunk's
 * tail that could be the start of a value (at most MAX_SECRET_BYTES - 1), so
 * a value split across chunks is still found and a streamed answer is not
 * delayed. The limits, documented: a body
 * the server compresses (Content-Encoding gzip, br...) or otherwise encodes
 * (base64, JSON escapes of the value's characters) is not recognised.
 */
import { Transform, type TransformCallback } from 'node:stream';

export class ValueMask {
  private readonly needles: Buffer[];
  private readonly texts: string[];
  readonly carry: number;

  constructor(values: readonly string[]) {
    this.texts = [...new Set(values)].filter((v) => v.length > 0);
    this.needles = this.texts.map((v) => Buffer.from(v));
    this.carry = Math.max(0, ...this.needles.map((n) => n.length - 1));
  }

  /** A header value with every value masked. */
  text(s: string): string {
    let out = s;
    for (const v of this.texts) if (out.includes(v)) out = out.split(v).join('*'.repeat(Buffer.byteLength(v)));
    return out;
  }

  /** Masks `buf` in place. */
  bytes(buf: Buffer): void {
    for (const n of this.needles) {
      for (let i = buf.indexOf(n); i >= 0; i = buf.indexOf(n, i + n.length)) buf.fill(0x2a, i, i + n.length);
    }
  }

  /**
   * How many bytes at the end of `buf` could be the start of a value (the
   * longest suffix that is a proper prefix of one): those wait for the next
   * chunk. Everything else may go now.
   */
  private partialTail(buf: Buffer): number {
    const from = Math.max(0, buf.length - this.carry);
    for (let i = from; i < buf.length; i++) {
      const k = buf.length - i;
      for (const n of this.needles) if (n.length > k && buf[i] === n[0] && buf.compare(n, 0, k, i) === 0) return k;
    }
    return 0;
  }

  /**
   * A Transform that masks a byte stream. It holds back only a tail that
   * could begin a value, so a streamed answer (SSE, WebSocket frames) is not
   * delayed; a tail still held after `idleMs` without more bytes goes on as
   * it is (a value the server splits across such a pause is not masked).
   */
  stream(idleMs = 50): Transform {
    let tail: Buffer = Buffer.alloc(0);
    let timer: NodeJS.Timeout | undefined;
    const t: Transform = new Transform({
      transform: (chunk: Buffer, _enc, cb: TransformCallback) => {
        if (timer !== undefined) clearTimeout(timer);
        timer = undefined;
        let buf: Buffer = tail.length === 0 ? chunk : Buffer.concat([tail, chunk]);
        if (this.needles.some((n) => buf.includes(n))) {
          // Written in place: a copy, as the chunk may be a view of a buffer its producer reuses.
          if (buf === chunk) buf = Buffer.from(chunk);
          this.bytes(buf);
        }
        const keep = this.partialTail(buf);
        tail = buf.subarray(buf.length - keep);
        if (keep > 0)
          timer = setTimeout(() => {
            timer = undefined;
            const rest = tail;
            tail = Buffer.alloc(0);
            if (rest.length > 0 && !t.destroyed) t.push(rest);
          }, idleMs);
        cb(null, buf.length - keep > 0 ? buf.subarray(0, buf.length - keep) : undefined);
      },
      flush: (cb: TransformCallback) => {
        if (timer !== undefined) clearTimeout(timer);
        cb(null, tail.length > 0 ? tail : undefined);
      },
      destroy: (err, cb) => {
        if (timer !== undefined) clearTimeout(timer);
        cb(err);
      },
    });
    return t;
  }
}
