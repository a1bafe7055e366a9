/**
 * Incremental TLS ClientHello reader: feed it the first bytes a client sends on
 * a TCP connection, in whatever pieces they arrive, and it tells the server
 * name (SNI), the ALPN list and whether the hello carries Encrypted Client Hello.
 *
 * It understands just enough of the record layer (RFC 8446 5.1, RFC 5246 6.2.1)
 * to reassemble the first handshake message, which may be split over several
 * TLS records and any number of TCP segments, and then parses that ClientHello
 * strictly (RFC 8446 4.1.2, RFC 5246 7.4.1.2): every vector length must fit in
 * its parent, so two parsers cannot disagree about which bytes are the name.
 *
 * Memory: when a whole record header and the whole handshake message are in one
 * chunk (the common case: a 200 B - 2 KB hello in one segment), the hello is
 * parsed straight from that chunk with no copy. Otherwise the handshake bytes
 * are copied into a buffer that grows with what actually arrived (so a client
 * that announces a 128 KiB hello and sends 9 bytes costs ~1 KiB, not 128 KiB)
 * and never exceeds `maxHandshakeBytes`.
 *
 * Pure: no I/O, never throws on input.
 */

export type ClientHelloResult =
  | { kind: 'need-more' }
  | { kind: 'found'; sni: string | null; alpn: string[]; ech: boolean }
  | { kind: 'not-tls' }
  | { kind: 'malformed'; reason: `tls:${string}` };

/**
 * The largest ClientHello handshake message the TLS 1.2 / 1.3 structures allow
 * (RFC 8446 4.1.2; RFC 5246 7.4.1.2 has the same bounds):
 *
 *   handshake header: msg_type(1) + uint24 length(3)            =      4
 *   legacy_version                                               =      2
 *   random                                                       =     32
 *   legacy_session_id          <0..32>      : 1 + 32             =     33
 *   cipher_suites              <2..2^16-2>  : 2 + 65534          =  65536
 *   legacy_compression_methods <1..2^8-1>   : 1 + 255            =    256
 *   extensions                 <8..2^16-1>  : 2 + 65535          =  65537
 *                                                          total = 131400
 *
 * A declared length above this cannot be a valid ClientHello, so it is also the
 * default (and sensible upper) bound on what the reader buffers.
 */
export const MAX_CLIENT_HELLO_BYTES = 4 + 2 + 32 + 33 + 65_536 + 256 + 65_537;

/** RFC 8446 5.1 / RFC 5246 6.2.1: a TLSPlaintext fragment is at most 2^14 bytes. */
const MAX_RECORD_FRAGMENT = 16_384;
const RECORD_HEADER_BYTES = 5;
const HANDSHAKE_HEADER_BYTES = 4;
const CONTENT_TYPE_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
/** First allocation when the hello spans chunks; doubled as more arrives. */
const INITIAL_BUFFER_BYTES = 1024;

const EXT_SERVER_NAME = 0x0000; // RFC 6066 3
const EXT_ALPN = 0x0010; // RFC 7301 3.1
const EXT_ENCRYPTED_CLIENT_HELLO = 0xfe0d; // TLS Encrypted Client Hello (draft-ietf-tls-esni)
const SERVER_NAME_TYPE_HOST_NAME = 0;

type Malformed = { kind: 'malformed'; reason: `tls:${string}` };
type Found = { kind: 'found'; sni: string | null; alpn: string[]; ech: boolean };

const NEED_MORE: ClientHelloResult = Object.freeze({ kind: 'need-more' }) as ClientHelloResult;
const NOT_TLS: ClientHelloResult = Object.freeze({ kind: 'not-tls' }) as ClientHelloResult;

function malformed(reason: `tls:${string}`): Malformed {
  return { kind: 'malformed', reason };
}

export class ClientHelloReader {
  readonly maxHandshakeBytes: number;

  private seen = 0;
  private terminal: ClientHelloResult | null = null;

  /** A record header that arrived in pieces (fixed 5 bytes, not part of the bound). */
  private readonly recordHeader = new Uint8Array(RECORD_HEADER_BYTES);
  private recordHeaderFill = 0;
  /** Bytes of the current record's fragment not yet consumed; 0 = expecting a header. */
  private recordRemaining = 0;
  private recordsSeen = 0;

  /** The handshake message (header included) copied so far, when it spans chunks. */
  private buffer: Uint8Array | null = null;
  private handshakeFill = 0;
  /** 4 + the declared body length, once the handshake header is known; else -1. */
  private handshakeTotal = -1;

  constructor(opts?: { maxHandshakeBytes?: number }) {
    const max = opts?.maxHandshakeBytes ?? MAX_CLIENT_HELLO_BYTES;
    if (!Number.isInteger(max) || max < HANDSHAKE_HEADER_BYTES) {
      throw new RangeError(`maxHandshakeBytes must be an integer >= ${HANDSHAKE_HEADER_BYTES}, got ${max}`);
    }
    this.maxHandshakeBytes = max;
  }

  /** Raw bytes pushed so far (including any pushed after a terminal result). */
  get bytesSeen(): number {
    return this.seen;
  }

  /** Handshake bytes currently copied and held (0 on the single-chunk path and once terminal). */
  get bufferedBytes(): number {
    return this.buffer === null ? 0 : this.handshakeFill;
  }

  /** Bytes allocated to hold them; never exceeds `maxHandshakeBytes`. */
  get bufferCapacity(): number {
    return this.buffer === null ? 0 : this.buffer.length;
  }

  /** `chunk` is only read during the call; whatever must be kept is copied. */
  push(chunk: Uint8Array): ClientHelloResult {
    this.seen += chunk.length;
    if (this.terminal !== null) return this.terminal;
    const r = this.consume(chunk);
    if (r.kind !== 'need-more') {
      this.terminal = r;
      this.buffer = null; // release: the answer is all anyone needs now
    }
    return r;
  }

  private consume(chunk: Uint8Array): ClientHelloResult {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (this.recordRemaining === 0) {
        // Record header. Fast path: all five bytes in this chunk.
        let header: Uint8Array;
        let at: number;
        if (this.recordHeaderFill === 0 && end - pos >= RECORD_HEADER_BYTES) {
          header = chunk;
          at = pos;
          pos += RECORD_HEADER_BYTES;
        } else {
          // Decide "not TLS" on the very first byte, without waiting for five.
          if (this.recordHeaderFill === 0 && this.recordsSeen === 0 && chunk[pos] !== CONTENT_TYPE_HANDSHAKE) {
            return NOT_TLS;
          }
          const take = Math.min(RECORD_HEADER_BYTES - this.recordHeaderFill, end - pos);
          this.recordHeader.set(chunk.subarray(pos, pos + take), this.recordHeaderFill);
          this.recordHeaderFill += take;
          pos += take;
          if (this.recordHeaderFill < RECORD_HEADER_BYTES) return NEED_MORE;
          header = this.recordHeader;
          at = 0;
          this.recordHeaderFill = 0;
        }
        const bad = this.acceptRecordHeader(header, at);
        if (bad !== null) return bad;
        continue;
      }
      // Fragment bytes of the current record: handshake-message bytes.
      const take = Math.min(this.recordRemaining, end - pos);
      this.recordRemaining -= take;
      const r = this.acceptHandshakeBytes(chunk, pos, pos + take);
      pos += take;
      if (r !== NEED_MORE) return r;
    }
    return NEED_MORE;
  }

  /** Validates a record header; sets `recordRemaining`. Returns a terminal result or null. */
  private acceptRecordHeader(h: Uint8Array, at: number): ClientHelloResult | null {
    const first = this.recordsSeen === 0;
    this.recordsSeen++;
    const type = h[at]!;
    const major = h[at + 1]!;
    const minor = h[at + 2]!;
    const length = (h[at + 3]! << 8) | h[at + 4]!;
    if (type !== CONTENT_TYPE_HANDSHAKE) {
      // RFC 8446 5.1: a handshake message split over records must not be
      // interleaved with other record types.
      return first ? NOT_TLS : malformed('tls:unexpected-record-type');
    }
    if (major !== 3) {
      // 0x16 followed by anything but a 3.x version is some other protocol.
      return first ? NOT_TLS : malformed('tls:bad-record-version');
    }
    // RFC 8446 5.1: legacy_record_version is 0x0303, or 0x0301 in an initial
    // ClientHello; RFC 5246 E.1 lets a TLS 1.2 client send {03,00} for old
    // servers. Anything above 1.2 here is not a real client.
    if (minor > 3) return malformed('tls:bad-record-version');
    // RFC 8446 5.1: zero-length handshake fragments MUST NOT be sent.
    if (length === 0) return malformed('tls:empty-record');
    if (length > MAX_RECORD_FRAGMENT) return malformed('tls:record-too-long');
    this.recordRemaining = length;
    return null;
  }

  /** Bytes chunk[start, end) belong to the handshake message. */
  private acceptHandshakeBytes(chunk: Uint8Array, start: number, end: number): ClientHelloResult {
    // Single-chunk path: nothing held yet and the whole message is right here.
    if (this.handshakeFill === 0 && end - start >= HANDSHAKE_HEADER_BYTES) {
      const bad = this.acceptHandshakeHeader(chunk, start);
      if (bad !== null) return bad;
      if (end - start >= this.handshakeTotal) {
        return parseClientHelloBody(chunk.subarray(start + HANDSHAKE_HEADER_BYTES, start + this.handshakeTotal));
      }
    }
    // Spanning path: copy into the bounded buffer.
    let pos = start;
    while (pos < end) {
      if (this.handshakeTotal < 0) {
        // Handshake header still incomplete: copy byte-wise into the first four slots.
        this.ensureCapacity(HANDSHAKE_HEADER_BYTES);
        const take = Math.min(HANDSHAKE_HEADER_BYTES - this.handshakeFill, end - pos);
        this.buffer!.set(chunk.subarray(pos, pos + take), this.handshakeFill);
        this.handshakeFill += take;
        pos += take;
        if (this.handshakeFill < HANDSHAKE_HEADER_BYTES) return NEED_MORE;
        const bad = this.acceptHandshakeHeader(this.buffer!, 0);
        if (bad !== null) return bad;
        continue;
      }
      const take = Math.min(this.handshakeTotal - this.handshakeFill, end - pos);
      this.ensureCapacity(this.handshakeFill + take);
      this.buffer!.set(chunk.subarray(pos, pos + take), this.handshakeFill);
      this.handshakeFill += take;
      pos += take;
      if (this.handshakeFill === this.handshakeTotal) {
        // Bytes after the ClientHello (there should be none before the server
        // answers) are not our business.
        return parseClientHelloBody(this.buffer!.subarray(HANDSHAKE_HEADER_BYTES, this.handshakeTotal));
      }
    }
    if (this.handshakeTotal >= 0 && this.handshakeFill === this.handshakeTotal) {
      return parseClientHelloBody(this.buffer!.subarray(HANDSHAKE_HEADER_BYTES, this.handshakeTotal));
    }
    return NEED_MORE;
  }

  private acceptHandshakeHeader(h: Uint8Array, at: number): ClientHelloResult | null {
    if (h[at] !== HANDSHAKE_CLIENT_HELLO) return malformed('tls:not-client-hello');
    const bodyLength = (h[at + 1]! << 16) | (h[at + 2]! << 8) | h[at + 3]!;
    const total = HANDSHAKE_HEADER_BYTES + bodyLength;
    if (total > this.maxHandshakeBytes) return malformed('tls:hello-too-large');
    this.handshakeTotal = total;
    return null;
  }

  /** Grows the buffer to hold `needed` bytes: doubling, capped at the message size. */
  private ensureCapacity(needed: number): void {
    const current = this.buffer === null ? 0 : this.buffer.length;
    if (needed <= current) return;
    // Until the handshake header is complete, only its four bytes are needed.
    const cap = this.handshakeTotal >= 0 ? this.handshakeTotal : HANDSHAKE_HEADER_BYTES;
    const size = Math.min(cap, Math.max(needed, current * 2, INITIAL_BUFFER_BYTES));
    const grown = new Uint8Array(size);
    if (this.buffer !== null) grown.set(this.buffer.subarray(0, this.handshakeFill));
    this.buffer = grown;
  }
}

/**
 * Parses a complete ClientHello body (after the 4-byte handshake header).
 * Strict: every length must fit in its parent and the extensions block must
 * end exactly where the message ends.
 */
export function parseClientHelloBody(b: Uint8Array): Found | Malformed {
  const end = b.length;
  let p = 0;
  // legacy_version(2) + random(32) + legacy_session_id length(1)
  if (end < 35) return malformed('tls:truncated-hello');
  if (b[0] !== 3) return malformed('tls:bad-hello-version');
  p = 34;
  const sessionIdLength = b[p]!;
  p += 1;
  if (sessionIdLength > 32) return malformed('tls:bad-session-id');
  p += sessionIdLength;
  if (p + 2 > end) return malformed('tls:truncated-hello');
  const suitesLength = (b[p]! << 8) | b[p + 1]!;
  p += 2;
  if (suitesLength < 2 || suitesLength % 2 !== 0) return malformed('tls:bad-cipher-suites');
  if (p + suitesLength > end) return malformed('tls:truncated-hello');
  p += suitesLength;
  if (p + 1 > end) return malformed('tls:truncated-hello');
  const compressionLength = b[p]!;
  p += 1;
  if (compressionLength < 1) return malformed('tls:bad-compression-methods');
  if (p + compressionLength > end) return malformed('tls:truncated-hello');
  p += compressionLength;

  const found: Found = { kind: 'found', sni: null, alpn: [], ech: false };
  // RFC 5246 7.4.1.2: a TLS 1.2 hello may end here (no extensions).
  if (p === end) return found;
  if (p + 2 > end) return malformed('tls:truncated-extensions');
  const extensionsLength = (b[p]! << 8) | b[p + 1]!;
  p += 2;
  if (p + extensionsLength > end) return malformed('tls:truncated-extensions');
  if (p + extensionsLength !== end) return malformed('tls:trailing-bytes');

  let sawServerName = false;
  let sawAlpn = false;
  while (p < end) {
    if (p + 4 > end) return malformed('tls:truncated-extension');
    const type = (b[p]! << 8) | b[p + 1]!;
    const length = (b[p + 2]! << 8) | b[p + 3]!;
    p += 4;
    if (p + length > end) return malformed('tls:truncated-extension');
    const body = b.subarray(p, p + length);
    p += length;
    // RFC 8446 4.2: at most one extension of each type. Checked for the ones
    // we interpret, where a second copy could make two readers disagree.
    switch (type) {
      case EXT_SERVER_NAME: {
        if (sawServerName) return malformed('tls:duplicate-extension');
        sawServerName = true;
        const sni = parseServerName(body);
        if (typeof sni !== 'string') return sni;
        found.sni = sni;
        break;
      }
      case EXT_ALPN: {
        if (sawAlpn) return malformed('tls:duplicate-extension');
        sawAlpn = true;
        const alpn = parseAlpn(body);
        if (!Array.isArray(alpn)) return alpn;
        found.alpn = alpn;
        break;
      }
      case EXT_ENCRYPTED_CLIENT_HELLO:
        if (found.ech) return malformed('tls:duplicate-extension');
        // The outer hello's SNI is the client-facing server; the real name is
        // encrypted. Callers see `ech: true` and decide.
        found.ech = true;
        break;
      default:
        // Unknown and GREASE (RFC 8701) extensions are skipped.
        break;
    }
  }
  return found;
}

/**
 * RFC 6066 3: ServerNameList server_name_list<1..2^16-1>, each entry
 * name_type(1) + HostName<1..2^16-1>. Moat accepts exactly one entry, of type
 * host_name (0), and returns its name. Anything else is malformed: a list like
 * [type 1 "blocked.test", type 0 "raw.test"] would otherwise be read as
 * raw.test here while a server that takes the first entry (or knows type 1)
 * could act on the other name. No other name_type was ever defined, so a
 * real client never sends one.
 */
function parseServerName(b: Uint8Array): string | Malformed {
  if (b.length < 2) return malformed('tls:bad-server-name-list');
  const listLength = (b[0]! << 8) | b[1]!;
  if (listLength + 2 !== b.length || listLength === 0) return malformed('tls:bad-server-name-list');
  if (listLength < 3) return malformed('tls:bad-server-name-list');
  const nameType = b[2]!;
  const length = (b[3]! << 8) | b[4]!;
  const p = 5;
  if (p + length > b.length) return malformed('tls:bad-server-name-list');
  if (nameType !== SERVER_NAME_TYPE_HOST_NAME) return malformed('tls:bad-server-name-type');
  // "MUST NOT contain more than one name of the same name_type" (RFC 6066 3);
  // and a second entry of any type is refused for the reason above.
  if (p + length !== b.length) return malformed('tls:multiple-server-names');
  if (length === 0) return malformed('tls:bad-server-name');
  // ASCII only (RFC 6066 3: "HostName" is a DNS name in A-labels). Refuse
  // spaces and control bytes so the name is safe to log and compare.
  for (let i = p; i < p + length; i++) {
    const c = b[i]!;
    if (c < 0x21 || c > 0x7e) return malformed('tls:bad-server-name');
  }
  return ascii(b, p, p + length);
}

/**
 * RFC 7301 3.1: ProtocolNameList protocol_name_list<2..2^16-1>, each
 * ProtocolName<1..2^8-1>. GREASE identifiers (RFC 8701 3: two bytes 0x?A?A)
 * are dropped from the result; other names are returned byte-for-byte
 * (ISO-8859-1).
 */
function parseAlpn(b: Uint8Array): string[] | Malformed {
  if (b.length < 2) return malformed('tls:bad-alpn-list');
  const listLength = (b[0]! << 8) | b[1]!;
  if (listLength + 2 !== b.length || listLength < 2) return malformed('tls:bad-alpn-list');
  const names: string[] = [];
  let p = 2;
  while (p < b.length) {
    const length = b[p]!;
    p += 1;
    if (length === 0 || p + length > b.length) return malformed('tls:bad-alpn-list');
    const grease = length === 2 && b[p] === b[p + 1] && (b[p]! & 0x0f) === 0x0a;
    if (!grease) names.push(ascii(b, p, p + length));
    p += length;
  }
  return names;
}

/** Bytes -> string, one char per byte (callers have already bounded the range). */
function ascii(b: Uint8Array, start: number, end: number): string {
  let s = '';
  for (let i = start; i < end; i += 4096) {
    s += String.fromCharCode.apply(null, b.subarray(i, Math.min(end, i + 4096)) as unknown as number[]);
  }
  return s;
}
