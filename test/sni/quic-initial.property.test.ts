import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { QuicInitialReader } from '../../sni/quic-initial.js';
import { nodeQuicCrypto } from '../../src/egress/quic-crypto.js';
import { loadHelloFixtures } from './support/fixtures.js';
import { cryptoFrame, handshakeFromRecords, loadQuicFixtures, protectInitial } from './support/quic.js';

const reader = (o?: ConstructorParameters<typeof QuicInitialReader>[1]): QuicInitialReader => new QuicInitialReader(nodeQuicCrypto, o);
const captured = loadQuicFixtures();

describe('QuicInitialReader: captured real client flights', () => {
  it('has the captures (chromium with a 2-packet post-quantum hello, ngtcp2)', () => {
    expect(captured.map((c) => c.name)).toEqual(expect.arrayContaining(['chromium', 'gtlsclient']));
    expect(captured.find((c) => c.name === 'chromium')!.datagrams.length).toBeGreaterThan(1);
  });
  for (const c of captured) {
    it(`${c.name}: reads ${c.sni} in order and in reverse order`, () => {
      for (const order of [c.datagrams, [...c.datagrams].reverse()]) {
        const rd = reader();
        const results = order.map((d) => rd.push(d));
        expect(results.at(-1)).toMatchObject({ kind: 'found', sni: c.sni, alpn: ['h3'], version: 'v1' });
        expect(results.slice(0, -1).every((r) => r.kind === 'need-more')).toBe(true);
      }
    });
    it(`${c.name}: push leaves the datagram bytes untouched`, () => {
      const copies = c.datagrams.map((d) => Buffer.from(d));
      const rd = reader();
      for (const d of c.datagrams) rd.push(d);
      expect(c.datagrams).toEqual(copies);
    });
  }
});

// A hello's CRYPTO stream cut at arbitrary points into frames, frames spread over packets and datagrams.
const hello = handshakeFromRecords(loadHelloFixtures().find((f) => f.name.includes('tls13'))!.bytes);
const sni = loadHelloFixtures().find((f) => f.name.includes('tls13'))!.sni;

const splitArb = fc
  .record({
    cuts: fc.uniqueArray(fc.integer({ min: 1, max: hello.length - 1 }), { maxLength: 8 }),
    seed: fc.array(fc.integer({ min: 0, max: 1000 }), { minLength: 20, maxLength: 20 }),
    dups: fc.array(fc.nat(), { maxLength: 4 }),
    coalesce: fc.boolean(),
  })
  .map(({ cuts, seed, dups, coalesce }) => {
    const bounds = [0, ...cuts.sort((a, b) => a - b), hello.length];
    const packets: Buffer[] = [];
    for (let i = 0; i + 1 < bounds.length; i++) {
      packets.push(protectInitial({ pn: i, payload: cryptoFrame(bounds[i]!, hello.subarray(bounds[i]!, bounds[i + 1]!)), padTo: coalesce ? 60 : 1150 }));
    }
    for (const d of dups) packets.push(packets[d % packets.length]!); // retransmissions: the same bytes again
    // Shuffle by the seed.
    const order = packets.map((p, i) => ({ p, k: seed[i % seed.length]! * 100 + i })).sort((a, b) => a.k - b.k).map((x) => x.p);
    if (!coalesce) return order;
    const datagrams: Buffer[] = [];
    for (let i = 0; i < order.length; i += 2) datagrams.push(Buffer.concat(order.slice(i, i + 2)));
    return datagrams;
  });

describe('QuicInitialReader: properties', () => {
  it('any split, reorder, duplication or coalescing of the flight gives the same SNI', () => {
    fc.assert(
      fc.property(splitArb, (datagrams) => {
        const rd = reader();
        let last;
        for (const d of datagrams) {
          last = rd.push(d);
          if (last.kind !== 'need-more') break;
        }
        expect(last).toMatchObject({ kind: 'found', sni });
      }),
      { numRuns: 300 },
    );
  });
  it('random bytes never throw and never find a name; the bounds hold', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 1500 }), { maxLength: 40 }), fc.boolean(), (datagrams, longHeader) => {
        const rd = reader({ maxCryptoBytes: 4096, maxPackets: 8 });
        for (const d of datagrams) {
          if (longHeader && d.length > 6) {
            d[0] = 0xc0 | (d[0]! & 0x0f);
            d.set([0, 0, 0, 1], 1);
          }
          const r = rd.push(d);
          expect(r.kind).not.toBe('found');
        }
        expect(rd.bufferCapacity).toBeLessThanOrEqual(4096);
        expect(rd.packetsSeen).toBeLessThanOrEqual(8);
      }),
      { numRuns: 500 },
    );
  });
  it('valid packets with random CRYPTO offsets and lengths never hold more than the byte bound', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ off: fc.nat({ max: 70_000 }), len: fc.nat({ max: 1000 }) }), { minLength: 1, maxLength: 20 }), (frames) => {
        const rd = reader({ maxCryptoBytes: 8192, maxPackets: 64 });
        frames.forEach((f, pn) => rd.push(protectInitial({ pn, payload: cryptoFrame(f.off, Buffer.alloc(f.len, 7)), padTo: 1100 })));
        expect(rd.bufferCapacity).toBeLessThanOrEqual(8192);
      }),
      { numRuns: 100 },
    );
  });
});
