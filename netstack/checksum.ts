/**
 * The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 *
 * Sums are kept unfolded as plain numbers: a double holds integers up to 2^53
 * exactly, so adding 16-bit words needs no carry folding until the end for any
 * packet size. `sum*` functions return such partial sums, which add; `finish`
 * folds and complements. The loop reads eight bytes per iteration: the bound
 * checks and loop overhead, not the additions, are what cost in JavaScript.
 */
import type { IpAddress, IPv6 } from './addr.js';

/** Below this many bytes the plain byte loop wins over setting up a word view. */
const WIDE_MIN = 128;

/** The 32-bit word reads below assume a little-endian host (x86, arm64): checked once. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Adds the bytes buf[off, off+len) as big-endian 16-bit words to `initial`. */
export function sumBytes(buf: Uint8Array, off: number, len: number, initial = 0): number {
  if (len < WIDE_MIN || !LITTLE_ENDIAN) return initial + sumNarrow(buf, off, off + len, true);
  // Wide path: the 4-byte-aligned middle is read as 32-bit words. The byte
  // order of a one's complement sum does not matter (RFC 1071 §2.B): sum the
  // little-endian words, fold, and swap bytes back. A middle that starts an
  // odd number of bytes after `off` pairs its bytes the other way round,
  // which is one more swap (the two cancel).
  const end = off + len;
  const base = buf.byteOffset;
  const a = off + ((4 - ((base + off) & 3)) & 3);
  const words = (end - a) >>> 2;
  const b = a + words * 4;
  const view = new Uint32Array(buf.buffer, base + a, words);
  let wide = 0;
  let i = 0;
  const n4 = words - 3;
  for (; i < n4; i += 4) wide += view[i]! + view[i + 1]! + view[i + 2]! + view[i + 3]!;
  for (; i < words; i++) wide += view[i]!;
  let folded = fold16(wide);
  if (((a - off) & 1) === 0) folded = ((folded & 0xff) << 8) | (folded >>> 8);
  return initial + sumNarrow(buf, off, a, true) + folded + sumNarrow(buf, b, end, ((b - off) & 1) === 0);
}

/**
 * Sums buf[from, to) as 16-bit words; `highFirst` says whether the byte at
 * `from` is the high byte of its word (it is when it lies an even distance
 * from the start of the checksummed range).
 */
function sumNarrow(buf: Uint8Array, from: number, to: number, highFirst: boolean): number {
  let sum = 0;
  let i = from;
  if (!highFirst && i < to) sum += buf[i++]!;
  const end8 = to - 7;
  while (i < end8) {
    sum += ((buf[i]! << 8) | buf[i + 1]!) + ((buf[i + 2]! << 8) | buf[i + 3]!)
         + ((buf[i + 4]! << 8) | buf[i + 5]!) + ((buf[i + 6]! << 8) | buf[i + 7]!);
    i += 8;
  }
  while (i + 1 < to) {
    sum += (buf[i]! << 8) | buf[i + 1]!;
    i += 2;
  }
  if (i < to) sum += buf[i]! << 8; // a last lone byte is a high byte, padded with zero
  return sum;
}

/** Folds a non-negative sum to 16 bits with end-around carry. */
function fold16(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return s;
}

/** The IPv4 pseudo-header of TCP and UDP (RFC 9293 §3.1, RFC 768) as a partial sum. */
export function sumPseudoHeader(src: number, dst: number, protocol: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + length;
}

/**
 * The IPv6 pseudo-header of TCP, UDP and ICMPv6 (RFC 8200 §8.1) as a partial
 * sum: both addresses (packed, addr.ts), the 32-bit upper-layer length and
 * the next header.
 */
export function sumPseudoHeader6(src: IPv6, dst: IPv6, nextHeader: number, length: number): number {
  let s = nextHeader + (length >>> 16) + (length & 0xffff);
  for (let i = 0; i < 8; i++) s += src.charCodeAt(i) + dst.charCodeAt(i);
  return s;
}

/** Either family's pseudo-header: one `typeof` on the IPv4 path. */
export function sumPseudoHeaderAny(src: IpAddress, dst: IpAddress, protocol: number, length: number): number {
  if (typeof src === 'number') return sumPseudoHeader(src, dst as number, protocol, length);
  return sumPseudoHeader6(src, dst as IPv6, protocol, length);
}

/** Folds a partial sum to 16 bits and complements it: the value to put on the wire. */
export function finishChecksum(sum: number): number {
  // Fold the high part down; a double may carry more than 32 bits.
  // fold16 divides rather than shifts: bit operators would cut the sum to 32 bits first.
  return ~fold16(sum) & 0xffff;
}

/** Checksum of a byte range (e.g. an IPv4 header with its checksum field zeroed). */
export function checksum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return finishChecksum(sumBytes(buf, off, len, initial));
}

/**
 * RFC 1624 eqn. 3: the new checksum after one 16-bit word changes from
 * `oldWord` to `newWord`, without summing the packet again:
 * HC' = ~(~HC + ~m + m').
 */
export function updateChecksum16(oldChecksum: number, oldWord: number, newWord: number): number {
  let s = (~oldChecksum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** The same for a 32-bit field (an address, a sequence number): two word updates. */
export function updateChecksum32(oldChecksum: number, oldValue: number, newValue: number): number {
  const c = updateChecksum16(oldChecksum, oldValue >>> 16, newValue >>> 16);
  return updateChecksum16(c, oldValue & 0xffff, newValue & 0xffff);
}
