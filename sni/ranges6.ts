/**
 * IPv6 special-purpose ranges, and the IPv4 addresses hidden inside IPv6
 * ones: the IPv6 half of ranges.ts, so that no family becomes the bypass
 * (issue 19). Addresses are bigints (128 bits); the text parser is strict
 * about what it lets a guest or a proxy client spell.
 *
 * The rule that matters: an IPv6 address that carries an IPv4 address
 * (IPv4-mapped, IPv4-compatible, SIIT-translated, NAT64, 6to4, Teredo) is
 * special exactly when that IPv4 address is (specialRangeOfIpv6 ===
 * specialRangeOfIpv4 of the embedded address), so `::ffff:127.0.0.1`,
 * `64:ff9b::a9fe:a9fe` or `2002:7f00:1::` never reach what 127.0.0.1 or
 * 169.254.169.254 could not. The policy (policy.ts) goes further for the
 * forms that ARE the IPv4 address (mapped, compatible, SIIT, NAT64): it
 * decides them as that IPv4 address, rules and all.
 *
 * Sources: the IANA IPv6 Special-Purpose Address Registry (RFC 6890 and
 * updates), RFC 4291 (loopback, unspecified, link-local, mapped, compatible,
 * multicast), RFC 3879 (site-local, deprecated), RFC 4193 (ULA), RFC 6052 and
 * RFC 8215 (NAT64 prefixes), RFC 3056 (6to4), RFC 4380 (Teredo), RFC 3849 and
 * RFC 9637 (documentation), RFC 2765 (SIIT ::ffff:0:0:0/96), RFC 6666
 * (discard-only), RFC 5180 (benchmarking). AWS documents fd00:ec2::254 as the
 * IPv6 instance metadata endpoint (and fd00:ec2::/32 for its other services).
 *
 * Choices:
 *  - ULA fc00::/7 is 'private': it is IPv6's RFC 1918, somebody's internal
 *    network, so a public name answering there is a rebinding attempt. The
 *    guest's own ULA prefix is 'guest-subnet' (checked first, as in IPv4).
 *  - fd00:ec2::/32 (cloud metadata) is 'link-local', like 169.254/16: the
 *    policy's link-local guard (refused even with an empty allowlist and in
 *    audit mode) keys on that range.
 *  - Documentation 2001:db8::/32 and 3fff::/20 ARE special ('documentation'),
 *    unlike IPv4's documentation ranges (ranges.ts): the issue lists them, and
 *    nothing real answers there.
 *  - Everything outside global unicast 2000::/3 that the table does not name
 *    is 'reserved' (IANA has allocated nothing else): fail closed.
 *  - 64:ff9b:1::/48 (local-use NAT64, RFC 8215) may hold the IPv4 address at
 *    any RFC 6052 layout (/48../96); only the /96 layout (bits 48..95 zero)
 *    is read, anything else there is 'reserved' (which IPv4 address it
 *    stands for cannot be known, so it is refused).
 *  - Teredo carries two IPv4 addresses (server, and client obfuscated): the
 *    address is special if either is; the server's range is reported first.
 *
 * sni/ may not import netstack/ nor node:. The text parser and formatter
 * are this module's own (a flow's destination is parsed per SYN: ip-address
 * took ~12 µs per parse and per format, these well under one); the tests
 * hold them to ip-address's reading of every string they generate.
 */
import { formatIpv4, ipv4Network, parseIpv4, specialRangeOfIpv4, type Ipv4Network, type SpecialRange } from './ranges.js';

/** An IPv6 network as bigints: `address & mask === network` is membership. */
export interface Ipv6Network {
  readonly network: bigint;
  readonly mask: bigint;
  readonly prefix: number;
}

const ALL = (1n << 128n) - 1n;
// Hex digits, colons and (for an embedded dotted quad) dots; no zone id
// (`%eth0` names a host interface: a guest or client must never choose one),
// no prefix, no brackets, no spaces.
const IPV6_CHARS = /^[0-9A-Fa-f:.]{2,45}$/;

/**
 * Strict IPv6 text to a 128-bit number, or null. Accepts every RFC 4291
 * spelling (zero compression, upper or lower case, leading zeros up to four
 * digits, a trailing dotted quad), so a decision depends on the address and
 * never on how it was written; refuses zone ids, prefixes, brackets, and a
 * dotted quad with leading zeros (`::ffff:010.0.0.1`: octal to some readers).
 */
export function parseIpv6(text: string): bigint | null {
  if (typeof text !== 'string' || !IPV6_CHARS.test(text)) return null;
  const gap = text.indexOf('::');
  if (gap >= 0 && text.indexOf('::', gap + 1) >= 0) return null; // one '::' at most
  const head = gap < 0 ? text : text.slice(0, gap);
  const tail = gap < 0 ? '' : text.slice(gap + 2);
  const groups: number[] = [];
  const back: number[] = [];
  if (!readGroups(head, groups, gap < 0) || !readGroups(tail, back, true)) return null;
  const total = groups.length + back.length;
  // Without '::' exactly 8 groups; with it, '::' stands for at least one zero group.
  if (gap < 0 ? total !== 8 : total > 7) return null;
  while (groups.length + back.length < 8) groups.push(0);
  groups.push(...back);
  let n = 0n;
  for (let i = 0; i < 8; i += 2) n = (n << 32n) | BigInt(((groups[i]! << 16) | groups[i + 1]!) >>> 0);
  return n;
}

const HEX_GROUP = /^[0-9A-Fa-f]{1,4}$/;

/**
 * The groups of one side of '::' ('' is none). `last`: this side ends the
 * address, so its final part may be a dotted quad (two groups, strict
 * parseIpv4: no leading zeros, no shorthand).
 */
function readGroups(part: string, out: number[], last: boolean): boolean {
  if (part === '') return true;
  const pieces = part.split(':');
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i]!;
    if (HEX_GROUP.test(p)) {
      out.push(parseInt(p, 16));
      continue;
    }
    if (!last || i !== pieces.length - 1) return false;
    const v4 = parseIpv4(p);
    if (v4 === null) return false;
    out.push(v4 >>> 16, v4 & 0xffff);
  }
  return true;
}

/** RFC 5952 text (lower case, longest zero run compressed; mapped addresses as `::ffff:a.b.c.d`). */
export function formatIpv6(address: bigint): string {
  // RFC 5952 5: an IPv4-mapped address keeps its dotted quad (inet_ntop does the same).
  if (address >> 32n === 0xffffn) return `::ffff:${formatIpv4(Number(address & 0xffffffffn))}`;
  const g: number[] = [];
  for (let i = 0; i < 4; i++) {
    const w = Number((address >> BigInt(96 - 32 * i)) & 0xffffffffn);
    g.push(w >>> 16, w & 0xffff);
  }
  // RFC 5952 4.2: the longest run of two or more zero groups (the first on a tie) becomes '::'.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number): string => g.slice(from, to).map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/** The address of 16 network-order bytes (an IPv6 header's source or destination). */
export function ipv6FromBytes(bytes: Uint8Array, offset = 0): bigint {
  let n = 0n;
  for (let i = 0; i < 16; i++) n = (n << 8n) | BigInt(bytes[offset + i]!);
  return n;
}

export function ipv6PrefixMask(prefix: number): bigint {
  return prefix === 0 ? 0n : (ALL << BigInt(128 - prefix)) & ALL;
}

export function inIpv6Network(address: bigint, net: Ipv6Network): boolean {
  return (address & net.mask) === net.network;
}

/** Does network `n` lie wholly inside `outer`? */
export function ipv6NetInside(n: Ipv6Network, outer: Ipv6Network): boolean {
  return n.prefix >= outer.prefix && (n.network & outer.mask) === outer.network;
}

/**
 * A network from configuration (`{ network: 'fd00:6d6f:6174::', prefix: 64 }`):
 * host bits are cleared. null for bad text or a prefix outside 0..128.
 */
export function ipv6Network(network: string, prefix: number): Ipv6Network | null {
  const address = parseIpv6(network);
  if (address === null || !Number.isInteger(prefix) || prefix < 0 || prefix > 128) return null;
  const mask = ipv6PrefixMask(prefix);
  return { network: address & mask, mask, prefix };
}

/**
 * `addr/n` or a bare address (/128) as a user wrote it: host bits must be
 * zero (as parseIpv4Cidr: a typo is refused, not guessed at).
 */
export function parseIpv6Cidr(text: string): Ipv6Network | null {
  const slash = text.indexOf('/');
  if (slash < 0) {
    const address = parseIpv6(text);
    return address === null ? null : { network: address, mask: ALL, prefix: 128 };
  }
  const address = parseIpv6(text.slice(0, slash));
  const len = text.slice(slash + 1);
  if (address === null || !/^(?:0|[1-9][0-9]{0,2})$/.test(len)) return null;
  const prefix = Number(len);
  if (prefix > 128) return null;
  const mask = ipv6PrefixMask(prefix);
  if ((address & mask) !== address) return null;
  return { network: address, mask, prefix };
}

function net6(text: string, prefix: number): Ipv6Network {
  const n = ipv6Network(text, prefix);
  if (n === null) throw new Error(`bad built-in IPv6 network ${text}/${prefix}`);
  return n;
}

/** How an IPv6 address carries an IPv4 one. */
export type EmbeddingForm = 'ipv4-mapped' | 'ipv4-compatible' | 'ipv4-translated' | 'nat64' | 'nat64-local' | '6to4' | 'teredo';

/**
 * The IPv4 address(es) an IPv6 address stands for or goes through.
 * `same`: the IPv6 address IS the IPv4 address (mapped, compatible,
 * translated, NAT64: a connection to it reaches `ipv4[0]`); otherwise
 * (6to4, Teredo) the IPv4 addresses are the tunnel's relays.
 */
export interface EmbeddedIpv4 {
  readonly form: EmbeddingForm;
  readonly ipv4: readonly number[];
  readonly same: boolean;
}

export const IPV4_MAPPED = net6('::ffff:0:0', 96);
export const IPV4_COMPATIBLE = net6('::', 96);
export const IPV4_TRANSLATED = net6('::ffff:0:0:0', 96);
export const NAT64_WELL_KNOWN = net6('64:ff9b::', 96);
export const NAT64_LOCAL = net6('64:ff9b:1::', 48);
export const SIX_TO_FOUR = net6('2002::', 16);
export const TEREDO = net6('2001::', 32);
/** fd00:ec2::/32: cloud metadata (fd00:ec2::254) and its sibling services; guarded like 169.254/16. */
export const METADATA6 = net6('fd00:ec2::', 32);
export const LINK_LOCAL6 = net6('fe80::', 10);
export const LOOPBACK6: Ipv6Network = { network: 1n, mask: ALL, prefix: 128 };

const LOW32 = 0xffffffffn;
const MIDDLE_48_95 = ((1n << 48n) - 1n) << 32n;

/** The embedded IPv4 address(es) of `address`, or null for an IPv6 address that carries none. */
export function embeddedIpv4(address: bigint): EmbeddedIpv4 | null {
  const low = Number(address & LOW32);
  if (inIpv6Network(address, IPV4_MAPPED)) return { form: 'ipv4-mapped', ipv4: [low], same: true };
  if (inIpv6Network(address, IPV4_TRANSLATED)) return { form: 'ipv4-translated', ipv4: [low], same: true };
  // ::/96 minus :: and ::1, which are IPv6's own unspecified and loopback.
  if (inIpv6Network(address, IPV4_COMPATIBLE) && address > 1n) return { form: 'ipv4-compatible', ipv4: [low], same: true };
  if (inIpv6Network(address, NAT64_WELL_KNOWN)) return { form: 'nat64', ipv4: [low], same: true };
  if (inIpv6Network(address, NAT64_LOCAL) && (address & MIDDLE_48_95) === 0n) return { form: 'nat64-local', ipv4: [low], same: true };
  if (inIpv6Network(address, SIX_TO_FOUR)) return { form: '6to4', ipv4: [Number((address >> 80n) & LOW32)], same: false };
  if (inIpv6Network(address, TEREDO)) {
    const server = Number((address >> 64n) & LOW32);
    const client = (~low & 0xffffffff) >>> 0; // RFC 4380 4: the client address is stored inverted
    return { form: 'teredo', ipv4: [server, client], same: false };
  }
  return null;
}

/**
 * The fixed table of IPv6's own ranges, checked in order after the embedded
 * forms (which the IPv4 table decides) and the guest's prefix; nested ranges
 * come before the ranges holding them (fd00:ec2::/32 inside fc00::/7,
 * 2001:db8::/32 inside 2001::/23, all of them inside or outside 2000::/3).
 */
const SPECIAL6: readonly { readonly net: Ipv6Network; readonly range: SpecialRange | null }[] = [
  { net: { network: 0n, mask: ALL, prefix: 128 }, range: 'unspecified' }, // ::, RFC 4291 2.5.2
  { net: LOOPBACK6, range: 'loopback' }, // ::1, RFC 4291 2.5.3
  { net: METADATA6, range: 'link-local' }, // cloud metadata, fd00:ec2::254: guarded like 169.254/16
  { net: NAT64_LOCAL, range: 'reserved' }, // 64:ff9b:1::/48 outside its /96 layout (see header)
  { net: net6('100::', 64), range: 'reserved' }, // RFC 6666 discard-only
  { net: LINK_LOCAL6, range: 'link-local' }, // RFC 4291 2.5.6
  { net: net6('fec0::', 10), range: 'site-local' }, // RFC 3879, deprecated, still routed by some
  { net: net6('fc00::', 7), range: 'private' }, // RFC 4193 ULA
  { net: net6('ff00::', 8), range: 'multicast' }, // RFC 4291 2.7
  { net: net6('2001:db8::', 32), range: 'documentation' }, // RFC 3849
  { net: net6('3fff::', 20), range: 'documentation' }, // RFC 9637
  { net: net6('2001:2::', 48), range: 'reserved' }, // RFC 5180 benchmarking
  { net: net6('2001::', 23), range: 'reserved' }, // IETF protocol assignments (Teredo is read above)
  { net: net6('2000::', 3), range: null }, // global unicast: ordinary
];

/**
 * The special range of an IPv6 address, or null for ordinary global unicast.
 * Embedded IPv4 first: such an address gets exactly its IPv4 address's range
 * (with `guest4`, the guest's IPv4 subnet, as specialRangeOfIpv4 has it;
 * Teredo: the first special one of server and client). Then the guest's own
 * prefix, then the table; anything outside 2000::/3 is 'reserved'.
 */
export function specialRangeOfIpv6(address: bigint, guest6: Ipv6Network | null, guest4: Ipv4Network | null): SpecialRange | null {
  const embedded = embeddedIpv4(address);
  if (embedded !== null) {
    for (const v4 of embedded.ipv4) {
      const r = specialRangeOfIpv4(v4, guest4);
      if (r !== null) return r;
    }
    return null;
  }
  // Metadata wins over a (mis)configured guest prefix around it: the guard must hold.
  if (inIpv6Network(address, METADATA6)) return 'link-local';
  if (guest6 !== null && inIpv6Network(address, guest6)) return 'guest-subnet';
  for (const s of SPECIAL6) if (inIpv6Network(address, s.net)) return s.range;
  return 'reserved';
}

/** A parsed address of either family. */
export type IpAddress = { readonly family: 4; readonly address: number } | { readonly family: 6; readonly address: bigint };

/** Strict text of either family (dotted quad, or IPv6 as parseIpv6 takes it), or null. */
export function parseIp(text: string): IpAddress | null {
  const v4 = parseIpv4(text);
  if (v4 !== null) return { family: 4, address: v4 };
  const v6 = parseIpv6(text);
  return v6 === null ? null : { family: 6, address: v6 };
}

/** The one text form of an address: dotted quad, or RFC 5952. */
export function formatIp(ip: IpAddress): string {
  return ip.family === 4 ? formatIpv4(ip.address) : formatIpv6(ip.address);
}

/**
 * The IPv4 address an IPv6 address IS (mapped, compatible, translated,
 * NAT64), or null: the address a decision about it is really about, and the
 * one to dial (see policy.ts).
 */
export function sameIpv4(address: bigint): number | null {
  const e = embeddedIpv4(address);
  return e !== null && e.same ? e.ipv4[0]! : null;
}

/**
 * The special range of an address given as text, either family: the one
 * question "is this somewhere on the internet?" for callers holding text.
 * Text that is neither (names, junk, zone ids) is 'reserved': null would be
 * the unsafe answer. Throws only for invalid configuration.
 */
export function specialRangeOfAddress(
  text: string,
  guestSubnet: { network: string; prefix: number },
  guestPrefix6: { network: string; prefix: number } | null = null,
): SpecialRange | null {
  const guest4 = ipv4Network(guestSubnet.network, guestSubnet.prefix);
  if (guest4 === null) throw new Error(`invalid guest subnet ${JSON.stringify(guestSubnet.network)}/${String(guestSubnet.prefix)}`);
  const guest6 = guestPrefix6 === null ? null : ipv6Network(guestPrefix6.network, guestPrefix6.prefix);
  if (guestPrefix6 !== null && guest6 === null) throw new Error(`invalid guest IPv6 prefix ${JSON.stringify(guestPrefix6.network)}/${String(guestPrefix6.prefix)}`);
  const ip = parseIp(text);
  if (ip === null) return 'reserved';
  return ip.family === 4 ? specialRangeOfIpv4(ip.address, guest4) : specialRangeOfIpv6(ip.address, guest6, guest4);
}
