/**
 * Neighbor Discovery for IPv6 (RFC 4861) message bodies, the options a
 * router sends (RFC 4861 §4.6, RFC 8106 RDNSS/DNSSL), and their checks.
 * Each body here starts after the 8-byte ICMPv6 header (icmp6.ts), whose
 * `rest` carries the first 4 bytes of the message.
 */
import { readIPv6, readMac, writeIPv6, writeMac, type IPv6, type Mac } from './addr.js';
import { ParseError } from './errors.js';

export const NDP_OPT_SOURCE_LL = 1;
export const NDP_OPT_TARGET_LL = 2;
export const NDP_OPT_PREFIX_INFO = 3;
export const NDP_OPT_MTU = 5;
export const NDP_OPT_RDNSS = 25;
export const NDP_OPT_DNSSL = 31;

/** RFC 4861 §7.1: NDP messages carry hop limit 255, proof that no router forwarded them. */
export const NDP_HOP_LIMIT = 255;

/** Neighbor Advertisement flags in `rest` (RFC 4861 §4.4). */
export const NA_ROUTER = 0x80000000;
export const NA_SOLICITED = 0x40000000;
export const NA_OVERRIDE = 0x20000000;

export interface NdpOptions {
  sourceLinkAddr: Mac | undefined;
  targetLinkAddr: Mac | undefined;
}

/**
 * Walks the options from `bytes[from]` to the end (RFC 4861 §4.6): each
 * option's length is in units of 8 bytes and may not be 0 (that packet is
 * silently discarded, §4.6), nor run past the message. Only the link-layer
 * address options are kept; the rest is skipped, as a host must.
 */
export function parseNdpOptions(bytes: Uint8Array, from: number): NdpOptions | ParseError {
  const out: NdpOptions = { sourceLinkAddr: undefined, targetLinkAddr: undefined };
  let i = from;
  while (i < bytes.length) {
    if (i + 2 > bytes.length) return ParseError.of('ndp:bad-option');
    const len = bytes[i + 1]! * 8;
    if (len === 0 || i + len > bytes.length) return ParseError.of('ndp:bad-option');
    const type = bytes[i]!;
    if ((type === NDP_OPT_SOURCE_LL || type === NDP_OPT_TARGET_LL) && len >= 8) {
      const mac = readMac(bytes, i + 2);
      if (type === NDP_OPT_SOURCE_LL) out.sourceLinkAddr = mac;
      else out.targetLinkAddr = mac;
    }
    i += len;
  }
  return out;
}

/** A Neighbor Solicitation or Advertisement body: the target address and the options. */
export interface NeighborMessage {
  target: IPv6;
  options: NdpOptions;
}

/** NS and NA bodies (after the ICMPv6 header): 16 bytes of target, then options. */
export function parseNeighborMessage(body: Uint8Array): NeighborMessage | ParseError {
  if (body.length < 16) return ParseError.of('ndp:truncated');
  const options = parseNdpOptions(body, 16);
  if (options instanceof ParseError) return options;
  return { target: readIPv6(body, 0), options };
}

/** Writes an 8-byte link-layer address option at `off`; returns the end offset. */
export function emitLinkAddrOption(buf: Uint8Array, off: number, type: number, mac: Mac): number {
  buf[off] = type;
  buf[off + 1] = 1;
  writeMac(buf, off + 2, mac);
  return off + 8;
}

/** Target + target link-layer option (an NA body), or + source link-layer option (an NS body). Returns the end offset. */
export function emitNeighborBody(buf: Uint8Array, off: number, target: IPv6, optionType: number, mac: Mac): number {
  writeIPv6(buf, off, target);
  return emitLinkAddrOption(buf, off + 16, optionType, mac);
}

/** What a Router Advertisement announces (RFC 4861 §4.2, RFC 8106). */
export interface RouterAdvert {
  curHopLimit: number;
  /** O flag: "other configuration" (DNS) by stateless DHCPv6. */
  otherConfig: boolean;
  routerLifetimeSec: number;
  sourceMac: Mac;
  mtu: number;
  prefix: IPv6;
  prefixLength: number;
  validLifetimeSec: number;
  preferredLifetimeSec: number;
  /** RDNSS (RFC 8106 §5.1): empty for none. */
  dnsServers: readonly IPv6[];
  dnsLifetimeSec: number;
  /** DNSSL (RFC 8106 §5.2): empty for none. */
  searchDomains: readonly string[];
}

/** The RA's first 4 bytes (the ICMPv6 `rest`): cur hop limit, M/O flags, router lifetime. */
export function routerAdvertRest(ra: RouterAdvert): number {
  return ((ra.curHopLimit << 24) | ((ra.otherConfig ? 0x40 : 0) << 16) | (ra.routerLifetimeSec & 0xffff)) >>> 0;
}

/** Bytes of an RA body (after the ICMPv6 header) for `ra`. */
export function routerAdvertBodyLength(ra: RouterAdvert): number {
  return 8 + 8 + 8 + 32 + (ra.dnsServers.length > 0 ? 8 + 16 * ra.dnsServers.length : 0) + dnsslLength(ra.searchDomains);
}

/** Writes the RA body at `off` (reachable time and retrans timer 0: unspecified); returns the end offset. */
export function emitRouterAdvertBody(buf: Uint8Array, off: number, ra: RouterAdvert): number {
  buf.fill(0, off, off + 8); // reachable time, retrans timer
  let o = emitLinkAddrOption(buf, off + 8, NDP_OPT_SOURCE_LL, ra.sourceMac);
  // MTU (§4.6.4)
  buf[o] = NDP_OPT_MTU; buf[o + 1] = 1; buf[o + 2] = 0; buf[o + 3] = 0;
  put32(buf, o + 4, ra.mtu);
  o += 8;
  // Prefix Information (§4.6.2): L (on-link) and A (autonomous: SLAAC).
  buf[o] = NDP_OPT_PREFIX_INFO; buf[o + 1] = 4; buf[o + 2] = ra.prefixLength; buf[o + 3] = 0xc0;
  put32(buf, o + 4, ra.validLifetimeSec);
  put32(buf, o + 8, ra.preferredLifetimeSec);
  put32(buf, o + 12, 0);
  writeIPv6(buf, o + 16, ra.prefix);
  o += 32;
  if (ra.dnsServers.length > 0) {
    buf[o] = NDP_OPT_RDNSS; buf[o + 1] = 1 + 2 * ra.dnsServers.length; buf[o + 2] = 0; buf[o + 3] = 0;
    put32(buf, o + 4, ra.dnsLifetimeSec);
    o += 8;
    for (const d of ra.dnsServers) { writeIPv6(buf, o, d); o += 16; }
  }
  const sl = dnsslLength(ra.searchDomains);
  if (sl > 0) {
    buf.fill(0, o, o + sl);
    buf[o] = NDP_OPT_DNSSL; buf[o + 1] = sl / 8;
    put32(buf, o + 4, ra.dnsLifetimeSec);
    let p = o + 8;
    for (const name of ra.searchDomains) p = writeDnsName(buf, p, name);
    o += sl;
  }
  return o;
}

/** The DNSSL option's length: 8 bytes of header, the names in DNS wire form, padded to 8 (RFC 8106 §5.2). */
function dnsslLength(names: readonly string[]): number {
  if (names.length === 0) return 0;
  let n = 0;
  for (const name of names) n += dnsNameLength(name);
  return 8 + Math.ceil(n / 8) * 8;
}

function labelsOf(name: string): string[] {
  return name.replace(/\.$/, '').split('.').filter((l) => l.length > 0);
}

function dnsNameLength(name: string): number {
  let n = 1;
  for (const l of labelsOf(name)) n += 1 + l.length;
  return n;
}

/** Search domains are validated hostnames (ASCII); written as length-prefixed labels ending in the root. */
function writeDnsName(buf: Uint8Array, off: number, name: string): number {
  let p = off;
  for (const l of labelsOf(name)) {
    buf[p++] = l.length;
    for (let i = 0; i < l.length; i++) buf[p++] = l.charCodeAt(i) & 0x7f;
  }
  buf[p++] = 0;
  return p;
}

function put32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = (v >>> 16) & 0xff;
  buf[off + 2] = (v >>> 8) & 0xff;
  buf[off + 3] = v & 0xff;
}

/** Reads back the options of an RA body: for tests and for a guest-side check. */
export function readRouterAdvertOptions(body: Uint8Array): { type: number; bytes: Uint8Array }[] | ParseError {
  const out: { type: number; bytes: Uint8Array }[] = [];
  let i = 8;
  while (i < body.length) {
    const len = (body[i + 1] ?? 0) * 8;
    if (len === 0 || i + len > body.length) return ParseError.of('ndp:bad-option');
    out.push({ type: body[i]!, bytes: body.subarray(i, i + len) });
    i += len;
  }
  return out;
}
