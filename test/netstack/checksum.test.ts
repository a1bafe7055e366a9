import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  sumBytes, sumPseudoHeader, finishChecksum, checksum, updateChecksum16, updateChecksum32,
} from '../../netstack/checksum.js';

/** Reference: big-endian 16-bit words, odd byte padded with zero, summed exactly with BigInt. */
function naiveSum(buf: Uint8Array, off: number, len: number): bigint {
  let s = 0n;
  for (let i = off; i < off + len; i += 2) {
    const hi = buf[i]!;
    const lo = i + 1 < off + len ? buf[i + 1]! : 0;
    s += BigInt((hi << 8) | lo);
  }
  return s;
}

/** Reference fold + complement: end-around carry until 16 bits remain. */
function naiveFinish(sum: bigint): number {
  let s = sum;
  while (s > 0xffffn) s = (s & 0xffffn) + (s >> 16n);
  return Number(~s & 0xffffn);
}

/** Folds a checksum result to the class it stands for: 0x0000 and 0xffff are both "zero" in one's complement. */
function verifies(buf: Uint8Array): boolean {
  return finishChecksum(sumBytes(buf, 0, buf.length)) === 0;
}

describe('sumBytes / finishChecksum (RFC 1071)', () => {
  it('matches a naive sum on random data, any offset, any (odd) length, any initial value', () => {
    // Partial sums need only be congruent modulo 0xffff (that is what adds):
    // compare them folded. Lengths past 128 bytes take the 32-bit word path;
    // the random view start exercises every alignment of the underlying buffer.
    const congruent = (x: number, y: bigint) => BigInt(x) % 0xffffn === y % 0xffffn;
    fc.assert(fc.property(
      fc.uint8Array({ maxLength: 3000, size: 'max' }), fc.nat({ max: 7 }), fc.nat(), fc.nat(), fc.integer({ min: 0, max: 2 ** 40 }),
      (bytes, shift, a, b, initial) => {
        const backing = new Uint8Array(bytes.length + 8);
        backing.set(bytes, shift);
        const buf = backing.subarray(shift, shift + bytes.length);
        const off = buf.length === 0 ? 0 : a % (buf.length + 1);
        const len = (buf.length - off) === 0 ? 0 : b % (buf.length - off + 1);
        const expected = naiveSum(buf, off, len) + BigInt(initial);
        expect(congruent(sumBytes(buf, off, len, initial), expected)).toBe(true);
        expect(checksum(buf, off, len, initial)).toBe(naiveFinish(expected));
      },
    ), { numRuns: 2000 });
  });

  it('reproduces the RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0x2ddf0, checksum 0x220d', () => {
    const b = new Uint8Array([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    expect(sumBytes(b, 0, 8)).toBe(0x2ddf0);
    expect(finishChecksum(0x2ddf0)).toBe(0x220d);
  });

  it('folds sums far beyond 32 bits exactly (up to ~2^48, i.e. 2^32 words of data)', () => {
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: 2n ** 48n - 2n ** 33n }), (s) => {
      expect(finishChecksum(Number(s))).toBe(naiveFinish(s));
    }), { numRuns: 1000 });
    // A 64 KiB packet of 0xff bytes: the sum exceeds 2^31.
    const big = new Uint8Array(65536 * 40).fill(0xff);
    expect(checksum(big, 0, big.length)).toBe(naiveFinish(naiveSum(big, 0, big.length)));
  });

  // Regression: the fold once used `>>> 16`, which cuts a sum >= 2^48 to 32 bits
  // (0xffff996c6694 gave 0xffff instead of 0xfffe).
  it('folds sums between 2^48 and 2^53 exactly', () => {
    expect(finishChecksum(0xffff996c6694)).toBe(naiveFinish(0xffff996c6694n));
  });

  it('a buffer with its checksum written in verifies (sums to 0xffff)', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 2, maxLength: 100 }), (data) => {
      const buf = new Uint8Array(data.length + 2 + (data.length & 1));
      buf.set(data, 2 + (data.length & 1)); // checksum word at 0, data 16-bit aligned
      const c = checksum(buf, 0, buf.length);
      buf[0] = c >> 8; buf[1] = c & 0xff;
      expect(verifies(buf)).toBe(true);
    }));
  });
});

describe('sumPseudoHeader (RFC 768, RFC 9293 §3.1)', () => {
  it('equals summing the 12 pseudo-header bytes', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffff }),
      (src, dst, proto, len) => {
        const b = new Uint8Array(12);
        const v = new DataView(b.buffer);
        v.setUint32(0, src); v.setUint32(4, dst); b[9] = proto; v.setUint16(10, len);
        expect(BigInt(sumPseudoHeader(src, dst, proto, len))).toBe(naiveSum(b, 0, 12));
      },
    ));
  });
});

describe('incremental update (RFC 1624)', () => {
  /** Random packet data that is not all zero (every real header has a non-zero word: version, protocol...). */
  const packetData = fc.uint8Array({ minLength: 4, maxLength: 120 }).filter((b) => b.some((x) => x !== 0));

  it('updateChecksum16 equals recomputing after a 16-bit word changes', () => {
    fc.assert(fc.property(packetData, fc.nat(), fc.integer({ min: 0, max: 0xffff }), (data, at, newWord) => {
      const buf = data.length % 2 === 0 ? data.slice() : Uint8Array.from([...data, 0]);
      const i = (at % (buf.length / 2)) * 2;
      const before = checksum(buf, 0, buf.length);
      const oldWord = (buf[i]! << 8) | buf[i + 1]!;
      buf[i] = newWord >> 8; buf[i + 1] = newWord & 0xff;
      if (buf.every((x) => x === 0)) return; // see the all-zero note below
      expect(updateChecksum16(before, oldWord, newWord)).toBe(checksum(buf, 0, buf.length));
    }), { numRuns: 1000 });
  });

  it('updateChecksum32 equals recomputing after a 32-bit field changes', () => {
    fc.assert(fc.property(packetData, fc.nat(), fc.integer({ min: 0, max: 0xffffffff }), (data, at, newValue) => {
      const buf = new Uint8Array(data.length + 8 - (data.length % 4));
      buf.set(data);
      const i = (at % (buf.length / 4)) * 4;
      const v = new DataView(buf.buffer);
      const before = checksum(buf, 0, buf.length);
      const oldValue = v.getUint32(i);
      v.setUint32(i, newValue);
      if (buf.every((x) => x === 0)) return;
      expect(updateChecksum32(before, oldValue, newValue)).toBe(checksum(buf, 0, buf.length));
    }), { numRuns: 1000 });
  });

  it('an updated checksum always verifies, also when the data becomes all zero', () => {
    // Degenerate corner, documented rather than hidden: for data that is all
    // zero after the update, RFC 1624 eqn. 3 yields 0x0000 while recomputing
    // yields 0xffff; both are one's complement zero. Verification must pass
    // whenever a non-zero word exists (always true for IP/TCP/UDP).
    fc.assert(fc.property(packetData, fc.nat(), fc.integer({ min: 0, max: 0xffff }), (data, at, newWord) => {
      const buf = new Uint8Array(2 + data.length + (data.length & 1));
      buf.set(data, 2);
      buf[2] |= 0x45; // a fixed non-zero word, like an IPv4 version/IHL byte
      const c = checksum(buf, 0, buf.length);
      buf[0] = c >> 8; buf[1] = c & 0xff;
      const words = buf.length / 2;
      const i = (1 + (at % (words - 1))) * 2; // any word but the checksum itself
      const oldWord = (buf[i]! << 8) | buf[i + 1]!;
      buf[i] = newWord >> 8; buf[i + 1] = newWord & 0xff;
      if (i === 2) buf[2] |= 0x45;
      const written = (buf[i]! << 8) | buf[i + 1]!;
      const updated = updateChecksum16(c, oldWord, written);
      buf[0] = updated >> 8; buf[1] = updated & 0xff;
      expect(verifies(buf)).toBe(true);
    }), { numRuns: 1000 });
  });
});
