/**
 * Small helpers the wire-format tests share: an independent checksum to check
 * ours against, and the reason of a parse result.
 */
import { ParseError } from '../../netstack/errors.js';

/** Independent RFC 1071 checksum: add 16-bit words with end-around carry at every step. */
export function naiveChecksum(bytes: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    s += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
    if (s > 0xffff) s = (s & 0xffff) + 1;
  }
  return ~s & 0xffff;
}

/** The drop reason of a parse result, or undefined when it parsed. */
export function reasonOf(x: unknown): string | undefined {
  return x instanceof ParseError ? x.reason : undefined;
}
