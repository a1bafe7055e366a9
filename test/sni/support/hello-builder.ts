/**
 * Test-only builders for TLS ClientHello bytes: a handshake message built
 * field by field (RFC 8446 4.1.2), wrapping it into TLS records of chosen
 * sizes, and taking the handshake message back out of a record stream (so a
 * real captured hello can be re-fragmented differently).
 */

export interface ServerNameEntry {
  type: number;
  name: string | Uint8Array;
}

export interface HelloSpec {
  /** A server_name extension with one host_name entry; null/undefined = no extension. */
  sni?: string | null;
  /** Raw server_name entries (overrides `sni`), to build odd lists. */
  serverNames?: ServerNameEntry[];
  alpn?: (string | Uint8Array)[];
  /** Add an encrypted_client_hello (0xfe0d) extension with an opaque payload. */
  ech?: boolean;
  /** GREASE (RFC 8701) cipher suite, extensions, and ALPN value, as Chrome sends them. */
  grease?: boolean;
  sessionIdLength?: number;
  cipherSuiteCount?: number;
  compressionCount?: number;
  /** Extensions added after the built-in ones, byte for byte. */
  extraExtensions?: { type: number; data: Uint8Array }[];
  /** Grow the whole handshake message (header included) to exactly this size with a padding extension (21). */
  padTo?: number;
  /** Leave the extensions block out entirely (a TLS 1.2-style hello without extensions). */
  noExtensions?: boolean;
}

export const HANDSHAKE_HEADER = 4;

export function bytesOf(s: string | Uint8Array): Uint8Array {
  if (s instanceof Uint8Array) return s;
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u8(n: number): Uint8Array {
  return Uint8Array.of(n & 0xff);
}
function u16(n: number): Uint8Array {
  return Uint8Array.of((n >> 8) & 0xff, n & 0xff);
}
function u24(n: number): Uint8Array {
  return Uint8Array.of((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}
/** An opaque vector with a 1- or 2-byte length prefix. */
function vec8(body: Uint8Array): Uint8Array {
  return concat([u8(body.length), body]);
}
function vec16(body: Uint8Array): Uint8Array {
  return concat([u16(body.length), body]);
}

export function extension(type: number, data: Uint8Array): Uint8Array {
  return concat([u16(type), vec16(data)]);
}

export function serverNameExtensionData(entries: readonly ServerNameEntry[]): Uint8Array {
  const list = concat(entries.map((e) => concat([u8(e.type), vec16(bytesOf(e.name))])));
  return vec16(list);
}

export function alpnExtensionData(names: readonly (string | Uint8Array)[]): Uint8Array {
  return vec16(concat(names.map((n) => vec8(bytesOf(n)))));
}

const GREASE_A = 0x0a0a;
const GREASE_B = 0x3a3a;

/** The handshake message: type 1, uint24 length, ClientHello body. */
export function buildClientHello(spec: HelloSpec = {}): Uint8Array {
  const sessionIdLength = spec.sessionIdLength ?? 32;
  const suiteCount = spec.cipherSuiteCount ?? 3;
  const compressionCount = spec.compressionCount ?? 1;

  const random = new Uint8Array(32).map((_, i) => (i * 37 + 11) & 0xff);
  const sessionId = new Uint8Array(sessionIdLength).fill(0x5a);
  const suites = new Uint8Array(suiteCount * 2);
  for (let i = 0; i < suiteCount; i++) {
    const s = spec.grease && i === 0 ? GREASE_A : 0x1301 + (i % 3);
    suites[2 * i] = s >> 8;
    suites[2 * i + 1] = s & 0xff;
  }
  const compression = new Uint8Array(compressionCount); // 0 = null compression

  const exts: Uint8Array[] = [];
  if (spec.grease) exts.push(extension(GREASE_A, new Uint8Array(0)));
  if (spec.serverNames !== undefined) {
    exts.push(extension(0, serverNameExtensionData(spec.serverNames)));
  } else if (spec.sni !== undefined && spec.sni !== null) {
    exts.push(extension(0, serverNameExtensionData([{ type: 0, name: spec.sni }])));
  }
  // supported_versions: TLS 1.3, 1.2
  exts.push(extension(43, Uint8Array.of(4, 0x03, 0x04, 0x03, 0x03)));
  if (spec.alpn !== undefined) {
    const names = spec.grease ? [u16(GREASE_B), ...spec.alpn] : spec.alpn;
    exts.push(extension(16, alpnExtensionData(names)));
  }
  if (spec.ech) {
    // ECHClientHello, outer: type 0, cipher suite, config id, enc, payload (opaque here).
    exts.push(extension(0xfe0d, concat([u8(0), u16(1), u16(1), u8(7), vec16(new Uint8Array(32).fill(1)), vec16(new Uint8Array(64).fill(2))])));
  }
  for (const e of spec.extraExtensions ?? []) exts.push(extension(e.type, e.data));
  if (spec.grease) exts.push(extension(GREASE_B, Uint8Array.of(0)));

  const fixed = concat([u16(0x0303), random, vec8(sessionId), vec16(suites), vec8(compression)]);
  if (spec.noExtensions) return concat([u8(1), u24(fixed.length), fixed]);

  let extBlock = concat(exts);
  if (spec.padTo !== undefined) {
    const sizeWithoutPadding = HANDSHAKE_HEADER + fixed.length + 2 + extBlock.length;
    const padData = spec.padTo - sizeWithoutPadding - 4;
    if (padData < 0) throw new Error(`padTo ${spec.padTo} is smaller than the hello (${sizeWithoutPadding + 4})`);
    extBlock = concat([extBlock, extension(21, new Uint8Array(padData))]);
  }
  if (extBlock.length > 0xffff) throw new Error(`extensions block too long: ${extBlock.length}`);
  const body = concat([fixed, vec16(extBlock)]);
  return concat([u8(1), u24(body.length), body]);
}

/**
 * Wraps a handshake byte stream into handshake records (type 22) whose fragment
 * sizes are taken in turn from `sizes` (the last size repeats); each is clamped
 * to 1..16384 and to what remains.
 */
export function toRecords(handshake: Uint8Array, sizes: readonly number[] = [16_384], version = 0x0301): Uint8Array {
  const out: Uint8Array[] = [];
  let pos = 0;
  let i = 0;
  while (pos < handshake.length) {
    const wanted = sizes[Math.min(i, sizes.length - 1)]!;
    const size = Math.max(1, Math.min(16_384, wanted, handshake.length - pos));
    out.push(concat([u8(22), u16(version), u16(size), handshake.subarray(pos, pos + size)]));
    pos += size;
    i++;
  }
  return concat(out);
}

/** Concatenates the fragments of a record stream (all records must be handshake records). */
export function extractHandshake(records: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let pos = 0;
  while (pos < records.length) {
    if (records[pos] !== 22) throw new Error(`record at ${pos} has type ${records[pos]}`);
    const length = (records[pos + 3]! << 8) | records[pos + 4]!;
    parts.push(records.subarray(pos + 5, pos + 5 + length));
    pos += 5 + length;
  }
  if (pos !== records.length) throw new Error('record stream ends inside a record');
  return concat(parts);
}

/** Splits `bytes` at the given offsets (sorted, deduplicated, clamped), giving the chunks between. */
export function splitAt(bytes: Uint8Array, offsets: readonly number[]): Uint8Array[] {
  const cuts = [...new Set(offsets.map((o) => Math.max(0, Math.min(bytes.length, o))))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    if (c > prev) chunks.push(bytes.slice(prev, c));
    prev = c;
  }
  return chunks;
}

/** The hello as one record stream, one byte per chunk. */
export function byteByByte(bytes: Uint8Array): Uint8Array[] {
  return Array.from(bytes, (b) => Uint8Array.of(b));
}

/** One TLS record of any content type. */
export function record(type: number, payload: Uint8Array, version = 0x0303): Uint8Array {
  return concat([u8(type), u16(version), u16(payload.length), payload]);
}

/** SHA-256("HelloRetryRequest"): the random of a HelloRetryRequest (RFC 8446 4.1.3). */
export const HRR_RANDOM = Uint8Array.from([
  0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
  0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
]);

/**
 * A ServerHello handshake message (a plausible one: version, random, empty
 * session id, TLS_AES_128_GCM_SHA256, null compression, supported_versions
 * 1.3); with `hrr` its random is the HelloRetryRequest constant.
 */
export function buildServerHello(opts: { hrr?: boolean } = {}): Uint8Array {
  const random = opts.hrr ? HRR_RANDOM : new Uint8Array(32).fill(0x42);
  const exts = extension(43, Uint8Array.of(0x03, 0x04));
  const body = concat([u16(0x0303), random, u8(0), u16(0x1301), u8(0), vec16(exts)]);
  return concat([u8(2), u24(body.length), body]);
}

/** change_cipher_spec as a TLS 1.3 client sends it for middlebox compatibility (RFC 8446 D.4). */
export const CHANGE_CIPHER_SPEC = Uint8Array.of(20, 3, 3, 0, 1, 1);
