/**
 * ICMPv6 (RFC 4443): type, code, checksum over the IPv6 pseudo-header (next
 * header 58), 4 bytes whose meaning depends on the type (`rest`), a body.
 * The message formats of Neighbor Discovery live in ndp.ts.
 */
import type { IPv6 } from './addr.js';
import { finishChecksum, sumBytes, sumPseudoHeader6 } from './checksum.js';
import { ParseError } from './errors.js';
import { writeIcmpHeader } from './icmp.js';
import { IPPROTO_ICMPV6, IPV6_HEADER_LEN, IPV6_MIN_MTU } from './ipv6.js';

export const ICMP6_HEADER_LEN = 8;
export const ICMP6_DEST_UNREACH = 1;
export const ICMP6_PACKET_TOO_BIG = 2;
export const ICMP6_TIME_EXCEEDED = 3;
export const ICMP6_PARAM_PROBLEM = 4;
export const ICMP6_ECHO_REQUEST = 128;
export const ICMP6_ECHO_REPLY = 129;
/** Multicast Listener Discovery (RFC 2710, RFC 3810 v2 report): what a guest sends when it joins a group. */
export const ICMP6_MLD_QUERY = 130;
export const ICMP6_MLD_REPORT = 131;
export const ICMP6_MLD_DONE = 132;
export const ICMP6_MLD2_REPORT = 143;
export const ICMP6_ROUTER_SOLICIT = 133;
export const ICMP6_ROUTER_ADVERT = 134;
export const ICMP6_NEIGHBOR_SOLICIT = 135;
export const ICMP6_NEIGHBOR_ADVERT = 136;
export const ICMP6_REDIRECT = 137;
/** Destination Unreachable code 1: communication administratively prohibited. */
export const ICMP6_ADMIN_PROHIBITED = 1;
export const ICMP6_PORT_UNREACH = 4;

export interface Icmp6Repr {
  type: number;
  code: number;
  /** Bytes 4..7 as an unsigned 32-bit number (identifier << 16 | sequence for echo; the MTU for packet-too-big; the pointer for parameter problem). */
  rest: number;
  /** View of the bytes after the 8-byte header. */
  body: Uint8Array;
}

/** Parses an ICMPv6 message (the upper-layer bytes) and verifies its checksum against the pseudo-header. */
export function parseIcmp6(packet: Uint8Array, src: IPv6, dst: IPv6): Icmp6Repr | ParseError {
  if (packet.length < ICMP6_HEADER_LEN) return ParseError.of('icmp6:truncated');
  const sum = sumBytes(packet, 0, packet.length, sumPseudoHeader6(src, dst, IPPROTO_ICMPV6, packet.length));
  if (finishChecksum(sum) !== 0) return ParseError.of('icmp6:bad-checksum');
  return {
    type: packet[0]!,
    code: packet[1]!,
    rest: ((packet[4]! << 24) | (packet[5]! << 16) | (packet[6]! << 8) | packet[7]!) >>> 0,
    body: packet.subarray(ICMP6_HEADER_LEN),
  };
}

/**
 * Writes the 8-byte header at `off` in front of `bodyLength` bytes ALREADY
 * at buf[off + 8, ...), and the checksum over all of it; returns the end offset.
 */
export function emitIcmp6Header(
  buf: Uint8Array, off: number, src: IPv6, dst: IPv6, type: number, code: number, rest: number, bodyLength: number,
): number {
  const len = ICMP6_HEADER_LEN + bodyLength;
  return writeIcmpHeader(buf, off, type, code, rest, len, sumPseudoHeader6(src, dst, IPPROTO_ICMPV6, len));
}

/** Whether an ICMPv6 type is an error message (RFC 4443 §2.1: types 0..127). Errors are never answered with errors. */
export function isIcmp6Error(type: number): boolean {
  return type < 128;
}

/**
 * The part of an offending packet an ICMPv6 error quotes: "as much of the
 * invoking packet as possible without the ICMPv6 packet exceeding the
 * minimum IPv6 MTU" (RFC 4443 §2.4(c)): 1280 - 40 - 8 bytes. A view.
 */
export function icmp6ErrorQuote(ipPacket: Uint8Array): Uint8Array {
  return ipPacket.subarray(0, Math.min(ipPacket.length, IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP6_HEADER_LEN));
}
