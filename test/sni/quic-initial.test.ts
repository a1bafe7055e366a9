import { describe, expect, it } from 'vitest';
import { clientInitialKeys, looksLikeQuicInitial, QUIC_V1, QUIC_V2, QuicInitialReader } from '../../sni/quic-initial.js';
import { nodeQuicCrypto } from '../../src/egress/quic-crypto.js';
import { loadHelloFixtures } from './support/fixtures.js';
import { cryptoFrame, flight, handshakeFromRecords, protectInitial, RFC_DCID, rfcVector } from './support/quic.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const reader = (o?: ConstructorParameters<typeof QuicInitialReader>[1]): QuicInitialReader => new QuicInitialReader(nodeQuicCrypto, o);

/** RFC 9001 A.2 / RFC 9369 A.2: the CRYPTO frame inside the sample Initial (then PADDING to 1162 bytes). */
const RFC_CRYPTO_FRAME = Buffer.from(
  '060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47f06a2b69484c000004130113' +
    '02010000c000000010000e00000b6578616d706c652e636f6dff01000100000a0008000600' +
    '1d0017001800100007000504616c706e0005000501000000000033002600' +
    '24001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400' +
    '0d0010000e0403050306030203080408050806002d00020101001c00024001003900320408ffffffffffffffff' +
    '05048000ffff07048000ffff0801100104800075300901100f088394c8f03e51570806048000ffff',
  'hex',
);

describe('QUIC Initial keys (RFC 9001 A.1, RFC 9369 A.1)', () => {
  it('derives the v1 client key, iv and hp from the sample DCID', () => {
    const k = clientInitialKeys(nodeQuicCrypto, QUIC_V1, RFC_DCID)!;
    expect([hex(k.key), hex(k.iv), hex(k.hp)]).toEqual(['1f369613dd76d5467730efcbe3b1a22d', 'fa044b2f42a3fd3b46fb255c', '9f50449e04a0e810283a1e9933adedd2']);
  });
  it('derives the v2 client key, iv and hp from the sample DCID', () => {
    const k = clientInitialKeys(nodeQuicCrypto, QUIC_V2, RFC_DCID)!;
    expect([hex(k.key), hex(k.iv), hex(k.hp)]).toEqual(['8b1a0bc121284290a29e0971b5cd045d', '91f73e2351d8fa91660e909f', '45b95e15235d6f45a6b19cbcb0294ba9']);
  });
});

describe('QuicInitialReader: RFC sample client Initials', () => {
  for (const [name, version] of [['rfc9001', 'v1'], ['rfc9369', 'v2']] as const) {
    it(`${name} A.2: decrypts to the ClientHello for example.com`, () => {
      const r = reader().push(rfcVector(name));
      expect(r).toMatchObject({ kind: 'found', sni: 'example.com', alpn: ['alpn'], ech: false, version });
    });
    it(`${name} A.2: our own protection of the sample plaintext gives the RFC's bytes (so the builder used below is right)`, () => {
      const v = name === 'rfc9001' ? QUIC_V1 : QUIC_V2;
      const built = protectInitial({ version: v, pn: 2, payload: RFC_CRYPTO_FRAME, padTo: 1162 });
      const rfc = rfcVector(name);
      // The RFC encodes the packet number in 4 bytes too; byte-identical packets.
      expect(hex(built)).toBe(hex(rfc));
    });
    it(`${name} A.2: one flipped ciphertext bit and the packet is dropped (need-more), as the server drops it`, () => {
      const b = rfcVector(name);
      b[100]! ^= 1;
      const rd = reader();
      expect(rd.push(b).kind).toBe('need-more');
      expect(rd.packetsUndecryptable).toBe(1);
    });
  }
});

const hellos = loadHelloFixtures().filter((f) => f.name.includes('tls13'));
const hello = handshakeFromRecords(hellos[0]!.bytes);

describe('QuicInitialReader: flights', () => {
  it('reads a hello split over three packets, in any order', () => {
    const packets = flight(hello, { chunk: Math.ceil(hello.length / 3) });
    expect(packets.length).toBe(3);
    for (const order of [[0, 1, 2], [2, 1, 0], [1, 2, 0]]) {
      const rd = reader();
      const results = order.map((i) => rd.push(packets[i]!).kind);
      expect(results).toEqual(['need-more', 'need-more', 'found']);
    }
  });
  it('reads coalesced packets in one datagram, skips a 0-RTT packet and trailing padding', () => {
    const [a, b] = flight(hello, { chunk: Math.ceil(hello.length / 2) });
    // A fake 0-RTT long header (v1 type 1) of 30 bytes between them.
    const zeroRtt = Buffer.concat([Buffer.from([0xd0, 0, 0, 0, 1, 8]), RFC_DCID, Buffer.from([0, 0x40, 30 - 0]), Buffer.alloc(30)]);
    const r = reader().push(Buffer.concat([a!, zeroRtt, b!, Buffer.alloc(40)]));
    expect(r).toMatchObject({ kind: 'found', sni: hellos[0]!.sni });
  });
  it('skips PADDING, PING and ACK frames', () => {
    const ack = Buffer.from([0x02, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]); // largest 0, delay 0, 1 range (gap 0, len 0), first 0
    const payload = Buffer.concat([Buffer.from([0x00, 0x01]), ack, cryptoFrame(0, hello), Buffer.from([0x01])]);
    expect(reader().push(protectInitial({ pn: 0, payload, padTo: 1150 }))).toMatchObject({ kind: 'found' });
  });
  it('answers not-quic for a short header or a non-QUIC first byte, unsupported-version for an unknown version', () => {
    expect(reader().push(Buffer.from([0x40, 1, 2, 3, 4, 5, 6, 7])).kind).toBe('not-quic');
    expect(reader().push(Buffer.from('GET / HTTP/1.1\r\n')).kind).toBe('not-quic');
    const other = rfcVector('rfc9001');
    other.writeUInt32BE(0xff00001d, 1);
    expect(reader().push(other)).toEqual({ kind: 'unsupported-version', version: 0xff00001d });
  });
  it('refuses a second DCID or version in one flight (two connection attempts in one peek)', () => {
    const [a, b] = flight(hello, { chunk: Math.ceil(hello.length / 2) });
    const other = flight(hello, { chunk: Math.ceil(hello.length / 2), dcid: Buffer.from('0102030405060708', 'hex') });
    const rd = reader();
    rd.push(a!);
    expect(rd.push(other[1]!)).toEqual({ kind: 'malformed', reason: 'quic:dcid-changed' });
    const rv = reader();
    rv.push(a!);
    expect(rv.push(flight(hello, { chunk: Math.ceil(hello.length / 2), version: QUIC_V2 })[1]!)).toEqual({ kind: 'malformed', reason: 'quic:version-changed' });
    expect(reader().push(Buffer.concat([a!, b!])).kind).toBe('found');
  });
  it('refuses CRYPTO bytes that a later frame repeats differently (server and Moat must read one hello)', () => {
    const half = Math.ceil(hello.length / 2);
    const first = protectInitial({ pn: 0, payload: cryptoFrame(0, hello.subarray(0, half)), padTo: 1150 });
    const forged = Buffer.from(hello);
    forged[10]! ^= 0xff;
    const again = protectInitial({ pn: 1, payload: cryptoFrame(0, forged.subarray(0, half + 5)), padTo: 1150 });
    const rd = reader();
    rd.push(first);
    expect(rd.push(again)).toEqual({ kind: 'malformed', reason: 'quic:crypto-conflict' });
  });
  it('refuses frames an Initial may not carry (STREAM)', () => {
    const payload = Buffer.concat([Buffer.from([0x08, 0x00, 0x01, 0x41]), cryptoFrame(0, hello)]);
    expect(reader().push(protectInitial({ pn: 0, payload, padTo: 1150 }))).toEqual({ kind: 'malformed', reason: 'quic:frame-not-allowed' });
  });
  it('bounds the CRYPTO stream: an offset beyond maxCryptoBytes is malformed, and memory never exceeds it', () => {
    const rd = reader({ maxCryptoBytes: 4096 });
    const far = protectInitial({ pn: 0, payload: cryptoFrame(4000, Buffer.alloc(200, 1)), padTo: 1150 });
    expect(rd.push(far)).toEqual({ kind: 'malformed', reason: 'quic:crypto-too-large' });
    const rd2 = reader({ maxCryptoBytes: 4096 });
    expect(rd2.push(protectInitial({ pn: 0, payload: cryptoFrame(3000, Buffer.alloc(1000, 1)), padTo: 1150 })).kind).toBe('need-more');
    expect(rd2.bufferCapacity).toBeLessThanOrEqual(4096);
    // A hello header announcing more than the bound.
    const big = Buffer.from([1, 0x01, 0x00, 0x00]);
    expect(reader({ maxCryptoBytes: 4096 }).push(protectInitial({ pn: 0, payload: cryptoFrame(0, big), padTo: 1150 }))).toEqual({ kind: 'malformed', reason: 'quic:crypto-too-large' });
  });
  it('bounds the packets read: one past maxPackets without a whole hello is malformed', () => {
    const rd = reader({ maxPackets: 4 });
    const packets = flight(hello, { chunk: 40 });
    expect(packets.length).toBeGreaterThan(5);
    const kinds = packets.slice(0, 5).map((p) => rd.push(p).kind);
    expect(kinds).toEqual(['need-more', 'need-more', 'need-more', 'need-more', 'malformed']);
    expect(rd.packetsSeen).toBe(4);
  });
  it('counts undecryptable packets against the bound too', () => {
    const rd = reader({ maxPackets: 2 });
    const bad = protectInitial({ pn: 0, payload: cryptoFrame(0, hello.subarray(0, 10)), padTo: 1150, badTag: true });
    rd.push(bad);
    rd.push(bad);
    expect(rd.push(bad)).toEqual({ kind: 'malformed', reason: 'quic:too-many-packets' });
  });
  it('looksLikeQuicInitial: v1 and v2 Initials yes, other long-header types and short headers no', () => {
    expect(looksLikeQuicInitial(rfcVector('rfc9001'))).toBe(true);
    expect(looksLikeQuicInitial(rfcVector('rfc9369'))).toBe(true);
    const hs = rfcVector('rfc9001');
    hs[0] = 0xe0;
    expect(looksLikeQuicInitial(hs)).toBe(false);
    expect(looksLikeQuicInitial(Buffer.from([0x40, 0, 0, 0, 1, 0, 0]))).toBe(false);
  });

  it('refuses CRYPTO bytes after the ClientHello (a second handshake message in the stream)', () => {
    const payload = cryptoFrame(0, Buffer.concat([hello, Buffer.from([1, 0, 0, 1, 0])]));
    expect(reader().push(protectInitial({ pn: 0, payload, padTo: 1150 }))).toEqual({ kind: 'malformed', reason: 'quic:crypto-after-hello' });
    const rd = reader();
    rd.push(protectInitial({ pn: 0, payload: cryptoFrame(hello.length, Buffer.from([1, 2, 3])), padTo: 1150 }));
    expect(rd.push(protectInitial({ pn: 1, payload: cryptoFrame(0, hello), padTo: 1150 }))).toEqual({ kind: 'malformed', reason: 'quic:crypto-after-hello' });
  });
  it('seeded: a later Initial on the same DCID may repeat the hello (found, same name) but never bring another one', () => {
    const [a, b] = flight(hello, { chunk: Math.ceil(hello.length / 2) });
    const first = reader();
    first.push(a!);
    const found = first.push(b!);
    expect(found.kind).toBe('found');
    if (found.kind !== 'found') return;
    const seeded = (): QuicInitialReader => QuicInitialReader.seeded(nodeQuicCrypto, found, first.helloBytes!);
    expect(seeded().push(b!)).toMatchObject({ kind: 'found', sni: found.sni });
    const ackOnly = protectInitial({ pn: 7, payload: Buffer.from([0x02, 0, 0, 0, 0]), padTo: 1150 });
    expect(seeded().push(ackOnly)).toMatchObject({ kind: 'found', sni: found.sni });
    const other = handshakeFromRecords(loadHelloFixtures().find((f) => f.name === 'curl')!.bytes);
    expect(seeded().push(protectInitial({ pn: 9, payload: cryptoFrame(0, other.subarray(0, hello.length - 10)), padTo: 1150 }))).toEqual({ kind: 'malformed', reason: 'quic:crypto-conflict' });
  });
});
