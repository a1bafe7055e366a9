import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  canonicalHostname,
  parseRule,
  parseRules,
  RuleError,
  RuleSetError,
  type Rule,
} from '../../dns/rules.js';

function ok(text: string): Rule {
  const r = parseRule(text);
  if (r instanceof RuleError) throw new Error(`expected ${text} to parse, got ${r.reason}`);
  return r;
}

function reasonOf(text: string): string {
  const r = parseRule(text);
  if (!(r instanceof RuleError)) throw new Error(`expected ${text} to be rejected, got ${r.kind}`);
  return r.reason;
}

describe('parseRule: hosts and wildcards', () => {
  it('parses a host, case-insensitive, trailing dot ignored, optional port', () => {
    expect(ok('GitHub.COM.')).toEqual({ kind: 'host', text: 'GitHub.COM.', port: null, host: 'github.com' });
    expect(ok('github.com:443')).toMatchObject({ kind: 'host', host: 'github.com', port: 443 });
  });

  it('parses *.domain as a wildcard for the domain (apex excluded by kind)', () => {
    expect(ok('*.Example.org:8443')).toMatchObject({ kind: 'wildcard', domain: 'example.org', port: 8443 });
  });

  it('compares IDNs in punycode', () => {
    expect(ok('Bücher.de')).toMatchObject({ kind: 'host', host: 'xn--bcher-kva.de' });
    expect(ok('*.ＢÜCHER.de')).toMatchObject({ kind: 'wildcard', domain: 'xn--bcher-kva.de' });
    expect(canonicalHostname('xn--bcher-kva.de')).toBe(canonicalHostname('bücher.de'));
  });

  it('two trailing dots are an empty label in Unicode as in ASCII (one dot, ASCII or full-width, is dropped)', () => {
    expect(canonicalHostname('github.com..')).toMatchObject({ reason: 'rule:empty-label' });
    expect(canonicalHostname('bücher.de..')).toMatchObject({ reason: 'rule:empty-label' });
    expect(canonicalHostname('bücher.de\u3002.')).toMatchObject({ reason: 'rule:empty-label' });
    expect(canonicalHostname('bücher.de.')).toBe('xn--bcher-kva.de');
    expect(canonicalHostname('bücher.de\u3002')).toBe('xn--bcher-kva.de');
  });

  it('rejects malformed names with a reason', () => {
    expect(reasonOf('a..b')).toBe('rule:empty-label');
    expect(reasonOf('-a.com')).toBe('rule:bad-label');
    expect(reasonOf(`${'a'.repeat(64)}.com`)).toBe('rule:label-too-long');
    expect(reasonOf(`${'a.'.repeat(127)}com`)).toBe('rule:name-too-long');
    expect(reasonOf('*.')).toBe('rule:empty-name');
    expect(reasonOf('foo.*.com')).toBe('rule:bad-wildcard');
    expect(reasonOf('*foo.com')).toBe('rule:bad-wildcard');
    expect(reasonOf('user@host.com')).toBe('rule:bad-character');
    expect(reasonOf('')).toBe('rule:empty');
  });

  it('never takes an IP-looking literal as a name', () => {
    expect(reasonOf('1.2.3')).toBe('rule:bad-address');
    expect(reasonOf('010.1.1.1')).toBe('rule:bad-address');
    expect(reasonOf('foo.123')).toBe('rule:numeric-name');
    expect(reasonOf('a.0x7f')).toBe('rule:numeric-name');
    expect(reasonOf('*.1.2.3.4')).toBe('rule:numeric-name');
    // Full-width digits map to ASCII digits through UTS #46: still numeric.
    expect(reasonOf('１.２.３.４')).toBe('rule:numeric-name');
    expect(canonicalHostname('0xdead.com')).toBe('0xdead.com');
  });

  it('rejects bad ports', () => {
    for (const p of ['0', '65536', '080', '-1', 'http', '']) {
      expect(reasonOf(`github.com:${p}`)).toBe('rule:bad-port');
    }
    expect(ok('github.com:65535')).toMatchObject({ port: 65535 });
  });
});

describe('parseRule: addresses and networks', () => {
  it('parses IPv4 address and CIDR with optional port', () => {
    expect(ok('192.0.2.1')).toMatchObject({ kind: 'address', family: 4, address: '192.0.2.1', port: null });
    expect(ok('192.0.2.1:53')).toMatchObject({ kind: 'address', family: 4, port: 53 });
    expect(ok('10.0.0.0/8:443')).toMatchObject({ kind: 'cidr', family: 4, network: '10.0.0.0', prefixLength: 8, port: 443 });
    expect(ok('0.0.0.0/0')).toMatchObject({ kind: 'cidr', prefixLength: 0 });
  });

  it('parses IPv6 bare (no port) and bracketed (with port), canonical form', () => {
    expect(ok('2001:DB8:0:0::1')).toMatchObject({ kind: 'address', family: 6, address: '2001:db8::1', port: null });
    expect(ok('::1:443')).toMatchObject({ kind: 'address', family: 6, address: '::1:443', port: null });
    expect(ok('[::1]:443')).toMatchObject({ kind: 'address', family: 6, address: '::1', port: 443 });
    expect(ok('[2001:db8::/32]:80')).toMatchObject({ kind: 'cidr', family: 6, network: '2001:db8::', prefixLength: 32, port: 80 });
    expect(ok('2001:db8::/32')).toMatchObject({ kind: 'cidr', family: 6, prefixLength: 32, port: null });
  });

  it('rejects bad addresses, prefixes and bracket use', () => {
    expect(reasonOf('10.0.0.1/8')).toBe('rule:host-bits-set');
    expect(reasonOf('10.0.0.0/33')).toBe('rule:bad-prefix-length');
    expect(reasonOf('10.0.0.0/08')).toBe('rule:bad-prefix-length');
    expect(reasonOf('2001:db8::/129')).toBe('rule:bad-prefix-length');
    expect(reasonOf('256.1.1.1')).toBe('rule:bad-address');
    expect(reasonOf('1::2::3')).toBe('rule:bad-address');
    expect(reasonOf('[1.2.3.4]:80')).toBe('rule:brackets-need-ipv6');
    expect(reasonOf('[::1')).toBe('rule:bad-brackets');
    expect(reasonOf('fe80::1%eth0')).toBe('rule:zone-id');
  });
});

describe('parseRules', () => {
  it('returns every rule when all are valid', () => {
    const rules = parseRules(['github.com', '*.github.com', '10.0.0.0/8', '[::1]:22']);
    expect(rules.map((r) => r.kind)).toEqual(['host', 'wildcard', 'cidr', 'address']);
  });

  it('throws one error naming every invalid rule', () => {
    let caught: unknown;
    try {
      parseRules(['github.com', 'a..b', '10.0.0.1/8', 'ok.example', 'x.com:99999']);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(RuleSetError);
    const err = caught as RuleSetError;
    expect(err.errors.map((e) => e.text)).toEqual(['a..b', '10.0.0.1/8', 'x.com:99999']);
    expect(err.message).toContain('"a..b" (empty-label)');
    expect(err.message).toContain('"10.0.0.1/8" (host-bits-set)');
    expect(err.message).toContain('"x.com:99999" (bad-port)');
  });
});

describe('canonicalHostname properties', () => {
  const label = fc.stringMatching(/^[a-zA-Z][a-zA-Z0-9-]{0,10}[a-zA-Z0-9]$/);
  const name = fc.array(label, { minLength: 1, maxLength: 5 }).map((l) => l.join('.'));

  it('is idempotent and case/trailing-dot insensitive', () => {
    fc.assert(
      fc.property(name, fc.boolean(), (n, dot) => {
        const c = canonicalHostname(n);
        expect(c).toBe(n.toLowerCase());
        expect(canonicalHostname(n.toUpperCase() + (dot ? '.' : ''))).toBe(c);
        expect(canonicalHostname(c as string)).toBe(c);
      }),
    );
  });

  it('a host rule round-trips through its canonical text', () => {
    fc.assert(
      fc.property(name, fc.option(fc.integer({ min: 1, max: 65535 }), { nil: null }), (n, port) => {
        const r = ok(port === null ? n : `${n}:${port}`);
        expect(r).toMatchObject({ kind: 'host', host: n.toLowerCase(), port });
      }),
    );
  });
});
