import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  formatIpv4,
  inIpv4Network,
  ipv4Network,
  parseIpv4,
  parseIpv4Cidr,
  prefixMask,
  specialRangeOf,
  specialRangeOfIpv4,
  type SpecialRange,
} from '../../sni/ranges.js';

const GUEST = { network: '192.168.127.0', prefix: 24 };

describe('parseIpv4 / formatIpv4', () => {
  it('parses dotted quads to uint32', () => {
    expect(parseIpv4('192.168.127.1')).toBe(0xc0a87f01);
    expect(parseIpv4('0.0.0.0')).toBe(0);
    expect(parseIpv4('255.255.255.255')).toBe(0xffffffff);
  });

  it.each([
    '010.0.0.1', // leading zero: octal to inet_aton
    '1.2.3', // shorthand
    '1.2.3.4.5',
    '256.1.1.1',
    '0x7f.0.0.1',
    ' 1.2.3.4',
    '1.2.3.4 ',
    '',
    '::1',
    '[::1]',
    '1.2.3.4/32',
    '١.٢.٣.٤', // Arabic-Indic digits are not \d in JS regex, and must not parse
  ])('refuses %j', (text) => {
    expect(parseIpv4(text)).toBeNull();
  });

  it('round-trips every uint32 (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => {
        expect(parseIpv4(formatIpv4(n))).toBe(n);
      }),
    );
  });

  it('never throws on arbitrary strings (property)', () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        const n = parseIpv4(s);
        if (n !== null) expect(formatIpv4(n)).toBe(s);
      }),
    );
  });
});

describe('networks', () => {
  it('prefixMask covers 0 and 32', () => {
    expect(prefixMask(0)).toBe(0);
    expect(prefixMask(8)).toBe(0xff000000);
    expect(prefixMask(32)).toBe(0xffffffff);
  });

  it('parseIpv4Cidr is strict about host bits and spelling', () => {
    expect(parseIpv4Cidr('10.0.0.0/8')).toEqual({ network: 0x0a000000, mask: 0xff000000, prefix: 8 });
    expect(parseIpv4Cidr('10.1.2.3')).toEqual({ network: 0x0a010203, mask: 0xffffffff, prefix: 32 });
    expect(parseIpv4Cidr('0.0.0.0/0')).toEqual({ network: 0, mask: 0, prefix: 0 });
    expect(parseIpv4Cidr('10.0.0.1/8')).toBeNull();
    expect(parseIpv4Cidr('10.0.0.0/33')).toBeNull();
    expect(parseIpv4Cidr('10.0.0.0/08')).toBeNull();
    expect(parseIpv4Cidr('10.0.0.0/')).toBeNull();
    expect(parseIpv4Cidr('2001:db8::/32')).toBeNull();
  });

  it('ipv4Network clears host bits of configuration', () => {
    expect(ipv4Network('192.168.127.1', 24)).toEqual({ network: 0xc0a87f00, mask: 0xffffff00, prefix: 24 });
    expect(ipv4Network('192.168.127.1', 33)).toBeNull();
    expect(ipv4Network('192.168.127.1', 1.5)).toBeNull();
    expect(ipv4Network('nope', 24)).toBeNull();
  });

  it('membership agrees with a shift-based definition (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 32 }),
        (a, b, prefix) => {
          const n = ipv4Network(formatIpv4(b), prefix)!;
          const sameTopBits = prefix === 0 || Math.floor(a / 2 ** (32 - prefix)) === Math.floor(b / 2 ** (32 - prefix));
          expect(inIpv4Network(a, n)).toBe(sameTopBits);
        },
      ),
    );
  });
});

describe('specialRangeOf', () => {
  const table: [string, SpecialRange | null][] = [
    ['0.0.0.0', 'unspecified'],
    ['0.255.255.255', 'unspecified'],
    ['1.0.0.0', null],
    ['9.255.255.255', null],
    ['10.0.0.0', 'private'],
    ['10.255.255.255', 'private'],
    ['11.0.0.0', null],
    ['100.63.255.255', null],
    ['100.64.0.0', 'cgnat'],
    ['100.127.255.255', 'cgnat'],
    ['100.128.0.0', null],
    ['126.255.255.255', null],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.255', 'loopback'],
    ['128.0.0.0', null],
    ['169.253.255.255', null],
    ['169.254.0.0', 'link-local'],
    ['169.254.169.254', 'link-local'],
    ['169.255.0.0', null],
    ['172.15.255.255', null],
    ['172.16.0.0', 'private'],
    ['172.31.255.255', 'private'],
    ['172.32.0.0', null],
    ['192.0.0.1', 'reserved'],
    ['192.0.1.0', null],
    ['192.0.2.1', null], // TEST-NET-1: documentation, deliberately ordinary
    ['198.51.100.7', null],
    ['203.0.113.9', null],
    ['192.167.255.255', null],
    ['192.168.0.1', 'private'],
    ['192.168.126.255', 'private'],
    ['192.168.127.0', 'guest-subnet'],
    ['192.168.127.254', 'guest-subnet'],
    ['192.168.128.0', 'private'],
    ['198.17.255.255', null],
    ['198.18.0.0', 'reserved'],
    ['198.19.255.255', 'reserved'],
    ['198.20.0.0', null],
    ['223.255.255.255', null],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.255', 'multicast'],
    ['240.0.0.0', 'reserved'],
    ['255.255.255.254', 'reserved'],
    ['255.255.255.255', 'broadcast'],
    ['8.8.8.8', null],
    ['140.82.112.3', null],
    // Not a dialable IPv4 address: never "ordinary".
    ['::1', 'reserved'],
    ['2001:db8::1', 'reserved'],
    ['example.com', 'reserved'],
    ['010.0.0.1', 'reserved'],
  ];
  it.each(table)('%s -> %s', (address, range) => {
    expect(specialRangeOf(address, GUEST)).toBe(range);
  });

  it('the guest subnet wins wherever it is configured', () => {
    expect(specialRangeOf('10.0.2.15', { network: '10.0.2.0', prefix: 24 })).toBe('guest-subnet');
    expect(specialRangeOf('10.0.3.15', { network: '10.0.2.0', prefix: 24 })).toBe('private');
    expect(specialRangeOf('192.168.127.5', { network: '10.0.2.0', prefix: 24 })).toBe('private');
  });

  it('throws for an invalid guest subnet (configuration)', () => {
    expect(() => specialRangeOf('1.2.3.4', { network: 'x', prefix: 24 })).toThrow(/guest subnet/);
    expect(() => specialRangeOf('1.2.3.4', { network: '10.0.0.0', prefix: 40 })).toThrow(/guest subnet/);
  });

  it('numeric and text forms agree (property)', () => {
    const guest = ipv4Network(GUEST.network, GUEST.prefix);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => {
        expect(specialRangeOf(formatIpv4(n), GUEST)).toBe(specialRangeOfIpv4(n, guest));
      }),
    );
  });
});
