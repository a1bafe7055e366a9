import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { DEFAULT_MAX_HEAD_BYTES, HttpHeadReader, type HttpHostResult } from '../../sni/http-host.js';
import { feedAll, lastAfterNeedMore } from './support/feed.js';
import { byteByByte, bytesOf, splitAt } from './support/hello-builder.js';

function parse(head: string, opts?: { maxHeadBytes?: number }): HttpHostResult {
  return new HttpHeadReader(opts).push(bytesOf(head));
}

function reasonOf(head: string): string {
  const r = parse(head);
  if (r.kind !== 'malformed') throw new Error(`expected malformed for ${JSON.stringify(head)}, got ${JSON.stringify(r)}`);
  return r.reason;
}

function hostOf(head: string): string | null {
  const r = parse(head);
  if (r.kind !== 'found') throw new Error(`expected found for ${JSON.stringify(head)}, got ${JSON.stringify(r)}`);
  return r.host;
}

describe('HttpHeadReader: finding the host', () => {
  it('reads Host, method and target from an origin-form request', () => {
    expect(parse('GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\n\r\n')).toEqual({
      kind: 'found',
      host: 'www.example.com',
      method: 'GET',
      target: '/index.html?q=1',
    });
  });

  it.each([
    ['host name with port', 'api.example.com:8080', 'api.example.com'],
    ['empty port', 'api.example.com:', 'api.example.com'],
    ['case kept as sent', 'API.Example.COM', 'API.Example.COM'],
    ['trailing dot kept', 'example.com.', 'example.com.'],
    ['IPv4 literal', '203.0.113.9:80', '203.0.113.9'],
    ['IPv6 literal keeps brackets', '[2001:db8::1]:8080', '[2001:db8::1]'],
    ['IPv6 literal without port', '[::1]', '[::1]'],
    ['underscore', 'my_host.example', 'my_host.example'],
    ['surrounding whitespace trimmed', ' \t a.example \t', 'a.example'],
  ])('Host: %s', (_, value, host) => {
    expect(hostOf(`GET / HTTP/1.1\r\nHost:${value}\r\n\r\n`)).toBe(host);
  });

  it('header names are case-insensitive', () => {
    expect(hostOf('GET / HTTP/1.1\r\nhOsT: a.example\r\n\r\n')).toBe('a.example');
    expect(hostOf('GET / HTTP/1.1\r\nX-Host: evil.example\r\nHOST: a.example\r\nHosts: b\r\n\r\n')).toBe('a.example');
  });

  it('absolute-form targets give the host; a matching Host header is fine', () => {
    expect(parse('GET http://a.example:8080/x?y HTTP/1.1\r\nHost: A.example:8080\r\n\r\n')).toEqual({
      kind: 'found',
      host: 'a.example',
      method: 'GET',
      target: 'http://a.example:8080/x?y',
    });
    expect(hostOf('GET HTTPS://b.example HTTP/1.0\r\n\r\n')).toBe('b.example');
    expect(hostOf('GET http://[::1]:80/ HTTP/1.0\r\n\r\n')).toBe('[::1]');
    expect(hostOf('GET http://c.example?q HTTP/1.1\r\nHost: c.example\r\n\r\n')).toBe('c.example');
  });

  it('CONNECT uses the authority-form target', () => {
    expect(parse('CONNECT d.example:443 HTTP/1.1\r\nHost: d.example:443\r\n\r\n')).toMatchObject({
      kind: 'found',
      host: 'd.example',
      method: 'CONNECT',
    });
  });

  it('OPTIONS * takes the host from Host', () => {
    expect(hostOf('OPTIONS * HTTP/1.1\r\nHost: e.example\r\n\r\n')).toBe('e.example');
  });

  it('HTTP/1.0 without Host -> host null; an empty Host -> host null', () => {
    expect(parse('GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n')).toEqual({ kind: 'found', host: null, method: 'GET', target: '/' });
    expect(hostOf('GET / HTTP/1.1\r\nHost:\r\n\r\n')).toBeNull();
  });

  it('ignores whatever follows the head', () => {
    expect(hostOf('POST /u HTTP/1.1\r\nHost: f.example\r\nContent-Length: 5\r\n\r\nHost: evil\r\n\r\n')).toBe('f.example');
  });

  it('tolerates obs-text in other field values and HTAB inside values', () => {
    expect(hostOf('GET / HTTP/1.1\r\nX-Name: caf\u00e9\tau lait\r\nHost: g.example\r\n\r\n')).toBe('g.example');
  });

  it('methods with - and _ after the first letter', () => {
    expect(parse('BASELINE-CONTROL / HTTP/1.1\r\nHost: h.example\r\n\r\n')).toMatchObject({ method: 'BASELINE-CONTROL' });
  });
});

describe('HttpHeadReader: malformed', () => {
  it.each([
    ['two Host headers', 'GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n', 'http:duplicate-host'],
    ['two Host headers, same value', 'GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n', 'http:duplicate-host'],
    ['absolute-form and a different Host', 'GET http://a.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n', 'http:host-mismatch'],
    ['absolute-form and an empty Host', 'GET http://a.example/ HTTP/1.1\r\nHost:\r\n\r\n', 'http:host-mismatch'],
    ['CONNECT and a different Host', 'CONNECT a.example:443 HTTP/1.1\r\nHost: b.example\r\n\r\n', 'http:host-mismatch'],
    ['HTTP/1.1 without Host', 'GET / HTTP/1.1\r\nAccept: */*\r\n\r\n', 'http:missing-host'],
    ['HTTP/1.1 absolute-form without Host', 'GET http://a.example/ HTTP/1.1\r\n\r\n', 'http:missing-host'],
    ['space before colon', 'GET / HTTP/1.1\r\nHost : a.example\r\n\r\n', 'http:space-before-colon'],
    ['tab before colon', 'GET / HTTP/1.1\r\nHost\t: a.example\r\n\r\n', 'http:space-before-colon'],
    ['obs-fold', 'GET / HTTP/1.1\r\nX: a\r\n  b\r\nHost: a.example\r\n\r\n', 'http:obs-fold'],
    ['whitespace before the first field', 'GET / HTTP/1.1\r\n Host: a.example\r\n\r\n', 'http:obs-fold'],
    ['bad field name', 'GET / HTTP/1.1\r\nHo(st: a.example\r\n\r\n', 'http:bad-header-name'],
    ['empty field name', 'GET / HTTP/1.1\r\n: a.example\r\nHost: a\r\n\r\n', 'http:bad-header-name'],
    ['field line without colon', 'GET / HTTP/1.1\r\nHost a.example\r\n\r\n', 'http:bad-header-line'],
    ['NUL in a value', 'GET / HTTP/1.1\r\nHost: a.example\r\nX: a\u0000b\r\n\r\n', 'http:bad-header-value'],
    ['DEL in a value', 'GET / HTTP/1.1\r\nX: a\u007fb\r\nHost: a\r\n\r\n', 'http:bad-header-value'],
    ['bare LF line end', 'GET / HTTP/1.1\nHost: a.example\n\n', 'http:bare-lf'],
    ['bare LF inside a value', 'GET / HTTP/1.1\r\nHost: a.example\nHost: evil.example\r\n\r\n', 'http:bare-lf'],
    ['bare CR inside a value', 'GET / HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n', 'http:bare-cr'],
    ['comma in Host', 'GET / HTTP/1.1\r\nHost: a.example,evil.example\r\n\r\n', 'http:bad-host'],
    ['percent in Host', 'GET / HTTP/1.1\r\nHost: a%2eexample\r\n\r\n', 'http:bad-host'],
    ['userinfo in Host', 'GET / HTTP/1.1\r\nHost: a.example@evil.example\r\n\r\n', 'http:bad-host'],
    ['space inside Host', 'GET / HTTP/1.1\r\nHost: a.example evil.example\r\n\r\n', 'http:bad-host'],
    ['port too large', 'GET / HTTP/1.1\r\nHost: a.example:65536\r\n\r\n', 'http:bad-host'],
    ['port not digits', 'GET / HTTP/1.1\r\nHost: a.example:8o\r\n\r\n', 'http:bad-host'],
    ['port only', 'GET / HTTP/1.1\r\nHost: :80\r\n\r\n', 'http:bad-host'],
    ['unclosed IPv6 literal', 'GET / HTTP/1.1\r\nHost: [::1\r\n\r\n', 'http:bad-host'],
    ['junk in IPv6 literal', 'GET / HTTP/1.1\r\nHost: [::1%25eth0]\r\n\r\n', 'http:bad-host'],
    ['non-ASCII Host', 'GET / HTTP/1.1\r\nHost: b\u00fccher.de\r\n\r\n', 'http:bad-host'],
    ['userinfo in absolute-form', 'GET http://a.example@evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n', 'http:userinfo'],
    ['absolute-form without //', 'GET http:a.example/ HTTP/1.1\r\nHost: a\r\n\r\n', 'http:bad-target'],
    ['absolute-form with another scheme', 'GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-target'],
    ['absolute-form with an empty host', 'GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n', 'http:bad-target'],
    ['authority-form for GET', 'GET a.example:80 HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-target'],
    ['CONNECT without a port', 'CONNECT a.example HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-target'],
    ['CONNECT with origin-form', 'CONNECT / HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-target'],
    ['* for GET', 'GET * HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-target'],
    ['non-ASCII target', 'GET /\u00e9 HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-target'],
    ['two spaces after the method', 'GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-request-line'],
    ['no version (HTTP/0.9)', 'GET /\r\nHost: a.example\r\n\r\n', 'http:bad-request-line'],
    ['lower-case version', 'GET / http/1.1\r\nHost: a.example\r\n\r\n', 'http:bad-request-line'],
    ['trailing space after version', 'GET / HTTP/1.1 \r\nHost: a.example\r\n\r\n', 'http:bad-request-line'],
    ['HTTP/2 prior knowledge preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'http:unsupported-version'],
    ['HTTP/1.2', 'GET / HTTP/1.2\r\nHost: a.example\r\n\r\n', 'http:unsupported-version'],
  ])('%s', (_, head, reason) => {
    expect(reasonOf(head)).toBe(reason);
  });

  it('rejects a bare LF as soon as it arrives, without waiting for the end of the head', () => {
    const reader = new HttpHeadReader();
    expect(reader.push(bytesOf('GET / HTTP/1.1\n'))).toEqual({ kind: 'malformed', reason: 'http:bare-lf' });
  });
});

describe('HttpHeadReader: not HTTP', () => {
  it.each([
    ['lower-case method', 'get / HTTP/1.1\r\n\r\n'],
    ['TLS record', '\u0016\u0003\u0001\u0002\u0000'],
    ['leading CRLF', '\r\nGET / HTTP/1.1\r\n\r\n'],
    ['leading space', ' GET / HTTP/1.1\r\n\r\n'],
    ['SSH banner', 'SSH-2.0-OpenSSH_9.6\r\n'],
    ['digit in method', 'G3T / HTTP/1.1\r\n\r\n'],
    ['method too long', `${'A'.repeat(33)} / HTTP/1.1\r\n\r\n`],
  ])('%s', (_, bytes) => {
    expect(parse(bytes)).toEqual({ kind: 'not-http' });
  });

  it('says need-more while the bytes could still be a method', () => {
    const reader = new HttpHeadReader();
    expect(reader.push(bytesOf('G'))).toEqual({ kind: 'need-more' });
    expect(reader.push(bytesOf('ET'))).toEqual({ kind: 'need-more' });
    expect(reader.push(bytesOf(' /'))).toEqual({ kind: 'need-more' });
    const other = new HttpHeadReader();
    expect(other.push(bytesOf('GE'))).toEqual({ kind: 'need-more' });
    expect(other.push(bytesOf('t'))).toEqual({ kind: 'not-http' });
    expect(other.push(bytesOf('GET / HTTP/1.1\r\nHost: a\r\n\r\n'))).toEqual({ kind: 'not-http' }); // sticky
  });
});

describe('HttpHeadReader: chunking and bounds', () => {
  const heads = [
    'GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n',
    'POST http://api.example.com:8080/v1 HTTP/1.1\r\nhost: api.example.com:8080\r\nContent-Length: 0\r\n\r\n',
    'GET /x HTTP/1.0\r\n\r\n',
    'CONNECT [2001:db8::2]:443 HTTP/1.1\r\nHost: [2001:db8::2]:443\r\n\r\n',
  ];
  const expected = heads.map((h) => parse(h));

  it('the reference heads parse', () => {
    expect(expected.map((r) => (r.kind === 'found' ? r.host : r.kind))).toEqual([
      'www.example.com',
      'api.example.com',
      null,
      '[2001:db8::2]',
    ]);
  });

  it('parses valid heads identically at random split points, and one byte at a time', () => {
    fc.assert(
      fc.property(fc.nat(heads.length - 1), fc.array(fc.nat(120), { maxLength: 12 }), (i, cuts) => {
        const r = lastAfterNeedMore(feedAll(new HttpHeadReader(), splitAt(bytesOf(heads[i]!), cuts)));
        expect(r).toEqual(expected[i]);
      }),
      { numRuns: 500 },
    );
    for (let i = 0; i < heads.length; i++) {
      expect(lastAfterNeedMore(feedAll(new HttpHeadReader(), byteByByte(bytesOf(heads[i]!))))).toEqual(expected[i]);
    }
  });

  it('parses a head that arrives whole without copying it', () => {
    const reader = new HttpHeadReader();
    expect(reader.push(bytesOf(heads[0]!)).kind).toBe('found');
    expect(reader.bufferCapacity).toBe(0);
  });

  it('a head of exactly maxHeadBytes parses; one byte longer is head-too-long', () => {
    const base = 'GET / HTTP/1.1\r\nHost: a.example\r\nX-Pad: \r\n\r\n';
    const pad = (n: number) => base.replace('X-Pad: ', `X-Pad: ${'p'.repeat(n)}`);
    const exact = pad(200 - base.length);
    expect(exact.length).toBe(200);
    expect(parse(exact, { maxHeadBytes: 200 })).toMatchObject({ kind: 'found', host: 'a.example' });
    expect(parse(pad(201 - base.length), { maxHeadBytes: 200 })).toEqual({ kind: 'malformed', reason: 'http:head-too-long' });
    expect(new HttpHeadReader().maxHeadBytes).toBe(DEFAULT_MAX_HEAD_BYTES);
    expect(DEFAULT_MAX_HEAD_BYTES).toBe(16_384);
  });

  it('a head that never ends is cut at the bound, and memory held never exceeds it', () => {
    const max = 5000;
    const reader = new HttpHeadReader({ maxHeadBytes: max });
    const line = bytesOf('X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n');
    const results = feedAll(reader, [bytesOf('GET / HTTP/1.1\r\n'), ...Array.from({ length: 200 }, () => line)], () => {
      expect(reader.bufferCapacity).toBeLessThanOrEqual(max);
      expect(reader.bufferedBytes).toBeLessThanOrEqual(reader.bufferCapacity);
    });
    const first = results.findIndex((r) => r.kind !== 'need-more');
    expect(results[first]).toEqual({ kind: 'malformed', reason: 'http:head-too-long' });
    // Refused at the chunk that crossed the bound, not later.
    expect(16 + first * line.length).toBeGreaterThanOrEqual(max);
    expect(16 + (first - 1) * line.length).toBeLessThan(max);
    expect(reader.bufferCapacity).toBe(0);
    expect(reader.bytesSeen).toBe(16 + 200 * line.length);
  });

  it('random bytes never throw and end in a terminal result or need-more', () => {
    const kinds = new Set(['need-more', 'found', 'not-http', 'malformed']);
    const run = (bytes: Uint8Array, cuts: number[]) => {
      const reader = new HttpHeadReader({ maxHeadBytes: 512 });
      let terminal: HttpHostResult | null = null;
      for (const c of splitAt(bytes, cuts)) {
        const r = reader.push(c);
        expect(kinds.has(r.kind)).toBe(true);
        if (terminal !== null) expect(r).toBe(terminal);
        if (r.kind !== 'need-more') terminal = r;
        expect(reader.bufferCapacity).toBeLessThanOrEqual(512);
      }
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 700 }), fc.array(fc.nat(700), { maxLength: 8 }), run),
      { numRuns: 2000 },
    );
    // Random header-ish text behind a valid request line reaches the head parser.
    const headerish = fc.string({ unit: fc.constantFrom('H', 'o', 's', 't', ':', ' ', '\t', '\r', '\n', 'a', '.', '[', ']', '1', '@', '/', '\u0000', '\u00e9'), maxLength: 120 });
    fc.assert(
      fc.property(headerish, fc.array(fc.nat(150), { maxLength: 6 }), (tail, cuts) => {
        run(bytesOf(`GET http://a/ HTTP/1.1\r\n${tail}\r\n\r\n`), cuts);
      }),
      { numRuns: 2000 },
    );
  });
});
