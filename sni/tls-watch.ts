/**
 * TlsHandshakeWatcher: after the first ClientHello named an allowed host,
 * keeps reading the client's plaintext handshake so that a second
 * ClientHello (TLS 1.3 HelloRetryRequest, RFC 8446 4.1.4) cannot name
 * another host ("one connection, one name"). A second hello must carry the
 * same SNI and the same ECH presence, else `mismatch`.
 *
 * What counts as a second ClientHello, and when watching may stop:
 *  - Every client handshake record (type 22) is parsed as plaintext
 *    handshake messages until the SERVER's first handshake message is known.
 *    Until then no key exists, so no client handshake record can be
 *    encrypted; a ClientHello pipelined behind the first (which the server
 *    would read after its HRR) is checked.
 *  - The server's first message is a ServerHello (RFC 8446 4.1.3). If it is
 *    not a HelloRetryRequest (its random is not the HRR constant), no second
 *    ClientHello can follow in the clear — TLS 1.3 forbids one, and TLS 1.2
 *    renegotiates under encryption — so watching stops: `done`.
 *  - If it is an HRR, the client's next handshake message must be the
 *    second ClientHello; once it is checked, watching stops.
 * Deciding by the client's records alone does not work: in TLS 1.2 the
 * client's Finished is a handshake record encrypted after its
 * change_cipher_spec, while in TLS 1.3 a compat change_cipher_spec may come
 * BEFORE the second ClientHello (RFC 8446 D.4); and a server that rejects
 * 0-RTT after an HRR skips the client's application_data records until the
 * second ClientHello (RFC 8446 4.2.10), so "first application_data record"
 * is not the end of the plaintext handshake either. So non-handshake records
 * (change_cipher_spec, alert, application_data) are skipped by their
 * headers, and the server's first message decides.
 *
 * Bounded: a ClientHello is held while it arrives, up to
 * MAX_CLIENT_HELLO_BYTES (growing with what arrived); other records cost
 * their 5-byte header. Pure: no I/O, never throws on input.
 */
import { MAX_CLIENT_HELLO_BYTES, parseClientHelloBody } from './clienthello.js';
import { sameName } from './same-name.js';

export type TlsWatchVerdict = 'watching' | 'done' | 'mismatch' | 'malformed';

export interface HelloFacts {
  sni: string | null;
  ech: boolean;
}

/** SHA-256("HelloRetryRequest"), the random of an HRR (RFC 8446 4.1.3). */
const HRR_RANDOM = Uint8Array.from([
  0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
  0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
]);

const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
const TYPE_CHANGE_CIPHER_SPEC = 20;
const TYPE_ALERT = 21;
const TYPE_HANDSHAKE = 22;
const TYPE_APPLICATION_DATA = 23;
const TYPE_HEARTBEAT = 24;
const HS_CLIENT_HELLO = 1;
const HS_SERVER_HELLO = 2;
/** RFC 8446 5.1 (plaintext) / RFC 5246 6.2.3 (ciphertext, the larger). */
const MAX_PLAINTEXT = 16_384;
const MAX_CIPHERTEXT = 16_384 + 2048;
/** Hellos a client may send before the server answers; more is not TLS. */
const MAX_HELLOS = 3;
/** Server handshake bytes needed: header(4) + legacy_version(2) + random(32). */
const SERVER_HELLO_PREFIX = HANDSHAKE_HEADER + 2 + 32;

/** A record layer reader: headers (possibly split) and how much of the current fragment is left. */
class Records {
  readonly header = new Uint8Array(RECORD_HEADER);
  headerFill = 0;
  remaining = 0;
  type = 0;
  count = 0;
}

export class TlsHandshakeWatcher {
  private verdict: TlsWatchVerdict = 'watching';
  private why = '';
  private readonly client = new Records();
  private readonly server = new Records();

  // The client handshake message being read.
  private readonly hsHeader = new Uint8Array(HANDSHAKE_HEADER);
  private hsHeaderFill = 0;
  private hsType = 0;
  /** Body bytes of the current message still to come. */
  private hsRemaining = 0;
  private hsBody: Uint8Array | null = null;
  private hsBodyFill = 0;
  private hsBodyLength = 0;

  private hellos = 0;
  private firstHello: HelloFacts | null = null;
  private offending: HelloFacts | null = null;

  // The server's first handshake message.
  private readonly serverPrefix = new Uint8Array(SERVER_HELLO_PREFIX);
  private serverFill = 0;
  private serverDecided = false;
  private hrr = false;

  get state(): TlsWatchVerdict {
    return this.verdict;
  }

  /** The first ClientHello's facts, once read. */
  get first(): HelloFacts | null {
    return this.firstHello;
  }

  /** After `mismatch`: the second hello's facts. */
  get second(): HelloFacts | null {
    return this.offending;
  }

  get reason(): string {
    return this.why;
  }

  /** Whether server bytes must still be shown to `fromServer` (until its first message is known). */
  get watchingServer(): boolean {
    return this.verdict === 'watching' && !this.serverDecided;
  }

  /** Bytes held now (a ClientHello in pieces); never above MAX_CLIENT_HELLO_BYTES. */
  get heldBytes(): number {
    return this.hsBody === null ? 0 : this.hsBodyFill;
  }

  /** The client's bytes, from its first byte on. */
  fromClient(chunk: Uint8Array): TlsWatchVerdict {
    if (this.verdict !== 'watching') return this.verdict;
    const r = this.client;
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (r.remaining === 0) {
        pos = readHeader(r, chunk, pos);
        if (r.headerFill > 0) break; // header incomplete: need more
        const bad = this.clientRecordHeader();
        if (bad !== null) return this.fail('malformed', bad);
        continue;
      }
      const take = Math.min(r.remaining, end - pos);
      r.remaining -= take;
      if (r.type === TYPE_HANDSHAKE) {
        const v = this.handshakeBytes(chunk, pos, pos + take);
        if (v !== 'watching') return v;
      }
      pos += take;
    }
    return this.verdict;
  }

  /** The server's bytes, from its first byte on, while `watchingServer`. */
  fromServer(chunk: Uint8Array): TlsWatchVerdict {
    if (!this.watchingServer) return this.verdict;
    const r = this.server;
    let pos = 0;
    const end = chunk.length;
    while (pos < end && !this.serverDecided) {
      if (r.remaining === 0) {
        pos = readHeader(r, chunk, pos);
        if (r.headerFill > 0) break;
        // An alert or anything but a handshake record first: this handshake is not going on.
        if (r.type !== TYPE_HANDSHAKE || r.header[1] !== 3) return this.serverSays(false);
        continue;
      }
      const take = Math.min(r.remaining, end - pos, SERVER_HELLO_PREFIX - this.serverFill);
      this.serverPrefix.set(chunk.subarray(pos, pos + take), this.serverFill);
      this.serverFill += take;
      r.remaining -= take;
      pos += take;
      if (this.serverFill === SERVER_HELLO_PREFIX) {
        if (this.serverPrefix[0] !== HS_SERVER_HELLO) return this.serverSays(false);
        return this.serverSays(equalBytes(this.serverPrefix.subarray(HANDSHAKE_HEADER + 2), HRR_RANDOM));
      }
      // A ServerHello message shorter than its first 38 bytes is not one.
      if (this.serverFill >= HANDSHAKE_HEADER && this.serverPrefix[0] === HS_SERVER_HELLO) {
        const length = (this.serverPrefix[1]! << 16) | (this.serverPrefix[2]! << 8) | this.serverPrefix[3]!;
        if (length < SERVER_HELLO_PREFIX - HANDSHAKE_HEADER) return this.serverSays(false);
      }
    }
    return this.verdict;
  }

  private serverSays(hrr: boolean): TlsWatchVerdict {
    this.serverDecided = true;
    this.hrr = hrr;
    // Not an HRR: no plaintext ClientHello can follow. An HRR after the second
    // hello was already read (pipelined) and checked: nothing more to check.
    if (!hrr || this.hellos >= 2) this.verdict = 'done';
    return this.verdict;
  }

  private clientRecordHeader(): string | null {
    const r = this.client;
    const length = (r.header[3]! << 8) | r.header[4]!;
    r.type = r.header[0]!;
    r.count++;
    if (r.header[1] !== 3) return 'tls:bad-record-version';
    switch (r.type) {
      case TYPE_HANDSHAKE:
        // RFC 8446 5.1: no zero-length handshake fragments.
        if (length === 0) return 'tls:empty-record';
        if (length > MAX_PLAINTEXT) return 'tls:record-too-long';
        break;
      case TYPE_CHANGE_CIPHER_SPEC:
      case TYPE_ALERT:
      case TYPE_APPLICATION_DATA:
      case TYPE_HEARTBEAT:
        // RFC 8446 5.1: a handshake message must not be interleaved with other record types.
        if (this.hsHeaderFill > 0) return 'tls:interleaved-record';
        if (length > MAX_CIPHERTEXT) return 'tls:record-too-long';
        break;
      default:
        return 'tls:unexpected-record-type';
    }
    r.remaining = length;
    return null;
  }

  /** chunk[start, end) is handshake-record payload. */
  private handshakeBytes(chunk: Uint8Array, start: number, end: number): TlsWatchVerdict {
    let pos = start;
    while (pos < end) {
      if (this.hsHeaderFill < HANDSHAKE_HEADER) {
        const take = Math.min(HANDSHAKE_HEADER - this.hsHeaderFill, end - pos);
        this.hsHeader.set(chunk.subarray(pos, pos + take), this.hsHeaderFill);
        this.hsHeaderFill += take;
        pos += take;
        if (this.hsHeaderFill < HANDSHAKE_HEADER) return 'watching';
        const bad = this.messageHeader();
        if (bad !== null) return this.fail('malformed', bad);
        if (this.hsRemaining === 0) {
          const v = this.messageDone();
          if (v !== 'watching') return v;
        }
        continue;
      }
      const take = Math.min(this.hsRemaining, end - pos);
      if (this.hsType === HS_CLIENT_HELLO) {
        this.ensureBody(this.hsBodyFill + take);
        this.hsBody!.set(chunk.subarray(pos, pos + take), this.hsBodyFill);
        this.hsBodyFill += take;
      }
      this.hsRemaining -= take;
      pos += take;
      if (this.hsRemaining === 0) {
        const v = this.messageDone();
        if (v !== 'watching') return v;
      }
    }
    return 'watching';
  }

  private messageHeader(): string | null {
    this.hsType = this.hsHeader[0]!;
    const length = (this.hsHeader[1]! << 16) | (this.hsHeader[2]! << 8) | this.hsHeader[3]!;
    if (this.hellos === 0 && this.hsType !== HS_CLIENT_HELLO) return 'tls:not-client-hello';
    // After an HRR the client's next message must be its second ClientHello (RFC 8446 4.1.2).
    if (this.hrr && this.hsType !== HS_CLIENT_HELLO) return 'tls:expected-second-hello';
    if (this.hsType === HS_CLIENT_HELLO) {
      if (this.hellos >= MAX_HELLOS) return 'tls:too-many-hellos';
      if (HANDSHAKE_HEADER + length > MAX_CLIENT_HELLO_BYTES) return 'tls:hello-too-large';
      this.hsBodyLength = length;
      this.hsBodyFill = 0;
    }
    this.hsRemaining = length;
    return null;
  }

  /** One handshake message is complete. */
  private messageDone(): TlsWatchVerdict {
    this.hsHeaderFill = 0;
    if (this.hsType !== HS_CLIENT_HELLO) return 'watching';
    const body = this.hsBody === null ? new Uint8Array(0) : this.hsBody.subarray(0, this.hsBodyLength);
    const r = parseClientHelloBody(body);
    this.hsBody = null;
    this.hsBodyFill = 0;
    if (r.kind === 'malformed') return this.fail('malformed', r.reason);
    const facts: HelloFacts = { sni: r.sni, ech: r.ech };
    this.hellos++;
    if (this.hellos === 1) {
      this.firstHello = facts;
      return 'watching';
    }
    const first = this.firstHello!;
    if (!sameName(first.sni, facts.sni) || first.ech !== facts.ech) {
      this.offending = facts;
      return this.fail('mismatch', 'second-name');
    }
    // The one second hello an HRR asks for, and it matches: nothing more to check.
    if (this.hrr) this.verdict = 'done';
    return this.verdict;
  }

  private ensureBody(needed: number): void {
    const current = this.hsBody === null ? 0 : this.hsBody.length;
    if (needed <= current) return;
    const size = Math.min(this.hsBodyLength, Math.max(needed, current * 2, 1024));
    const next = new Uint8Array(size);
    if (this.hsBody !== null && this.hsBodyFill > 0) next.set(this.hsBody.subarray(0, this.hsBodyFill));
    this.hsBody = next;
  }

  private fail(v: 'mismatch' | 'malformed', reason: string): TlsWatchVerdict {
    this.verdict = v;
    this.why = reason;
    this.hsBody = null;
    this.hsBodyFill = 0;
    return v;
  }
}

/** Reads (the rest of) a 5-byte record header from chunk[pos...]; headerFill > 0 afterwards means incomplete. */
function readHeader(r: Records, chunk: Uint8Array, pos: number): number {
  const take = Math.min(RECORD_HEADER - r.headerFill, chunk.length - pos);
  r.header.set(chunk.subarray(pos, pos + take), r.headerFill);
  r.headerFill += take;
  pos += take;
  if (r.headerFill < RECORD_HEADER) return pos;
  r.headerFill = 0;
  r.type = r.header[0]!;
  r.remaining = (r.header[3]! << 8) | r.header[4]!;
  return pos;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
