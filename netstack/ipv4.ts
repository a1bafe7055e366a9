/**
 * IPv4 header (RFC 791 §3.1) parsing and emission, plus the plan for
 * fragmenting an outgoing datagram that does not fit the link MTU.
 *
 * Options are skipped, not interpreted: the header length (IHL) is honoured so
 * the payload starts in the right place, and the checksum covers them.
 */
import { readIPv4, writeIPv4, type IPv4 } from './addr.js';
import { sumBytes, finishChecksum } from './checksum.js';
import { ParseError } from './errors.js';

export const IPV4_HEADER_LEN = 20;
export const IPV4_MAX_TOTAL_LEN = 0xffff;
/** The minimum MTU every IPv4 link must carry (RFC 791: "every internet module must be able to forward a datagram of 68 octets"). */
export const IPV4_MIN_MTU = 68;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

const FLAG_DF = 0x4000;
const FLAG_MF = 0x2000;
const OFFSET_MASK = 0x1fff;

export interface Ipv4Repr {
  src: IPv4;
  dst: IPv4;
  protocol: number;
  ttl: number;
  tos: number;
  id: number;
  dontFragment: boolean;
  moreFragments: boolean;
  /** Fragment offset in bytes (the wire field times 8). */
  fragmentOffset: number;
  /** Header length in bytes, options included (IHL * 4). */
  headerLength: number;
  /** View of exactly totalLength - headerLength bytes: trailing Ethernet padding is trimmed. */
  payload: Uint8Array;
}

/**
 * Parses and validates an IPv4 packet (the Ethernet payload). Checks, in the
 * order a receiver must (RFC 1122 §3.2.1.1, §3.2.1.2): length, version, header
 * length, total length against the bytes received, header checksum.
 */
export function parseIpv4(packet: Uint8Array): Ipv4Repr | ParseError {
  if (packet.length < IPV4_HEADER_LEN) return ParseError.of('ipv4:truncated');
  const vihl = packet[0]!;
  if (vihl >>> 4 !== 4) return ParseError.of('ipv4:bad-version');
  const headerLength = (vihl & 0x0f) * 4;
  if (headerLength < IPV4_HEADER_LEN) return ParseError.of('ipv4:bad-header-length');
  if (headerLength > packet.length) return ParseError.of('ipv4:truncated');
  const totalLength = (packet[2]! << 8) | packet[3]!;
  // Shorter than its own header, or claiming bytes that did not arrive.
  if (totalLength < headerLength || totalLength > packet.length) return ParseError.of('ipv4:bad-total-length');
  // A correct header sums to 0xffff, so the folded complement is zero.
  if (finishChecksum(sumBytes(packet, 0, headerLength)) !== 0) return ParseError.of('ipv4:bad-checksum');
  const flagsFrag = (packet[6]! << 8) | packet[7]!;
  return {
    src: readIPv4(packet, 12),
    dst: readIPv4(packet, 16),
    protocol: packet[9]!,
    ttl: packet[8]!,
    tos: packet[1]!,
    id: (packet[4]! << 8) | packet[5]!,
    dontFragment: (flagsFrag & FLAG_DF) !== 0,
    moreFragments: (flagsFrag & FLAG_MF) !== 0,
    fragmentOffset: (flagsFrag & OFFSET_MASK) * 8,
    headerLength,
    payload: packet.subarray(headerLength, totalLength),
  };
}

/** True if the packet is one piece of a fragmented datagram (RFC 791 §2.3). */
export function isFragment(ip: Ipv4Repr): boolean {
  return ip.moreFragments || ip.fragmentOffset !== 0;
}

export interface Ipv4HeaderFields {
  src: IPv4;
  dst: IPv4;
  protocol: number;
  /** Default 64 (the Linux default, RFC 1700's recommendation). */
  ttl?: number;
  /** Default 0. */
  id?: number;
  /**
   * Default: true for an unfragmented datagram (we do path-MTU-friendly
   * sending, like Linux), false when moreFragments or fragmentOffset is set.
   */
  dontFragment?: boolean;
  moreFragments?: boolean;
  /** In bytes; must be a multiple of 8. Default 0. */
  fragmentOffset?: number;
  tos?: number;
  /** Bytes that follow the header in this packet (this fragment's share). */
  payloadLength: number;
}

/**
 * Writes a 20-byte header (no options) with its checksum at `off`; returns
 * off + 20. Throws RangeError for fields that cannot be encoded: that is a bug
 * in the caller, and a silently wrong header would be worse.
 */
export function emitIpv4Header(buf: Uint8Array, off: number, f: Ipv4HeaderFields): number {
  const totalLength = IPV4_HEADER_LEN + f.payloadLength;
  const fragmentOffset = f.fragmentOffset ?? 0;
  const moreFragments = f.moreFragments ?? false;
  if (!(f.payloadLength >= 0) || totalLength > IPV4_MAX_TOTAL_LEN) {
    throw new RangeError(`ipv4: payload length ${f.payloadLength} does not fit a datagram`);
  }
  if (fragmentOffset % 8 !== 0 || fragmentOffset < 0 || fragmentOffset / 8 > OFFSET_MASK) {
    throw new RangeError(`ipv4: fragment offset ${fragmentOffset} is not a multiple of 8 in range`);
  }
  const dontFragment = f.dontFragment ?? !(moreFragments || fragmentOffset !== 0);
  const id = f.id ?? 0;
  const flagsFrag = (dontFragment ? FLAG_DF : 0) | (moreFragments ? FLAG_MF : 0) | (fragmentOffset / 8);
  buf[off] = 0x45;
  buf[off + 1] = (f.tos ?? 0) & 0xff;
  buf[off + 2] = totalLength >>> 8;
  buf[off + 3] = totalLength & 0xff;
  buf[off + 4] = (id >>> 8) & 0xff;
  buf[off + 5] = id & 0xff;
  buf[off + 6] = flagsFrag >>> 8;
  buf[off + 7] = flagsFrag & 0xff;
  buf[off + 8] = (f.ttl ?? 64) & 0xff;
  buf[off + 9] = f.protocol & 0xff;
  buf[off + 10] = 0;
  buf[off + 11] = 0;
  writeIPv4(buf, off + 12, f.src);
  writeIPv4(buf, off + 16, f.dst);
  const sum = finishChecksum(sumBytes(buf, off, IPV4_HEADER_LEN));
  buf[off + 10] = sum >>> 8;
  buf[off + 11] = sum & 0xff;
  return off + IPV4_HEADER_LEN;
}

/** One fragment of a plan: `length` payload bytes starting at byte `offset` of the datagram's payload. */
export interface FragmentSpec {
  offset: number;
  length: number;
  /** The MF flag: true on every fragment except the last. */
  more: boolean;
}

/**
 * How to cut an IP payload of `payloadLength` bytes into fragments for a link
 * whose MTU (largest IP packet, header included) is `mtu`, each fragment
 * carrying a 20-byte header without options (RFC 791 §3.2, "Fragmentation").
 *
 * Every fragment but the last carries the largest multiple of 8 bytes that
 * fits, because fragment offsets count 8-byte units. A payload that fits needs
 * one "fragment" (offset 0, more = false): send it as a plain datagram.
 * The caller writes each piece with emitIpv4Header({ ..., id: same for all,
 * fragmentOffset: offset, moreFragments: more, payloadLength: length }).
 * Note for UDP: the UDP checksum covers the whole datagram, so compute it
 * over the full payload first (udp.ts emitUdpHeader) and then cut.
 *
 * Throws RangeError if `mtu` < 68 or the payload cannot fit a datagram.
 */
export function fragmentPlan(payloadLength: number, mtu: number): FragmentSpec[] {
  if (!(mtu >= IPV4_MIN_MTU)) throw new RangeError(`ipv4: MTU ${mtu} below the IPv4 minimum of 68`);
  if (!(payloadLength >= 0) || payloadLength + IPV4_HEADER_LEN > IPV4_MAX_TOTAL_LEN) {
    throw new RangeError(`ipv4: payload length ${payloadLength} does not fit a datagram`);
  }
  const room = Math.min(mtu, IPV4_MAX_TOTAL_LEN) - IPV4_HEADER_LEN;
  if (payloadLength <= room) return [{ offset: 0, length: payloadLength, more: false }];
  const step = room & ~7;
  const plan: FragmentSpec[] = [];
  for (let offset = 0; offset < payloadLength; offset += step) {
    const length = Math.min(step, payloadLength - offset);
    plan.push({ offset, length, more: offset + length < payloadLength });
  }
  return plan;
}
