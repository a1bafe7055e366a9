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

// ---------------------------------------------------------------- IPv6

/**
 * An IPv6 address packed as a string of exactly eight UTF-16 code units, one
 * per 16-bit group, most significant first (fd00::1 is "\ufd00\0\0\0\0\0\0\u0001").
 * Why a string: it compares by value (===), keys a Map without a helper, and
 * `typeof a === 'number'` tells the families apart in one instruction, so the
 * IPv4 path, which stays a plain number, pays nothing for IPv6 (design in
 * ARCHITECTURE.md, "Two families"). The brand keeps it apart from address
 * TEXT: a packed address and "fd00::1" never type-check for each other.
 */
export type IPv6 = string & { readonly __packedIPv6: true };
/** An address of either family: a number is IPv4, a packed string IPv6. */
export type IpAddress = IPv4 | IPv6;

export const IPV6_ANY = '\0\0\0\0\0\0\0\0' as IPv6;

export function isIPv6(a: IpAddress): a is IPv6 {
  return typeof a === 'string';
}

/** Builds an address from its eight 16-bit groups. */
export function ipv6(...groups: number[]): IPv6 {
  if (groups.length !== 8 || groups.some((g) => !Number.isInteger(g) || g < 0 || g > 0xffff)) {
    throw new RangeError(`ipv6: needs eight groups 0..0xffff, got ${groups.join(',')}`);
  }
  return String.fromCharCode(...groups) as IPv6;
}

export function readIPv6(buf: Uint8Array, off: number): IPv6 {
  return String.fromCharCode(
    (buf[off]! << 8) | buf[off + 1]!, (buf[off + 2]! << 8) | buf[off + 3]!,
    (buf[off + 4]! << 8) | buf[off + 5]!, (buf[off + 6]! << 8) | buf[off + 7]!,
    (buf[off + 8]! << 8) | buf[off + 9]!, (buf[off + 10]! << 8) | buf[off + 11]!,
    (buf[off + 12]! << 8) | buf[off + 13]!, (buf[off + 14]! << 8) | buf[off + 15]!,
  ) as IPv6;
}

export function writeIPv6(buf: Uint8Array, off: number, ip: IPv6): void {
  for (let i = 0; i < 8; i++) {
    const g = ip.charCodeAt(i);
    buf[off + 2 * i] = g >>> 8;
    buf[off + 2 * i + 1] = g & 0xff;
  }
}

/** Group i (0..7) of an address. */
export function ipv6Group(ip: IPv6, i: number): number {
  return ip.charCodeAt(i);
}

/** Parses RFC 4291 §2.2 text (with `::`, and a trailing dotted quad); undefined for anything else (no zone, no brackets). */
export function parseIPv6(text: string): IPv6 | undefined {
  if (text.length < 2 || text.length > 45 || !/^[0-9a-fA-F:.]+$/.test(text)) return undefined;
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parseSide = (s: string): number[] | undefined => {
    if (s === '') return [];
    const out: number[] = [];
    const parts = s.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = parseIPv4(p);
        if (v4 === undefined) return undefined;
        out.push(v4 >>> 16, v4 & 0xffff);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = parseSide(halves[0]!);
  const tail = halves.length === 2 ? parseSide(halves[1]!) : [];
  if (head === undefined || tail === undefined) return undefined;
  if (halves.length === 1) return head.length === 8 ? (String.fromCharCode(...head) as IPv6) : undefined;
  const missing = 8 - head.length - tail.length;
  if (missing < 1) return undefined;
  return String.fromCharCode(...head, ...new Array<number>(missing).fill(0), ...tail) as IPv6;
}

/** RFC 5952 text: lowercase, no leading zeros, the longest run (of two or more) of zero groups as `::`, the first on a tie. */
export function formatIPv6(ip: IPv6): string {
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (ip.charCodeAt(i) !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && ip.charCodeAt(j) === 0) j++;
    if (j - i > bestLen) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (from: number, to: number) => {
    const out: string[] = [];
    for (let i = from; i < to; i++) out.push(ip.charCodeAt(i).toString(16));
    return out.join(':');
  };
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}

/** Either family's text form. */
export function formatIp(ip: IpAddress): string {
  return typeof ip === 'number' ? formatIPv4(ip) : formatIPv6(ip);
}

/** Parses either family's text form. */
export function parseIp(text: string): IpAddress | undefined {
  return text.includes(':') ? parseIPv6(text) : parseIPv4(text);
}

/** Whether `ip` lies in `network`/`prefix` (prefix 0..128). */
export function inPrefix6(ip: IPv6, network: IPv6, prefix: number): boolean {
  let bits = prefix;
  for (let i = 0; i < 8 && bits > 0; i++, bits -= 16) {
    const mask = bits >= 16 ? 0xffff : (0xffff << (16 - bits)) & 0xffff;
    if ((ip.charCodeAt(i) & mask) !== (network.charCodeAt(i) & mask)) return false;
  }
  return true;
}

/** The first 64 bits of `prefix` with the last 64 of `iid` (an interface identifier): SLAAC's address. */
export function withInterfaceId(prefix: IPv6, iid: IPv6): IPv6 {
  return (prefix.slice(0, 4) + iid.slice(4)) as IPv6;
}

/** The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A), in the low 64 bits. */
export function eui64(mac: Mac): IPv6 {
  const b = new Uint8Array(6);
  writeMac(b, 0, mac);
  return ipv6(0, 0, 0, 0, ((b[0]! ^ 0x02) << 8) | b[1]!, (b[2]! << 8) | 0xff, 0xfe00 | b[3]!, (b[4]! << 8) | b[5]!);
}

/** fe80::/64 with the MAC's EUI-64 identifier: a link-local address (RFC 4862 §5.3). */
export function linkLocalFromMac(mac: Mac): IPv6 {
  return withInterfaceId(ipv6(0xfe80, 0, 0, 0, 0, 0, 0, 0), eui64(mac));
}

/** ff02::1:ffXX:XXXX, the solicited-node multicast group of `ip` (RFC 4291 §2.7.1). */
export function solicitedNode(ip: IPv6): IPv6 {
  return ipv6(0xff02, 0, 0, 0, 0, 1, 0xff00 | (ip.charCodeAt(6) & 0xff), ip.charCodeAt(7));
}

/** The Ethernet address an IPv6 multicast group maps to: 33:33 and its last 32 bits (RFC 2464 §7). */
export function multicastMac(ip: IPv6): Mac {
  return 0x333300000000 + ip.charCodeAt(6) * 0x10000 + ip.charCodeAt(7);
}

export function isMulticast6(ip: IPv6): boolean {
  return ip.charCodeAt(0) >>> 8 === 0xff;
}

export function isLinkLocal6(ip: IPv6): boolean {
  return (ip.charCodeAt(0) & 0xffc0) === 0xfe80;
}
