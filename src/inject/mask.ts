/**
 * Masks secret values a server echoes back (a debugging endpoint that
 * returns the request's headers, an error that quotes them): every
 * occurrence in response header values and in the response body is replaced
 * by as many '*' as it has bytes. Same length, so Content-Length and every
 * other framing stays right.
 *
 * The body is scanned as it streams, holding back only the last
 * (longest value - 1) bytes of each chunk (at most MAX_SECRET_BYTES - 1), so
 * a value split across chunks is still found. The limit, documented: a body
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

  /** A Transform that masks a byte stream, holding back at most `carry` bytes. */
  stream(): Transform {
    let tail: Buffer = Buffer.alloc(0);
    const carry = this.carry;
    return new Transform({
      transform: (chunk: Buffer, _enc, cb: TransformCallback) => {
        // A copy: the chunk may be a view of a buffer its producer reuses, and we write into it.
        const buf = Buffer.concat([tail, chunk]);
        this.bytes(buf);
        const keep = Math.min(carry, buf.length);
        tail = buf.subarray(buf.length - keep);
        cb(null, buf.length - keep > 0 ? buf.subarray(0, buf.length - keep) : undefined);
      },
      flush: (cb: TransformCallback) => cb(null, tail.length > 0 ? tail : undefined),
    });
  }
}
