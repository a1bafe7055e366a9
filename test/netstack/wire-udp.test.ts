import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseUdp, emitUdp, emitUdpHeader, UDP_HEADER_LEN, UDP_MAX_PAYLOAD } from '../../netstack/udp.js';
import { ParseError } from '../../netstack/errors.js';
import { ipv4 } from '../../netstack/addr.js';
import { reasonOf } from '../support/wire-helpers.js';

/** Independent RFC 768 checksum: pseudo-header bytes + datagram, naive one's complement sum. */
function naiveUdpChecksum(src: number, dst: number, datagram: Uint8Array): number {
  const pseudo = [src >>> 24, (src >>> 16) & 255, (src >>> 8) & 255, src & 255,
    dst >>> 24, (dst >>> 16) & 255, (dst >>> 8) & 255, dst & 255, 0, 17, datagram.length >> 8, datagram.length & 255];
  const all = new Uint8Array(pseudo.length + datagram.length);
  all.set(pseudo);
  all.set(datagram, pseudo.length);
  let s = 0;
  for (let i = 0; i < all.length; i += 2) {
    s += (all[i]! << 8) | (all[i + 1] ?? 0);
    if (s > 0xffff) s = (s & 0xffff) + 1;
  }
  return ~s & 0xffff;
}

const SRC = ipv4(192, 168, 127, 2);
const DST = ipv4(192, 168, 127, 1);

function datagram(payload: Uint8Array, srcPort = 40000, dstPort = 53): Uint8Array {
  const b = new Uint8Array(UDP_HEADER_LEN + payload.length);
  emitUdp(b, 0, SRC, DST, srcPort, dstPort, payload);
  return b;
}

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const port = fc.integer({ min: 0, max: 0xffff });

describe('UDP (RFC 768)', () => {
  it('emit then parse gives back ports and payload; the checksum matches an independent computation', () => {
    fc.assert(fc.property(u32, u32, port, port, fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 5 }), (src, dst, sp, dp, payload, off) => {
      const buf = new Uint8Array(off + UDP_HEADER_LEN + payload.length);
      expect(emitUdp(buf, off, src, dst, sp, dp, payload)).toBe(buf.length);
      const d = buf.subarray(off);
      const wire = (d[6]! << 8) | d[7]!;
      const zeroed = d.slice(); zeroed[6] = 0; zeroed[7] = 0;
      const expected = naiveUdpChecksum(src, dst, zeroed);
      expect(wire).toBe(expected === 0 ? 0xffff : expected);
      const r = parseUdp(d, src, dst);
      if (r instanceof ParseError) throw new Error(r.reason);
      expect([r.srcPort, r.dstPort, ...r.payload]).toEqual([sp, dp, ...payload]);
    }));
  });

  it('sends a computed checksum of zero as 0xffff, and accepts it', () => {
    // Choose the payload word so that the sum folds to 0xffff (checksum 0):
    // with w = checksum(rest, w = 0), fold(S) + ~fold(S) = 0xffff.
    const probe = datagram(new Uint8Array(2));
    const c0 = (probe[6]! << 8) | probe[7]!;
    const d = datagram(new Uint8Array([c0 >> 8, c0 & 0xff]));
    expect([d[6], d[7]]).toEqual([0xff, 0xff]);
    expect(parseUdp(d, SRC, DST)).not.toBeInstanceOf(ParseError);
  });

  it('accepts a zero checksum as "none computed" even over corrupted data', () => {
    const d = datagram(new Uint8Array([1, 2, 3]));
    d[6] = 0; d[7] = 0; d[9] ^= 0xff;
    const r = parseUdp(d, SRC, DST);
    expect(r instanceof ParseError ? r.reason : [...r.payload]).toEqual([1, 0xfd, 3]);
  });

  it('checks the pseudo-header: a different address fails', () => {
    const d = datagram(new Uint8Array([1, 2, 3, 4]));
    expect(reasonOf(parseUdp(d, SRC, DST + 1))).toBe('udp:bad-checksum');
    expect(reasonOf(parseUdp(d, DST, SRC))).toBeUndefined(); // addresses add commutatively, per RFC 1071
  });

  it('rejects truncation and bad length fields', () => {
    const d = datagram(new Uint8Array(10));
    for (let len = 0; len < UDP_HEADER_LEN; len++) expect(reasonOf(parseUdp(d.subarray(0, len), SRC, DST))).toBe('udp:truncated');
    for (let len = UDP_HEADER_LEN; len < d.length; len++) expect(reasonOf(parseUdp(d.subarray(0, len), SRC, DST))).toBe('udp:bad-length');
    for (const bad of [0, 7, 19, 0xffff]) {
      const q = d.slice(); q[4] = bad >> 8; q[5] = bad & 0xff;
      expect(reasonOf(parseUdp(q, SRC, DST))).toBe('udp:bad-length');
    }
  });

  it('uses the length field, not the IP payload size, and ignores the excess (RFC 1122 §4.1.3.4)', () => {
    const d = datagram(new Uint8Array([7, 7, 7]));
    const longer = new Uint8Array(d.length + 5);
    longer.set(d);
    longer.fill(0x55, d.length);
    const r = parseUdp(longer, SRC, DST);
    expect(r instanceof ParseError ? r.reason : [...r.payload]).toEqual([7, 7, 7]);
  });

  it('rejects any single flipped bit (unless it zeroes the checksum field)', () => {
    const d = datagram(new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x42]));
    for (let bit = 0; bit < d.length * 8; bit++) {
      const q = d.slice();
      q[bit >> 3] ^= 0x80 >> (bit & 7);
      if (q[6] === 0 && q[7] === 0) continue;
      expect(parseUdp(q, SRC, DST)).toBeInstanceOf(ParseError);
    }
  });

  it('emitUdpHeader over a payload already in place equals emitUdp', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 100 }), port, port, (payload, sp, dp) => {
      const a = new Uint8Array(8 + payload.length);
      emitUdp(a, 0, SRC, DST, sp, dp, payload);
      const b = new Uint8Array(8 + payload.length);
      b.set(payload, 8);
      expect(emitUdpHeader(b, 0, SRC, DST, sp, dp, payload.length)).toBe(b.length);
      expect([...b]).toEqual([...a]);
    }));
  });

  it('refuses to emit a payload larger than a datagram can carry', () => {
    const b = new Uint8Array(8 + UDP_MAX_PAYLOAD + 1);
    expect(() => emitUdpHeader(b, 0, SRC, DST, 1, 2, UDP_MAX_PAYLOAD + 1)).toThrow(RangeError);
    expect(emitUdpHeader(b, 0, SRC, DST, 1, 2, UDP_MAX_PAYLOAD)).toBe(8 + UDP_MAX_PAYLOAD);
  });

  it('never throws on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 40 }), u32, u32, (bytes, s, t) => {
      const r = parseUdp(bytes, s, t);
      expect(r instanceof ParseError || r.payload.length <= bytes.length - 8).toBe(true);
    }));
  });
});
