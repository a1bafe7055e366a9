import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { NamePeeker, type PeekResult } from '../../sni/peek.js';
import { loadHelloFixtures } from './support/fixtures.js';
import { feedAll, lastAfterNeedMore } from './support/feed.js';
import { buildClientHello, byteByByte, bytesOf, extractHandshake, splitAt, toRecords } from './support/hello-builder.js';

const fixtures = loadHelloFixtures();

function peek(bytes: Uint8Array | string, opts?: { maxHandshakeBytes?: number; maxHeadBytes?: number }): PeekResult {
  return new NamePeeker(opts).push(typeof bytes === 'string' ? bytesOf(bytes) : bytes);
}

describe('NamePeeker: dispatch', () => {
  it('TLS: every fixture gives its SNI, whole and one byte at a time', () => {
    for (const f of fixtures) {
      expect(peek(f.bytes)).toMatchObject({ kind: 'name', protocol: 'tls', name: f.sni });
      const peeker = new NamePeeker();
      expect(lastAfterNeedMore(feedAll(peeker, byteByByte(f.bytes)))).toMatchObject({ kind: 'name', protocol: 'tls', name: f.sni });
      expect(peeker.bytesSeen).toBe(f.bytes.length);
      expect(peeker.protocol).toBe('tls');
    }
  });

  it('TLS: passes ALPN and ECH through', () => {
    const hello = toRecords(buildClientHello({ sni: 'outer.example', alpn: ['h2', 'http/1.1'], ech: true, grease: true }));
    expect(peek(hello)).toEqual({ kind: 'name', protocol: 'tls', name: 'outer.example', alpn: ['h2', 'http/1.1'], ech: true });
  });

  it('HTTP: the Host, with alpn [] and ech false', () => {
    expect(peek('GET / HTTP/1.1\r\nHost: www.example.com:80\r\n\r\n')).toEqual({
      kind: 'name',
      protocol: 'http',
      name: 'www.example.com',
      alpn: [],
      ech: false,
    });
    expect(peek('GET / HTTP/1.0\r\n\r\n')).toMatchObject({ kind: 'name', protocol: 'http', name: null });
  });

  it('a first chunk of one byte that could be a method is need-more', () => {
    for (const c of ['G', 'P', 'C', 'O', 'D']) {
      const peeker = new NamePeeker();
      expect(peeker.push(bytesOf(c))).toEqual({ kind: 'need-more' });
      expect(peeker.protocol).toBe('http');
    }
    expect(peek(Uint8Array.of(0x16))).toEqual({ kind: 'need-more' });
    expect(peek(new Uint8Array(0))).toEqual({ kind: 'need-more' });
  });

  it('anything else is unknown-protocol, from the first byte', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }).filter((b) => b !== 0x16 && !(b >= 0x41 && b <= 0x5a)), (b) => {
        expect(peek(Uint8Array.of(b))).toEqual({ kind: 'unknown-protocol' });
      }),
    );
    expect(peek('SSH-2.0-OpenSSH_9.6\r\n')).toEqual({ kind: 'unknown-protocol' });
    expect(peek('get / HTTP/1.1\r\n\r\n')).toEqual({ kind: 'unknown-protocol' });
    // SSLv2-compatible ClientHello (RFC 5246 E.2).
    expect(peek(Uint8Array.of(0x80, 0x2e, 0x01, 0x03, 0x01))).toEqual({ kind: 'unknown-protocol' });
    // 0x16 but not a TLS 3.x record.
    expect(peek(Uint8Array.of(0x16, 0x00, 0x01, 0x00, 0x10))).toEqual({ kind: 'unknown-protocol' });
  });

  it('an upper-case first byte that turns out not to be a method becomes unknown-protocol', () => {
    const peeker = new NamePeeker();
    expect(peeker.push(bytesOf('GE'))).toEqual({ kind: 'need-more' });
    expect(peeker.push(Uint8Array.of(0x00))).toEqual({ kind: 'unknown-protocol' });
    expect(peeker.push(bytesOf('T / HTTP/1.1\r\nHost: a\r\n\r\n'))).toEqual({ kind: 'unknown-protocol' });
  });

  it('malformed input keeps the reader reason', () => {
    expect(peek('GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n')).toEqual({
      kind: 'malformed',
      reason: 'http:duplicate-host',
    });
    const twoNames = toRecords(buildClientHello({ serverNames: [{ type: 0, name: 'a.example' }, { type: 0, name: 'b.example' }] }));
    expect(peek(twoNames)).toEqual({ kind: 'malformed', reason: 'tls:multiple-server-names' });
  });

  it('passes its bounds to the readers', () => {
    const big = toRecords(buildClientHello({ sni: 'big.example', padTo: 3000 }));
    expect(peek(big, { maxHandshakeBytes: 2999 })).toEqual({ kind: 'malformed', reason: 'tls:hello-too-large' });
    expect(peek(big, { maxHandshakeBytes: 3000 })).toMatchObject({ kind: 'name', name: 'big.example' });
    const head = `GET / HTTP/1.1\r\nHost: a.example\r\nX: ${'x'.repeat(100)}\r\n\r\n`;
    expect(peek(head, { maxHeadBytes: 100 })).toEqual({ kind: 'malformed', reason: 'http:head-too-long' });
    expect(() => new NamePeeker({ maxHeadBytes: 0 })).toThrow(RangeError);
    expect(() => new NamePeeker({ maxHandshakeBytes: -1 })).toThrow(RangeError);
  });
});

describe('NamePeeker: properties', () => {
  it('fixture hellos re-fragmented into random records and segments give their SNI', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...fixtures),
        fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 10 }),
        fc.array(fc.nat(2000), { maxLength: 10 }),
        (f, sizes, cuts) => {
          const records = toRecords(extractHandshake(f.bytes), sizes);
          const r = lastAfterNeedMore(feedAll(new NamePeeker(), splitAt(records, cuts)));
          expect(r).toMatchObject({ kind: 'name', protocol: 'tls', name: f.sni });
        },
      ),
      { numRuns: 300 },
    );
  });

  it('random bytes never throw, results are sticky, and memory stays within the bounds', () => {
    const kinds = new Set(['need-more', 'name', 'unknown-protocol', 'malformed']);
    const prefixes = [new Uint8Array(0), Uint8Array.of(0x16, 0x03, 0x01), bytesOf('GET '), bytesOf('POST http://')];
    fc.assert(
      fc.property(fc.constantFrom(...prefixes), fc.uint8Array({ maxLength: 600 }), fc.array(fc.nat(700), { maxLength: 8 }), (prefix, bytes, cuts) => {
        const all = new Uint8Array(prefix.length + bytes.length);
        all.set(prefix);
        all.set(bytes, prefix.length);
        const peeker = new NamePeeker({ maxHandshakeBytes: 1024, maxHeadBytes: 256 });
        let terminal: PeekResult | null = null;
        for (const c of splitAt(all, cuts)) {
          const r = peeker.push(c);
          expect(kinds.has(r.kind)).toBe(true);
          if (terminal !== null) expect(r).toBe(terminal);
          if (r.kind !== 'need-more') terminal = r;
          expect(peeker.bufferedBytes).toBeLessThanOrEqual(1024);
        }
        expect(peeker.bytesSeen).toBe(all.length);
      }),
      { numRuns: 3000 },
    );
  });
});
