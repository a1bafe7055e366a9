/**
 * The grammar of rates, sizes and periods on the command line (--rate-*,
 * --budget). One place, so that serve, proxy and the API read them alike.
 *
 *   RATE   = NUMBER UNIT        bits:  bit kbit Mbit Gbit  (SI, x1000)
 *                                      Kibit Mibit Gibit   (binary, x1024)
 *                                      each optionally followed by "/s"
 *                               bytes: B/s kB/s MB/s GB/s  (SI)
 *                                      KiB/s MiB/s GiB/s   (binary)
 *   SIZE   = NUMBER [UNIT]      B kB MB GB TB (SI), KiB MiB GiB TiB (binary);
 *                               a bare number is bytes
 *   PERIOD = [NUMBER] UNIT      s min h d  ("1h", "30min", "h" = "1h")
 *
 * NUMBER is decimal, optionally with a fraction ("1.5MiB"); the result is
 * rounded down to whole bytes. Case matters and nothing ambiguous passes:
 *  - a bare rate ("50") could be bits or bytes per second: refused;
 *  - "Mb", "Mbps", "MBps" mix b/B conventions people read both ways: refused;
 *  - "mbit" (milli or mega?), "kiB", "MIB": refused;
 *  - a size with "/s" is a rate, a rate without "/s" on a byte unit is a size:
 *    "50MB" for a rate is refused (it would read as 50 MB at once);
 *  - "m" as a period (minutes or months?): refused, write "min".
 * The parsers return the value or an error message (no flag name: the
 * caller prefixes it).
 */

const SI_BITS: Record<string, number> = { bit: 1 / 8, kbit: 1000 / 8, Mbit: 1e6 / 8, Gbit: 1e9 / 8, Kibit: 1024 / 8, Mibit: 1024 ** 2 / 8, Gibit: 1024 ** 3 / 8 };
const BYTE_UNITS: Record<string, number> = { B: 1, kB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };
const PERIOD_UNITS: Record<string, number> = { s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 };

/** The largest rate or size taken: 2^53 bytes would stop counting exactly; 1 PiB is plenty. */
export const MAX_BYTES = 1024 ** 5;
/** The longest budget period: a year. */
export const MAX_PERIOD_MS = 366 * 86_400_000;

const NUMBER = /^(\d+(?:\.\d+)?)(.*)$/;

const RATE_HELP = 'a rate like 50Mbit, 100kbit/s or 10MiB/s (bit units: bit kbit Mbit Gbit Kibit Mibit Gibit; byte units: B/s kB/s MB/s GB/s KiB/s MiB/s GiB/s)';
const SIZE_HELP = 'a size like 50MiB, 1GB or 4096 (units: B kB MB GB TB KiB MiB GiB TiB)';
const PERIOD_HELP = 'a period like 1h, 30min, 7d or 90s (units: s min h d)';

/** Bytes per second from a RATE. */
export function parseRate(text: string): number | string {
  const m = NUMBER.exec(text.trim());
  if (m === null) return `must be ${RATE_HELP}, got "${text}"`;
  const n = Number(m[1]);
  const unit = m[2]!;
  if (unit === '') return `"${text}" has no unit: bits or bytes per second? Write ${RATE_HELP}`;
  let perByte: number | undefined;
  const bitUnit = unit.endsWith('/s') ? unit.slice(0, -2) : unit;
  if (SI_BITS[bitUnit] !== undefined) perByte = SI_BITS[bitUnit];
  else if (unit.endsWith('/s') && BYTE_UNITS[unit.slice(0, -2)] !== undefined) perByte = BYTE_UNITS[unit.slice(0, -2)];
  if (perByte === undefined) {
    const hint = BYTE_UNITS[unit] !== undefined ? ` ("${unit}" is a size; a byte rate ends in /s, e.g. ${m[1]}${unit}/s)` : '';
    return `unit "${unit}" in "${text}" is not one Moat reads unambiguously${hint}; write ${RATE_HELP}`;
  }
  const bytes = Math.floor(n * perByte);
  if (!(bytes >= 1)) return `"${text}" is less than 1 byte per second`;
  if (bytes > MAX_BYTES) return `"${text}" is more than 1 PiB per second`;
  return bytes;
}

/** Bytes from a SIZE. */
export function parseSize(text: string): number | string {
  const m = NUMBER.exec(text.trim());
  if (m === null) return `must be ${SIZE_HELP}, got "${text}"`;
  const unit = m[2]!;
  const mult = unit === '' ? 1 : BYTE_UNITS[unit];
  if (mult === undefined) return `unit "${unit}" in "${text}" is not one Moat reads unambiguously; write ${SIZE_HELP}`;
  const bytes = Math.floor(Number(m[1]) * mult);
  if (bytes > MAX_BYTES) return `"${text}" is more than 1 PiB`;
  return bytes;
}

/** Milliseconds from a PERIOD. */
export function parsePeriod(text: string): number | string {
  const m = /^(\d+(?:\.\d+)?)?([a-z]+)$/.exec(text.trim());
  const mult = m === null ? undefined : PERIOD_UNITS[m[2]!];
  if (m === null || mult === undefined) {
    const hint = m?.[2] === 'm' ? ' ("m": minutes or months? write min)' : '';
    return `must be ${PERIOD_HELP}, got "${text}"${hint}`;
  }
  const ms = Math.floor(Number(m[1] ?? '1') * mult);
  if (!(ms >= 1000)) return `"${text}" is shorter than 1 s`;
  if (ms > MAX_PERIOD_MS) return `"${text}" is longer than 366 days`;
  return ms;
}

/** A byte count for people: 1048576 -> "1 MiB", 1500 -> "1500 B". */
export function formatBytes(n: number): string {
  for (const [unit, mult] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (n >= mult && n % mult === 0) return `${n / mult} ${unit}`;
  }
  return `${n} B`;
}
