/**
 * IPv6 (RFC 8200): the fixed header, the extension-header chain, the
 * fragment header, and the plan for fragmenting a datagram we send.
 *
 * parseIpv6 checks the fixed header only. walkIpv6Chain follows the
 * extension headers (hop-by-hop, routing, fragment, destination options) to
 * the upper-layer header, and says what a receiver must do with anything it
 * does not understand (RFC 8200 §4): skip it, drop the packet silently, or
 * drop it and answer an ICMPv6 Parameter Problem naming the offending byte.
 * The stack plays every destination, so it applies the rules of the final
 * destination; a routing header that still has segments to visit means the
 * packet is not for the address it carries, and is refused.
 */
import { readIPv6, writeIPv6, type IPv6 } from './addr.js';
import { ParseError } from './errors.js';

export const IPV6_HEADER_LEN = 40;
/** RFC 8200 §5: every IPv6 link carries packets of 1280 bytes. */
export const IPV6_MIN_MTU = 1280;
export const IPV6_MAX_PAYLOAD = 0xffff;
export const IPPROTO_HOPOPTS = 0;
export const IPPROTO_ROUTING = 43;
export const IPPROTO_FRAGMENT = 44;
export const IPPROTO_ICMPV6 = 58;
export const IPPROTO_NONE = 59;
export const IPPROTO_DSTOPTS = 60;
export const FRAGMENT_HEADER_LEN = 8;

/**
 * Extension headers walked per packet, at most. RFC 8200 allows each once
 * (destination options twice); a longer chain is only ever an attack on the
 * walker, or a way to push the upper-layer header out of the first fragment.
 */
export const MAX_EXTENSION_HEADERS = 8;

export interface Ipv6Repr {
  src: IPv6;
  dst: IPv6;
  /** The Next Header field of the fixed header. */
  nextHeader: number;
  hopLimit: number;
  trafficClass: number;
  flowLabel: number;
  /** View of exactly payloadLength bytes after the fixed header: trailing Ethernet padding is trimmed. */
  payload: Uint8Array;
}

/** Parses the fixed header (RFC 8200 §3): length, version, payload length against the bytes received. */
export function parseIpv6(packet: Uint8Array): Ipv6Repr | ParseError {
  if (packet.length < IPV6_HEADER_LEN) return ParseError.of('ipv6:truncated');
  if (packet[0]! >>> 4 !== 6) return ParseError.of('ipv6:bad-version');
  const payloadLength = (packet[4]! << 8) | packet[5]!;
  // A payload length of 0 would announce a jumbogram (RFC 2675) when a hop-by-hop option says so; no link here carries one.
  if (IPV6_HEADER_LEN + payloadLength > packet.length) return ParseError.of('ipv6:bad-payload-length');
  return {
    src: readIPv6(packet, 8),
    dst: readIPv6(packet, 24),
    nextHeader: packet[6]!,
    hopLimit: packet[7]!,
    trafficClass: ((packet[0]! & 0x0f) << 4) | (packet[1]! >>> 4),
    flowLabel: ((packet[1]! & 0x0f) << 16) | (packet[2]! << 8) | packet[3]!,
    payload: packet.subarray(IPV6_HEADER_LEN, IPV6_HEADER_LEN + payloadLength),
  };
}

export interface Ipv6HeaderFields {
  src: IPv6;
  dst: IPv6;
  nextHeader: number;
  /** Default 64 (Linux's default hop limit). */
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
  payloadLength: number;
}

/** Writes the 40-byte fixed header at `off`; returns off + 40. Throws RangeError for a length that cannot be encoded (a caller bug). */
export function emitIpv6Header(buf: Uint8Array, off: number, f: Ipv6HeaderFields): number {
  if (!(f.payloadLength >= 0) || f.payloadLength > IPV6_MAX_PAYLOAD) {
    throw new RangeError(`ipv6: payload length ${f.payloadLength} does not fit a packet`);
  }
  const tc = (f.trafficClass ?? 0) & 0xff;
  const fl = (f.flowLabel ?? 0) & 0xfffff;
  buf[off] = 0x60 | (tc >>> 4);
  buf[off + 1] = ((tc & 0x0f) << 4) | (fl >>> 16);
  buf[off + 2] = (fl >>> 8) & 0xff;
  buf[off + 3] = fl & 0xff;
  buf[off + 4] = f.payloadLength >>> 8;
  buf[off + 5] = f.payloadLength & 0xff;
  buf[off + 6] = f.nextHeader & 0xff;
  buf[off + 7] = (f.hopLimit ?? 64) & 0xff;
  writeIPv6(buf, off + 8, f.src);
  writeIPv6(buf, off + 24, f.dst);
  return off + IPV6_HEADER_LEN;
}

/** Writes an 8-byte fragment header (RFC 8200 §4.5); `offset` in bytes, a multiple of 8. Returns the end offset. */
export function emitFragmentHeader(buf: Uint8Array, off: number, nextHeader: number, offset: number, more: boolean, id: number): number {
  if (offset % 8 !== 0 || offset < 0 || offset > 0xfff8) throw new RangeError(`ipv6: fragment offset ${offset} is not a multiple of 8 in range`);
  buf[off] = nextHeader & 0xff;
  buf[off + 1] = 0;
  const word = offset | (more ? 1 : 0);
  buf[off + 2] = word >>> 8;
  buf[off + 3] = word & 0xff;
  buf[off + 4] = id >>> 24;
  buf[off + 5] = (id >>> 16) & 0xff;
  buf[off + 6] = (id >>> 8) & 0xff;
  buf[off + 7] = id & 0xff;
  return off + FRAGMENT_HEADER_LEN;
}

/** A fragment header met on the chain. */
export interface Ipv6Fragment {
  /** In bytes. */
  offset: number;
  more: boolean;
  id: number;
  /** Next Header of the fragmentable part. */
  nextHeader: number;
  /** Where the fragmentable part starts, counted from the start of the walked bytes. */
  dataOffset: number;
}

/** Where the chain ends: the upper-layer protocol and where its header starts. */
export interface Ipv6Chain {
  protocol: number;
  /** Offset of the upper-layer header in the walked bytes. */
  offset: number;
  /** The fragment header, if the chain has one; the walk stops there (what follows may be in other fragments). */
  fragment: Ipv6Fragment | null;
}

/**
 * A packet refused by the chain walk. `icmpCode` set: answer an ICMPv6
 * Parameter Problem (RFC 4443 §3.4) with that code, pointing at byte
 * `pointer` of the offending packet (counted from its IPv6 header); null:
 * drop silently.
 */
export class Ipv6Problem {
  constructor(
    readonly reason: `ipv6:${string}`,
    readonly icmpCode: number | null,
    readonly pointer: number,
  ) {}
}

/** Parameter Problem codes (RFC 4443 §3.4, RFC 7112 §6). */
export const PARAM_ERRONEOUS_FIELD = 0;
export const PARAM_UNRECOGNIZED_NEXT_HEADER = 1;
export const PARAM_UNRECOGNIZED_OPTION = 2;
export const PARAM_INCOMPLETE_CHAIN = 3;

/** Upper-layer protocols the stack handles; any other Next Header is answered "unrecognized" (RFC 8200 §4). */
export function isKnownUpperLayer(nh: number): boolean {
  return nh === 6 || nh === 17 || nh === IPPROTO_ICMPV6 || nh === IPPROTO_NONE;
}

/**
 * Walks the extension headers of `bytes` (an IPv6 payload, or the
 * fragmentable part after reassembly) starting with Next Header `first`.
 * `base` is where `bytes` starts in the packet (40 for a payload), so that a
 * Parameter Problem pointer counts from the IPv6 header. `afterFragment`:
 * the bytes are a reassembled fragmentable part (no hop-by-hop, no second
 * fragment header). `dstMulticast` selects the action of option type 11.
 * Stops at the first upper-layer header, or at a fragment header.
 */
export function walkIpv6Chain(
  bytes: Uint8Array, first: number, base: number, afterFragment: boolean, dstMulticast: boolean,
): Ipv6Chain | Ipv6Problem {
  let nh = first;
  let off = 0;
  // Where the Next Header field that named `nh` lies (the fixed header's, or the previous extension header's).
  let nhPointer = afterFragment ? -1 : 6; // absolute; unknown for a reassembled part's first header
  for (let count = 0; ; count++) {
    switch (nh) {
      case IPPROTO_HOPOPTS:
      case IPPROTO_DSTOPTS:
      case IPPROTO_ROUTING: {
        if (nh === IPPROTO_HOPOPTS && (off !== 0 || afterFragment)) {
          // RFC 8200 §4.1: hop-by-hop only right after the fixed header.
          return new Ipv6Problem('ipv6:misplaced-hop-by-hop', nhPointer < 0 ? null : PARAM_UNRECOGNIZED_NEXT_HEADER, Math.max(nhPointer, 0));
        }
        if (count >= MAX_EXTENSION_HEADERS) return new Ipv6Problem('ipv6:too-many-extension-headers', null, 0);
        if (off + 8 > bytes.length) return new Ipv6Problem('ipv6:truncated-extension-header', null, 0);
        const len = (bytes[off + 1]! + 1) * 8;
        if (off + len > bytes.length) return new Ipv6Problem('ipv6:truncated-extension-header', null, 0);
        if (nh === IPPROTO_ROUTING) {
          // Segments left > 0: the packet is on its way to another address; we recognise no routing type (type 0 is deprecated, RFC 5095).
          if (bytes[off + 3]! !== 0) return new Ipv6Problem('ipv6:routing-header', PARAM_ERRONEOUS_FIELD, base + off + 2);
        } else {
          const problem = walkOptions(bytes, off + 2, off + len, base, dstMulticast);
          if (problem !== null) return problem;
        }
        nhPointer = base + off;
        nh = bytes[off]!;
        off += len;
        break;
      }
      case IPPROTO_FRAGMENT: {
        if (afterFragment) return new Ipv6Problem('ipv6:nested-fragment', null, 0);
        if (off + FRAGMENT_HEADER_LEN > bytes.length) return new Ipv6Problem('ipv6:truncated-extension-header', null, 0);
        const word = (bytes[off + 2]! << 8) | bytes[off + 3]!;
        return {
          protocol: IPPROTO_FRAGMENT,
          offset: off,
          fragment: {
            offset: word & 0xfff8,
            more: (word & 1) === 1,
            id: ((bytes[off + 4]! << 24) | (bytes[off + 5]! << 16) | (bytes[off + 6]! << 8) | bytes[off + 7]!) >>> 0,
            nextHeader: bytes[off]!,
            dataOffset: off + FRAGMENT_HEADER_LEN,
          },
        };
      }
      default:
        if (!isKnownUpperLayer(nh)) {
          // After reassembly the field that named the first header is in another packet: drop without pointing.
          return new Ipv6Problem('ipv6:unsupported-next-header', nhPointer < 0 ? null : PARAM_UNRECOGNIZED_NEXT_HEADER, Math.max(nhPointer, 0));
        }
        return { protocol: nh, offset: off, fragment: null };
    }
  }
}

/** Hop-by-hop / destination options TLVs (RFC 8200 §4.2): Pad1, PadN, Router Alert known; others by their action bits. */
function walkOptions(bytes: Uint8Array, from: number, to: number, base: number, dstMulticast: boolean): Ipv6Problem | null {
  let i = from;
  while (i < to) {
    const type = bytes[i]!;
    if (type === 0) { i++; continue; } // Pad1
    if (i + 2 > to) return new Ipv6Problem('ipv6:bad-option', PARAM_ERRONEOUS_FIELD, base + i);
    const len = bytes[i + 1]!;
    if (i + 2 + len > to) return new Ipv6Problem('ipv6:bad-option', PARAM_ERRONEOUS_FIELD, base + i + 1);
    // PadN (1) and Router Alert (5, which MLD uses) need nothing from us.
    if (type !== 1 && type !== 5) {
      switch (type >>> 6) {
        case 0: break; // skip over it
        case 1: return new Ipv6Problem('ipv6:unknown-option', null, 0);
        case 2: return new Ipv6Problem('ipv6:unknown-option', PARAM_UNRECOGNIZED_OPTION, base + i);
        default: return new Ipv6Problem('ipv6:unknown-option', dstMulticast ? null : PARAM_UNRECOGNIZED_OPTION, base + i);
      }
    }
    i += 2 + len;
  }
  return null;
}

/** One piece of a fragmentation plan (see ipv4.ts FragmentSpec). */
export interface Fragment6Spec {
  offset: number;
  length: number;
  more: boolean;
}

/**
 * How to cut a fragmentable part of `length` bytes for a link of `mtu`, each
 * piece behind a 40-byte header and an 8-byte fragment header (RFC 8200
 * §4.5). A part that fits unfragmented is one piece: send it without a
 * fragment header.
 */
export function fragmentPlan6(length: number, mtu: number): Fragment6Spec[] {
  if (!(mtu >= IPV6_MIN_MTU)) throw new RangeError(`ipv6: MTU ${mtu} below the IPv6 minimum of 1280`);
  if (!(length >= 0) || length > IPV6_MAX_PAYLOAD - FRAGMENT_HEADER_LEN) throw new RangeError(`ipv6: length ${length} does not fit a packet`);
  const room = Math.min(mtu, IPV6_HEADER_LEN + IPV6_MAX_PAYLOAD) - IPV6_HEADER_LEN;
  if (length <= room) return [{ offset: 0, length, more: false }];
  const step = (room - FRAGMENT_HEADER_LEN) & ~7;
  const plan: Fragment6Spec[] = [];
  for (let offset = 0; offset < length; offset += step) {
    const l = Math.min(step, length - offset);
    plan.push({ offset, length: l, more: offset + l < length });
  }
  return plan;
}
