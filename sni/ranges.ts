/**
 * IPv4 special-purpose ranges: which addresses are not "somewhere on the
 * internet". The egress policy uses this to refuse DNS rebinding (a public
 * name that resolves to an address inside the host's own networks) and to
 * treat the metadata range (169.254/16) as blocked on every path.
 *
 * Sources: the IANA IPv4 Special-Purpose Address Registry (RFC 6890 and its
 * updates), RFC 1918 (private), RFC 6598 (shared address space, "CGNAT"),
 * RFC 3927 (link-local), RFC 1122 3.2.1.3 (this network, loopback),
 * RFC 5771 (multicast), RFC 1112 4 (240/4 reserved), RFC 919 (limited
 * broadcast), RFC 2544 (benchmarking, 198.18/15).
 *
 * Deliberately NOT special here: the documentation ranges 192.0.2.0/24,
 * 198.51.100.0/24 and 203.0.113.0/24 (RFC 5737). They are not routed, but
 * they are not anyone's internal network either, so an answer pointing there
 * is no rebinding threat; tests use them as stand-ins for public addresses.
 *
 * Addresses are plain uint32 numbers (192.168.127.1 === 0xc0a87f01), so the
 * per-SYN path compares numbers and allocates nothing. sni/ may not import
 * netstack/, hence this module's own strict dotted-quad parser.
 */

export type SpecialRange =
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'cgnat'
  | 'multicast'
  | 'reserved'
  | 'broadcast'
  | 'guest-subnet'
  // IPv6 only (ranges6.ts):
  | 'site-local'
  | 'documentation';

/** An IPv4 network as numbers: `address & mask === network` is membership. */
export interface Ipv4Network {
  readonly network: number;
  readonly mask: number;
  readonly prefix: number;
}

const DOTTED_QUAD = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/**
 * Strict dotted-quad parser: four decimal octets 0-255, no leading zeros
 * (`010.0.0.1` is octal to inet_aton and decimal to others: refuse both
 * readings), no shorthand (`1.2.3`), no hex. Returns null for anything else,
 * including IPv6 text. One spelling per address, so text compares are exact.
 */
export function parseIpv4(text: string): number | null {
  if (text.length > 15) return null;
  const m = DOTTED_QUAD.exec(text);
  if (m === null) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    if (part.length > 1 && part.charCodeAt(0) === 0x30) return null;
    const v = Number(part);
    if (v > 255) return null;
    n = n * 256 + v;
  }
  return n;
}

export function formatIpv4(address: number): string {
  return `${address >>> 24}.${(address >>> 16) & 0xff}.${(address >>> 8) & 0xff}.${address & 0xff}`;
}

/** Network mask for a prefix length 0..32 (`<< 32` is a no-op in JS, hence the special case). */
export function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * A network from an address and prefix length. Host bits are cleared, so
 * `{ network: '192.168.127.1', prefix: 24 }` (a gateway address with its
 * prefix, as configuration often states it) means 192.168.127.0/24.
 * Returns null when the address is not a dotted quad or the prefix is not an
 * integer 0..32.
 */
export function ipv4Network(network: string, prefix: number): Ipv4Network | null {
  const address = parseIpv4(network);
  if (address === null || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) return null;
  const mask = prefixMask(prefix);
  return { network: (address & mask) >>> 0, mask, prefix };
}

/**
 * Parse `a.b.c.d/n` (or a bare `a.b.c.d`, meaning /32). Unlike ipv4Network,
 * host bits must be zero: in text a user wrote, `10.0.0.1/8` is a typo for
 * something, and guessing which is how allowlists go silently wrong (the
 * same rule as dns/rules.ts 'rule:host-bits-set').
 */
export function parseIpv4Cidr(text: string): Ipv4Network | null {
  const slash = text.indexOf('/');
  if (slash < 0) {
    const address = parseIpv4(text);
    return address === null ? null : { network: address, mask: 0xffffffff, prefix: 32 };
  }
  const address = parseIpv4(text.slice(0, slash));
  const len = text.slice(slash + 1);
  if (address === null || !/^(?:0|[1-9][0-9]?)$/.test(len)) return null;
  const prefix = Number(len);
  if (prefix > 32) return null;
  const mask = prefixMask(prefix);
  if (((address & mask) >>> 0) !== address) return null;
  return { network: address, mask, prefix };
}

export function inIpv4Network(address: number, net: Ipv4Network): boolean {
  return ((address & net.mask) >>> 0) === net.network;
}

function net(a: number, b: number, c: number, d: number, prefix: number): Ipv4Network {
  const mask = prefixMask(prefix);
  return { network: ((((a << 24) | (b << 16) | (c << 8) | d) >>> 0) & mask) >>> 0, mask, prefix };
}

/**
 * The fixed table, checked in order after the guest subnet. Order matters
 * only where ranges nest (255.255.255.255 lies inside 240/4).
 */
const SPECIAL: readonly { readonly net: Ipv4Network; readonly range: SpecialRange }[] = [
  { net: net(0, 0, 0, 0, 8), range: 'unspecified' }, // "this network", RFC 1122 3.2.1.3; Linux dials 0.0.0.0 as loopback
  { net: net(10, 0, 0, 0, 8), range: 'private' }, // RFC 1918
  { net: net(100, 64, 0, 0, 10), range: 'cgnat' }, // RFC 6598 shared address space
  { net: net(127, 0, 0, 0, 8), range: 'loopback' }, // RFC 1122 3.2.1.3
  { net: net(169, 254, 0, 0, 16), range: 'link-local' }, // RFC 3927; cloud metadata lives here
  { net: net(172, 16, 0, 0, 12), range: 'private' }, // RFC 1918
  { net: net(192, 0, 0, 0, 24), range: 'reserved' }, // IETF protocol assignments, RFC 6890 2.2.2
  { net: net(192, 168, 0, 0, 16), range: 'private' }, // RFC 1918
  { net: net(198, 18, 0, 0, 15), range: 'reserved' }, // RFC 2544 benchmarking; used by lab nets and fake-IP DNS proxies
  { net: net(224, 0, 0, 0, 4), range: 'multicast' }, // RFC 5771
  { net: net(255, 255, 255, 255, 32), range: 'broadcast' }, // RFC 919 limited broadcast
  { net: net(240, 0, 0, 0, 4), range: 'reserved' }, // RFC 1112 4, "future use"
];

/**
 * The special range of a numeric address, or null for an ordinary
 * (public unicast) address. The guest subnet is checked first: it wins over
 * 'private' (192.168.127.0/24 lies inside 192.168/16) and over anything else
 * a configured subnet might overlap, because "this is the guest's own
 * network" is the more useful thing to log.
 */
export function specialRangeOfIpv4(address: number, guestSubnet: Ipv4Network | null): SpecialRange | null {
  if (guestSubnet !== null && inIpv4Network(address, guestSubnet)) return 'guest-subnet';
  for (const s of SPECIAL) if (((address & s.net.mask) >>> 0) === s.net.network) return s.range;
  return null;
}

/**
 * The special range of an address given as text.
 *
 * Text that is not a strict IPv4 dotted quad (IPv6, names, junk) is
 * classified 'reserved': null ("ordinary address") would be the unsafe
 * answer. For either family use ranges6.ts specialRangeOfAddress. Throws only for an invalid `guestSubnet`, which is
 * configuration, not input.
 */
export function specialRangeOf(address: string, guestSubnet: { network: string; prefix: number }): SpecialRange | null {
  const guest = ipv4Network(guestSubnet.network, guestSubnet.prefix);
  if (guest === null) {
    throw new Error(`invalid guest subnet ${JSON.stringify(guestSubnet.network)}/${String(guestSubnet.prefix)}`);
  }
  const n = parseIpv4(address);
  if (n === null) return 'reserved';
  return specialRangeOfIpv4(n, guest);
}
