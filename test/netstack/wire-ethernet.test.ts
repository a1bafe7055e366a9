import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  parseEthernet, emitEthernetHeader, ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_IPV6,
} from '../../netstack/ethernet.js';
import { ParseError } from '../../netstack/errors.js';
import { parseMac } from '../../netstack/addr.js';
import { reasonOf } from '../support/wire-helpers.js';

const mac = fc.integer({ min: 0, max: 2 ** 48 - 1 });
const etherType = fc.integer({ min: 0x0600, max: 0xffff }).filter((t) => t !== 0x8100 && t !== 0x88a8);

describe('Ethernet II', () => {
  it('emit then parse gives back every field, and the payload is a view', () => {
    fc.assert(fc.property(mac, mac, etherType, fc.uint8Array({ maxLength: 100 }), (dst, src, type, payload) => {
      const frame = new Uint8Array(ETH_HEADER_LEN + payload.length);
      expect(emitEthernetHeader(frame, 0, dst, src, type)).toBe(ETH_HEADER_LEN);
      frame.set(payload, ETH_HEADER_LEN);
      const r = parseEthernet(frame);
      if (r instanceof ParseError) throw new Error(r.reason);
      expect(r.dst).toBe(dst);
      expect(r.src).toBe(src);
      expect(r.etherType).toBe(type);
      expect([...r.payload]).toEqual([...payload]);
      expect(r.payload.buffer).toBe(frame.buffer);
    }));
  });

  it('writes the header at an offset with the exact byte layout', () => {
    const buf = new Uint8Array(20).fill(0xee);
    const end = emitEthernetHeader(buf, 3, parseMac('ff:ff:ff:ff:ff:ff')!, parseMac('02:00:00:99:00:01')!, ETHERTYPE_ARP);
    expect(end).toBe(17);
    expect([...buf]).toEqual([
      0xee, 0xee, 0xee,
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x99, 0x00, 0x01, 0x08, 0x06,
      0xee, 0xee, 0xee,
    ]);
  });

  it('rejects every frame shorter than 14 bytes as eth:truncated', () => {
    const full = new Uint8Array(ETH_HEADER_LEN);
    emitEthernetHeader(full, 0, 1, 2, ETHERTYPE_IPV4);
    for (let len = 0; len < ETH_HEADER_LEN; len++) {
      expect(reasonOf(parseEthernet(full.subarray(0, len)))).toBe('eth:truncated');
    }
    expect(reasonOf(parseEthernet(full))).toBeUndefined();
  });

  it('accepts a header-only frame with an empty payload', () => {
    const frame = new Uint8Array(ETH_HEADER_LEN);
    emitEthernetHeader(frame, 0, 1, 2, ETHERTYPE_IPV6);
    const r = parseEthernet(frame);
    expect(r instanceof ParseError ? r.reason : r.payload.length).toBe(0);
  });

  it('refuses 802.1Q and 802.1ad tagged frames', () => {
    for (const tpid of [0x8100, 0x88a8]) {
      const frame = new Uint8Array(64);
      emitEthernetHeader(frame, 0, 1, 2, tpid);
      expect(reasonOf(parseEthernet(frame))).toBe('eth:vlan-unsupported');
    }
  });

  it('refuses 802.3 length-field frames (type < 0x0600), e.g. STP', () => {
    for (const len of [0, 0x26, 0x05dc, 0x05ff]) {
      const frame = new Uint8Array(64);
      emitEthernetHeader(frame, 0, 1, 2, len);
      expect(reasonOf(parseEthernet(frame))).toBe('eth:not-ethernet-ii');
    }
  });

  it('never throws on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const r = parseEthernet(bytes);
      expect(r instanceof ParseError || r.payload.length === bytes.length - ETH_HEADER_LEN).toBe(true);
    }));
  });
});
