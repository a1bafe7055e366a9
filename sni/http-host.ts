/**
 * Incremental HTTP/1.x request-head reader: feed it the first bytes a client
 * sends and it answers with the host the request is for (Host header or the
 * authority of an absolute-form / authority-form target), the method and the
 * request target.
 *
 * Strict where leniency would let two parsers disagree about the host (the
 * upstream server acts on its reading, the egress policy on ours), so every
 * such ambiguity is `malformed` and the connection is refused:
 * - Line ends are CRLF only. RFC 9112 2.2 lets a recipient accept a bare LF,
 *   but a server that does not would read "Host: a\nHost: b" as one field
 *   while we would read two; refusing bare LF and bare CR removes the
 *   disagreement (and refusing merely fails closed).
 * - No whitespace between a field name and its colon (RFC 9112 5.1: a server
 *   MUST reject it), no obs-fold (RFC 9112 5.2), no CR/LF/NUL or other
 *   control bytes in field values (RFC 9110 5.5).
 * - One Host header at most; an HTTP/1.1 request without one is refused
 *   (RFC 9112 3.2: a server MUST respond 400 to both).
 * - An absolute-form target's host must match the Host header if both are
 *   present (RFC 9112 3.2.2 tells servers to prefer the target; some don't).
 * - userinfo in an authority is refused (RFC 9110 4.2.4).
 * - Host names are limited to what a DNS name can carry (letters, digits,
 *   '-', '.', '_'), stricter than RFC 3986 reg-name, so sub-delims such as ','
 *   or '%' escapes cannot smuggle a second name.
 * - The method must be an upper-case token (see `isMethodByte`); anything
 *   else is `not-http`.
 * - Body framing must be unambiguous (RFC 9112 6.1-6.3), because a stream
 *   reader (http-stream.ts) skips bodies by it to find the next request: one
 *   Content-Length of digits only, or one Transfer-Encoding that is exactly
 *   `chunked` (not in HTTP/1.0), never both. The reader exposes the framing
 *   of the head it found (`framing`).
 *
 * Memory: a head that arrives whole in one chunk is parsed in place; otherwise
 * it is copied into a buffer that grows with what arrived, up to `maxHeadBytes`.
 * Pure: no I/O, never throws on input.
 */

export type HttpHostResult =
  | { kind: 'need-more' }
  | { kind: 'found'; host: string | null; method: string; target: string }
  | { kind: 'not-http' }
  | { kind: 'malformed'; reason: `http:${string}` };

export const DEFAULT_MAX_HEAD_BYTES = 16 * 1024;
/** Longest method accepted; registered methods are at most 17 characters. */
export const MAX_METHOD_LENGTH = 32;
const INITIAL_BUFFER_BYTES = 1024;

const SP = 0x20;
const HTAB = 0x09;
const CR = 0x0d;
const LF = 0x0a;
const COLON = 0x3a;

type Malformed = { kind: 'malformed'; reason: `http:${string}` };
type Found = { kind: 'found'; host: string | null; method: string; target: string };

const NEED_MORE: HttpHostResult = Object.freeze({ kind: 'need-more' }) as HttpHostResult;
const NOT_HTTP: HttpHostResult = Object.freeze({ kind: 'not-http' }) as HttpHostResult;

function malformed(reason: `http:${string}`): Malformed {
  return { kind: 'malformed', reason };
}

/** How a request head frames what follows it (RFC 9112 6.3), as read from the head. */
export interface RequestFraming {
  /** Body bytes announced by Content-Length (0: no body); ignored when `chunked`. */
  contentLength: number;
  /** Transfer-Encoding: chunked. */
  chunked: boolean;
  /** The request asks to leave HTTP/1.x on this connection: an Upgrade header field, or CONNECT. */
  upgrade: boolean;
}

/** Content-Length digits accepted: 15 keeps the value an exact JS integer (< 2^53). */
const MAX_CONTENT_LENGTH_DIGITS = 15;

/**
 * Bytes a method may contain. RFC 9110 9.1 allows any token, but methods are
 * upper-case by convention and by registration, and this is also how the
 * NamePeeker tells HTTP from other protocols: A-Z, plus '-' and '_' after the
 * first letter (e.g. BASELINE-CONTROL).
 */
export function isMethodByte(b: number, index: number): boolean {
  if (b >= 0x41 && b <= 0x5a) return true;
  return index > 0 && (b === 0x2d || b === 0x5f);
}

/** RFC 9110 5.6.2 tchar. */
function isTchar(b: number): boolean {
  if (b >= 0x30 && b <= 0x39) return true; // DIGIT
  if ((b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)) return true; // ALPHA
  switch (b) {
    case 0x21: case 0x23: case 0x24: case 0x25: case 0x26: case 0x27: case 0x2a: case 0x2b:
    case 0x2d: case 0x2e: case 0x5e: case 0x5f: case 0x60: case 0x7c: case 0x7e:
      return true;
    default:
      return false;
  }
}

export class HttpHeadReader {
  readonly maxHeadBytes: number;

  private seen = 0;
  private terminal: HttpHostResult | null = null;
  private buffer: Uint8Array | null = null;
  private fill = 0;

  // Scanner state, carried across chunks so each byte is looked at once.
  /** Bytes of the head scanned so far. */
  private scanned = 0;
  /** Still inside the method (before its SP). */
  private inMethod = true;
  private previousWasCR = false;
  private lineLength = 0;
  private lastHeadEnd = -1;

  /** The framing of the head last found (valid after a 'found' result; one object, reused). */
  readonly framing: RequestFraming = { contentLength: 0, chunked: false, upgrade: false };

  constructor(opts?: { maxHeadBytes?: number }) {
    const max = opts?.maxHeadBytes ?? DEFAULT_MAX_HEAD_BYTES;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxHeadBytes must be a positive integer, got ${max}`);
    this.maxHeadBytes = max;
  }

  get bytesSeen(): number {
    return this.seen;
  }

  /** Head bytes currently copied and held (0 on the single-chunk path and once terminal). */
  get bufferedBytes(): number {
    return this.buffer === null ? 0 : this.fill;
  }

  /** Bytes allocated to hold them; never exceeds `maxHeadBytes`. */
  get bufferCapacity(): number {
    return this.buffer === null ? 0 : this.buffer.length;
  }

  /**
   * After a 'found' result: the index in the chunk last pushed just past the
   * head's empty line (bytes from there on are the body or the next request).
   */
  get headEnd(): number {
    return this.lastHeadEnd;
  }

  /** Ready for the next request head on the same connection (keeps nothing of the last). */
  reset(): void {
    this.seen = 0;
    this.terminal = null;
    this.buffer = null;
    this.fill = 0;
    this.scanned = 0;
    this.inMethod = true;
    this.previousWasCR = false;
    this.lineLength = 0;
    this.lastHeadEnd = -1;
  }

  /** `chunk` is only read during the call; whatever must be kept is copied. */
  push(chunk: Uint8Array): HttpHostResult {
    this.seen += chunk.length;
    if (this.terminal !== null) return this.terminal;
    this.lastHeadEnd = -1;
    const r = this.consume(chunk);
    if (r.kind !== 'need-more') {
      this.terminal = r;
      this.buffer = null;
    }
    return r;
  }

  private consume(chunk: Uint8Array): HttpHostResult {
    const room = this.maxHeadBytes - this.scanned;
    const limit = Math.min(chunk.length, room);
    const end = this.scan(chunk, limit);
    if (typeof end !== 'number') return end;
    if (end >= 0) {
      this.lastHeadEnd = end;
      if (this.fill === 0) return parseRequestHead(chunk.subarray(0, end), this.framing); // whole head in this chunk
      this.append(chunk, end);
      return parseRequestHead(this.buffer!.subarray(0, this.fill), this.framing);
    }
    this.append(chunk, limit);
    if (this.scanned >= this.maxHeadBytes) return malformed('http:head-too-long');
    return NEED_MORE;
  }

  /**
   * Scans chunk[0, limit): returns the index just past the empty line that
   * ends the head, -1 if the head goes on, or a terminal result.
   */
  private scan(chunk: Uint8Array, limit: number): number | HttpHostResult {
    for (let i = 0; i < limit; i++) {
      const b = chunk[i]!;
      this.scanned++;
      if (this.inMethod) {
        const index = this.scanned - 1;
        if (b === SP && index > 0) {
          this.inMethod = false;
          this.lineLength++;
          continue;
        }
        if (index >= MAX_METHOD_LENGTH || !isMethodByte(b, index)) return NOT_HTTP;
        this.lineLength++;
        continue;
      }
      if (this.previousWasCR) {
        if (b !== LF) return malformed('http:bare-cr');
        this.previousWasCR = false;
        if (this.lineLength === 0) return i + 1; // CRLF on an empty line: end of head
        this.lineLength = 0;
        continue;
      }
      if (b === CR) {
        this.previousWasCR = true;
      } else if (b === LF) {
        return malformed('http:bare-lf');
      } else {
        this.lineLength++;
      }
    }
    return -1;
  }

  /** Copies chunk[0, end) into the buffer, growing it (doubling, capped at the bound). */
  private append(chunk: Uint8Array, end: number): void {
    if (end === 0) return;
    const needed = this.fill + end;
    const current = this.buffer === null ? 0 : this.buffer.length;
    if (needed > current) {
      const size = Math.min(this.maxHeadBytes, Math.max(needed, current * 2, INITIAL_BUFFER_BYTES));
      const grown = new Uint8Array(size);
      if (this.buffer !== null) grown.set(this.buffer.subarray(0, this.fill));
      this.buffer = grown;
    }
    this.buffer!.set(chunk.subarray(0, end), this.fill);
    this.fill = needed;
  }
}

/**
 * Parses a complete request head: request line and header fields, each ended
 * by CRLF, then an empty line (the scanner has checked there is no bare CR or
 * LF and that the method is a valid one).
 */
function parseRequestHead(h: Uint8Array, framing: RequestFraming): Found | Malformed {
  // Request line: method SP request-target SP HTTP-version (RFC 9112 3).
  const lineEnd = indexOfCRLF(h, 0);
  const sp1 = h.indexOf(SP);
  const sp2 = sp1 < 0 ? -1 : h.indexOf(SP, sp1 + 1);
  if (sp1 <= 0 || sp2 < 0 || sp2 > lineEnd) return malformed('http:bad-request-line');
  const method = ascii(h, 0, sp1);
  const targetStart = sp1 + 1;
  if (sp2 === targetStart) return malformed('http:bad-request-line');
  for (let i = targetStart; i < sp2; i++) {
    const c = h[i]!;
    if (c < 0x21 || c > 0x7e) return malformed('http:bad-target');
  }
  const version = versionOf(h, sp2 + 1, lineEnd);
  if (typeof version !== 'number') return version;
  const target = ascii(h, targetStart, sp2);

  // Header fields (RFC 9112 5).
  let hostValue: string | null | undefined; // undefined: no Host header
  let contentLength = -1; // -1: no Content-Length field
  let transferEncoding = false;
  let upgrade = method === 'CONNECT';
  let p = lineEnd + 2;
  for (;;) {
    const end = indexOfCRLF(h, p);
    if (end === p) break; // the empty line
    const first = h[p]!;
    if (first === SP || first === HTAB) return malformed('http:obs-fold');
    const colon = h.indexOf(COLON, p);
    if (colon < 0 || colon > end) return malformed('http:bad-header-line');
    if (colon === p) return malformed('http:bad-header-name');
    for (let i = p; i < colon; i++) {
      const c = h[i]!;
      if (c === SP || c === HTAB) return malformed('http:space-before-colon');
      if (!isTchar(c)) return malformed('http:bad-header-name');
    }
    let vStart = colon + 1;
    let vEnd = end;
    while (vStart < vEnd && (h[vStart] === SP || h[vStart] === HTAB)) vStart++;
    while (vEnd > vStart && (h[vEnd - 1] === SP || h[vEnd - 1] === HTAB)) vEnd--;
    for (let i = vStart; i < vEnd; i++) {
      const c = h[i]!;
      if ((c < 0x20 && c !== HTAB) || c === 0x7f) return malformed('http:bad-header-value');
    }
    if (isHostName(h, p, colon)) {
      if (hostValue !== undefined) return malformed('http:duplicate-host');
      const host = parseHostPort(h, vStart, vEnd, false);
      if (host === undefined) return malformed('http:bad-host');
      hostValue = host;
    } else if (fieldNameIs(h, p, colon, 'content-length')) {
      // One field, digits only: "5, 5" or two fields are refused rather than
      // reconciled (RFC 9112 6.3 lets a server pick; we must not guess).
      if (contentLength >= 0) return malformed('http:duplicate-content-length');
      if (vEnd === vStart || vEnd - vStart > MAX_CONTENT_LENGTH_DIGITS) return malformed('http:bad-content-length');
      let n = 0;
      for (let i = vStart; i < vEnd; i++) {
        if (!isDigit(h[i]!)) return malformed('http:bad-content-length');
        n = n * 10 + (h[i]! - 0x30);
      }
      contentLength = n;
    } else if (fieldNameIs(h, p, colon, 'transfer-encoding')) {
      // Only plain "chunked": any other coding (or a list) leaves the body's
      // end to be guessed, which is how requests get smuggled.
      if (transferEncoding) return malformed('http:duplicate-transfer-encoding');
      if (!valueIs(h, vStart, vEnd, 'chunked')) return malformed('http:bad-transfer-encoding');
      transferEncoding = true;
    } else if (fieldNameIs(h, p, colon, 'upgrade')) {
      upgrade = true;
    }
    p = end + 2;
  }
  if (transferEncoding && contentLength >= 0) return malformed('http:content-length-and-transfer-encoding');
  // RFC 9112 6.1: chunked in an HTTP/1.0 request is faulty framing.
  if (transferEncoding && version === 0) return malformed('http:transfer-encoding-in-http-1.0');
  framing.contentLength = contentLength < 0 ? 0 : contentLength;
  framing.chunked = transferEncoding;
  framing.upgrade = upgrade;

  // Which host the request is for (RFC 9112 3.2).
  let targetHost: string | null = null;
  const t0 = h[targetStart]!;
  if (method === 'CONNECT') {
    // authority-form = uri-host ":" port (RFC 9112 3.2.3)
    const host = parseHostPort(h, targetStart, sp2, true);
    if (host === undefined || host === null) return malformed('http:bad-target');
    targetHost = host;
  } else if (t0 === 0x2f /* '/' */) {
    // origin-form: the host is in the Host header.
  } else if (t0 === 0x2a /* '*' */ && sp2 === targetStart + 1) {
    if (method !== 'OPTIONS') return malformed('http:bad-target'); // RFC 9112 3.2.4
  } else {
    const host = absoluteFormHost(h, targetStart, sp2);
    if (typeof host !== 'string') return host;
    targetHost = host;
  }

  if (targetHost !== null) {
    if (hostValue === undefined) {
      if (version === 1) return malformed('http:missing-host');
    } else if (hostValue === null || hostValue.toLowerCase() !== targetHost.toLowerCase()) {
      return malformed('http:host-mismatch');
    }
    return { kind: 'found', host: targetHost, method, target };
  }
  if (hostValue === undefined) {
    if (version === 1) return malformed('http:missing-host');
    return { kind: 'found', host: null, method, target }; // HTTP/1.0 without Host
  }
  return { kind: 'found', host: hostValue, method, target };
}

/** HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 2.3); returns the minor version of 1.x. */
function versionOf(h: Uint8Array, start: number, end: number): number | Malformed {
  const shape =
    end - start === 8 &&
    h[start] === 0x48 && h[start + 1] === 0x54 && h[start + 2] === 0x54 && h[start + 3] === 0x50 &&
    h[start + 4] === 0x2f && isDigit(h[start + 5]!) && h[start + 6] === 0x2e && isDigit(h[start + 7]!);
  if (!shape) return malformed('http:bad-request-line');
  if (h[start + 5] !== 0x31 || h[start + 7]! > 0x31) return malformed('http:unsupported-version');
  return h[start + 7]! - 0x30;
}

/** Host for an absolute-form target "scheme://authority[/path...]" (RFC 9112 3.2.2). */
function absoluteFormHost(h: Uint8Array, start: number, end: number): string | Malformed {
  let p = start;
  while (p < end && h[p] !== COLON) p++;
  const scheme = ascii(h, start, p).toLowerCase();
  if (scheme !== 'http' && scheme !== 'https') return malformed('http:bad-target');
  if (end - p < 3 || h[p + 1] !== 0x2f || h[p + 2] !== 0x2f) return malformed('http:bad-target');
  const authorityStart = p + 3;
  let authorityEnd = authorityStart;
  while (authorityEnd < end) {
    const c = h[authorityEnd]!;
    if (c === 0x2f || c === 0x3f || c === 0x23) break; // '/', '?', '#'
    if (c === 0x40) return malformed('http:userinfo'); // '@'
    authorityEnd++;
  }
  const host = parseHostPort(h, authorityStart, authorityEnd, false);
  if (host === undefined || host === null) return malformed('http:bad-target');
  return host;
}

/**
 * uri-host [ ":" port ] from h[start, end): the host as sent with the port
 * stripped, brackets kept for an IPv6 literal; null for an empty value;
 * undefined if invalid. `portRequired` is for CONNECT's authority-form.
 */
function parseHostPort(h: Uint8Array, start: number, end: number, portRequired: boolean): string | null | undefined {
  if (start === end) return portRequired ? undefined : null;
  let hostEnd: number;
  if (h[start] === 0x5b /* '[' */) {
    let p = start + 1;
    while (p < end && isIpv6LiteralByte(h[p]!)) p++;
    if (p === start + 1 || p >= end || h[p] !== 0x5d /* ']' */) return undefined;
    hostEnd = p + 1;
  } else {
    let p = start;
    while (p < end && isHostNameByte(h[p]!)) p++;
    if (p === start) return undefined;
    hostEnd = p;
  }
  if (hostEnd === end) return portRequired ? undefined : ascii(h, start, hostEnd);
  if (h[hostEnd] !== COLON) return undefined;
  // port = *DIGIT (RFC 3986 3.2.3), at most 65535.
  const portDigits = end - hostEnd - 1;
  if (portDigits > 5 || (portRequired && portDigits === 0)) return undefined;
  let port = 0;
  for (let i = hostEnd + 1; i < end; i++) {
    if (!isDigit(h[i]!)) return undefined;
    port = port * 10 + (h[i]! - 0x30);
  }
  if (port > 65535) return undefined;
  return ascii(h, start, hostEnd);
}

function isHostNameByte(c: number): boolean {
  return (
    (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) ||
    c === 0x2d || c === 0x2e || c === 0x5f
  );
}

function isIpv6LiteralByte(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46) || c === COLON || c === 0x2e;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** Field name h[start, end) is `lower` (lower-case ASCII letters and '-'), case-insensitively. */
function fieldNameIs(h: Uint8Array, start: number, end: number, lower: string): boolean {
  return valueIs(h, start, end, lower);
}

/** h[start, end) equals `lower` ignoring ASCII case (`lower` holds letters and '-' only). */
function valueIs(h: Uint8Array, start: number, end: number, lower: string): boolean {
  if (end - start !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) {
    const c = h[start + i]!;
    const want = lower.charCodeAt(i);
    if (c !== want && !(want >= 0x61 && want <= 0x7a && (c | 0x20) === want)) return false;
  }
  return true;
}

/** Field name h[start, end) is "Host", case-insensitively (RFC 9110 5.1). */
function isHostName(h: Uint8Array, start: number, end: number): boolean {
  return (
    end - start === 4 &&
    (h[start]! | 0x20) === 0x68 && (h[start + 1]! | 0x20) === 0x6f &&
    (h[start + 2]! | 0x20) === 0x73 && (h[start + 3]! | 0x20) === 0x74
  );
}

/** Index of the CR of the next CRLF at or after `from` (the scanner guarantees one exists). */
function indexOfCRLF(h: Uint8Array, from: number): number {
  const i = h.indexOf(CR, from);
  return i < 0 ? h.length : i;
}

/** Bytes -> string, one char per byte. */
function ascii(b: Uint8Array, start: number, end: number): string {
  let s = '';
  for (let i = start; i < end; i += 4096) {
    s += String.fromCharCode.apply(null, b.subarray(i, Math.min(end, i + 4096)) as unknown as number[]);
  }
  return s;
}
