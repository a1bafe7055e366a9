/**
 * Builders for frames a guest would send, for tests that drive a Stack
 * directly. They use the wire modules' emitters, whose own round-trip tests
 * pin them against parsers and real kernel captures.
 */
import { ipv4, type IPv4, type Mac } from '../../netstack/addr.js';
import { ARP_LEN, emitArp } from '../../netstack/arp.js';
import { emitEthernetHeader, ETH_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4 } from '../../netstack/ethernet.js';
import { emitIcmp } from '../../netstack/icmp.js';
import { emitIpv4Header, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_LEN } from '../../netstack/ipv4.js';
import { emitTcpHeader, tcpHeaderLength, type TcpSegmentFields } from '../../netstack/tcp/header.js';
import { emitUdp, UDP_HEADER_LEN } from '../../netstack/udp.js';

export const GW_MAC: Mac = 0x5a94efe40cdd;
export const GW_IP: IPv4 = ipv4(192, 168, 127, 1);
export const GUEST_MAC: Mac = 0x02aabbccddee;
export const GUEST: IPv4 = ipv4(192, 168, 127, 2);
export const HOST_ALIAS: IPv4 = ipv4(192, 168, 127, 254);

export function arpFrame(op: number, senderMac: Mac, senderIp: IPv4, targetIp: IPv4, dstMac: Mac = 0xffffffffffff): Uint8Array {
  const f = new Uint8Array(ETH_HEADER_LEN + ARP_LEN);
  emitEthernetHeader(f, 0, dstMac, senderMac, ETHERTYPE_ARP);
  emitArp(f, ETH_HEADER_LEN, { op, senderMac, senderIp, targetMac: 0, targetIp });
  return f;
}

function ipFrame(src: IPv4, dst: IPv4, protocol: number, l4Length: number, srcMac = GUEST_MAC, dstMac = GW_MAC): Uint8Array {
  const f = new Uint8Array(ETH_HEADER_LEN + IPV4_HEADER_LEN + l4Length);
  emitEthernetHeader(f, 0, dstMac, srcMac, ETHERTYPE_IPV4);
  emitIpv4Header(f, ETH_HEADER_LEN, { src, dst, protocol, payloadLength: l4Length, id: 1 });
  return f;
}

export function udpFrame(src: IPv4, srcPort: number, dst: IPv4, dstPort: number, payload: Uint8Array, dstMac = GW_MAC): Uint8Array {
  const f = ipFrame(src, dst, IPPROTO_UDP, UDP_HEADER_LEN + payload.length, GUEST_MAC, dstMac);
  emitUdp(f, ETH_HEADER_LEN + IPV4_HEADER_LEN, src, dst, srcPort, dstPort, payload);
  return f;
}

export function icmpFrame(src: IPv4, dst: IPv4, type: number, rest: number, payload: Uint8Array): Uint8Array {
  const f = ipFrame(src, dst, IPPROTO_ICMP, 8 + payload.length);
  emitIcmp(f, ETH_HEADER_LEN + IPV4_HEADER_LEN, type, 0, rest, payload);
  return f;
}

export function tcpFrame(src: IPv4, dst: IPv4, seg: TcpSegmentFields, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const hl = tcpHeaderLength(seg);
  const f = ipFrame(src, dst, IPPROTO_TCP, hl + payload.length);
  const off = ETH_HEADER_LEN + IPV4_HEADER_LEN;
  f.set(payload, off + hl);
  emitTcpHeader(f, off, seg, src, dst, payload.length);
  return f;
}
