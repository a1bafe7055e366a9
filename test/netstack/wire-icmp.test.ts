import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  parseIcmp, emitIcmp, icmpErrorQuote, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH,
  ICMP_HEADER_LEN,
} from '../../netstack/icmp.js';
import { emitIpv4Header, parseIpv4, IPPROTO_UDP } from '../../netstack/ipv4.js';
import { ParseError } from '../../netstack/errors.js';
import { naiveChecksum, reasonOf } from '../support/wire-helpers.js';

describe('ICMP (RFC 792)', () => {
  it('emit then parse gives back type, code, rest and payload; the checksum verifies independently', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffffffff }),
      fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 9 }),
      (type, code, rest, payload, off) => {
        const buf = new Uint8Array(off + ICMP_HEADER_LEN + payload.length);
        expect(emitIcmp(buf, off, type, code, rest, payload)).toBe(buf.length);
        const msg = buf.subarray(off);
        expect(naiveChecksum(msg)).toBe(0);
        const r = parseIcmp(msg);
        if (r instanceof ParseError) throw new Error(r.reason);
        expect(r.type).toBe(type);
        expect(r.code).toBe(code);
        expect(r.rest).toBe(rest);
        expect(r.checksum).toBe((msg[2]! << 8) | msg[3]!);
        expect([...r.payload]).toEqual([...payload]);
      },
    ));
  });

  it('puts identifier and sequence of an echo in rest as id << 16 | seq', () => {
    const buf = new Uint8Array(12);
    emitIcmp(buf, 0, ICMP_ECHO_REQUEST, 0, ((0x17c0 << 16) | 0x0001) >>> 0, new Uint8Array([1, 2, 3, 4]));
    expect([...buf.subarray(0, 2)]).toEqual([8, 0]);
    expect([...buf.subarray(4, 12)]).toEqual([0x17, 0xc0, 0x00, 0x01, 1, 2, 3, 4]);
  });

  it('answers an echo in place: payload already at off + 8 survives', () => {
    const buf = new Uint8Array(8 + 5);
    emitIcmp(buf, 0, ICMP_ECHO_REQUEST, 0, 0x00010002, new Uint8Array([5, 4, 3, 2, 1]));
    const req = parseIcmp(buf);
    if (req instanceof ParseError) throw new Error(req.reason);
    emitIcmp(buf, 0, ICMP_ECHO_REPLY, 0, req.rest, req.payload);
    const rep = parseIcmp(buf);
    if (rep instanceof ParseError) throw new Error(rep.reason);
    expect([rep.type, rep.rest, ...rep.payload]).toEqual([0, 0x00010002, 5, 4, 3, 2, 1]);
  });

  it('rejects truncation below 8 bytes and any single flipped bit', () => {
    const msg = new Uint8Array(8 + 7);
    emitIcmp(msg, 0, ICMP_ECHO_REQUEST, 0, 0xdeadbeef, new Uint8Array([1, 2, 3, 4, 5, 6, 7]));
    for (let len = 0; len < 8; len++) expect(reasonOf(parseIcmp(msg.subarray(0, len)))).toBe('icmp:truncated');
    for (let bit = 0; bit < msg.length * 8; bit++) {
      const q = msg.slice();
      q[bit >> 3] ^= 0x80 >> (bit & 7);
      expect(reasonOf(parseIcmp(q))).toBe('icmp:bad-checksum');
    }
    // Truncating the payload breaks the checksum too: nothing of a cut message is trusted.
    expect(reasonOf(parseIcmp(msg.subarray(0, 12)))).toBe('icmp:bad-checksum');
  });

  it('quotes the offending header and 8 bytes in a destination unreachable', () => {
    const ip = new Uint8Array(20 + 30);
    emitIpv4Header(ip, 0, { src: 1, dst: 2, protocol: IPPROTO_UDP, payloadLength: 30 });
    const parsed = parseIpv4(ip);
    if (parsed instanceof ParseError) throw new Error(parsed.reason);
    const quote = icmpErrorQuote(ip, parsed.headerLength);
    expect(quote.length).toBe(28);
    const out = new Uint8Array(8 + quote.length);
    emitIcmp(out, 0, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, quote);
    const r = parseIcmp(out);
    if (r instanceof ParseError) throw new Error(r.reason);
    expect([r.type, r.code, r.payload.length]).toEqual([3, 3, 28]);
    expect(icmpErrorQuote(ip.subarray(0, 24), 20).length).toBe(24);
  });

  it('never throws on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
      const r = parseIcmp(bytes);
      expect(r instanceof ParseError || r.payload.length === bytes.length - 8).toBe(true);
    }));
  });
});
