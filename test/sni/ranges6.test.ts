import { describe, it, expect } from 'vitest';
import { Address6 } from 'ip-address';
import fc from 'fast-check';
import { ipv4Network, specialRangeOfIpv4 } from '../../sni/ranges.js';
import { embeddedForms, PUBLIC4, spellings } from './support/ipv6-forms.js';
import {
  embeddedIpv4,
  formatIpv6,
  ipv6FromBytes,
  ipv6Network,
  parseIp,
  parseIpv6,
  parseIpv6Cidr,
  specialRangeOfAddress,
  specialRangeOfIpv6,
} from '../../sni/ranges6.js';

const GUEST4 = { network: '192.168.127.0', prefix: 24 };
const GUEST6 = { network: 'fd00:6d6f:6174::', prefix: 64 };
const G4 = ipv4Network(GUEST4.network, GUEST4.prefix)!;
const G6 = ipv6Network(GUEST6.network, GUEST6.prefix)!;
describe('parseIpv6', () => {
  it.each([
    ['::1', 1n],
    ['0000:0000:0000:0000:0000:0000:0000:0001', 1n],
    ['::FFFF:7F00:1', 0xffff7f000001n],
    ['::ffff:127.0.0.1', 0xffff7f000001n],
    ['0:0:0:0:0:FFFF:127.0.0.1', 0xffff7f000001n],
    ['FD00:EC2::254', 0xfd000ec2000000000000000000000254n],
    ['fd00:0ec2:0000::0254', 0xfd000ec2000000000000000000000254n],
  ])('%s', (text, n) => {
    expect(parseIpv6(text)).toBe(n);
  });

  it.each([
    'fe80::1%eth0', // zone id: names a host interface
    'fe80::1%25eth0',
    '[::1]',
    '::1/128',
    ' ::1',
    '::1 ',
    '::ffff:010.0.0.1', // dotted quad with a leading zero (octal to inet_aton)
    '::ffff:127.1', // shorthand dotted quad
    '::ffff:1.2.3.4.5',
    '00001::1', // five hex digits
    '1::2::3',
    ':::1',
    '1:2:3:4:5:6:7:8:9',
    '1.2.3.4',
    'localhost',
    '',
    '::ffff:١٢٧.0.0.1',
  ])('refuses %j', (text) => {
    expect(parseIpv6(text)).toBeNull();
  });

  it('round-trips every 128-bit value through RFC 5952 text and bytes (property)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), (n) => {
        expect(parseIpv6(formatIpv6(n))).toBe(n);
        for (const s of spellings(n)) expect(parseIpv6(s)).toBe(n);
        const bytes = new Uint8Array(16);
        for (let i = 0; i < 16; i++) bytes[i] = Number((n >> BigInt(120 - 8 * i)) & 0xffn);
        expect(ipv6FromBytes(bytes)).toBe(n);
      }),
    );
  });

  it('reads every string exactly as ip-address does, minus zone ids and prefixes (property, the oracle)', () => {
    const chunk = fc.constantFrom('0', '1', 'f', 'F', 'ffff', '0000', '12345', ':', ':', '::', '.', '1.2.3.4', '255.255.255.255', '01.2.3.4', '%eth0', '/64', 'g');
    fc.assert(
      fc.property(fc.array(chunk, { maxLength: 14 }).map((xs) => xs.join('')), (text) => {
        const mine = parseIpv6(text);
        let theirs: bigint | null = null;
        try {
          theirs = Address6.isValid(text) && /^[0-9A-Fa-f:.]+$/.test(text) ? new Address6(text).bigInt() : null;
        } catch {
          theirs = null;
        }
        expect({ text, mine }).toEqual({ text, mine: theirs });
      }),
      { numRuns: 20000 },
    );
  });

  it('formats as ip-address does (RFC 5952), but IPv4-mapped with its dotted quad (property)', () => {
    const groups = fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 });
    fc.assert(
      fc.property(groups, (g) => {
        const n = g.reduce((acc, x) => (acc << 16n) | BigInt(x), 0n);
        const want = n >> 32n === 0xffffn ? new Address6(Address6.fromBigInt(n).correctForm()).to4in6() : Address6.fromBigInt(n).correctForm();
        expect(formatIpv6(n)).toBe(want);
      }),
      { numRuns: 20000 },
    );
  });

  it('never throws on arbitrary strings (property)', () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.%/[] x'.split('')) }), (s) => {
        const n = parseIpv6(s);
        if (n !== null) expect(s).toMatch(/^[0-9a-fA-F:.]+$/);
      }),
    );
  });

  it('parseIpv6Cidr is strict about host bits', () => {
    expect(parseIpv6Cidr('2001:db8::/32')).toEqual({ network: 0x20010db8n << 96n, mask: ((1n << 32n) - 1n) << 96n, prefix: 32 });
    expect(parseIpv6Cidr('2001:db8::1/32')).toBeNull();
    expect(parseIpv6Cidr('::/0')).toEqual({ network: 0n, mask: 0n, prefix: 0 });
    expect(parseIpv6Cidr('::1/129')).toBeNull();
    expect(parseIpv6Cidr('::1/0128')).toBeNull();
    expect(parseIpv6Cidr('10.0.0.0/8')).toBeNull();
    expect(parseIpv6Cidr('::1')!.prefix).toBe(128);
  });

  it('parseIp takes either family', () => {
    expect(parseIp('10.0.0.1')).toEqual({ family: 4, address: 0x0a000001 });
    expect(parseIp('::1')).toEqual({ family: 6, address: 1n });
    expect(parseIp('example.com')).toBeNull();
  });
});

describe('specialRangeOfIpv6', () => {
  it.each([
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['fe80::1', 'link-local'],
    ['febf:ffff::1', 'link-local'],
    ['fd00:ec2::254', 'link-local'], // cloud metadata, guarded like 169.254.169.254
    ['fd00:ec2::23', 'link-local'],
    ['fd00:6d6f:6174::5', 'guest-subnet'],
    ['fd12:3456::1', 'private'],
    ['fc00::1', 'private'],
    ['fec0::1', 'site-local'],
    ['ff02::1', 'multicast'],
    ['ff0e::fb', 'multicast'],
    ['2001:db8::1', 'documentation'],
    ['3fff::1', 'documentation'],
    ['3fff:fff::1', 'documentation'],
    ['100::1', 'reserved'],
    ['2001:2::1', 'reserved'],
    ['2001:10::1', 'reserved'],
    ['4000::1', 'reserved'], // outside 2000::/3
    ['64:ff9b:1:1::1.2.3.4', 'reserved'], // local-use NAT64 outside its /96 layout: which IPv4 it means is unknown
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:169.254.169.254', 'link-local'],
    ['::ffff:192.168.127.1', 'guest-subnet'],
    ['64:ff9b::a9fe:a9fe', 'link-local'],
    ['64:ff9b::10.1.2.3', 'private'],
    ['2002:7f00:1::', 'loopback'],
    ['2002:a9fe:a9fe::1', 'link-local'],
    ['2001:0:7f00:1::', 'loopback'], // Teredo server 127.0.0.1, client ~0 = 255.255.255.255 -> server reported first
    ['::0.0.0.2', 'unspecified'], // IPv4-compatible 0.0.0.2 is in 0/8
  ] as const)('%s -> %s', (text, range) => {
    expect(specialRangeOfAddress(text, GUEST4, GUEST6)).toBe(range);
  });

  it.each([
    '2606:4700:4700::1111',
    '2a00:1450:4001:82b::200e',
    '::ffff:8.8.8.8',
    '64:ff9b::8.8.8.8',
    '64:ff9b:1::8.8.8.8',
    '2002:808:808::1',
  ])('%s is ordinary', (text) => {
    expect(specialRangeOfAddress(text, GUEST4, GUEST6)).toBeNull();
  });

  it('Teredo is special if either of its IPv4 addresses is', () => {
    const client127 = (0x20010000n << 96n) | (0x08080808n << 64n) | (~0x7f000001n & 0xffffffffn);
    expect(embeddedIpv4(client127)).toEqual({ form: 'teredo', ipv4: [0x08080808, 0x7f000001], same: false });
    expect(specialRangeOfIpv6(client127, G6, G4)).toBe('loopback');
  });

  it('names, junk and zone ids are reserved, never ordinary', () => {
    for (const t of ['fe80::1%eth0', 'example.com', '', '[::1]', '::ffff:127.1']) expect(specialRangeOfAddress(t, GUEST4, GUEST6)).toBe('reserved');
  });

  it('every embedded form of an IPv4 address has exactly its range (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.bigInt({ min: 0n, max: (1n << 80n) - 1n }),
        fc.bigInt({ min: 0n, max: 0xffffffffn }),
        (v, low80, mid) => {
          const expected = specialRangeOfIpv4(v, G4);
          for (const f of embeddedForms(v, PUBLIC4, low80, mid)) {
            expect({ form: f.form, range: specialRangeOfIpv6(f.address, G6, G4) }).toEqual({ form: f.form, range: expected });
            // ... whichever way it is spelt.
            for (const s of spellings(f.address)) expect(specialRangeOfAddress(s, GUEST4, GUEST6)).toBe(expected);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('every special IPv4 range is tried through every form', () => {
    for (const v of [0x7f000001, 0xa9fea9fe, 0x0a000001, 0xac100001, 0xc0a80101, 0xc0a87f01, 0x64400001, 0xe0000001, 0xffffffff, 0xf0000001, 0x00000002, 0xc6120001]) {
      const expected = specialRangeOfIpv4(v, G4);
      expect(expected).not.toBeNull();
      for (const f of embeddedForms(v)) expect(specialRangeOfIpv6(f.address, G6, G4)).toBe(expected);
    }
  });
});
