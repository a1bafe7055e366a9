import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseArp, emitArp, ARP_LEN, ARP_REQUEST, ARP_REPLY, type ArpRepr } from '../../netstack/arp.js';
import { ParseError } from '../../netstack/errors.js';
import { ipv4, parseMac } from '../../netstack/addr.js';
import { reasonOf } from '../support/wire-helpers.js';

const arpRepr: fc.Arbitrary<ArpRepr> = fc.record({
  op: fc.constantFrom(ARP_REQUEST, ARP_REPLY),
  senderMac: fc.integer({ min: 0, max: 2 ** 48 - 1 }),
  senderIp: fc.integer({ min: 0, max: 0xffffffff }),
  targetMac: fc.integer({ min: 0, max: 2 ** 48 - 1 }),
  targetIp: fc.integer({ min: 0, max: 0xffffffff }),
});

function sample(): Uint8Array {
  const b = new Uint8Array(ARP_LEN);
  emitArp(b, 0, { op: ARP_REQUEST, senderMac: 0x020000990001, senderIp: ipv4(10, 99, 0, 1), targetMac: 0, targetIp: ipv4(10, 99, 0, 2) });
  return b;
}

describe('ARP (RFC 826, Ethernet/IPv4 only)', () => {
  it('emit then parse gives back the same repr', () => {
    fc.assert(fc.property(arpRepr, fc.nat({ max: 16 }), (repr, off) => {
      const buf = new Uint8Array(off + ARP_LEN);
      expect(emitArp(buf, off, repr)).toBe(off + ARP_LEN);
      expect(parseArp(buf.subarray(off))).toEqual(repr);
    }));
  });

  it('emits the RFC 826 layout byte for byte', () => {
    const b = new Uint8Array(ARP_LEN);
    emitArp(b, 0, {
      op: ARP_REPLY, senderMac: parseMac('02:00:00:99:00:02')!, senderIp: ipv4(10, 99, 0, 2),
      targetMac: parseMac('02:00:00:99:00:01')!, targetIp: ipv4(10, 99, 0, 1),
    });
    expect([...b]).toEqual([
      0, 1, 8, 0, 6, 4, 0, 2,
      2, 0, 0, 0x99, 0, 2, 10, 99, 0, 2,
      2, 0, 0, 0x99, 0, 1, 10, 99, 0, 1,
    ]);
  });

  it('rejects every truncation as arp:truncated, accepts Ethernet padding', () => {
    const b = sample();
    for (let len = 0; len < ARP_LEN; len++) expect(reasonOf(parseArp(b.subarray(0, len)))).toBe('arp:truncated');
    const padded = new Uint8Array(46);
    padded.set(b);
    expect(parseArp(padded)).toEqual(parseArp(b));
  });

  it('rejects other hardware types, protocol types, address lengths and opcodes', () => {
    const cases: Array<[number, number, string]> = [
      [1, 6, 'arp:bad-hardware-type'], // htype 6 (IEEE 802)
      [0, 1, 'arp:bad-hardware-type'],
      [2, 0x86, 'arp:bad-protocol-type'], // ptype 0x86dd-ish
      [4, 8, 'arp:bad-address-length'],
      [5, 16, 'arp:bad-address-length'],
      [7, 3, 'arp:bad-operation'], // RARP request
      [7, 0, 'arp:bad-operation'],
      [6, 1, 'arp:bad-operation'], // op 0x0101
    ];
    for (const [index, value, reason] of cases) {
      const b = sample();
      b[index] = value;
      expect(reasonOf(parseArp(b))).toBe(reason);
    }
  });

  it('never throws on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
      const r = parseArp(bytes);
      expect(r instanceof ParseError || bytes.length >= ARP_LEN).toBe(true);
    }));
  });
});
