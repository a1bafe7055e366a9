/**
 * ARP for IPv4 over Ethernet (RFC 826). Only that one combination exists on
 * our link, so anything else is rejected rather than half-understood.
 */
import { readIPv4, readMac, writeIPv4, writeMac, type IPv4, type Mac } from './addr.js';
import { ParseError } from './errors.js';

export const ARP_LEN = 28;
export const ARP_REQUEST = 1;
export const ARP_REPLY = 2;
const HTYPE_ETHERNET = 1;
const PTYPE_IPV4 = 0x0800;

export interface ArpRepr {
  op: number;
  senderMac: Mac;
  senderIp: IPv4;
  targetMac: Mac;
  targetIp: IPv4;
}

/**
 * Parses an ARP packet (the Ethernet payload). Bytes beyond 28 are Ethernet
 * padding (minimum frame size) and are ignored.
 */
export function parseArp(packet: Uint8Array): ArpRepr | ParseError {
  if (packet.length < ARP_LEN) return ParseError.of('arp:truncated');
  const htype = (packet[0]! << 8) | packet[1]!;
  const ptype = (packet[2]! << 8) | packet[3]!;
  if (htype !== HTYPE_ETHERNET) return ParseError.of('arp:bad-hardware-type');
  if (ptype !== PTYPE_IPV4) return ParseError.of('arp:bad-protocol-type');
  if (packet[4] !== 6 || packet[5] !== 4) return ParseError.of('arp:bad-address-length');
  const op = (packet[6]! << 8) | packet[7]!;
  // RFC 826 defines request and reply; RARP/InARP opcodes are not ours to answer.
  if (op !== ARP_REQUEST && op !== ARP_REPLY) return ParseError.of('arp:bad-operation');
  return {
    op,
    senderMac: readMac(packet, 8),
    senderIp: readIPv4(packet, 14),
    targetMac: readMac(packet, 18),
    targetIp: readIPv4(packet, 24),
  };
}

/** Writes a 28-byte Ethernet/IPv4 ARP packet at `off`; returns off + 28. */
export function emitArp(buf: Uint8Array, off: number, repr: ArpRepr): number {
  buf[off] = 0;
  buf[off + 1] = HTYPE_ETHERNET;
  buf[off + 2] = PTYPE_IPV4 >>> 8;
  buf[off + 3] = PTYPE_IPV4 & 0xff;
  buf[off + 4] = 6;
  buf[off + 5] = 4;
  buf[off + 6] = (repr.op >>> 8) & 0xff;
  buf[off + 7] = repr.op & 0xff;
  writeMac(buf, off + 8, repr.senderMac);
  writeIPv4(buf, off + 14, repr.senderIp);
  writeMac(buf, off + 18, repr.targetMac);
  writeIPv4(buf, off + 24, repr.targetIp);
  return off + ARP_LEN;
}
