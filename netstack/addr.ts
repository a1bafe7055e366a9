/**
 * Addresses as plain numbers, so that the hot path compares and hashes them
 * without allocating: an IPv4 address is an unsigned 32-bit integer in host
 * order (192.168.127.1 === 0xc0a87f01), a MAC address a 48-bit integer
 * (exact in a double). Conversions to text are for logs, config and tests.
 */

export type IPv4 = number;
export type Mac = number;

export const IPV4_ANY: IPv4 = 0;
export const IPV4_BROADCAST: IPv4 = 0xffffffff;
export const MAC_BROADCAST: Mac = 0xffffffffffff;

export function ipv4(a: number, b: number, c: number, d: number): IPv4 {
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

const IPV4_TEXT = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses dotted-quad text; returns undefined for anything else (no octal, no shorthand). */
export function parseIPv4(text: string): IPv4 | undefined {
  const m = IPV4_TEXT.exec(text);
  if (m === null) return undefined;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    if (part.length > 1 && part[0] === '0') return undefined;
    const v = Number(part);
    if (v > 255) return undefined;
    n = n * 256 + v;
  }
  return n;
}

export function formatIPv4(ip: IPv4): string {
  return `${ip >>> 24}.${(ip >>> 16) & 0xff}.${(ip >>> 8) & 0xff}.${ip & 0xff}`;
}

export function readIPv4(buf: Uint8Array, off: number): IPv4 {
  return ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
}

export function writeIPv4(buf: Uint8Array, off: number, ip: IPv4): void {
  buf[off] = ip >>> 24;
  buf[off + 1] = (ip >>> 16) & 0xff;
  buf[off + 2] = (ip >>> 8) & 0xff;
  buf[off + 3] = ip & 0xff;
}

/** Network mask for a prefix length 0..32. */
export function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function inSubnet(ip: IPv4, network: IPv4, prefix: number): boolean {
  const mask = prefixMask(prefix);
  return ((ip & mask) >>> 0) === ((network & mask) >>> 0);
}

/** Parses "a.b.c.d/n"; returns undefined when malformed. */
export function parseCidr(text: string): { network: IPv4; prefix: number } | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const ip = parseIPv4(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (ip === undefined || !/^\d{1,2}$/.test(prefixText)) return undefined;
  const prefix = Number(prefixText);
  if (prefix > 32) return undefined;
  return { network: (ip & prefixMask(prefix)) >>> 0, prefix };
}

const MAC_TEXT = /^([0-9a-f]{2})(?::([0-9a-f]{2})){5}$/i;

export function parseMac(text: string): Mac | undefined {
  if (!MAC_TEXT.test(text)) return undefined;
  let n = 0;
  for (const part of text.split(':')) n = n * 256 + parseInt(part, 16);
  return n;
}

export function formatMac(mac: Mac): string {
  const parts: string[] = [];
  for (let i = 5; i >= 0; i--) parts.push((Math.floor(mac / 2 ** (8 * i)) % 256).toString(16).padStart(2, '0'));
  return parts.join(':');
}

export function readMac(buf: Uint8Array, off: number): Mac {
  // Split in two so that no intermediate exceeds 32-bit integer arithmetic.
  const hi = (buf[off]! << 8) | buf[off + 1]!;
  const lo = ((buf[off + 2]! << 24) | (buf[off + 3]! << 16) | (buf[off + 4]! << 8) | buf[off + 5]!) >>> 0;
  return hi * 0x100000000 + lo;
}

export function writeMac(buf: Uint8Array, off: number, mac: Mac): void {
  const hi = Math.floor(mac / 0x100000000);
  const lo = mac >>> 0;
  buf[off] = hi >>> 8;
  buf[off + 1] = hi & 0xff;
  buf[off + 2] = lo >>> 24;
  buf[off + 3] = (lo >>> 16) & 0xff;
  buf[off + 4] = (lo >>> 8) & 0xff;
  buf[off + 5] = lo & 0xff;
}
