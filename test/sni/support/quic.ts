/**
 * Test-only QUIC Initial builder: protects client Initial packets the way a
 * client does (RFC 9001 5.3/5.4), with the keys sni/quic-initial.ts derives,
 * so that tests can make flights of any shape (split, coalesced, padded).
 */
import { createCipheriv } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { clientInitialKeys, QUIC_V1 } from '../../../sni/quic-initial.js';
import { nodeQuicCrypto } from '../../../src/egress/quic-crypto.js';

export const RFC_DCID = Buffer.from('8394c8f03e515708', 'hex');

function varint(v: number): Buffer {
  if (v < 0x40) return Buffer.from([v]);
  if (v < 0x4000) return Buffer.from([0x40 | (v >> 8), v & 0xff]);
  const b = Buffer.alloc(4);
  b.writeUInt32BE((0x80000000 | v) >>> 0);
  return b;
}

export function cryptoFrame(offset: number, data: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([0x06]), varint(offset), varint(data.length), data]);
}

export interface InitialSpec {
  version?: number;
  dcid?: Uint8Array;
  scid?: Uint8Array;
  pn: number;
  /** Frames (plaintext); padded with PADDING to `padTo` payload bytes if given. */
  payload: Uint8Array;
  padTo?: number;
  token?: Uint8Array;
  /** Corrupt the tag (the packet must not authenticate). */
  badTag?: boolean;
}

export function protectInitial(s: InitialSpec): Buffer {
  const version = s.version ?? QUIC_V1;
  const dcid = Buffer.from(s.dcid ?? RFC_DCID);
  const scid = Buffer.from(s.scid ?? []);
  const keys = clientInitialKeys(nodeQuicCrypto, version, dcid)!;
  const type = version === QUIC_V1 ? 0 : 1;
  const pnLen = 4;
  let payload = Buffer.from(s.payload);
  if (s.padTo !== undefined && payload.length < s.padTo) payload = Buffer.concat([payload, Buffer.alloc(s.padTo - payload.length)]);
  const first = 0xc0 | (type << 4) | (pnLen - 1);
  const token = Buffer.from(s.token ?? []);
  const length = pnLen + payload.length + 16;
  const vb = Buffer.alloc(4);
  vb.writeUInt32BE(version >>> 0);
  const lenField = Buffer.alloc(2);
  lenField.writeUInt16BE(0x4000 | length);
  const pnb = Buffer.alloc(4);
  pnb.writeUInt32BE(s.pn);
  const header = Buffer.concat([Buffer.from([first]), vb, Buffer.from([dcid.length]), dcid, Buffer.from([scid.length]), scid, varint(token.length), token, lenField, pnb]);
  const nonce = Buffer.from(keys.iv);
  for (let i = 0; i < 4; i++) nonce[11 - i]! ^= pnb[3 - i]!;
  const c = createCipheriv('aes-128-gcm', keys.key, nonce);
  c.setAAD(header);
  const ct = Buffer.concat([c.update(payload), c.final(), c.getAuthTag()]);
  if (s.badTag === true) ct[ct.length - 1]! ^= 1;
  const pnOffset = header.length - pnLen;
  const mask = nodeQuicCrypto.aes128Block(keys.hp, ct.subarray(4 - pnLen, 4 - pnLen + 16));
  const out = Buffer.concat([header, ct]);
  out[0]! ^= mask[0]! & 0x0f;
  for (let i = 0; i < pnLen; i++) out[pnOffset + i]! ^= mask[1 + i]!;
  return out;
}

/** A ClientHello handshake message (type 1 + uint24 length + body) from a TLS record-layer fixture. */
export function handshakeFromRecords(records: Uint8Array): Buffer {
  const parts: Buffer[] = [];
  let p = 0;
  while (p + 5 <= records.length) {
    const len = (records[p + 3]! << 8) | records[p + 4]!;
    parts.push(Buffer.from(records.subarray(p + 5, p + 5 + len)));
    p += 5 + len;
  }
  return Buffer.concat(parts);
}

/** A client flight: the hello's CRYPTO stream cut into `chunk`-byte frames, one packet each, padded to 1200-byte datagrams. */
export function flight(hello: Uint8Array, opts: { chunk?: number; version?: number; dcid?: Uint8Array } = {}): Buffer[] {
  const chunk = opts.chunk ?? 1100;
  const out: Buffer[] = [];
  for (let off = 0, pn = 0; off < hello.length; off += chunk, pn++) {
    const frame = cryptoFrame(off, hello.subarray(off, Math.min(hello.length, off + chunk)));
    out.push(protectInitial({ pn, payload: frame, padTo: 1150, ...(opts.version !== undefined ? { version: opts.version } : {}), ...(opts.dcid !== undefined ? { dcid: opts.dcid } : {}) }));
  }
  return out;
}

export interface QuicFixture {
  name: string;
  sni: string;
  datagrams: Buffer[];
}

const dir = new URL('../../fixtures/quic/', import.meta.url);

export function rfcVector(name: 'rfc9001' | 'rfc9369'): Buffer {
  return Buffer.from(readFileSync(new URL(`${name}-a2-client-initial.hex`, dir), 'utf8').replace(/\s/g, ''), 'hex');
}

/** Captured client flights: <name>.json {sni, datagrams: [hex...]}. */
export function loadQuicFixtures(): QuicFixture[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const meta = JSON.parse(readFileSync(new URL(f, dir), 'utf8')) as { sni: string; datagrams: string[] };
      return { name: f.slice(0, -5), sni: meta.sni, datagrams: meta.datagrams.map((h) => Buffer.from(h, 'hex')) };
    });
}
