/**
 * Where a guest flow's destination address leads on the host, or why it leads
 * nowhere. One function so that TCP and UDP refuse exactly the same things.
 */
import {
  formatIPv4, formatIPv6, inPrefix6, inSubnet, isLinkLocal6, isMulticast6, prefixMask, type IpAddress, type IPv4, type IPv6,
} from '../../netstack/addr.js';
import { specialRangeOfIpv4 } from '../../sni/ranges.js';
import { embeddedIpv4, inIpv6Network, METADATA6, type EmbeddedIpv4 } from '../../sni/ranges6.js';

export type DestinationRefusal =
  | 'unspecified' // 0.0.0.0/8: "this network" (RFC 1122 3.2.1.3), never a destination
  | 'loopback' // 127.0.0.0/8: the guest's own loopback; the host is reached via the host alias
  | 'link-local' // 169.254.0.0/16 (RFC 3927): cloud metadata endpoints live here
  | 'multicast' // 224.0.0.0/4 (RFC 5771): no multicast routing through the NAT
  | 'reserved' // 240.0.0.0/4 (RFC 1112 4)
  | 'broadcast' // 255.255.255.255 or the virtual subnet's broadcast address
  | 'network-address' // the virtual subnet's network address
  | 'virtual-network' // another address inside the virtual subnet (or the guest's IPv6 prefix): no host-side counterpart
  | 'ipv4-mapped' // ::ffff:0:0/96, ::/96 (RFC 4291 §2.5.5), ::ffff:0:0:0/96 (SIIT): the address inside is the destination
  | 'nat64' // 64:ff9b::/96 (RFC 6052), 64:ff9b:1::/48 (RFC 8215): a host with NAT64 would dial the IPv4 address inside
  | 'ipv6-off' // an IPv6 destination while the NAT has no IPv6 side
  | 'special-range'; // 6to4/Teredo through a special IPv4 relay (sni/ranges6.ts): refused whatever the rules

export type Destination =
  | { readonly kind: 'gateway' }
  | { readonly kind: 'host'; readonly address: string }
  | { readonly kind: 'refused'; readonly reason: DestinationRefusal };

export interface DestinationRules {
  gatewayIp: IPv4;
  hostIp: IPv4;
  network: IPv4;
  prefix: number;
  allowLinkLocal: boolean;
  /** The IPv6 side; absent, every IPv6 destination is refused ('ipv6-off'). */
  ipv6?: Ipv6DestinationRules | undefined;
}

export interface Ipv6DestinationRules {
  gatewayIp: IPv6;
  hostIp: IPv6;
  /** The guest's /64. */
  prefix: IPv6;
  /** Where the IPv6 host alias leads: '::1', or '127.0.0.1' on a host without an IPv6 loopback. */
  hostLoopback: string;
}

const GATEWAY: Destination = { kind: 'gateway' };
const HOST_LOOPBACK: Destination = { kind: 'host', address: '127.0.0.1' };
const refusals = new Map<DestinationRefusal, Destination>();
function refused(reason: DestinationRefusal): Destination {
  let d = refusals.get(reason);
  if (d === undefined) {
    d = { kind: 'refused', reason };
    refusals.set(reason, d);
  }
  return d;
}

export function classifyDestination(dst: IpAddress, rules: DestinationRules): Destination {
  if (typeof dst !== 'number') return classifyDestination6(dst, rules);
  if (dst === rules.gatewayIp) return GATEWAY;
  if (dst === rules.hostIp) return HOST_LOOPBACK;
  const top = dst >>> 24;
  if (top === 0) return refused('unspecified');
  if (top === 127) return refused('loopback');
  if (dst === 0xffffffff) return refused('broadcast');
  if (top >= 224 && top <= 239) return refused('multicast');
  if (top >= 240) return refused('reserved');
  if (dst >>> 16 === 0xa9fe && !rules.allowLinkLocal) return refused('link-local');
  if (inSubnet(dst, rules.network, rules.prefix)) {
    const hostBits = ~prefixMask(rules.prefix) >>> 0;
    // A /31 or /32 has no network or broadcast address (RFC 3021).
    if (rules.prefix <= 30) {
      if ((dst & hostBits) >>> 0 === hostBits) return refused('broadcast');
      if ((dst & hostBits) >>> 0 === 0) return refused('network-address');
    }
    return refused('virtual-network');
  }
  return { kind: 'host', address: formatIPv4(dst) };
}

const hostLoopbacks = new Map<string, Destination>();

/** The IPv6 rules, in the same spirit as IPv4's: the gateway, the host alias, then what leads nowhere or elsewhere. */
function classifyDestination6(dst: IPv6, rules: DestinationRules): Destination {
  const v6 = rules.ipv6;
  if (v6 === undefined) return refused('ipv6-off');
  if (dst === v6.gatewayIp) return GATEWAY;
  if (dst === v6.hostIp) {
    let d = hostLoopbacks.get(v6.hostLoopback);
    if (d === undefined) {
      d = { kind: 'host', address: v6.hostLoopback };
      hostLoopbacks.set(v6.hostLoopback, d);
    }
    return d;
  }
  const g = (i: number) => dst.charCodeAt(i);
  const firstFive = g(0) | g(1) | g(2) | g(3) | g(4);
  if (firstFive === 0 && (g(5) === 0 || g(5) === 0xffff)) {
    if (g(5) === 0 && g(6) === 0 && g(7) === 0) return refused('unspecified');
    if (g(5) === 0 && g(6) === 0 && g(7) === 1) return refused('loopback');
    return refused('ipv4-mapped');
  }
  if (isMulticast6(dst)) return refused('multicast');
  // fe80::/10 has no meaning off the link (a host socket would need a zone): refused even where a rule opens 169.254/16.
  if (isLinkLocal6(dst)) return refused('link-local');
  if (inPrefix6(dst, v6.prefix, 64)) return refused('virtual-network');
  const special = specialRange6(dst, rules);
  return special === undefined ? { kind: 'host', address: formatIPv6(dst) } : refused(special);
}

/**
 * What the policy's IPv6 ranges (sni/ranges6.ts, the one table) refuse
 * whatever the rules, so that the NAT refuses it with or without an
 * allowlist: an address that IS an IPv4 address (SIIT, the NAT64 forms the
 * check above does not catch): the NAT would dial it as IPv6 text while the
 * policy decides it as its IPv4 address; 6to4/Teredo through a special IPv4
 * relay; the metadata prefix fd00:ec2::/32 as 169.254/16 (with an egress
 * policy allowLinkLocal is on here and the policy's own guard decides).
 */
function specialRange6(dst: IPv6, rules: DestinationRules): DestinationRefusal | undefined {
  const { metadata, embedded } = rangesOf(dst);
  if (metadata) return rules.allowLinkLocal ? undefined : 'link-local';
  if (embedded === null) return undefined;
  if (embedded.same) return embedded.form === 'nat64' || embedded.form === 'nat64-local' ? 'nat64' : 'ipv4-mapped';
  // 6to4/Teredo: the ranges of their IPv4 relays, as the policy reads them (decide6).
  const guest4 = { network: rules.network, mask: prefixMask(rules.prefix), prefix: rules.prefix };
  for (const relay of embedded.ipv4) {
    const range = specialRangeOfIpv4(relay, guest4);
    if (range !== null) return range === 'link-local' ? 'link-local' : 'special-range';
  }
  return undefined;
}

/**
 * The rules-independent facts specialRange6 needs, per address: read with
 * sni/ranges6.ts over a bigint (~0.7 µs), so kept for the last addresses
 * seen (a UDP flow asks once per datagram). Bounded: cleared when full.
 */
export const RANGES_CACHE_MAX = 1024;
const rangesCache = new Map<IPv6, { readonly metadata: boolean; readonly embedded: EmbeddedIpv4 | null }>();
function rangesOf(dst: IPv6): { readonly metadata: boolean; readonly embedded: EmbeddedIpv4 | null } {
  let r = rangesCache.get(dst);
  if (r !== undefined) return r;
  let a = 0n;
  for (let i = 0; i < 8; i++) a = (a << 16n) | BigInt(dst.charCodeAt(i));
  r = { metadata: inIpv6Network(a, METADATA6), embedded: embeddedIpv4(a) };
  if (rangesCache.size >= RANGES_CACHE_MAX) rangesCache.clear();
  rangesCache.set(dst, r);
  return r;
}

/** For tests: how many addresses the range cache holds (bounded by RANGES_CACHE_MAX). */
export function rangesCacheSize(): number {
  return rangesCache.size;
}
