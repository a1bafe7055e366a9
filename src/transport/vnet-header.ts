/**
 * The virtio-net header a TAP opened with IFF_VNET_HDR puts before every frame
 * it hands us (include/uapi/linux/virtio_net.h, 10 bytes, little-endian):
 *
 *   u8 flags (NEEDS_CSUM 1, DATA_VALID 2)   u8 gso_type (NONE 0, TCPV4 1, ..., ECN 0x80)
 *   u16 hdr_len   u16 gso_size   u16 csum_start   u16 csum_offset
 *
 * With receive offload (moat-shim --offload: TUNSETOFFLOAD checksum + TSO4)
 * the guest's kernel leaves its TCP unsegmented (GSO TCPV4, up to 64 KiB)
 * and its TCP and UDP checksums unfinished, over IPv4 and IPv6 alike (NEEDS_CSUM: the checksum field
 * holds only the pseudo-header sum, to be completed over csum_start..end).
 *
 * The guest writes these headers (a root user in the guest can inject frames
 * with crafted ones), so nothing in them is believed beyond what is checked
 * here against the frame itself. What passes becomes a mark for the stack
 * (netstack's RX_L4_CHECKSUM_OK / RX_GSO_TCP); everything else is a drop
 * reason, counted by the link. The mark only ever saves work (a checksum
 * pass, the MTU limit for a TCP segment); the stack still parses and bounds
 * every byte.
 */
import { RX_GSO_TCP, RX_L4_CHECKSUM_OK } from '../../netstack/index.js';

/** struct virtio_net_hdr without num_buffers (the TAP's default TUNSETVNETHDRSZ). */
export const VNET_HDR_BYTES = 10;

const F_NEEDS_CSUM = 1;
const F_DATA_VALID = 2;
const GSO_NONE = 0;
const GSO_TCPV4 = 1;
const GSO_ECN = 0x80;

const ETH_HEADER = 14;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
/** Where the checksum field sits inside each L4 header. */
const TCP_CHECKSUM_AT = 16;
const UDP_CHECKSUM_AT = 6;
/** Linux's floor on an MSS (tcp_min_snd_mss); a smaller gso_size is no segment size its TCP uses. */
const MIN_GSO_SIZE = 48;
/** The largest IPv4 packet: a GSO frame is one IPv4 packet, total length and all. */
const MAX_IPV4_PACKET = 65535;

/** Why a frame with a virtio-net header was dropped (the link counts each by name). */
export type VnetDropReason =
  | 'vnet:offload-not-enabled'
  | 'vnet:bad-flags'
  | 'vnet:gso-unsupported'
  | 'vnet:gso-not-ipv4-tcp'
  | 'vnet:bad-gso-size'
  | 'vnet:bad-hdr-len'
  | 'vnet:gso-without-csum'
  | 'vnet:gso-too-large'
  | 'vnet:bad-csum-offsets';

export const VNET_DROP_REASONS: readonly VnetDropReason[] = [
  'vnet:offload-not-enabled',
  'vnet:bad-flags',
  'vnet:gso-unsupported',
  'vnet:gso-not-ipv4-tcp',
  'vnet:bad-gso-size',
  'vnet:bad-hdr-len',
  'vnet:gso-without-csum',
  'vnet:gso-too-large',
  'vnet:bad-csum-offsets',
];

function u16le(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

/** The IPv4 facts the checks need, or undefined when the frame is no unfragmented IPv4 packet with a whole L4 header. */
interface L4Place {
  protocol: number;
  /** Offset of the L4 header in the frame. */
  l4: number;
  /** End of the IPv4 packet in the frame (by its total length). */
  end: number;
  /** Ethernet + IPv4 + L4 header bytes (TCP: with options). */
  headers: number;
  /** An IPv6 packet (its checksum may be left to us; it is never GSO: the TAP is offered TSO4 only). */
  ipv6: boolean;
}

function l4Place(frame: Uint8Array): L4Place | undefined {
  if (frame.length >= ETH_HEADER + 40 && frame[12] === 0x86 && frame[13] === 0xdd) return l4Place6(frame);
  if (frame.length < ETH_HEADER + 20) return undefined;
  if (frame[12] !== 0x08 || frame[13] !== 0x00) return undefined; // IPv4 or IPv6 only
  const vihl = frame[ETH_HEADER]!;
  if (vihl >> 4 !== 4) return undefined;
  const ihl = (vihl & 0x0f) * 4;
  if (ihl < 20) return undefined;
  const total = (frame[ETH_HEADER + 2]! << 8) | frame[ETH_HEADER + 3]!;
  const end = ETH_HEADER + total;
  if (total < ihl || end > frame.length) return undefined;
  const fragment = ((frame[ETH_HEADER + 6]! & 0x3f) << 8) | frame[ETH_HEADER + 7]!; // MF + offset
  if (fragment !== 0) return undefined;
  const protocol = frame[ETH_HEADER + 9]!;
  const l4 = ETH_HEADER + ihl;
  let l4Header: number;
  if (protocol === IPPROTO_TCP) {
    if (l4 + 20 > end) return undefined;
    l4Header = (frame[l4 + 12]! >> 4) * 4;
    if (l4Header < 20) return undefined;
  } else if (protocol === IPPROTO_UDP) {
    l4Header = 8;
  } else {
    return { protocol, l4, end, headers: l4, ipv6: false };
  }
  if (l4 + l4Header > end) return undefined;
  return { protocol, l4, end, headers: l4 + l4Header, ipv6: false };
}

/**
 * An IPv6 packet whose TCP or UDP header follows the fixed header directly
 * (what the guest's kernel sends; a checksum behind extension headers is not
 * believed: its place would have to be found by walking them).
 */
function l4Place6(frame: Uint8Array): L4Place | undefined {
  if (frame[ETH_HEADER]! >> 4 !== 6) return undefined;
  const end = ETH_HEADER + 40 + ((frame[ETH_HEADER + 4]! << 8) | frame[ETH_HEADER + 5]!);
  if (end > frame.length) return undefined;
  const protocol = frame[ETH_HEADER + 6]!;
  const l4 = ETH_HEADER + 40;
  const l4Header = protocol === IPPROTO_TCP ? (l4 + 20 <= end ? (frame[l4 + 12]! >> 4) * 4 : 0) : protocol === IPPROTO_UDP ? 8 : -1;
  if (l4Header < 0) return { protocol, l4, end, headers: l4, ipv6: true };
  if (l4Header < 8 || l4 + l4Header > end) return undefined;
  return { protocol, l4, end, headers: l4 + l4Header, ipv6: true };
}

/**
 * Checks the virtio-net header at hdr[at..at+10) against `frame` (the bytes
 * after it). Returns the stack's mark for the frame (0: nothing vouched for,
 * the stack checks everything itself) or why it must be dropped.
 *
 * offload: the TAP was given TUNSETOFFLOAD (moat serve --tap-offload). Without
 * it the kernel finishes every checksum and segments every packet, so a GSO
 * or NEEDS_CSUM header is one nobody asked for (dropped), and a DATA_VALID
 * is ignored: the stack checks the checksum as on any wire.
 *
 * mtu: the link MTU; a GSO segment size above MTU - 40 is no segment the
 * guest's TCP can be sending us (our MSS option bounds it).
 */
export function readVnetHeader(hdr: Uint8Array, at: number, frame: Uint8Array, offload: boolean, mtu: number): number | VnetDropReason {
  const flags = hdr[at]!;
  const gsoType = hdr[at + 1]!;
  const gsoSize = u16le(hdr, at + 4);
  if (flags === 0 && gsoType === GSO_NONE && gsoSize === 0) return 0;
  if ((flags & ~(F_NEEDS_CSUM | F_DATA_VALID)) !== 0 || flags === (F_NEEDS_CSUM | F_DATA_VALID)) return 'vnet:bad-flags';
  if (!offload) {
    if (flags === F_DATA_VALID && gsoType === GSO_NONE && gsoSize === 0) return 0; // not asked for: not believed
    return gsoType === GSO_NONE && flags !== F_NEEDS_CSUM ? 'vnet:bad-gso-size' : 'vnet:offload-not-enabled';
  }
  const hdrLen = u16le(hdr, at + 2);
  let mark = 0;
  const place = l4Place(frame);
  if (gsoType !== GSO_NONE) {
    if ((gsoType & ~GSO_ECN) !== GSO_TCPV4) return 'vnet:gso-unsupported';
    if (place === undefined || place.protocol !== IPPROTO_TCP || place.ipv6) return 'vnet:gso-not-ipv4-tcp';
    if (gsoSize < MIN_GSO_SIZE || gsoSize > mtu - 40) return 'vnet:bad-gso-size';
    // hdr_len is a hint (Linux puts the linear part's length there): it must at least cover the headers and stay inside the frame.
    if (hdrLen < place.headers || hdrLen > frame.length) return 'vnet:bad-hdr-len';
    if ((flags & F_NEEDS_CSUM) === 0) return 'vnet:gso-without-csum';
    if (place.end - ETH_HEADER > MAX_IPV4_PACKET) return 'vnet:gso-too-large';
    mark |= RX_GSO_TCP;
  } else if (gsoSize !== 0) {
    return 'vnet:bad-gso-size';
  }
  if (flags & F_NEEDS_CSUM) {
    // The checksum to complete must be exactly the TCP or UDP checksum of this packet: anything else would let the mark vouch for bytes it does not cover.
    const start = u16le(hdr, at + 6);
    const offset = u16le(hdr, at + 8);
    if (place === undefined || start !== place.l4) return 'vnet:bad-csum-offsets';
    const want = place.protocol === IPPROTO_TCP ? TCP_CHECKSUM_AT : place.protocol === IPPROTO_UDP ? UDP_CHECKSUM_AT : -1;
    if (offset !== want || start + offset + 2 > place.end) return 'vnet:bad-csum-offsets';
    mark |= RX_L4_CHECKSUM_OK;
  } else if (flags & F_DATA_VALID) {
    // The kernel checked this one (CHECKSUM_UNNECESSARY); we asked for offloads, so we take its word for TCP/UDP of an unfragmented packet only.
    if (place !== undefined && (place.protocol === IPPROTO_TCP || place.protocol === IPPROTO_UDP)) mark |= RX_L4_CHECKSUM_OK;
    // (An IPv6 packet's place is only found right after the fixed header: the mark speaks for exactly that TCP/UDP header.)
  }
  return mark;
}
