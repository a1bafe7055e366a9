/**
 * Sequence-number arithmetic modulo 2^32 (RFC 9293 §3.4): `a < b` means
 * "a comes before b" when they are less than 2^31 apart. Numbers are kept as
 * unsigned 32-bit values (>>> 0); differences as signed 32-bit values (| 0).
 */
export function seqAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}
/** Signed distance a - b, in -2^31..2^31-1. */
export function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}
export function seqLt(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}
export function seqLe(a: number, b: number): boolean {
  return ((a - b) | 0) <= 0;
}
export function seqGt(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}
export function seqGe(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}
export function seqMax(a: number, b: number): number {
  return seqGt(a, b) ? a : b;
}
export function seqMin(a: number, b: number): number {
  return seqLt(a, b) ? a : b;
}
/** lo <= x < hi in sequence space. */
export function seqInRange(x: number, lo: number, hi: number): boolean {
  return seqLe(lo, x) && seqLt(x, hi);
}
