/**
 * Builders for IPv6 frames a guest would send (the IPv6 side of frames.ts):
 * raw packets with any extension headers, ICMPv6 (NDP included), UDP, TCP,
 * fragments. Checksums are computed over the pseudo-header of the packet's
 * own addresses.
 */
import { multicastMac, parseIPv6, isMulticast6, type IPv6, type Mac } from '../../netstack/addr.js';
import { emitEthernetHeader, ETH_HEADER_LEN, ETHERTYPE_IPV6 } from '../../netstack/ethernet.js';
import { emitIcmp6Header } from '../../netstack/icmp6.js';
import { emitFragmentHeader, emitIpv6Header, IPPROTO_FRAGMENT, IPPROTO_ICMPV6, IPV6_HEADER_LEN } from '../../netstack/ipv6.js';
import { emitTcpHeader, tcpHeaderLength, type TcpSegmentFields } from '../../netstack/tcp/header.js';
import { emitUdpHeader, UDP_HEADER_LEN } from '../../netstack/udp.js';
import { GUEST_MAC, GW_MAC } from './frames.js';

export const PREFIX6 = parseIPv6('fd6d:6f61:7400::')!;
export const GW6 = parseIPv6('fd6d:6f61:7400::1')!;
export const HOST6 = parseIPv6('fd6d:6f61:7400::fe')!;
/** fe80:: + EUI-64 of GW_MAC 5a:94:ef:e4:0c:dd */
export const GW_LL = parseIPv6('fe80::5894:efff:fee4:cdd')!;
export const GUEST6 = parseIPv6('fd6d:6f61:7400::2')!;
export const GUEST_LL = parseIPv6('fe80::aa:bbff:fecc:ddee')!;
export const EXTERNAL6 = parseIPv6('2001:db8::9')!;
export const ALL_NODES = parseIPv6('ff02::1')!;
export const ALL_ROUTERS = parseIPv6('ff02::2')!;

export const IPV6_CONFIG = { prefix: PREFIX6, gatewayIp: GW6, hostIp: HOST6, dnsServers: [GW6] };

export interface Packet6 {
  src: IPv6;
  dst: IPv6;
  nextHeader: number;
  hopLimit?: number;
  /** Everything after the fixed header (extension headers + upper layer), checksums already in place. */
  payload: Uint8Array;
  srcMac?: Mac;
  dstMac?: Mac;
}

/** An Ethernet frame around one IPv6 packet. */
export function frame6(p: Packet6): Uint8Array {
  const f = new Uint8Array(ETH_HEADER_LEN + IPV6_HEADER_LEN + p.payload.length);
  const dstMac = p.dstMac ?? (isMulticast6(p.dst) ? multicastMac(p.dst) : GW_MAC);
  emitEthernetHeader(f, 0, dstMac, p.srcMac ?? GUEST_MAC, ETHERTYPE_IPV6);
  emitIpv6Header(f, ETH_HEADER_LEN, { src: p.src, dst: p.dst, nextHeader: p.nextHeader, hopLimit: p.hopLimit ?? 64, payloadLength: p.payload.length });
  f.set(p.payload, ETH_HEADER_LEN + IPV6_HEADER_LEN);
  return f;
}

/** ICMPv6 message bytes (header + body) with the checksum for src -> dst. */
export function icmp6(src: IPv6, dst: IPv6, type: number, code: number, rest: number, body: Uint8Array | number[]): Uint8Array {
  const b = new Uint8Array(8 + body.length);
  b.set(body, 8);
  emitIcmp6Header(b, 0, src, dst, type, code, rest, body.length);
  return b;
}

export function icmp6Frame(src: IPv6, dst: IPv6, type: number, code: number, rest: number, body: Uint8Array | number[], extra: Partial<Packet6> = {}): Uint8Array {
  return frame6({ src, dst, nextHeader: IPPROTO_ICMPV6, payload: icmp6(src, dst, type, code, rest, body), ...extra });
}

export function udp6(src: IPv6, srcPort: number, dst: IPv6, dstPort: number, payload: Uint8Array): Uint8Array {
  const b = new Uint8Array(UDP_HEADER_LEN + payload.length);
  b.set(payload, UDP_HEADER_LEN);
  emitUdpHeader(b, 0, src, dst, srcPort, dstPort, payload.length);
  return b;
}

export function udp6Frame(src: IPv6, srcPort: number, dst: IPv6, dstPort: number, payload: Uint8Array, extra: Partial<Packet6> = {}): Uint8Array {
  return frame6({ src, dst, nextHeader: 17, payload: udp6(src, srcPort, dst, dstPort, payload), ...extra });
}

export function tcp6Frame(src: IPv6, dst: IPv6, seg: TcpSegmentFields, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const hl = tcpHeaderLength(seg);
  const b = new Uint8Array(hl + payload.length);
  b.set(payload, hl);
  emitTcpHeader(b, 0, seg, src, dst, payload.length);
  return frame6({ src, dst, nextHeader: 6, payload: b });
}

/** The fragments of `upper` (an upper-layer message of protocol `nextHeader`), cut at `pieceLength` (a multiple of 8). */
export function fragments6(src: IPv6, dst: IPv6, nextHeader: number, upper: Uint8Array, pieceLength: number, id: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let off = 0; off < upper.length; off += pieceLength) {
    const piece = upper.subarray(off, Math.min(upper.length, off + pieceLength));
    out.push(fragment6(src, dst, nextHeader, off, off + piece.length < upper.length, id, piece));
  }
  return out;
}

export function fragment6(src: IPv6, dst: IPv6, nextHeader: number, offset: number, more: boolean, id: number, data: Uint8Array): Uint8Array {
  const payload = new Uint8Array(8 + data.length);
  emitFragmentHeader(payload, 0, nextHeader, offset, more, id);
  payload.set(data, 8);
  return frame6({ src, dst, nextHeader: IPPROTO_FRAGMENT, payload });
}
