import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  parseIpv4, emitIpv4Header, fragmentPlan, isFragment, IPV4_HEADER_LEN, IPPROTO_UDP, IPPROTO_ICMP,
  type Ipv4HeaderFields,
} from '../../netstack/ipv4.js';
import { ParseError } from '../../netstack/errors.js';
import { ipv4 } from '../../netstack/addr.js';
import { naiveChecksum, reasonOf } from '../support/wire-helpers.js';

function packet(fields: Ipv4HeaderFields, payload: Uint8Array): Uint8Array {
  const b = new Uint8Array(IPV4_HEADER_LEN + payload.length);
  emitIpv4Header(b, 0, { ...fields, payloadLength: payload.length });
  b.set(payload, IPV4_HEADER_LEN);
  return b;
}

/** A header with `optionBytes` of options (IHL > 5), checksum made by the naive reference. */
function packetWithOptions(optionBytes: number[], payload: Uint8Array): Uint8Array {
  const hl = IPV4_HEADER_LEN + optionBytes.length;
  const b = new Uint8Array(hl + payload.length);
  b[0] = 0x40 | (hl / 4);
  b[2] = b.length >> 8; b[3] = b.length & 0xff;
  b[8] = 64; b[9] = IPPROTO_UDP;
  b.set([10, 0, 0, 1, 10, 0, 0, 2], 12);
  b.set(optionBytes, IPV4_HEADER_LEN);
  const c = naiveChecksum(b.subarray(0, hl));
  b[10] = c >> 8; b[11] = c & 0xff;
  b.set(payload, hl);
  return b;
}

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const fieldsArb = fc.record({
  src: u32, dst: u32, protocol: fc.integer({ min: 0, max: 255 }),
  ttl: fc.integer({ min: 0, max: 255 }), id: fc.integer({ min: 0, max: 0xffff }),
  tos: fc.integer({ min: 0, max: 255 }), dontFragment: fc.boolean(), moreFragments: fc.boolean(),
  fragmentOffset: fc.integer({ min: 0, max: 0x1fff }).map((n) => n * 8),
});

describe('IPv4 header (RFC 791)', () => {
  it('emit then parse gives back every field; payload is an exact view', () => {
    fc.assert(fc.property(fieldsArb, fc.uint8Array({ maxLength: 200 }), fc.nat({ max: 40 }), (f, payload, padding) => {
      const p = packet({ ...f, payloadLength: 0 }, payload);
      // Trailing bytes (Ethernet padding) must not reach the payload.
      const withPad = new Uint8Array(p.length + padding);
      withPad.set(p);
      const r = parseIpv4(withPad);
      if (r instanceof ParseError) throw new Error(r.reason);
      expect({ ...r, payload: undefined }).toEqual({ ...f, headerLength: 20, payload: undefined });
      expect([...r.payload]).toEqual([...payload]);
      expect(r.payload.buffer).toBe(withPad.buffer);
      expect(naiveChecksum(p.subarray(0, 20))).toBe(0);
    }));
  });

  it('emits the RFC 791 layout with defaults (ttl 64, DF, id 0, tos 0)', () => {
    const b = new Uint8Array(22).fill(0xee);
    expect(emitIpv4Header(b, 2, { src: ipv4(10, 99, 0, 1), dst: ipv4(10, 99, 0, 2), protocol: IPPROTO_ICMP, payloadLength: 64 })).toBe(22);
    const expected = [0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2];
    const c = naiveChecksum(new Uint8Array(expected));
    expected[10] = c >> 8; expected[11] = c & 0xff;
    expect([...b.subarray(2)]).toEqual(expected);
    expect([...b.subarray(0, 2)]).toEqual([0xee, 0xee]);
  });

  it('defaults DF off for fragments, and isFragment tells them apart', () => {
    const base = { src: 1, dst: 2, protocol: IPPROTO_UDP, payloadLength: 8 };
    const cases: Array<[Partial<Ipv4HeaderFields>, boolean, boolean]> = [
      [{}, true, false],
      [{ moreFragments: true }, false, true],
      [{ fragmentOffset: 1480 }, false, true],
      [{ moreFragments: true, dontFragment: true }, true, true],
    ];
    for (const [extra, df, frag] of cases) {
      const r = parseIpv4(packet({ ...base, ...extra }, new Uint8Array(8)));
      if (r instanceof ParseError) throw new Error(r.reason);
      expect(r.dontFragment).toBe(df);
      expect(isFragment(r)).toBe(frag);
    }
  });

  it('honours the header length: options are skipped and covered by the checksum', () => {
    const options = [1, 1, 1, 0, 0x94, 4, 0, 0]; // NOP NOP NOP EOL, Router Alert (RFC 2113)
    const p = packetWithOptions(options, new Uint8Array([9, 8, 7]));
    const r = parseIpv4(p);
    if (r instanceof ParseError) throw new Error(r.reason);
    expect(r.headerLength).toBe(28);
    expect([...r.payload]).toEqual([9, 8, 7]);
    p[IPV4_HEADER_LEN + 5] ^= 1; // corrupt an option byte
    expect(reasonOf(parseIpv4(p))).toBe('ipv4:bad-checksum');
  });

  it('accepts the largest header (IHL 15, 40 option bytes)', () => {
    const r = parseIpv4(packetWithOptions(new Array(40).fill(1), new Uint8Array(1)));
    expect(r instanceof ParseError ? r.reason : r.headerLength).toBe(60);
  });

  it('rejects every truncation with the right reason', () => {
    const plain = packet({ src: 1, dst: 2, protocol: 17, payloadLength: 0 }, new Uint8Array(30));
    for (let len = 0; len < plain.length; len++) {
      expect(reasonOf(parseIpv4(plain.subarray(0, len)))).toBe(len < 20 ? 'ipv4:truncated' : 'ipv4:bad-total-length');
    }
    const withOptions = packetWithOptions(new Array(12).fill(1), new Uint8Array(4));
    for (let len = 0; len < withOptions.length; len++) {
      const expected = len < 32 ? 'ipv4:truncated' : 'ipv4:bad-total-length';
      expect(reasonOf(parseIpv4(withOptions.subarray(0, len)))).toBe(expected);
    }
  });

  it('rejects a wrong version and header lengths below 20', () => {
    const p = packet({ src: 1, dst: 2, protocol: 17, payloadLength: 0 }, new Uint8Array(40));
    for (const version of [0, 5, 6, 15]) {
      const q = p.slice(); q[0] = (version << 4) | 5;
      expect(reasonOf(parseIpv4(q))).toBe('ipv4:bad-version');
    }
    for (let ihl = 0; ihl < 5; ihl++) {
      const q = p.slice(); q[0] = 0x40 | ihl;
      expect(reasonOf(parseIpv4(q))).toBe('ipv4:bad-header-length');
    }
  });

  it('rejects total lengths below the header or beyond the bytes received', () => {
    const p = packet({ src: 1, dst: 2, protocol: 17, payloadLength: 0 }, new Uint8Array(10));
    for (const total of [0, 1, 19, 31, 0xffff]) {
      const q = p.slice(); q[2] = total >> 8; q[3] = total & 0xff;
      expect(reasonOf(parseIpv4(q))).toBe('ipv4:bad-total-length');
    }
  });

  it('rejects any single bit flipped in the header', () => {
    const p = packet({ src: ipv4(192, 168, 127, 2), dst: ipv4(1, 1, 1, 1), protocol: 6, id: 0x1234, payloadLength: 0 }, new Uint8Array(16));
    fc.assert(fc.property(fc.integer({ min: 0, max: 159 }), (bit) => {
      const q = p.slice();
      q[bit >> 3] ^= 0x80 >> (bit & 7);
      const r = parseIpv4(q);
      expect(r).toBeInstanceOf(ParseError);
      // Fields with their own check fail that check first; every other bit is the checksum's catch.
      const byte = bit >> 3;
      if (byte !== 0 && byte !== 2 && byte !== 3) expect(reasonOf(r)).toBe('ipv4:bad-checksum');
    }), { numRuns: 400 });
  });

  it('refuses to emit a header that cannot be encoded', () => {
    const b = new Uint8Array(20);
    expect(() => emitIpv4Header(b, 0, { src: 1, dst: 2, protocol: 17, payloadLength: 65516 })).toThrow(RangeError);
    expect(() => emitIpv4Header(b, 0, { src: 1, dst: 2, protocol: 17, payloadLength: -1 })).toThrow(RangeError);
    expect(() => emitIpv4Header(b, 0, { src: 1, dst: 2, protocol: 17, payloadLength: 8, fragmentOffset: 12 })).toThrow(RangeError);
    expect(() => emitIpv4Header(b, 0, { src: 1, dst: 2, protocol: 17, payloadLength: 8, fragmentOffset: 65536 })).toThrow(RangeError);
    expect(emitIpv4Header(b, 0, { src: 1, dst: 2, protocol: 17, payloadLength: 65515 })).toBe(20);
  });

  it('never throws on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), (bytes) => {
      if ((bytes.length > 0)) bytes[0] = 0x40 | (bytes[0]! & 0x0f); // mostly reach past the version check
      const r = parseIpv4(bytes);
      expect(r instanceof ParseError || r.headerLength >= 20).toBe(true);
    }));
  });
});

describe('fragmentPlan (RFC 791 §3.2)', () => {
  it('cuts 3008 bytes at MTU 1500 as Linux does: 1480 + 1480 + 48', () => {
    expect(fragmentPlan(3008, 1500)).toEqual([
      { offset: 0, length: 1480, more: true },
      { offset: 1480, length: 1480, more: true },
      { offset: 2960, length: 48, more: false },
    ]);
  });

  it('returns one unfragmented piece when the payload fits', () => {
    expect(fragmentPlan(1480, 1500)).toEqual([{ offset: 0, length: 1480, more: false }]);
    expect(fragmentPlan(0, 1500)).toEqual([{ offset: 0, length: 0, more: false }]);
  });

  it('covers the payload exactly with 8-aligned pieces that fit the MTU', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 65515 }), fc.integer({ min: 68, max: 70000 }), (len, mtu) => {
      const plan = fragmentPlan(len, mtu);
      let next = 0;
      plan.forEach((piece, i) => {
        expect(piece.offset).toBe(next);
        expect(piece.offset % 8).toBe(0);
        expect(piece.length + IPV4_HEADER_LEN).toBeLessThanOrEqual(Math.min(mtu, 65535));
        expect(piece.more).toBe(i < plan.length - 1);
        if (piece.more) expect(piece.length % 8).toBe(0);
        next += piece.length;
      });
      expect(next).toBe(len);
      // Largest pieces first: no plan uses more fragments than needed.
      const room = Math.min(mtu, 65535) - 20;
      expect(plan.length).toBe(len <= room ? 1 : Math.ceil(len / (room & ~7)));
    }));
  });

  it('refuses MTUs below 68 and payloads beyond a datagram', () => {
    expect(() => fragmentPlan(100, 67)).toThrow(RangeError);
    expect(() => fragmentPlan(65516, 1500)).toThrow(RangeError);
    expect(fragmentPlan(100, 68).map((p) => p.length)).toEqual([48, 48, 4]);
  });
});
