/**
 * Ethernet II framing (IEEE 802.3 with an EtherType, as every IP host sends).
 *
 * The frame check sequence never reaches us (TAP devices and QEMU strip it),
 * so a frame is: destination MAC, source MAC, EtherType, payload. Size limits
 * (the MTU) are the Stack's business, not the parser's.
 */
import { readMac, writeMac, type Mac } from './addr.js';
import { ParseError } from './errors.js';

export const ETH_HEADER_LEN = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
/** IEEE 802.1Q VLAN tag protocol identifiers (C-tag and S-tag / QinQ). */
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_QINQ = 0x88a8;

export interface EthernetRepr {
  dst: Mac;
  src: Mac;
  etherType: number;
  /** View of the bytes after the header (not a copy); may include padding. */
  payload: Uint8Array;
}

export function parseEthernet(frame: Uint8Array): EthernetRepr | ParseError {
  if (frame.length < ETH_HEADER_LEN) return ParseError.of('eth:truncated');
  const etherType = (frame[12]! << 8) | frame[13]!;
  // A guest on a virtual link has no reason to tag; we do not route VLANs.
  if (etherType === ETHERTYPE_VLAN || etherType === ETHERTYPE_QINQ) {
    return ParseError.of('eth:vlan-unsupported');
  }
  // Values below 0x0600 are an 802.3 length, not an EtherType (IEEE 802.3 §3.2.6):
  // LLC/SNAP frames (STP, ...) that an IP stack ignores.
  if (etherType < 0x0600) return ParseError.of('eth:not-ethernet-ii');
  return {
    dst: readMac(frame, 0),
    src: readMac(frame, 6),
    etherType,
    payload: frame.subarray(ETH_HEADER_LEN),
  };
}

/** Writes the 14-byte header at `off`; returns the offset of the payload. */
export function emitEthernetHeader(buf: Uint8Array, off: number, dst: Mac, src: Mac, etherType: number): number {
  writeMac(buf, off, dst);
  writeMac(buf, off + 6, src);
  buf[off + 12] = (etherType >>> 8) & 0xff;
  buf[off + 13] = etherType & 0xff;
  return off + ETH_HEADER_LEN;
}
