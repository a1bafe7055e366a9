/**
 * The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 *
 * Sums are kept unfolded as plain numbers: a double holds integers up to 2^53
 * exactly, so adding 16-bit words needs no carry folding until the end for any
 * packet size. `sum*` functions return such partial sums, which add; `finish`
 * folds and complements. The loop reads eight bytes per iteration: the bound
 * checks and loop overhead, not the additions, are what cost in JavaScript.
 */

/** Adds the bytes buf[off, off+len) as big-endian 16-bit words to `initial`. */
export function sumBytes(buf: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  let i = off;
  const end = off + len;
  const end8 = end - 7;
  while (i < end8) {
    sum += ((buf[i]! << 8) | buf[i + 1]!) + ((buf[i + 2]! << 8) | buf[i + 3]!)
         + ((buf[i + 4]! << 8) | buf[i + 5]!) + ((buf[i + 6]! << 8) | buf[i + 7]!);
    i += 8;
  }
  while (i + 1 < end) {
    sum += (buf[i]! << 8) | buf[i + 1]!;
    i += 2;
  }
  if (i < end) sum += buf[i]! << 8; // odd length: pad with a zero byte
  return sum;
}

/** The IPv4 pseudo-header of TCP and UDP (RFC 9293 §3.1, RFC 768) as a partial sum. */
export function sumPseudoHeader(src: number, dst: number, protocol: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + length;
}

/** Folds a partial sum to 16 bits and complements it: the value to put on the wire. */
export function finishChecksum(sum: number): number {
  // Fold the high part down; a double may carry more than 32 bits.
  // Fold with division, not shifts: bit operators would cut the sum to 32 bits first.
  let s = sum;
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return ~s & 0xffff;
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
