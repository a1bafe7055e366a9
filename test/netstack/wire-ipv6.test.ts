import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  emitFragmentHeader, emitIpv6Header, fragmentPlan6, Ipv6Problem, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
  IPPROTO_ICMPV6, IPPROTO_ROUTING, IPV6_HEADER_LEN, MAX_EXTENSION_HEADERS, parseIpv6, walkIpv6Chain, type Ipv6Chain,
} from '../../netstack/ipv6.js';
import {
  eui64, formatIPv6, inPrefix6, ipv6, linkLocalFromMac, multicastMac, parseIPv6, readIPv6, solicitedNode, writeIPv6,
} from '../../netstack/addr.js';
import { sumPseudoHeader6, finishChecksum, sumBytes } from '../../netstack/checksum.js';
import { ParseError } from '../../netstack/errors.js';
import { reasonOf } from '../support/wire-helpers.js';

const A = parseIPv6('fd6d:6f61:7400::2')!;
const B = parseIPv6('2001:db8::1')!;

function packet(nextHeader: number, payload: number[] | Uint8Array): Uint8Array {
  const p = new Uint8Array(IPV6_HEADER_LEN + payload.length);
  emitIpv6Header(p, 0, { src: A, dst: B, nextHeader, payloadLength: payload.length });
  p.set(payload, IPV6_HEADER_LEN);
  return p;
}

function walk(nextHeader: number, payload: number[], dstMulticast = false): Ipv6Chain | Ipv6Problem {
  return walkIpv6Chain(Uint8Array.from(payload), nextHeader, IPV6_HEADER_LEN, false, dstMulticast);
}

const groups = fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 });

describe('IPv6 addresses (packed)', () => {
  it('text round-trips through RFC 5952 form for any address', () => {
    fc.assert(fc.property(groups, (g) => {
      const a = ipv6(...g);
      expect(parseIPv6(formatIPv6(a))).toBe(a);
      const b = new Uint8Array(18);
      writeIPv6(b, 2, a);
      expect(readIPv6(b, 2)).toBe(a);
    }));
  });

  it('formats as RFC 5952 says (longest zero run, lowercase, first of a tie, no :: for one group)', () => {
    expect(formatIPv6(parseIPv6('2001:DB8:0:0:1:0:0:1')!)).toBe('2001:db8::1:0:0:1');
    expect(formatIPv6(parseIPv6('2001:db8:0:1:1:1:1:1')!)).toBe('2001:db8:0:1:1:1:1:1');
    expect(formatIPv6(parseIPv6('::')!)).toBe('::');
    expect(formatIPv6(parseIPv6('::1')!)).toBe('::1');
    expect(formatIPv6(parseIPv6('::ffff:192.0.2.1')!)).toBe('::ffff:c000:201');
  });

  it('refuses malformed text', () => {
    for (const t of ['', ':', '1::2::3', '1:2:3:4:5:6:7:8:9', '12345::', 'g::1', '1:2:3:4:5:6:7', 'fe80::1%eth0', '[::1]', '::1.2.3', '1:2:3:4:5:6:7::8']) {
      expect(parseIPv6(t), t).toBeUndefined();
    }
  });

  it('derives EUI-64, link-local, solicited-node and multicast MAC (RFC 4291, RFC 2464)', () => {
    expect(formatIPv6(eui64(0x5a94efe40cdd))).toBe('::5894:efff:fee4:cdd');
    expect(formatIPv6(linkLocalFromMac(0x5a94efe40cdd))).toBe('fe80::5894:efff:fee4:cdd');
    expect(formatIPv6(solicitedNode(parseIPv6('fd00::12:3456')!))).toBe('ff02::1:ff12:3456');
    expect(multicastMac(parseIPv6('ff02::1:ff12:3456')!)).toBe(0x3333ff123456);
    expect(inPrefix6(A, parseIPv6('fd6d:6f61:7400::')!, 64)).toBe(true);
    expect(inPrefix6(B, parseIPv6('fd6d:6f61:7400::')!, 64)).toBe(false);
    expect(inPrefix6(parseIPv6('fd6d:6f61:7400:0:8000::')!, parseIPv6('fd6d:6f61:7400::')!, 65)).toBe(false);
  });

  it('pseudo-header sum (RFC 8200 §8.1) matches a byte-wise sum of the pseudo-header', () => {
    fc.assert(fc.property(groups, groups, fc.integer({ min: 0, max: 0xfffff }), (g1, g2, len) => {
      const s = ipv6(...g1);
      const d = ipv6(...g2);
      const ph = new Uint8Array(40);
      writeIPv6(ph, 0, s);
      writeIPv6(ph, 16, d);
      ph[32] = len >>> 24; ph[33] = (len >>> 16) & 0xff; ph[34] = (len >>> 8) & 0xff; ph[35] = len & 0xff;
      ph[39] = 6;
      expect(finishChecksum(sumPseudoHeader6(s, d, 6, len))).toBe(finishChecksum(sumBytes(ph, 0, 40)));
    }));
  });
});

describe('IPv6 fixed header (RFC 8200 §3)', () => {
  it('emit then parse gives back every field; payload is an exact view without padding', () => {
    fc.assert(fc.property(groups, groups, fc.record({
      nextHeader: fc.integer({ min: 0, max: 255 }), hopLimit: fc.integer({ min: 0, max: 255 }),
      trafficClass: fc.integer({ min: 0, max: 255 }), flowLabel: fc.integer({ min: 0, max: 0xfffff }),
    }), fc.uint8Array({ maxLength: 100 }), fc.nat({ max: 30 }), (g1, g2, f, payload, pad) => {
      const src = ipv6(...g1);
      const dst = ipv6(...g2);
      const p = new Uint8Array(IPV6_HEADER_LEN + payload.length + pad);
      expect(emitIpv6Header(p, 0, { src, dst, ...f, payloadLength: payload.length })).toBe(40);
      p.set(payload, 40);
      const r = parseIpv6(p);
      if (r instanceof ParseError) throw new Error(r.reason);
      expect({ ...r, payload: undefined }).toEqual({ src, dst, ...f, payload: undefined });
      expect([...r.payload]).toEqual([...payload]);
      expect(r.payload.buffer).toBe(p.buffer);
    }));
  });

  it('refuses short packets, other versions, and a payload length past the bytes received', () => {
    expect(reasonOf(parseIpv6(new Uint8Array(39)))).toBe('ipv6:truncated');
    const p = packet(17, [1, 2, 3]);
    p[0] = 0x45;
    expect(reasonOf(parseIpv6(p))).toBe('ipv6:bad-version');
    const q = packet(17, [1, 2, 3]);
    q[5] = 4;
    expect(reasonOf(parseIpv6(q))).toBe('ipv6:bad-payload-length');
  });

  it('refuses to emit a payload over 65535 bytes', () => {
    expect(() => emitIpv6Header(new Uint8Array(40), 0, { src: A, dst: B, nextHeader: 17, payloadLength: 65536 })).toThrow(RangeError);
  });
});

describe('IPv6 extension-header chain (RFC 8200 §4)', () => {
  it('walks hop-by-hop, destination options and a spent routing header to the upper layer', () => {
    const chain = walk(IPPROTO_HOPOPTS, [
      IPPROTO_DSTOPTS, 0, 5, 2, 0, 0, 1, 0, // HBH: router alert (5), PadN of 0
      IPPROTO_ROUTING, 0, 1, 4, 0, 0, 0, 0, // DSTOPTS: PadN len 4
      IPPROTO_ICMPV6, 0, 4, 0, 0, 0, 0, 0, // routing type 4, segments left 0: ignored
      128, 0, 0, 0,
    ]);
    expect(chain).toEqual({ protocol: IPPROTO_ICMPV6, offset: 24, fragment: null });
  });

  it('skips an unknown option of action 00, refuses the others as RFC 8200 §4.2 says', () => {
    const opt = (type: number) => [17, 0, type, 4, 0, 0, 0, 0];
    expect(walk(IPPROTO_DSTOPTS, opt(0x1e))).toEqual({ protocol: 17, offset: 8, fragment: null });
    expect(walk(IPPROTO_DSTOPTS, opt(0x5e))).toMatchObject({ reason: 'ipv6:unknown-option', icmpCode: null });
    expect(walk(IPPROTO_DSTOPTS, opt(0x9e))).toMatchObject({ reason: 'ipv6:unknown-option', icmpCode: 2, pointer: 42 });
    expect(walk(IPPROTO_DSTOPTS, opt(0xde))).toMatchObject({ reason: 'ipv6:unknown-option', icmpCode: 2, pointer: 42 });
    // 11 to a multicast destination: dropped without an ICMPv6 error.
    expect(walk(IPPROTO_DSTOPTS, opt(0xde), true)).toMatchObject({ reason: 'ipv6:unknown-option', icmpCode: null });
    // An option whose length runs past its header.
    expect(walk(IPPROTO_DSTOPTS, [17, 0, 0x1e, 9, 0, 0, 0, 0])).toMatchObject({ reason: 'ipv6:bad-option', icmpCode: 0 });
  });

  it('refuses a routing header with segments left (the packet is for another address), pointing at its type', () => {
    expect(walk(IPPROTO_ROUTING, [17, 2, 0, 1, 0, 0, 0, 0, ...new Array(16).fill(0)])).toMatchObject({
      reason: 'ipv6:routing-header', icmpCode: 0, pointer: 42,
    });
  });

  it('answers an unknown next header with code 1 pointing at the field that named it', () => {
    expect(walk(50, [0, 0, 0, 0])).toMatchObject({ reason: 'ipv6:unsupported-next-header', icmpCode: 1, pointer: 6 });
    expect(walk(IPPROTO_DSTOPTS, [99, 0, 1, 4, 0, 0, 0, 0])).toMatchObject({ reason: 'ipv6:unsupported-next-header', icmpCode: 1, pointer: 40 });
  });

  it('refuses hop-by-hop anywhere but first', () => {
    expect(walk(IPPROTO_DSTOPTS, [IPPROTO_HOPOPTS, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0])).toMatchObject({
      reason: 'ipv6:misplaced-hop-by-hop', icmpCode: 1, pointer: 40,
    });
  });

  it('stops at a fragment header and reports it', () => {
    expect(walk(IPPROTO_FRAGMENT, [17, 0, 0x05, 0x39, 0xde, 0xad, 0xbe, 0xef, 9, 9])).toEqual({
      protocol: IPPROTO_FRAGMENT, offset: 0,
      fragment: { offset: 0x0538, more: true, id: 0xdeadbeef, nextHeader: 17, dataOffset: 8 },
    });
    expect(walkIpv6Chain(Uint8Array.from([17, 0, 0, 0, 0, 0, 0, 1]), IPPROTO_FRAGMENT, 48, true, false))
      .toMatchObject({ reason: 'ipv6:nested-fragment' });
  });

  it(`refuses a chain of more than ${MAX_EXTENSION_HEADERS} extension headers, and truncated ones`, () => {
    const long: number[] = [];
    for (let i = 0; i < MAX_EXTENSION_HEADERS + 1; i++) long.push(IPPROTO_DSTOPTS, 0, 1, 4, 0, 0, 0, 0);
    long.push(17, 0, 1, 4, 0, 0, 0, 0);
    expect(walk(IPPROTO_DSTOPTS, long)).toMatchObject({ reason: 'ipv6:too-many-extension-headers', icmpCode: null });
    expect(walk(IPPROTO_DSTOPTS, [17, 1, 0, 0, 0, 0, 0, 0])).toMatchObject({ reason: 'ipv6:truncated-extension-header' });
    expect(walk(IPPROTO_FRAGMENT, [17, 0, 0])).toMatchObject({ reason: 'ipv6:truncated-extension-header' });
  });

  it('never throws on random chains', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 120 }), fc.boolean(), (nh, b, m) => {
      const r = walkIpv6Chain(b, nh, 40, false, m);
      if (!(r instanceof Ipv6Problem)) expect(r.offset).toBeLessThanOrEqual(b.length);
    }));
  });
});

describe('IPv6 fragmentation plan (RFC 8200 §4.5)', () => {
  it('cuts into multiples of 8 behind 48 bytes of headers, covering every byte once', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 65000 }), fc.integer({ min: 1280, max: 9000 }), (len, mtu) => {
      const plan = fragmentPlan6(len, mtu);
      let at = 0;
      for (const [i, p] of plan.entries()) {
        expect(p.offset).toBe(at);
        if (plan.length > 1) expect(40 + 8 + p.length).toBeLessThanOrEqual(mtu);
        if (p.more) expect(p.length % 8).toBe(0);
        expect(p.more).toBe(i < plan.length - 1);
        at += p.length;
      }
      expect(at).toBe(len);
    }));
    expect(() => fragmentPlan6(100, 1279)).toThrow(RangeError);
  });

  it('emits a fragment header the walker reads back', () => {
    const b = new Uint8Array(8);
    emitFragmentHeader(b, 0, 17, 1448, true, 0x01020304);
    const r = walkIpv6Chain(b, IPPROTO_FRAGMENT, 40, false, false) as Ipv6Chain;
    expect(r.fragment).toEqual({ offset: 1448, more: true, id: 0x01020304, nextHeader: 17, dataOffset: 8 });
  });
});

