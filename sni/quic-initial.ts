/**
 * QUIC Initial reader: feed it the UDP payloads a client sends on one flow,
 * in the order they arrive, and it tells the server name (SNI), the ALPN list
 * and the QUIC version of the ClientHello those datagrams carry.
 *
 * Client Initial packets are protected with keys derived from public values
 * (RFC 9001 5.2: a version-specific salt and the Destination Connection ID of
 * the client's first Initial), so the ClientHello can be read without any
 * secret. What this module does, per datagram:
 *  - walks the coalesced packets (RFC 9000 12.2): long headers with a Length
 *    field; non-Initial long-header packets (0-RTT, Handshake) are skipped by
 *    their length; a short header or trailing padding ends the datagram;
 *  - removes header protection (RFC 9001 5.4) and opens the payload with
 *    AES-128-GCM (RFC 9001 5.3); a packet that does not authenticate is
 *    dropped, as the server drops it (same keys), and counted;
 *  - reads the frames: PADDING, PING, ACK skipped; CONNECTION_CLOSE ends
 *    the read; CRYPTO frames reassembled into the handshake stream across
 *    packets and out of order; any other frame is not allowed in an Initial
 *    (RFC 9000 12.4, Table 3) and makes the flight malformed;
 *  - once the stream holds the whole first handshake message, the
 *    ClientHello goes through the TLS parser (sni/clienthello.ts
 *    parseClientHelloBody: the same message without the record layer).
 *
 * Versions: QUIC v1 (RFC 9000/9001) and v2 (RFC 9369: its own salt, its own
 * "quicv2 " labels, Initial long-header type 0b01).
 *
 * Every packet of the flight is read with the keys of the FIRST DCID seen:
 * a packet with another DCID or version is malformed (two connection
 * attempts in one peek would let a client show one name and use another).
 * Bytes a duplicate CRYPTO frame repeats must equal the ones already held
 * (RFC 9000 19.6), else malformed: the server and Moat must read one hello.
 *
 * Bounds: the CRYPTO stream is held up to `maxCryptoBytes` (an offset + length
 * beyond it is malformed 'quic:crypto-too-large'), and at most `maxPackets`
 * Initial packets are read (more without a complete hello: malformed
 * 'quic:too-many-packets'). Memory grows with what arrived, not what a
 * frame announces.
 *
 * The AEAD, the AES block and HMAC-SHA256 are injected (`QuicCrypto`): this
 * library does no I/O and imports no node: module. HKDF (RFC 5869) and TLS
 * 1.3's HKDF-Expand-Label (RFC 8446 7.1) are built on the injected HMAC.
 *
 * Pure, never throws on input; terminal results are sticky.
 */
import { parseClientHelloBody } from './clienthello.js';

/** The primitives the reader needs; src/ passes node:crypto's. */
export interface QuicCrypto {
  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array;
  /** AES-128 of one 16-byte block, no chaining: the header-protection mask (RFC 9001 5.4.3). */
  aes128Block(key: Uint8Array, block: Uint8Array): Uint8Array;
  /** AES-128-GCM open: `sealed` ends with the 16-byte tag. null when it does not authenticate. */
  aes128GcmOpen(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array): Uint8Array | null;
}

export type QuicVersionName = 'v1' | 'v2';

export type QuicInitialResult =
  | { kind: 'need-more' }
  | { kind: 'found'; sni: string | null; alpn: string[]; ech: boolean; version: QuicVersionName; dcid: Uint8Array }
  | { kind: 'not-quic' }
  | { kind: 'unsupported-version'; version: number }
  | { kind: 'malformed'; reason: `quic:${string}` | `tls:${string}` };

export interface QuicInitialReaderOptions {
  /** The CRYPTO stream bytes held at most (the hello must fit). Default 16 KiB. */
  maxCryptoBytes?: number;
  /** Initial packets read at most before the hello must be whole. Default 32. */
  maxPackets?: number;
}

/** A post-quantum hello (X25519MLKEM768) is ~1.9 KB; 16 KiB leaves room for big extension sets. */
export const DEFAULT_MAX_QUIC_CRYPTO_BYTES = 16 * 1024;
export const DEFAULT_MAX_QUIC_PACKETS = 32;

export const QUIC_V1 = 0x00000001;
export const QUIC_V2 = 0x6b3343cf;

interface VersionParams {
  readonly name: QuicVersionName;
  readonly salt: Uint8Array;
  readonly initialType: number;
  readonly keyLabel: string;
  readonly ivLabel: string;
  readonly hpLabel: string;
}

function hex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** RFC 9001 5.2 (v1) and RFC 9369 3.3.1-3.3.3 (v2). */
const V1: VersionParams = { name: 'v1', salt: hex('38762cf7f55934b34d179ae6a4c80cadccbb7f0a'), initialType: 0, keyLabel: 'quic key', ivLabel: 'quic iv', hpLabel: 'quic hp' };
const V2: VersionParams = { name: 'v2', salt: hex('0dede3def700a6db819381be6e269dcbf9bd2ed9'), initialType: 1, keyLabel: 'quicv2 key', ivLabel: 'quicv2 iv', hpLabel: 'quicv2 hp' };

function versionParams(v: number): VersionParams | null {
  return v === QUIC_V1 ? V1 : v === QUIC_V2 ? V2 : null;
}

/** Is this datagram's first byte a long header (form and fixed bit set) of a QUIC v1/v2 Initial? Cheap: no crypto. */
export function looksLikeQuicInitial(d: Uint8Array): boolean {
  if (d.length < 7 || (d[0]! & 0xc0) !== 0xc0) return false;
  const v = ((d[1]! << 24) | (d[2]! << 16) | (d[3]! << 8) | d[4]!) >>> 0;
  const p = versionParams(v);
  return p !== null && ((d[0]! >> 4) & 3) === p.initialType;
}

/** The Destination Connection ID of a long-header packet, or null. */
export function longHeaderDcid(d: Uint8Array): Uint8Array | null {
  if (d.length < 6 || (d[0]! & 0x80) === 0) return null;
  const len = d[5]!;
  if (len > 20 || 6 + len > d.length) return null;
  return d.subarray(6, 6 + len);
}

export interface InitialKeys {
  key: Uint8Array;
  iv: Uint8Array;
  hp: Uint8Array;
}

const enc = (s: string): Uint8Array => {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
};

/** RFC 8446 7.1 HKDF-Expand-Label with an empty context, for lengths <= 32 (one HMAC block). */
function expandLabel(c: QuicCrypto, secret: Uint8Array, label: string, length: number): Uint8Array {
  const full = enc(`tls13 ${label}`);
  const info = new Uint8Array(2 + 1 + full.length + 1 + 1);
  info[0] = length >> 8;
  info[1] = length & 0xff;
  info[2] = full.length;
  info.set(full, 3);
  info[3 + full.length] = 0; // empty context
  info[4 + full.length] = 1; // HKDF-Expand counter T(1)
  return c.hmacSha256(secret, info).subarray(0, length);
}

/** The client's Initial keys for a DCID (RFC 9001 5.2; RFC 9369 3.3). */
export function clientInitialKeys(c: QuicCrypto, version: number, dcid: Uint8Array): InitialKeys | null {
  const p = versionParams(version);
  if (p === null) return null;
  const initial = c.hmacSha256(p.salt, dcid); // HKDF-Extract(salt, IKM = DCID)
  const client = expandLabel(c, initial, 'client in', 32);
  return { key: expandLabel(c, client, p.keyLabel, 16), iv: expandLabel(c, client, p.ivLabel, 12), hp: expandLabel(c, client, p.hpLabel, 16) };
}

type Malformed = { kind: 'malformed'; reason: `quic:${string}` | `tls:${string}` };
const NEED_MORE: QuicInitialResult = Object.freeze({ kind: 'need-more' }) as QuicInitialResult;
const NOT_QUIC: QuicInitialResult = Object.freeze({ kind: 'not-quic' }) as QuicInitialResult;
function malformed(reason: Malformed['reason']): Malformed {
  return { kind: 'malformed', reason };
}

/** RFC 9000 16: variable-length integer at b[p]; [value, next offset] or null when truncated. Values fit a double (< 2^53 checked by callers' bounds). */
function varint(b: Uint8Array, p: number, end: number): [number, number] | null {
  if (p >= end) return null;
  const first = b[p]!;
  const len = 1 << (first >> 6);
  if (p + len > end) return null;
  let v = first & 0x3f;
  for (let i = 1; i < len; i++) v = v * 256 + b[p + i]!;
  return [v, p + len];
}

const FRAME_PADDING = 0x00;
const FRAME_PING = 0x01;
const FRAME_ACK = 0x02;
const FRAME_ACK_ECN = 0x03;
const FRAME_CRYPTO = 0x06;
const FRAME_CONNECTION_CLOSE = 0x1c;
const HANDSHAKE_HEADER_BYTES = 4;
const HANDSHAKE_CLIENT_HELLO = 1;
/** RFC 9000 14.1: a client's Initial datagram is at least 1200 bytes; the sample needs pn offset + 4 + 16. */
const SAMPLE_BYTES = 16;
const TAG_BYTES = 16;

export class QuicInitialReader {
  readonly maxCryptoBytes: number;
  readonly maxPackets: number;

  private terminal: QuicInitialResult | null = null;
  private version = 0;
  private params: VersionParams | null = null;
  private dcid: Uint8Array | null = null;
  private keys: InitialKeys | null = null;
  private packets = 0;
  private undecryptable = 0;
  private datagrams = 0;
  /** The CRYPTO stream, grown on demand up to maxCryptoBytes. */
  private stream: Uint8Array = new Uint8Array(0);
  /** Received ranges [start, end), sorted, disjoint, merged. */
  private ranges: number[] = [];
  private helloTotal = -1;
  /** The whole hello once found (a copy), for seeding a later reader of the same flow. */
  private hello: Uint8Array | null = null;

  constructor(
    private readonly crypto: QuicCrypto,
    opts?: QuicInitialReaderOptions,
  ) {
    const maxBytes = opts?.maxCryptoBytes ?? DEFAULT_MAX_QUIC_CRYPTO_BYTES;
    const maxPackets = opts?.maxPackets ?? DEFAULT_MAX_QUIC_PACKETS;
    if (!Number.isInteger(maxBytes) || maxBytes < HANDSHAKE_HEADER_BYTES) throw new RangeError(`maxCryptoBytes must be an integer >= 4, got ${maxBytes}`);
    if (!Number.isInteger(maxPackets) || maxPackets < 1) throw new RangeError(`maxPackets must be an integer >= 1, got ${maxPackets}`);
    this.maxCryptoBytes = maxBytes;
    this.maxPackets = maxPackets;
  }

  /** Initial packets read so far (decrypted or not). */
  get packetsSeen(): number {
    return this.packets;
  }

  /** Packets that did not authenticate (dropped, as the server drops them). */
  get packetsUndecryptable(): number {
    return this.undecryptable;
  }

  /** Bytes allocated for the CRYPTO stream; never above maxCryptoBytes. */
  get bufferCapacity(): number {
    return this.stream.length;
  }

  /** The hello's CRYPTO stream bytes (handshake header included) once found; else null. */
  get helloBytes(): Uint8Array | null {
    return this.hello;
  }

  /**
   * A reader for later Initials of a flow whose hello is known: the same DCID
   * and version, the stream already holding `hello`. Any CRYPTO bytes a
   * packet carries must equal the known ones (else malformed
   * 'quic:crypto-conflict'); a packet that opens without conflict answers
   * 'found' with the known hello's name. One flow, one name: a client that
   * reuses its DCID cannot bring a second ClientHello.
   */
  static seeded(crypto: QuicCrypto, found: { version: QuicVersionName; dcid: Uint8Array }, hello: Uint8Array, opts?: QuicInitialReaderOptions): QuicInitialReader {
    const r = new QuicInitialReader(crypto, opts);
    r.params = found.version === 'v1' ? V1 : V2;
    r.version = found.version === 'v1' ? QUIC_V1 : QUIC_V2;
    r.dcid = new Uint8Array(found.dcid);
    r.keys = clientInitialKeys(crypto, r.version, r.dcid);
    r.datagrams = 1;
    if (hello.length <= r.maxCryptoBytes && hello.length >= HANDSHAKE_HEADER_BYTES) {
      r.stream = new Uint8Array(hello);
      r.ranges = [0, hello.length];
      r.helloTotal = hello.length;
    }
    return r;
  }

  /** The DCID whose keys protect this flight (after the first Initial). */
  get connectionId(): Uint8Array | null {
    return this.dcid;
  }

  /** One UDP payload; read only during the call. */
  push(datagram: Uint8Array): QuicInitialResult {
    if (this.terminal !== null) return this.terminal;
    const r = this.datagram(datagram);
    this.datagrams++;
    if (r.kind !== 'need-more') {
      this.terminal = r;
      this.stream = new Uint8Array(0);
      this.ranges = [];
    }
    return r;
  }

  private datagram(d: Uint8Array): QuicInitialResult {
    let pos = 0;
    const end = d.length;
    while (pos < end) {
      const first = d[pos]!;
      // A short header (or padding after the last packet) ends what we can read of this datagram (RFC 9000 12.2).
      if ((first & 0x80) === 0) {
        if (this.datagrams === 0 && pos === 0) return NOT_QUIC;
        return NEED_MORE;
      }
      if (end - pos < 7) return pos === 0 && this.datagrams === 0 ? NOT_QUIC : malformed('quic:truncated-header');
      const version = ((d[pos + 1]! << 24) | (d[pos + 2]! << 16) | (d[pos + 3]! << 8) | d[pos + 4]!) >>> 0;
      if (this.params === null) {
        if ((first & 0x40) === 0) return NOT_QUIC; // RFC 9000 17.2: fixed bit; a QUIC v1/v2 packet sets it
        if (version === 0) return NOT_QUIC; // Version Negotiation is a server's packet
        const p = versionParams(version);
        if (p === null) return { kind: 'unsupported-version', version };
        this.params = p;
        this.version = version;
      } else if (version !== this.version) {
        return malformed('quic:version-changed');
      }
      const r = this.packet(d, pos, end);
      if (typeof r !== 'number') return r;
      pos = r;
      if (this.helloTotal >= 0 && this.contiguous() >= this.helloTotal) return this.finish();
    }
    return NEED_MORE;
  }

  /** One long-header packet at d[pos]; returns the offset after it, or a terminal result. */
  private packet(d: Uint8Array, start: number, end: number): number | QuicInitialResult {
    const p = this.params!;
    let pos = start + 5;
    const dcidLen = d[pos]!;
    pos += 1;
    if (dcidLen > 20 || pos + dcidLen > end) return malformed('quic:bad-dcid');
    const dcid = d.subarray(pos, pos + dcidLen);
    pos += dcidLen;
    if (pos >= end) return malformed('quic:truncated-header');
    const scidLen = d[pos]!;
    pos += 1;
    if (scidLen > 20 || pos + scidLen > end) return malformed('quic:bad-scid');
    pos += scidLen;
    const type = (d[start]! >> 4) & 3;
    const initial = type === p.initialType;
    if (initial) {
      const token = varint(d, pos, end);
      if (token === null || token[1] + token[0] > end) return malformed('quic:bad-token');
      pos = token[1] + token[0];
    } else if (type === (p === V1 ? 3 : 0)) {
      // Retry has no Length: a client never sends one.
      return malformed('quic:unexpected-retry');
    }
    const length = varint(d, pos, end);
    if (length === null) return malformed('quic:truncated-header');
    const pnOffset = length[1];
    const packetEnd = pnOffset + length[0];
    if (packetEnd > end) return malformed('quic:bad-length');
    if (!initial) return packetEnd; // 0-RTT / Handshake coalesced behind: not ours to read
    if (this.packets >= this.maxPackets) return malformed('quic:too-many-packets');
    this.packets++;
    if (this.dcid === null) {
      // RFC 9000 7.2: the client's first DCID is at least 8 bytes.
      if (dcidLen < 8) return malformed('quic:short-dcid');
      this.dcid = new Uint8Array(dcid);
      this.keys = clientInitialKeys(this.crypto, this.version, this.dcid);
    } else if (!equal(dcid, this.dcid)) {
      return malformed('quic:dcid-changed');
    }
    // Header protection (RFC 9001 5.4.2): the sample starts 4 bytes after the packet number's start.
    if (pnOffset + 4 + SAMPLE_BYTES > packetEnd) return malformed('quic:packet-too-short');
    const keys = this.keys!;
    const mask = this.crypto.aes128Block(keys.hp, d.subarray(pnOffset + 4, pnOffset + 4 + SAMPLE_BYTES));
    const firstByte = d[start]! ^ (mask[0]! & 0x0f);
    const pnLength = (firstByte & 3) + 1;
    // The AAD, unprotected. `new Uint8Array(view)` copies (a Buffer's slice() would not): the input is read-only.
    const header = new Uint8Array(d.subarray(start, pnOffset + pnLength));
    header[0] = firstByte;
    let pn = 0;
    for (let i = 0; i < pnLength; i++) {
      const b = d[pnOffset + i]! ^ mask[1 + i]!;
      header[pnOffset - start + i] = b;
      pn = pn * 256 + b;
    }
    // RFC 9001 5.3: nonce = IV xor packet number (left-padded). The client's first
    // packets are numbered from 0, so the truncated number is the full one.
    const nonce = new Uint8Array(keys.iv);
    for (let i = 0, v = pn; i < 4; i++, v = Math.floor(v / 256)) nonce[11 - i]! ^= v & 0xff;
    const sealed = d.subarray(pnOffset + pnLength, packetEnd);
    if (sealed.length < TAG_BYTES) return malformed('quic:packet-too-short');
    const plain = this.crypto.aes128GcmOpen(keys.key, nonce, header, sealed);
    if (plain === null) {
      this.undecryptable++;
      return packetEnd;
    }
    // RFC 9000 17.2: reserved bits must be 0 after removing protection (checked only once authenticated).
    if ((firstByte & 0x0c) !== 0) return malformed('quic:reserved-bits');
    const r = this.frames(plain);
    return r === null ? packetEnd : r;
  }

  /** The frames of one decrypted Initial; null = fine, else a terminal result. */
  private frames(b: Uint8Array): QuicInitialResult | null {
    if (b.length === 0) return malformed('quic:empty-packet'); // RFC 9000 12.4: a packet carries at least one frame
    let p = 0;
    const end = b.length;
    while (p < end) {
      const type = b[p]!;
      p++;
      switch (type) {
        case FRAME_PADDING:
        case FRAME_PING:
          continue;
        case FRAME_ACK:
        case FRAME_ACK_ECN: {
          const next = skipAck(b, p, end, type === FRAME_ACK_ECN);
          if (next < 0) return malformed('quic:bad-ack');
          p = next;
          continue;
        }
        case FRAME_CRYPTO: {
          const off = varint(b, p, end);
          if (off === null) return malformed('quic:bad-crypto');
          const len = varint(b, off[1], end);
          if (len === null || len[1] + len[0] > end) return malformed('quic:bad-crypto');
          const r = this.crypto_(off[0], b.subarray(len[1], len[1] + len[0]));
          if (r !== null) return r;
          p = len[1] + len[0];
          continue;
        }
        case FRAME_CONNECTION_CLOSE:
          return malformed('quic:connection-close');
        default:
          return malformed('quic:frame-not-allowed');
      }
    }
    return null;
  }

  /** CRYPTO stream bytes at `offset`; null = accepted, else terminal. */
  private crypto_(offset: number, data: Uint8Array): QuicInitialResult | null {
    const endOff = offset + data.length;
    if (endOff > this.maxCryptoBytes) return malformed('quic:crypto-too-large');
    if (data.length === 0) return null;
    // A client's Initial CRYPTO stream is its ClientHello and nothing more: bytes after it would be a second handshake message.
    if (this.helloTotal >= 0 && endOff > this.helloTotal) return malformed('quic:crypto-after-hello');
    this.ensure(endOff);
    // Bytes already held must be the same bytes (RFC 9000 19.6: retransmitted data is identical).
    const r = this.ranges;
    for (let i = 0; i < r.length; i += 2) {
      const s = Math.max(r[i]!, offset);
      const e = Math.min(r[i + 1]!, endOff);
      for (let j = s; j < e; j++) if (this.stream[j] !== data[j - offset]) return malformed('quic:crypto-conflict');
    }
    this.stream.set(data, offset);
    this.addRange(offset, endOff);
    if (this.helloTotal < 0 && this.contiguous() >= HANDSHAKE_HEADER_BYTES) {
      if (this.stream[0] !== HANDSHAKE_CLIENT_HELLO) return malformed('tls:not-client-hello');
      const total = HANDSHAKE_HEADER_BYTES + ((this.stream[1]! << 16) | (this.stream[2]! << 8) | this.stream[3]!);
      if (total > this.maxCryptoBytes) return malformed('quic:crypto-too-large');
      this.helloTotal = total;
      if (this.ranges[this.ranges.length - 1]! > total) return malformed('quic:crypto-after-hello');
    }
    return null;
  }

  private ensure(n: number): void {
    if (n <= this.stream.length) return;
    const size = Math.min(this.maxCryptoBytes, Math.max(n, this.stream.length * 2, 2048));
    const grown = new Uint8Array(size);
    grown.set(this.stream);
    this.stream = grown;
  }

  private addRange(s: number, e: number): void {
    const r = this.ranges;
    const out: number[] = [];
    let i = 0;
    while (i < r.length && r[i + 1]! < s) out.push(r[i]!, r[i + 1]!), (i += 2);
    let ns = s;
    let ne = e;
    while (i < r.length && r[i]! <= ne) {
      ns = Math.min(ns, r[i]!);
      ne = Math.max(ne, r[i + 1]!);
      i += 2;
    }
    out.push(ns, ne);
    while (i < r.length) out.push(r[i]!, r[i + 1]!), (i += 2);
    this.ranges = out;
  }

  /** Bytes held from offset 0 without a gap. */
  private contiguous(): number {
    return this.ranges.length > 0 && this.ranges[0] === 0 ? this.ranges[1]! : 0;
  }

  private finish(): QuicInitialResult {
    this.hello = this.stream.slice(0, this.helloTotal);
    const hello = parseClientHelloBody(this.stream.subarray(HANDSHAKE_HEADER_BYTES, this.helloTotal));
    if (hello.kind === 'malformed') return hello;
    return { kind: 'found', sni: hello.sni, alpn: hello.alpn, ech: hello.ech, version: this.params!.name, dcid: this.dcid! };
  }
}

/** RFC 9000 19.3: skips an ACK frame's fields after its type; -1 when truncated or absurd. */
function skipAck(b: Uint8Array, p: number, end: number, ecn: boolean): number {
  let v = varint(b, p, end); // largest acknowledged
  if (v === null) return -1;
  v = varint(b, v[1], end); // ack delay
  if (v === null) return -1;
  const count = varint(b, v[1], end); // range count
  if (count === null || count[0] > end) return -1;
  v = varint(b, count[1], end); // first range
  if (v === null) return -1;
  let q = v[1];
  for (let i = 0; i < count[0] * 2; i++) {
    const x = varint(b, q, end);
    if (x === null) return -1;
    q = x[1];
  }
  if (ecn) {
    for (let i = 0; i < 3; i++) {
      const x = varint(b, q, end);
      if (x === null) return -1;
      q = x[1];
    }
  }
  return q;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
