/**
 * UDP (RFC 768): an 8-byte header and a checksum over a pseudo-header
 * (IPv4's, or IPv6's: RFC 8200 §8.1), the UDP header and the payload.
 * Over IPv6 the checksum is mandatory: a zero field is refused.
 */
import type { IpAddress } from './addr.js';
import { sumBytes, sumPseudoHeaderAny, finishChecksum } from './checksum.js';
import { ParseError } from './errors.js';
import { IPPROTO_UDP } from './ipv4.js';

export const UDP_HEADER_LEN = 8;
/** Largest UDP payload an IPv4 datagram can carry without options: 65535 - 20 - 8. */
export const UDP_MAX_PAYLOAD = 65507;

export interface UdpRepr {
  srcPort: number;
  dstPort: number;
  /** View of exactly `length - 8` bytes (the UDP length field decides, not the IP payload size). */
  payload: Uint8Array;
}

/**
 * Parses a UDP datagram (the reassembled IP payload). A checksum field of 0
 * means the sender computed none (RFC 768) and is accepted.
 */
export function parseUdp(packet: Uint8Array, srcIp: IpAddress, dstIp: IpAddress, checksumOk = false): UdpRepr | ParseError {
  if (packet.length < UDP_HEADER_LEN) return ParseError.of('udp:truncated');
  const length = (packet[4]! << 8) | packet[5]!;
  // The length field counts the header; it may be shorter than the IP payload
  // (RFC 1122 §4.1.3.4 leaves the excess to be ignored) but never longer.
  if (length < UDP_HEADER_LEN || length > packet.length) return ParseError.of('udp:bad-length');
  const wireChecksum = (packet[6]! << 8) | packet[7]!;
  // checksumOk: the link vouched for it (receive offload, netstack/rx-marks.ts).
  // RFC 8200 §8.1: an IPv6 receiver discards a zero UDP checksum.
  if (wireChecksum === 0 && typeof srcIp !== 'number' && !checksumOk) return ParseError.of('udp:zero-checksum-ipv6');
  if (wireChecksum !== 0 && !checksumOk) {
    const sum = sumBytes(packet, 0, length, sumPseudoHeaderAny(srcIp, dstIp, IPPROTO_UDP, length));
    if (finishChecksum(sum) !== 0) return ParseError.of('udp:bad-checksum');
  }
  return {
    srcPort: (packet[0]! << 8) | packet[1]!,
    dstPort: (packet[2]! << 8) | packet[3]!,
    payload: packet.subarray(UDP_HEADER_LEN, length),
  };
}

/** Copies `payload` after an 8-byte header at `off`, fills the checksum; returns the end offset. */
export function emitUdp(
  buf: Uint8Array, off: number, srcIp: IpAddress, dstIp: IpAddress, srcPort: number, dstPort: number, payload: Uint8Array,
): number {
  buf.set(payload, off + UDP_HEADER_LEN);
  return emitUdpHeader(buf, off, srcIp, dstIp, srcPort, dstPort, payload.length);
}

/**
 * Writes the 8-byte header at `off` for a payload ALREADY in place at
 * buf[off + 8, off + 8 + payloadLength), with the checksum over all of it;
 * returns the end offset. For a datagram that will be fragmented, call this on
 * the whole datagram once, then cut it (ipv4.ts fragmentPlan): the checksum
 * covers the datagram, not each fragment.
 */
export function emitUdpHeader(
  buf: Uint8Array, off: number, srcIp: IpAddress, dstIp: IpAddress, srcPort: number, dstPort: number, payloadLength: number,
): number {
  const length = UDP_HEADER_LEN + payloadLength;
  if (!(payloadLength >= 0) || payloadLength > UDP_MAX_PAYLOAD) {
    throw new RangeError(`udp: payload length ${payloadLength} does not fit a datagram`);
  }
  buf[off] = (srcPort >>> 8) & 0xff;
  buf[off + 1] = srcPort & 0xff;
  buf[off + 2] = (dstPort >>> 8) & 0xff;
  buf[off + 3] = dstPort & 0xff;
  buf[off + 4] = length >>> 8;
  buf[off + 5] = length & 0xff;
  buf[off + 6] = 0;
  buf[off + 7] = 0;
  let sum = finishChecksum(sumBytes(buf, off, length, sumPseudoHeaderAny(srcIp, dstIp, IPPROTO_UDP, length)));
  // A computed zero is sent as all ones: zero on the wire means "no checksum" (RFC 768).
  if (sum === 0) sum = 0xffff;
  buf[off + 6] = sum >>> 8;
  buf[off + 7] = sum & 0xff;
  return off + length;
}
