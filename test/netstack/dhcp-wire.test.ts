import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseMac } from '../../netstack/addr.js';
import { ParseError } from '../../netstack/errors.js';
import {
  BOOTP_MIN_SIZE,
  BOOTREQUEST,
  MsgType,
  Opt,
  chaddrFromMac,
  clientMacOf,
  decodeDomainSearch,
  encodeDhcp,
  encodeDomainSearch,
  findOption,
  ipOption,
  isBroadcastFlag,
  messageTypeOf,
  parseDhcp,
  textOption,
  u16Option,
  type DhcpMessage,
  type DhcpOption,
} from '../../netstack/dhcp.js';

const fixture = (name: string) => new Uint8Array(readFileSync(new URL(`../fixtures/dhcp/${name}`, import.meta.url)));

function parsed(bytes: Uint8Array): DhcpMessage {
  const m = parseDhcp(bytes);
  if (m instanceof ParseError) throw new Error(`unexpected ${m.reason}`);
  return m;
}

/** Hand-written bytes of a minimal DISCOVER, independent of emitDhcp. */
function handDiscover(optionBytes: number[], total = 300): Uint8Array {
  const b = new Uint8Array(Math.max(total, 240 + optionBytes.length));
  b.set([1, 1, 6, 0, 0xde, 0xad, 0xbe, 0xef, 0, 3, 0x80, 0]);
  b.set([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc], 28);
  b.set([0x63, 0x82, 0x53, 0x63], 236);
  b.set(optionBytes, 240);
  return b;
}

const bytesArb = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });

const optionArb: fc.Arbitrary<DhcpOption> = fc.record({
  // Pad/End are framing, 52 is consumed by the parser: not round-trippable as options.
  code: fc.integer({ min: 1, max: 254 }).filter((c) => c !== Opt.Overload),
  data: fc.uint8Array({ maxLength: 600 }), // > 255 exercises RFC 3396 splitting
});

const messageArb: fc.Arbitrary<DhcpMessage> = fc.record({
  op: fc.constantFrom(1, 2),
  htype: fc.integer({ min: 0, max: 255 }),
  hlen: fc.integer({ min: 0, max: 16 }),
  hops: fc.integer({ min: 0, max: 255 }),
  xid: fc.nat({ max: 0xffffffff }),
  secs: fc.nat({ max: 0xffff }),
  flags: fc.nat({ max: 0xffff }),
  ciaddr: fc.nat({ max: 0xffffffff }),
  yiaddr: fc.nat({ max: 0xffffffff }),
  siaddr: fc.nat({ max: 0xffffffff }),
  giaddr: fc.nat({ max: 0xffffffff }),
  chaddr: bytesArb(16),
  sname: bytesArb(64),
  file: bytesArb(128),
  options: fc.uniqueArray(optionArb, { selector: (o) => o.code, maxLength: 12 }),
});

describe('DHCP wire: round trip', () => {
  it('parse(emit(m)) equals m for random messages, and emit pads to 300 bytes', () => {
    fc.assert(
      fc.property(messageArb, (m) => {
        const bytes = encodeDhcp(m);
        expect(bytes.length).toBeGreaterThanOrEqual(BOOTP_MIN_SIZE);
        const back = parsed(bytes);
        expect(back).toEqual(m);
      }),
      { numRuns: 300 },
    );
  });

  it('writes a Pad-only tail and an End after the options (RFC 2131 §3)', () => {
    const m = parsed(handDiscover([53, 1, 1, 255]));
    const bytes = encodeDhcp(m);
    expect(bytes.length).toBe(300);
    expect([...bytes.subarray(236, 244)]).toEqual([0x63, 0x82, 0x53, 0x63, 53, 1, 1, 255]);
    expect(bytes.subarray(244).every((b) => b === 0)).toBe(true);
  });

  it('splits a 600-byte option into 255/255/90 pieces and joins them back (RFC 3396)', () => {
    const base = parsed(handDiscover([255]));
    const data = Uint8Array.from({ length: 600 }, (_, k) => k & 0xff);
    const bytes = encodeDhcp({ ...base, options: [{ code: 200, data }] });
    expect([bytes[240], bytes[241]]).toEqual([200, 255]);
    expect([bytes[240 + 257], bytes[240 + 258]]).toEqual([200, 255]);
    expect([bytes[240 + 514], bytes[240 + 515]]).toEqual([200, 90]);
    expect(findOption(parsed(bytes), 200)).toEqual(data);
  });
});

describe('DHCP wire: parsing real and hand-made clients', () => {
  it('parses the DISCOVER busybox udhcpc really sent (capture.sh)', () => {
    const bytes = fixture('udhcpc-discover.bin');
    const m = parsed(bytes);
    expect(m.op).toBe(BOOTREQUEST);
    expect(m.htype).toBe(1);
    expect(m.hlen).toBe(6);
    expect(clientMacOf(m)).toBe(parseMac('52:54:00:12:34:56'));
    expect(isBroadcastFlag(m)).toBe(false);
    expect(m.ciaddr).toBe(0);
    expect(messageTypeOf(m)).toBe(MsgType.Discover);
    expect(u16Option(m, Opt.MaxMessageSize)).toBe(576);
    expect([...findOption(m, Opt.ParameterRequestList)!]).toEqual([1, 3, 6, 12, 15, 28, 42]);
    expect(textOption(m, Opt.Hostname)).toBe('mw3-guest');
    expect(textOption(m, Opt.VendorClass)).toBe('mw3-vendor');
    expect([...findOption(m, Opt.ClientId)!]).toEqual([1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    expect(m.options.map((o) => o.code)).toEqual([53, 57, 55, 12, 60, 61]);
  });

  it('reads the broadcast flag, xid, secs and the options in order', () => {
    const m = parsed(handDiscover([53, 1, 1, 0, 0, 50, 4, 192, 168, 127, 9, 255, 12, 3, 120, 120, 120]));
    expect(m.xid).toBe(0xdeadbeef);
    expect(m.secs).toBe(3);
    expect(isBroadcastFlag(m)).toBe(true);
    expect(ipOption(m, Opt.RequestedIp)).toBe(0xc0a87f09);
    // After End nothing counts, even bytes that look like options.
    expect(findOption(m, Opt.Hostname)).toBeUndefined();
  });

  it('returns null MAC for a non-Ethernet chaddr', () => {
    const b = handDiscover([53, 1, 1, 255]);
    b[1] = 6; // IEEE 802
    expect(clientMacOf(parsed(b))).toBeNull();
  });

  it('supports option overload (52): options field, then file, then sname', () => {
    const b = handDiscover([53, 1, 1, 52, 1, 3, 255]);
    b.set([12, 2, 0x68, 0x69, 255], 108); // file: hostname "hi"
    b.set([60, 1, 0x76, 255], 44); // sname: vendor "v"
    const m = parsed(b);
    expect(m.options.map((o) => o.code)).toEqual([53, 12, 60]);
    expect(textOption(m, Opt.Hostname)).toBe('hi');
  });

  it('tolerates options that run to the end without End', () => {
    const b = handDiscover([53, 1, 3], 243);
    expect(messageTypeOf(parsed(b))).toBe(MsgType.Request);
  });
});

describe('DHCP wire: malformed input', () => {
  const cases: Array<[string, Uint8Array, string]> = [
    ['too short', new Uint8Array(239), 'dhcp:truncated'],
    ['bad op', (() => { const b = handDiscover([255]); b[0] = 3; return b; })(), 'dhcp:bad-op'],
    ['hlen > 16', (() => { const b = handDiscover([255]); b[2] = 17; return b; })(), 'dhcp:bad-hlen'],
    ['no magic cookie (plain BOOTP)', (() => { const b = handDiscover([255]); b[239] = 0; return b; })(), 'dhcp:bad-magic-cookie'],
    ['option length past the end', handDiscover([53, 1, 1, 12, 200, 1, 2], 247), 'dhcp:option-truncated'],
    ['option code without length at the end', handDiscover([53, 1, 1, 12], 244), 'dhcp:option-truncated'],
    ['overload value 4', handDiscover([52, 1, 4, 255]), 'dhcp:bad-overload'],
    ['overload twice', handDiscover([52, 1, 1, 52, 1, 1, 255]), 'dhcp:bad-overload'],
    ['overload inside file', (() => { const b = handDiscover([52, 1, 1, 255]); b.set([52, 1, 2, 255], 108); return b; })(), 'dhcp:bad-overload'],
    ['truncated option inside file', (() => { const b = handDiscover([52, 1, 1, 255]); b.set([12, 200], 108); return b; })(), 'dhcp:option-truncated'],
  ];
  for (const [name, bytes, reason] of cases) {
    it(`${name} -> ${reason}`, () => {
      const r = parseDhcp(bytes);
      expect(r).toBeInstanceOf(ParseError);
      expect((r as ParseError).reason).toBe(reason);
    });
  }

  it('random bytes never throw (and return a message or a dhcp: error)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 700 }), (bytes) => {
        const r = parseDhcp(bytes);
        if (r instanceof ParseError) expect(r.reason.startsWith('dhcp:')).toBe(true);
        else expect(r.options.length).toBeLessThanOrEqual(bytes.length);
      }),
      { numRuns: 2000 },
    );
  });

  it('random option areas behind a valid header never throw', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.uint8Array({ maxLength: 128 }), (opts, file) => {
        const b = handDiscover([...opts]);
        b.set(file, 108);
        const r = parseDhcp(b);
        expect(r instanceof ParseError ? r.reason : 'ok').toMatch(/^(ok|dhcp:)/);
      }),
      { numRuns: 2000 },
    );
  });

  it('every truncation of a real DISCOVER parses or fails cleanly', () => {
    const full = fixture('udhcpc-discover.bin');
    for (let n = 0; n <= full.length; n++) {
      const r = parseDhcp(full.subarray(0, n));
      if (n < 240) expect((r as ParseError).reason).toBe('dhcp:truncated');
      else expect(r instanceof ParseError ? r.reason : 'ok').toMatch(/^(ok|dhcp:option-truncated)$/);
    }
  });
});

describe('DHCP wire: domain search (RFC 3397)', () => {
  it('encodes the RFC 3397 §4 example with compression', () => {
    // "eng.apple.com" and "marketing.apple.com": the second ends in a pointer to "apple.com" at offset 4.
    const data = encodeDomainSearch(['eng.apple.com', 'marketing.apple.com']);
    const expected = [
      3, ...'eng'.split('').map((c) => c.charCodeAt(0)),
      5, ...'apple'.split('').map((c) => c.charCodeAt(0)),
      3, ...'com'.split('').map((c) => c.charCodeAt(0)),
      0,
      9, ...'marketing'.split('').map((c) => c.charCodeAt(0)),
      0xc0, 4,
    ];
    expect([...data]).toEqual(expected);
  });

  const labelArb = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
  const nameArb = fc.array(labelArb, { minLength: 1, maxLength: 5 }).map((ls) => ls.join('.'));

  it('decode(encode(names)) == names, and compression never grows the data', () => {
    fc.assert(
      fc.property(fc.array(nameArb, { maxLength: 8 }), (names) => {
        const data = encodeDomainSearch(names);
        expect(decodeDomainSearch(data)).toEqual(names);
        const plain = names.reduce((n, name) => n + name.length + 2, 0);
        expect(data.length).toBeLessThanOrEqual(plain);
      }),
    );
  });

  it('rejects forward/self pointers (no loops) and truncation, never throws on random data', () => {
    expect((decodeDomainSearch(Uint8Array.of(0xc0, 0)) as ParseError).reason).toBe('dhcp:search-bad-pointer');
    expect((decodeDomainSearch(Uint8Array.of(3, 97, 98)) as ParseError).reason).toBe('dhcp:search-truncated');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (data) => {
        const r = decodeDomainSearch(data);
        if (r instanceof ParseError) expect(r.reason.startsWith('dhcp:search-')).toBe(true);
        else expect(Array.isArray(r)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('DHCP wire: helpers', () => {
  it('chaddrFromMac and clientMacOf agree', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 48 - 1 }), (mac) => {
        const m = parsed(handDiscover([255]));
        expect(clientMacOf({ ...m, chaddr: chaddrFromMac(mac) })).toBe(mac);
      }),
    );
  });
});
