/**
 * NamePeeker: reads the first bytes of a TCP connection and says which name
 * the client asked for — the SNI of a TLS ClientHello or the host of an
 * HTTP/1.x request — so the egress policy can decide before anything is dialed.
 *
 * It dispatches on the first byte and then hands every byte to one reader:
 * - 0x16 (a TLS handshake record)             -> ClientHelloReader
 * - an upper-case letter (the start of a method) -> HttpHeadReader, which keeps
 *   checking that the bytes form `METHOD SP` and answers not-http otherwise
 * - anything else                              -> unknown-protocol
 * So a first chunk of just "G" is need-more, and "GET" followed by a byte that
 * cannot be in a method becomes unknown-protocol.
 *
 * Both readers are bounded (see their modules), so the peeker holds at most
 * one of those bounds. Terminal results are sticky. Pure: no I/O, no timers
 * (the caller owns the peek timeout), never throws on input.
 */
import { ClientHelloReader } from './clienthello.js';
import { HttpHeadReader, isMethodByte } from './http-host.js';

export type PeekResult =
  | { kind: 'need-more' }
  | { kind: 'name'; protocol: 'tls' | 'http'; name: string | null; alpn: string[]; ech: boolean }
  | { kind: 'unknown-protocol' } // first bytes are neither a TLS handshake nor an HTTP/1 request
  | { kind: 'malformed'; reason: string };

const TLS_HANDSHAKE_RECORD = 0x16;

const NEED_MORE: PeekResult = Object.freeze({ kind: 'need-more' }) as PeekResult;
const UNKNOWN: PeekResult = Object.freeze({ kind: 'unknown-protocol' }) as PeekResult;

export class NamePeeker {
  private readonly opts: { maxHandshakeBytes?: number; maxHeadBytes?: number };
  private tls: ClientHelloReader | null = null;
  private http: HttpHeadReader | null = null;
  private terminal: PeekResult | null = null;
  private seen = 0;

  constructor(opts?: { maxHandshakeBytes?: number; maxHeadBytes?: number }) {
    this.opts = { ...opts };
    // Validate the bounds now rather than on the first byte.
    if (opts?.maxHandshakeBytes !== undefined) new ClientHelloReader({ maxHandshakeBytes: opts.maxHandshakeBytes });
    if (opts?.maxHeadBytes !== undefined) new HttpHeadReader({ maxHeadBytes: opts.maxHeadBytes });
  }

  /** Raw bytes pushed so far. */
  get bytesSeen(): number {
    return this.seen;
  }

  /** Which reader the first byte chose, if any. */
  get protocol(): 'tls' | 'http' | null {
    return this.tls !== null ? 'tls' : this.http !== null ? 'http' : null;
  }

  /** Bytes the chosen reader currently holds (its bound applies). */
  get bufferedBytes(): number {
    return this.tls?.bufferedBytes ?? this.http?.bufferedBytes ?? 0;
  }

  /** `chunk` is only read during the call; the readers copy what they keep. */
  push(chunk: Uint8Array): PeekResult {
    this.seen += chunk.length;
    if (this.terminal !== null) return this.terminal;
    if (chunk.length === 0) return NEED_MORE;
    if (this.tls === null && this.http === null) {
      const first = chunk[0]!;
      if (first === TLS_HANDSHAKE_RECORD) {
        this.tls = new ClientHelloReader({ maxHandshakeBytes: this.opts.maxHandshakeBytes });
      } else if (isMethodByte(first, 0)) {
        this.http = new HttpHeadReader({ maxHeadBytes: this.opts.maxHeadBytes });
      } else {
        return (this.terminal = UNKNOWN);
      }
    }
    const r = this.tls !== null ? this.fromTls(chunk) : this.fromHttp(chunk);
    if (r.kind !== 'need-more') this.terminal = r;
    return r;
  }

  private fromTls(chunk: Uint8Array): PeekResult {
    const r = this.tls!.push(chunk);
    switch (r.kind) {
      case 'need-more':
        return NEED_MORE;
      case 'found':
        return { kind: 'name', protocol: 'tls', name: r.sni, alpn: r.alpn, ech: r.ech };
      case 'not-tls':
        return UNKNOWN;
      case 'malformed':
        return { kind: 'malformed', reason: r.reason };
    }
  }

  private fromHttp(chunk: Uint8Array): PeekResult {
    const r = this.http!.push(chunk);
    switch (r.kind) {
      case 'need-more':
        return NEED_MORE;
      case 'found':
        return { kind: 'name', protocol: 'http', name: r.host, alpn: [], ech: false };
      case 'not-http':
        return UNKNOWN;
      case 'malformed':
        return { kind: 'malformed', reason: r.reason };
    }
  }
}
