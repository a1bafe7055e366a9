/**
 * ICMP for IPv4 (RFC 792): a 4-byte header (type, code, checksum), 4 bytes
 * whose meaning depends on the type (`rest`), and a body. The checksum covers
 * the whole message (no pseudo-header, unlike TCP/UDP).
 */
import { sumBytes, finishChecksum } from './checksum.js';
import { ParseError } from './errors.js';

export const ICMP_HEADER_LEN = 8;
export const ICMP_ECHO_REPLY = 0;
export const ICMP_DEST_UNREACH = 3;
export const ICMP_ECHO_REQUEST = 8;
export const ICMP_TIME_EXCEEDED = 11;

/** Destination Unreachable codes (RFC 792; 13 from RFC 1812 §5.2.7.1). */
export const ICMP_NET_UNREACH = 0;
export const ICMP_HOST_UNREACH = 1;
export const ICMP_PROTO_UNREACH = 2;
export const ICMP_PORT_UNREACH = 3;
/** "Fragmentation needed and DF set": `rest` carries the next-hop MTU in its low 16 bits (RFC 1191 §4). */
export const ICMP_FRAG_NEEDED = 4;
export const ICMP_ADMIN_PROHIBITED = 13;
/** Time Exceeded code 1: fragment reassembly time exceeded (RFC 792). */
export const ICMP_FRAG_REASSEMBLY_TIME_EXCEEDED = 1;

export interface IcmpRepr {
  type: number;
  code: number;
  checksum: number;
  /** Bytes 4..7 as an unsigned 32-bit number: identifier << 16 | sequence for echo. */
  rest: number;
  /** View of the bytes after the 8-byte header. */
  payload: Uint8Array;
}

/** Parses an ICMP message (the IP payload) and verifies its checksum. */
export function parseIcmp(packet: Uint8Array): IcmpRepr | ParseError {
  if (packet.length < ICMP_HEADER_LEN) return ParseError.of('icmp:truncated');
  if (finishChecksum(sumBytes(packet, 0, packet.length)) !== 0) return ParseError.of('icmp:bad-checksum');
  return {
    type: packet[0]!,
    code: packet[1]!,
    checksum: (packet[2]! << 8) | packet[3]!,
    rest: ((packet[4]! << 24) | (packet[5]! << 16) | (packet[6]! << 8) | packet[7]!) >>> 0,
    payload: packet.subarray(ICMP_HEADER_LEN),
  };
}

/**
 * Writes header + payload with the checksum at `off`; returns the end offset.
 * `payload` may already sit at buf[off + 8] (or overlap it): the copy is a
 * memmove, so the bytes survive.
 */
export function emitIcmp(buf: Uint8Array, off: number, type: number, code: number, rest: number, payload: Uint8Array): number {
  buf.set(payload, off + ICMP_HEADER_LEN);
  return writeIcmpHeader(buf, off, type, code, rest, ICMP_HEADER_LEN + payload.length, 0);
}

/**
 * The 8-byte ICMP/ICMPv6 header (both have this layout) at `off`, in front of
 * a body already in place, with the checksum over `len` bytes from `off`
 * started from `seed` (0 for ICMP; the pseudo-header sum for ICMPv6).
 * Returns the end offset.
 */
export function writeIcmpHeader(buf: Uint8Array, off: number, type: number, code: number, rest: number, len: number, seed: number): number {
  buf[off] = type & 0xff;
  buf[off + 1] = code & 0xff;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  buf[off + 4] = (rest >>> 24) & 0xff;
  buf[off + 5] = (rest >>> 16) & 0xff;
  buf[off + 6] = (rest >>> 8) & 0xff;
  buf[off + 7] = rest & 0xff;
  const sum = finishChecksum(sumBytes(buf, off, len, seed));
  buf[off + 2] = sum >>> 8;
  buf[off + 3] = sum & 0xff;
  return off + len;
}

/**
 * The part of an offending IP packet an ICMP error quotes: its header plus
 * the first 8 bytes of its payload (RFC 792, RFC 1122 §3.2.2), enough for the
 * sender to find the socket. A view, clamped to what the packet has.
 */
export function icmpErrorQuote(ipPacket: Uint8Array, headerLength: number): Uint8Array {
  return ipPacket.subarray(0, Math.min(ipPacket.length, headerLength + 8));
}
