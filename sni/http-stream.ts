/**
 * HttpRequestStream: follows every request a client sends on one HTTP/1.x
 * connection, so that a kept-alive or pipelined connection cannot name a
 * second host after the first one was allowed ("one connection, one name").
 *
 * Each request head is read by HttpHeadReader (http-host.ts: the same strict
 * rules as the first peek — CRLF only, one Host, Host = absolute target,
 * unambiguous framing) and its host compared with the connection's first
 * host; its body is skipped by its framing (Content-Length, or chunked with
 * chunk-size lines and trailers; no framing = no body). A different host is
 * `mismatch`; bytes that do not parse as a request, a chunk line or a
 * trailer are `malformed`.
 *
 * Release discipline. `push(chunk, out)` calls `out` with the bytes that may
 * go to the server now, in order: views of `chunk` or of a buffer the stream
 * never writes again. A request head is released only once it is
 * complete and checked, so a refused request never reaches the server, not
 * even in part; body bytes are released as they arrive (they are never held
 * whole). On `mismatch`/`malformed` everything before the offending request
 * has been released and nothing after it will be (`unsent` returns the held
 * part, for audit mode).
 *
 * Switching protocols (Upgrade, CONNECT). After such a request the bytes on
 * the connection may legitimately stop being HTTP/1.x — but only if the
 * server really switched. A guest could send `Upgrade: x` that the server
 * ignores (200) and follow it with a second request naming another host; if
 * we stopped reading at the Upgrade, that request would pass. So the rule:
 *   - an Upgrade/CONNECT on the FIRST request of the connection: every guest
 *     byte after that request is parked (not released) until the server's
 *     answer to it is seen (`server(chunk, out)`). The server's first bytes
 *     are that answer (HTTP/1.1 answers in order; interim 1xx are skipped).
 *     101 (or 2xx to CONNECT): the stream is `opaque` from then on and the
 *     parked bytes go. Anything else: the server did not switch, and the
 *     parked bytes are parsed as the next request like any other.
 *   - on a LATER request the server's answer cannot be told from the answers
 *     to earlier pipelined requests without parsing every response, so the
 *     Upgrade is ignored: the stream stays HTTP. If the server did switch, the
 *     new protocol's bytes fail to parse and the connection is refused —
 *     fail closed. (WebSocket and h2c clients upgrade a fresh connection.)
 * Parked bytes are bounded (`maxParkedBytes`); the caller should stop reading
 * the client while `awaitingServer`.
 *
 * Bounded: one head (maxHeadBytes) held while incomplete, one chunk-size line,
 * one trailer section, the parked bytes. No allocation per byte; one small
 * copy only when a head spans chunks. Pure: no I/O, never throws on input.
 */
import { DEFAULT_MAX_HEAD_BYTES, HttpHeadReader } from './http-host.js';
import { sameName } from './same-name.js';

export type HttpStreamVerdict =
  /** Keep feeding; `out` got what may go. */
  | 'watching'
  /** A first-request Upgrade/CONNECT: guest bytes are parked until `server()` decides. */
  | 'await-server'
  /** The server switched protocols: stop watching, everything passes from now on. */
  | 'opaque'
  /** A request named another host (`secondName`). */
  | 'mismatch'
  /** Not parseable as HTTP/1.x requests (`reason`). */
  | 'malformed';

export const DEFAULT_MAX_PARKED_BYTES = 64 * 1024;
/** A chunk-size line with its extensions (RFC 9112 7.1.1); real ones are a few bytes. */
const MAX_CHUNK_LINE_BYTES = 4096;
/** 13 hex digits: < 2^52, an exact JS integer. */
const MAX_CHUNK_SIZE_DIGITS = 13;

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
const SEMICOLON = 0x3b;
const COLON = 0x3a;

type State =
  | 'head'
  | 'body' // Content-Length bytes left in `remaining`
  | 'chunk-size'
  | 'chunk-ext'
  | 'chunk-size-lf'
  | 'chunk-data'
  | 'chunk-data-cr'
  | 'chunk-data-lf'
  | 'trailer'
  | 'await-server'
  | 'opaque'
  | 'refused';

export class HttpRequestStream {
  readonly maxParkedBytes: number;
  private readonly head: HttpHeadReader;
  private state: State = 'head';
  private requests = 0;
  /** The first request's host as sent (the connection's name), once read. */
  private firstHost: string | null = null;
  private offending: string | null = null;
  private why = '';
  private refusedVerdict: 'mismatch' | 'malformed' = 'malformed';

  /** Bytes of an incomplete head from earlier chunks, not yet released. */
  private pending: Uint8Array | null = null;
  private pendingFill = 0;
  /** Guest bytes after a first-request upgrade, waiting for the server's answer. */
  private parked: Uint8Array | null = null;
  private parkedFill = 0;
  private switchOnConnect = false;

  // Body framing state.
  private remaining = 0;
  private chunkDigits = 0;
  private lineBytes = 0;
  private trailerBytes = 0;
  private trailerLineLength = 0;
  private trailerSawColon = false;
  private trailerPreviousCR = false;
  private upgradePending = false;

  private readonly status = new StatusWatcher();

  constructor(opts?: { maxHeadBytes?: number; maxParkedBytes?: number }) {
    this.head = new HttpHeadReader({ maxHeadBytes: opts?.maxHeadBytes ?? DEFAULT_MAX_HEAD_BYTES });
    const parked = opts?.maxParkedBytes ?? DEFAULT_MAX_PARKED_BYTES;
    if (!Number.isInteger(parked) || parked < 0) throw new RangeError(`maxParkedBytes must be an integer >= 0, got ${parked}`);
    this.maxParkedBytes = parked;
  }

  /** The connection's host: the first request's, as sent. */
  get name(): string | null {
    return this.firstHost;
  }

  /** After `mismatch`: the host the offending request named (as sent). */
  get secondName(): string | null {
    return this.offending;
  }

  /** After `malformed`/`mismatch`: why. */
  get reason(): string {
    return this.why;
  }

  /** Requests whose heads were read (and checked). */
  get requestCount(): number {
    return this.requests;
  }

  get awaitingServer(): boolean {
    return this.state === 'await-server';
  }

  /** Bytes held now (incomplete head + parked); bounded. */
  get heldBytes(): number {
    return this.pendingFill + this.parkedFill;
  }

  /**
   * After `mismatch`/`malformed`: every byte pushed and not released (the
   * offending request from its first byte, and what followed it in that
   * chunk), for a caller that lets refusals through (audit mode).
   */
  unsent(): Uint8Array {
    return this.tail;
  }

  private tail: Uint8Array = new Uint8Array(0);

  /** `chunk` is read only during the call; `out` gets views that are valid only during their call. */
  push(chunk: Uint8Array, out: (bytes: Uint8Array) => void): HttpStreamVerdict {
    switch (this.state) {
      case 'opaque':
        if (chunk.length > 0) out(chunk);
        return 'opaque';
      case 'refused':
        return this.refusedVerdict;
      case 'await-server':
        return this.park(chunk, 0);
      default:
        return this.consume(chunk, out);
    }
  }

  /**
   * The server's bytes, while `awaitingServer` (others are ignored). `out`
   * gets the parked guest bytes once they may go.
   */
  server(chunk: Uint8Array, out: (bytes: Uint8Array) => void): HttpStreamVerdict {
    if (this.state !== 'await-server') return this.state === 'opaque' ? 'opaque' : this.state === 'refused' ? this.refusedVerdict : 'watching';
    const s = this.status.push(chunk);
    if (s === 0) return 'await-server';
    const switched = this.switchOnConnect ? s >= 200 && s < 300 : s === 101;
    const parked = this.parked === null ? null : this.parked.subarray(0, this.parkedFill);
    this.parked = null;
    this.parkedFill = 0;
    if (switched) {
      this.state = 'opaque';
      if (parked !== null && parked.length > 0) out(parked);
      return 'opaque';
    }
    // Not switched: what the guest sent after it is HTTP again, checked like the rest.
    this.state = 'head';
    this.head.reset();
    if (parked === null || parked.length === 0) return 'watching';
    return this.consume(parked, out);
  }

  private consume(chunk: Uint8Array, out: (bytes: Uint8Array) => void): HttpStreamVerdict {
    const end = chunk.length;
    let pos = 0;
    /** Start of the bytes of this chunk not yet given to `out`. */
    let emitFrom = 0;
    while (pos < end) {
      switch (this.state) {
        case 'head': {
          const headStart = pos;
          const r = this.head.push(pos === 0 ? chunk : chunk.subarray(pos));
          if (r.kind === 'need-more') {
            if (headStart > emitFrom) out(chunk.subarray(emitFrom, headStart));
            const ok = this.hold(chunk.subarray(headStart));
            emitFrom = end;
            pos = end;
            if (!ok) return this.refuse(chunk, headStart, headStart, 'http:head-too-long', out);
            break;
          }
          if (r.kind === 'not-http') return this.refuse(chunk, headStart, emitFrom, 'http:not-a-request', out);
          if (r.kind === 'malformed') return this.refuse(chunk, headStart, emitFrom, r.reason, out);
          // A whole head, checked: it may go with what came before it.
          const headEnd = headStart + this.head.headEnd;
          this.requests++;
          if (this.requests === 1) {
            this.firstHost = r.host;
          } else if (!sameName(this.firstHost, r.host)) {
            this.offending = r.host;
            return this.refuse(chunk, headStart, emitFrom, 'second-name', out);
          }
          if (this.pendingFill > 0) {
            // The head began in an earlier chunk: release that part first.
            if (headStart > emitFrom) out(chunk.subarray(emitFrom, headStart));
            out(this.pending!.subarray(0, this.pendingFill));
            this.pending = null;
            this.pendingFill = 0;
            emitFrom = headStart;
          }
          const f = this.head.framing;
          this.upgradePending = f.upgrade && this.requests === 1;
          this.switchOnConnect = r.method === 'CONNECT';
          pos = headEnd;
          if (f.chunked) {
            this.state = 'chunk-size';
            this.chunkDigits = 0;
            this.lineBytes = 0;
            this.remaining = 0;
          } else if (f.contentLength > 0) {
            this.state = 'body';
            this.remaining = f.contentLength;
          } else {
            this.messageDone();
          }
          break;
        }
        case 'body': {
          const take = Math.min(this.remaining, end - pos);
          this.remaining -= take;
          pos += take;
          if (this.remaining === 0) this.messageDone();
          break;
        }
        case 'chunk-size':
        case 'chunk-ext':
        case 'chunk-size-lf': {
          const bad = this.chunkLineByte(chunk[pos]!);
          pos++;
          if (bad !== null) return this.refuse(chunk, pos - 1, emitFrom, bad, out);
          break;
        }
        case 'chunk-data': {
          const take = Math.min(this.remaining, end - pos);
          this.remaining -= take;
          pos += take;
          if (this.remaining === 0) this.state = 'chunk-data-cr';
          break;
        }
        case 'chunk-data-cr':
          if (chunk[pos] !== CR) return this.refuse(chunk, pos, emitFrom, 'http:bad-chunk-end', out);
          pos++;
          this.state = 'chunk-data-lf';
          break;
        case 'chunk-data-lf':
          if (chunk[pos] !== LF) return this.refuse(chunk, pos, emitFrom, 'http:bad-chunk-end', out);
          pos++;
          this.state = 'chunk-size';
          this.chunkDigits = 0;
          this.lineBytes = 0;
          this.remaining = 0;
          break;
        case 'trailer': {
          const bad = this.trailerByte(chunk[pos]!);
          pos++;
          if (bad !== null) return this.refuse(chunk, pos - 1, emitFrom, bad, out);
          break;
        }
        case 'await-server':
          if (pos > emitFrom) out(chunk.subarray(emitFrom, pos));
          return this.park(chunk, pos);
        default:
          // 'opaque' and 'refused' are not reached from here.
          break;
      }
    }
    if (this.state === 'await-server') {
      if (end > emitFrom) out(chunk.subarray(emitFrom, end));
      return 'await-server';
    }
    // The common case (body bytes, whole requests): the chunk itself, no view made.
    if (emitFrom === 0) {
      if (end > 0) out(chunk);
    } else if (end > emitFrom) out(chunk.subarray(emitFrom, end));
    return 'watching';
  }

  /** One request (head and body) is over. */
  private messageDone(): void {
    if (this.upgradePending) {
      this.upgradePending = false;
      this.state = 'await-server';
      this.status.reset();
      return;
    }
    this.state = 'head';
    this.head.reset();
  }

  /** chunk-size [ chunk-ext ] CRLF (RFC 9112 7.1), strictly: hex digits, then ';' extensions or CRLF. */
  private chunkLineByte(b: number): string | null {
    if (++this.lineBytes > MAX_CHUNK_LINE_BYTES) return 'http:chunk-line-too-long';
    if (this.state === 'chunk-size-lf') {
      if (b !== LF) return 'http:bad-chunk-line';
      if (this.remaining === 0) {
        // last-chunk: trailer section, then the empty line.
        this.state = 'trailer';
        this.trailerBytes = 0;
        this.trailerLineLength = 0;
        this.trailerSawColon = false;
        this.trailerPreviousCR = false;
      } else {
        this.state = 'chunk-data';
      }
      return null;
    }
    if (this.state === 'chunk-ext') {
      if (b === CR) this.state = 'chunk-size-lf';
      else if (b === LF || (b < SP && b !== HTAB) || b === 0x7f) return 'http:bad-chunk-extension';
      return null;
    }
    const digit = hexValue(b);
    if (digit >= 0) {
      if (++this.chunkDigits > MAX_CHUNK_SIZE_DIGITS) return 'http:chunk-too-large';
      this.remaining = this.remaining * 16 + digit;
      return null;
    }
    if (this.chunkDigits === 0) return 'http:bad-chunk-size';
    if (b === CR) {
      this.state = 'chunk-size-lf';
      return null;
    }
    if (b === SEMICOLON) {
      this.state = 'chunk-ext';
      return null;
    }
    // Whitespace, signs, "0x", anything else: parsers disagree on these, so refuse.
    return 'http:bad-chunk-size';
  }

  /** trailer-section CRLF (RFC 9112 7.1.2): field lines, strict CRLF, no obs-fold, then an empty line. */
  private trailerByte(b: number): string | null {
    if (++this.trailerBytes > this.head.maxHeadBytes) return 'http:trailer-too-long';
    if (this.trailerPreviousCR) {
      if (b !== LF) return 'http:bare-cr';
      this.trailerPreviousCR = false;
      if (this.trailerLineLength === 0) {
        this.messageDone();
        return null;
      }
      if (!this.trailerSawColon) return 'http:bad-trailer-line';
      this.trailerLineLength = 0;
      this.trailerSawColon = false;
      return null;
    }
    if (b === CR) {
      this.trailerPreviousCR = true;
      return null;
    }
    if (b === LF) return 'http:bare-lf';
    if (this.trailerLineLength === 0 && (b === SP || b === HTAB)) return 'http:obs-fold';
    if (b === COLON) this.trailerSawColon = true;
    else if ((b < SP && b !== HTAB) || b === 0x7f) return 'http:bad-trailer-line';
    this.trailerLineLength++;
    return null;
  }

  /** Copies the start of an incomplete head; false when the head outgrows its bound. */
  private hold(bytes: Uint8Array): boolean {
    if (bytes.length === 0) return true;
    const needed = this.pendingFill + bytes.length;
    if (needed > this.head.maxHeadBytes) return false;
    this.pending = grow(this.pending, this.pendingFill, needed, this.head.maxHeadBytes);
    this.pending.set(bytes, this.pendingFill);
    this.pendingFill = needed;
    return true;
  }

  private park(chunk: Uint8Array, from: number): HttpStreamVerdict {
    const bytes = chunk.subarray(from);
    if (bytes.length === 0) return 'await-server';
    const needed = this.parkedFill + bytes.length;
    if (needed > this.maxParkedBytes) {
      this.state = 'refused';
      this.refusedVerdict = 'malformed';
      this.why = 'http:too-much-before-switch';
      this.tail = concatBytes(this.parked === null ? new Uint8Array(0) : this.parked.subarray(0, this.parkedFill), bytes);
      this.parked = null;
      this.parkedFill = 0;
      return 'malformed';
    }
    this.parked = grow(this.parked, this.parkedFill, needed, this.maxParkedBytes);
    this.parked.set(bytes, this.parkedFill);
    this.parkedFill = needed;
    return 'await-server';
  }

  /**
   * The request starting at `at` (or, inside a body's framing, the bad byte
   * at `at`) is refused: what came before it (from `emitFrom`) is released,
   * nothing from `at` on ever is.
   */
  private refuse(chunk: Uint8Array, at: number, emitFrom: number, reason: string, out: (bytes: Uint8Array) => void): HttpStreamVerdict {
    if (at > emitFrom) out(chunk.subarray(emitFrom, at));
    this.state = 'refused';
    this.why = reason;
    this.tail = concatBytes(this.pending === null ? new Uint8Array(0) : this.pending.subarray(0, this.pendingFill), chunk.subarray(at));
    this.pending = null;
    this.pendingFill = 0;
    this.refusedVerdict = reason === 'second-name' ? 'mismatch' : 'malformed';
    return this.refusedVerdict;
  }
}

/**
 * Reads the status code of the server's answer to an upgrade request:
 * "HTTP/1.x NNN", skipping interim 1xx answers other than 101 (whole heads).
 * push() returns 0 until it knows, then the final status (or 101); anything
 * that is not a status line gives -1 (treated as "did not switch").
 */
class StatusWatcher {
  private line = new Uint8Array(12);
  private fill = 0;
  /** Skipping an interim answer's head: matched bytes of CRLFCRLF. */
  private skipping = false;
  private matched = 0;
  private skipped = 0;

  reset(): void {
    this.fill = 0;
    this.skipping = false;
    this.matched = 0;
    this.skipped = 0;
  }

  push(chunk: Uint8Array): number {
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.skipping) {
        if (++this.skipped > DEFAULT_MAX_HEAD_BYTES) return -1;
        const want = this.matched % 2 === 0 ? CR : LF;
        this.matched = b === want ? this.matched + 1 : b === CR ? 1 : 0;
        if (this.matched === 4) {
          this.skipping = false;
          this.fill = 0;
        }
        continue;
      }
      // Judge each byte of "HTTP/1." as it comes: a server that says something else must not keep us waiting.
      if (this.fill < STATUS_PREFIX.length && b !== STATUS_PREFIX.charCodeAt(this.fill)) return -1;
      this.line[this.fill++] = b;
      if (this.fill < 12) continue;
      const status = parseStatusStart(this.line);
      if (status < 0) return -1;
      if (status >= 100 && status < 200 && status !== 101) {
        // 100 Continue, 103 Early Hints...: the real answer follows. The
        // status line's rest and the fields are skipped to the empty line.
        this.skipping = true;
        this.matched = 0;
        continue;
      }
      return status;
    }
    return 0;
  }
}

/** "HTTP/1.x NNN" (12 bytes) -> NNN, or -1. */
const STATUS_PREFIX = 'HTTP/1.';

function parseStatusStart(l: Uint8Array): number {
  for (let i = 0; i < STATUS_PREFIX.length; i++) if (l[i] !== STATUS_PREFIX.charCodeAt(i)) return -1;
  if (l[7] !== 0x30 && l[7] !== 0x31) return -1;
  if (l[8] !== SP) return -1;
  let n = 0;
  for (let i = 9; i < 12; i++) {
    const c = l[i]!;
    if (c < 0x30 || c > 0x39) return -1;
    n = n * 10 + (c - 0x30);
  }
  return n;
}

function hexValue(b: number): number {
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x61 && b <= 0x66) return b - 0x61 + 10;
  if (b >= 0x41 && b <= 0x46) return b - 0x41 + 10;
  return -1;
}

/** A buffer that holds `needed` bytes (doubling from 1 KiB, capped at `cap`), keeping the first `fill`. */
function grow(buffer: Uint8Array | null, fill: number, needed: number, cap: number): Uint8Array {
  const current = buffer === null ? 0 : buffer.length;
  if (needed <= current) return buffer!;
  const size = Math.min(cap, Math.max(needed, current * 2, 1024));
  const next = new Uint8Array(size);
  if (buffer !== null && fill > 0) next.set(buffer.subarray(0, fill));
  return next;
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
