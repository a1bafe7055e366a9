import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { ClientHelloReader, MAX_CLIENT_HELLO_BYTES, type ClientHelloResult } from '../../sni/clienthello.js';
import { loadHelloFixtures } from './support/fixtures.js';
import { feedAll, lastAfterNeedMore } from './support/feed.js';
import {
  buildClientHello,
  byteByByte,
  bytesOf,
  concat,
  extension,
  extractHandshake,
  serverNameExtensionData,
  splitAt,
  toRecords,
  type HelloSpec,
} from './support/hello-builder.js';

const fixtures = loadHelloFixtures();

function parseChunks(chunks: readonly Uint8Array[], opts?: { maxHandshakeBytes?: number }): ClientHelloResult {
  return lastAfterNeedMore(feedAll(new ClientHelloReader(opts), chunks));
}

function parseWhole(bytes: Uint8Array, opts?: { maxHandshakeBytes?: number }): ClientHelloResult {
  return new ClientHelloReader(opts).push(bytes);
}

function helloRecords(spec: HelloSpec): Uint8Array {
  return toRecords(buildClientHello(spec));
}

function reasonOf(r: ClientHelloResult): string {
  if (r.kind !== 'malformed') throw new Error(`expected malformed, got ${JSON.stringify(r)}`);
  return r.reason;
}

/** Replaces the body of a handshake message, fixing up the uint24 length. */
function withBody(body: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff), body]);
}

const TERMINAL_OR_MORE = new Set(['need-more', 'found', 'not-tls', 'malformed']);

describe('ClientHelloReader: captured hellos', () => {
  it('has the fixtures it is supposed to test', () => {
    expect(fixtures.map((f) => f.name)).toEqual(
      expect.arrayContaining(['curl', 'gnutls', 'node-tls', 'openssl-nosni', 'openssl-tls12', 'openssl-tls13', 'python-ssl']),
    );
    expect(fixtures.find((f) => f.name === 'openssl-nosni')!.sni).toBeNull();
  });

  for (const f of fixtures) {
    describe(f.name, () => {
      it('parses to its SNI when fed whole, without copying', () => {
        const reader = new ClientHelloReader();
        const r = reader.push(f.bytes);
        expect(r).toMatchObject({ kind: 'found', sni: f.sni });
        expect(reader.bytesSeen).toBe(f.bytes.length);
        expect(reader.bufferCapacity).toBe(0);
      });

      it('parses to its SNI fed one byte at a time', () => {
        const r = parseChunks(byteByByte(f.bytes));
        expect(r).toMatchObject({ kind: 'found', sni: f.sni });
      });

      it('parses to its SNI at random split points', () => {
        fc.assert(
          fc.property(fc.array(fc.integer({ min: 0, max: f.bytes.length }), { maxLength: 12 }), (cuts) => {
            const r = parseChunks(splitAt(f.bytes, cuts));
            expect(r).toMatchObject({ kind: 'found', sni: f.sni });
          }),
          { numRuns: 200 },
        );
      });

      it('parses to its SNI re-fragmented into random TLS records and random segments', () => {
        const handshake = extractHandshake(f.bytes);
        fc.assert(
          fc.property(
            fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 16 }),
            fc.array(fc.integer({ min: 0, max: 2000 }), { maxLength: 10 }),
            (recordSizes, cuts) => {
              const records = toRecords(handshake, recordSizes, 0x0303);
              const r = parseChunks(splitAt(records, cuts));
              expect(r).toMatchObject({ kind: 'found', sni: f.sni });
            },
          ),
          { numRuns: 200 },
        );
      });
    });
  }

  it('reports ALPN from real hellos (curl offers h2 and http/1.1)', () => {
    const curl = fixtures.find((f) => f.name === 'curl')!;
    const r = parseWhole(curl.bytes);
    expect(r).toMatchObject({ kind: 'found', alpn: ['h2', 'http/1.1'], ech: false });
  });

  it('a strict prefix of a hello is always need-more', () => {
    for (const f of fixtures) {
      for (let n = 1; n < f.bytes.length; n += 7) {
        expect(parseWhole(f.bytes.subarray(0, n)).kind).toBe('need-more');
      }
    }
  });

  it('terminal results are sticky and bytesSeen keeps counting', () => {
    const f = fixtures[0]!;
    const reader = new ClientHelloReader();
    const first = reader.push(f.bytes);
    expect(first.kind).toBe('found');
    const again = reader.push(Uint8Array.of(0x15, 0x03, 0x03, 0, 2, 2, 40));
    expect(again).toBe(first);
    expect(reader.bytesSeen).toBe(f.bytes.length + 7);

    const bad = new ClientHelloReader();
    expect(bad.push(Uint8Array.of(0x47))).toEqual({ kind: 'not-tls' });
    expect(bad.push(f.bytes)).toEqual({ kind: 'not-tls' });
  });
});

describe('ClientHelloReader: built hellos', () => {
  it('reads SNI, ALPN and the absence of ECH', () => {
    const r = parseWhole(helloRecords({ sni: 'api.example.com', alpn: ['h2', 'http/1.1'] }));
    expect(r).toEqual({ kind: 'found', sni: 'api.example.com', alpn: ['h2', 'http/1.1'], ech: false });
  });

  it('reports the SNI as sent (not canonicalised)', () => {
    const r = parseWhole(helloRecords({ sni: 'API.Example.COM.' }));
    expect(r).toMatchObject({ kind: 'found', sni: 'API.Example.COM.' });
  });

  it('no server_name extension -> sni null; no extensions at all -> sni null, no ALPN', () => {
    expect(parseWhole(helloRecords({ sni: null }))).toMatchObject({ kind: 'found', sni: null });
    expect(parseWhole(helloRecords({ sni: 'x.example', noExtensions: true }))).toEqual({
      kind: 'found',
      sni: null,
      alpn: [],
      ech: false,
    });
  });

  it('tolerates GREASE cipher suites, extensions and ALPN values (dropping GREASE from the ALPN list)', () => {
    const r = parseWhole(helloRecords({ sni: 'g.example', alpn: ['h2'], grease: true }));
    expect(r).toEqual({ kind: 'found', sni: 'g.example', alpn: ['h2'], ech: false });
  });

  it('detects encrypted_client_hello and reports the outer SNI', () => {
    const r = parseWhole(helloRecords({ sni: 'public.ech.example', ech: true, alpn: ['h2'] }));
    expect(r).toEqual({ kind: 'found', sni: 'public.ech.example', alpn: ['h2'], ech: true });
  });

  it('a server_name list must hold exactly one host_name entry: any other type, or a second entry, is malformed', () => {
    // Issue 14 finding 9: this exact list used to be accepted as raw.test.
    const finding = helloRecords({ serverNames: [{ type: 1, name: 'blocked.test' }, { type: 0, name: 'raw.test' }] });
    expect(parseWhole(finding)).toEqual({ kind: 'malformed', reason: 'tls:bad-server-name-type' });
    expect(reasonOf(parseWhole(helloRecords({ serverNames: [{ type: 7, name: 'opaque' }] })))).toBe('tls:bad-server-name-type');
    expect(reasonOf(parseWhole(helloRecords({ serverNames: [{ type: 0, name: 'raw.test' }, { type: 1, name: 'blocked.test' }] })))).toBe(
      'tls:multiple-server-names',
    );
    expect(parseWhole(helloRecords({ serverNames: [{ type: 0, name: 'raw.test' }] }))).toMatchObject({ kind: 'found', sni: 'raw.test' });
  });

  it('accepts record versions 3.0 to 3.3', () => {
    const hs = buildClientHello({ sni: 'v.example' });
    for (const v of [0x0300, 0x0301, 0x0302, 0x0303]) {
      expect(parseWhole(toRecords(hs, [16_384], v))).toMatchObject({ kind: 'found', sni: 'v.example' });
    }
  });

  it('stops at the end of the ClientHello: later bytes in the record are not read', () => {
    const hs = concat([buildClientHello({ sni: 'a.example' }), Uint8Array.of(0xde, 0xad)]);
    expect(parseWhole(toRecords(hs))).toMatchObject({ kind: 'found', sni: 'a.example' });
  });
});

describe('ClientHelloReader: not TLS', () => {
  it('answers not-tls on the first byte when it is not a handshake record', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }).filter((b) => b !== 0x16), (b) => {
        expect(parseWhole(Uint8Array.of(b))).toEqual({ kind: 'not-tls' });
      }),
    );
  });

  it('not-tls for HTTP, an SSLv2-compatible hello, an alert record, and 0x16 without a 3.x version', () => {
    expect(parseWhole(bytesOf('GET / HTTP/1.1\r\n'))).toEqual({ kind: 'not-tls' });
    // SSLv2 CLIENT-HELLO with the 2-byte header (high bit set), RFC 5246 E.2.
    expect(parseWhole(Uint8Array.of(0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15))).toEqual({ kind: 'not-tls' });
    expect(parseWhole(Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28))).toEqual({ kind: 'not-tls' });
    expect(parseWhole(Uint8Array.of(0x16, 0x02, 0x00, 0x00, 0x10))).toEqual({ kind: 'not-tls' });
  });
});

describe('ClientHelloReader: malformed', () => {
  const hs = buildClientHello({ sni: 'm.example', alpn: ['h2'] });

  it('a non-handshake record before the hello is complete', () => {
    const firstHalf = toRecords(hs.subarray(0, 50));
    const ccs = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);
    expect(reasonOf(parseChunks([firstHalf, ccs]))).toBe('tls:unexpected-record-type');
  });

  it('record layer: bad version, empty record, record longer than 2^14', () => {
    expect(reasonOf(parseWhole(toRecords(hs, [16_384], 0x0304)))).toBe('tls:bad-record-version');
    const first = toRecords(hs.subarray(0, 10));
    expect(reasonOf(parseWhole(concat([first, Uint8Array.of(0x16, 0x04, 0x01, 0, 1, 0)])))).toBe('tls:bad-record-version');
    expect(reasonOf(parseWhole(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x00)))).toBe('tls:empty-record');
    expect(reasonOf(parseWhole(Uint8Array.of(0x16, 0x03, 0x01, 0x40, 0x01)))).toBe('tls:record-too-long');
  });

  it('a first handshake message that is not a ClientHello', () => {
    const serverHello = concat([Uint8Array.of(2), hs.subarray(1)]);
    expect(reasonOf(parseWhole(toRecords(serverHello)))).toBe('tls:not-client-hello');
  });

  // Offsets inside a default-built handshake message: header(4) version(2) random(32) sid(1+32)
  const SID_LEN_AT = 4 + 2 + 32;
  const SUITES_LEN_AT = SID_LEN_AT + 1 + 32;
  const COMPRESSION_LEN_AT = SUITES_LEN_AT + 2 + 6;
  const EXTENSIONS_LEN_AT = COMPRESSION_LEN_AT + 1 + 1;

  function patched(at: number, ...values: number[]): Uint8Array {
    const copy = new Uint8Array(hs);
    copy.set(values, at);
    return toRecords(copy);
  }

  it('strict lengths in the fixed fields', () => {
    expect(reasonOf(parseWhole(patched(4, 2, 3)))).toBe('tls:bad-hello-version');
    expect(reasonOf(parseWhole(patched(SID_LEN_AT, 33)))).toBe('tls:bad-session-id');
    expect(reasonOf(parseWhole(patched(SUITES_LEN_AT, 0, 5)))).toBe('tls:bad-cipher-suites');
    expect(reasonOf(parseWhole(patched(SUITES_LEN_AT, 0, 0)))).toBe('tls:bad-cipher-suites');
    expect(reasonOf(parseWhole(patched(SUITES_LEN_AT, 0xff, 0xfe)))).toBe('tls:truncated-hello');
    expect(reasonOf(parseWhole(patched(COMPRESSION_LEN_AT, 0)))).toBe('tls:bad-compression-methods');
    expect(reasonOf(parseWhole(patched(COMPRESSION_LEN_AT, 0xff)))).toBe('tls:truncated-hello');
    expect(reasonOf(parseWhole(toRecords(withBody(new Uint8Array(20).fill(3)))))).toBe('tls:truncated-hello');
    expect(reasonOf(parseWhole(toRecords(withBody(new Uint8Array(0)))))).toBe('tls:truncated-hello');
  });

  it('the extensions block must exactly fill the rest of the message', () => {
    const body = hs.subarray(4);
    const extLength = (hs[EXTENSIONS_LEN_AT]! << 8) | hs[EXTENSIONS_LEN_AT + 1]!;
    expect(reasonOf(parseWhole(patched(EXTENSIONS_LEN_AT, (extLength + 1) >> 8, (extLength + 1) & 0xff)))).toBe(
      'tls:truncated-extensions',
    );
    expect(reasonOf(parseWhole(toRecords(withBody(concat([body, Uint8Array.of(0)])))))).toBe('tls:trailing-bytes');
    // One stray byte where the extensions length should be.
    expect(reasonOf(parseWhole(toRecords(withBody(body.subarray(0, EXTENSIONS_LEN_AT - 4 + 1)))))).toBe(
      'tls:truncated-extensions',
    );
  });

  it('each extension must fit in the block', () => {
    // An extension whose header says 10 bytes but whose data is 2, with the block length consistent.
    const broken = concat([Uint8Array.of(0x00, 0x2b, 0x00, 0x0a), Uint8Array.of(1, 2)]);
    const body = concat([hs.subarray(4, EXTENSIONS_LEN_AT), Uint8Array.of(0, broken.length), broken]);
    expect(reasonOf(parseWhole(toRecords(withBody(body))))).toBe('tls:truncated-extension');
    const stub = concat([hs.subarray(4, EXTENSIONS_LEN_AT), Uint8Array.of(0, 3, 0, 0x2b, 0)]);
    expect(reasonOf(parseWhole(toRecords(withBody(stub))))).toBe('tls:truncated-extension');
  });

  it('server_name: two host_names, empty or non-ASCII names, inconsistent list lengths, a second extension', () => {
    const two = helloRecords({ serverNames: [{ type: 0, name: 'allowed.example' }, { type: 0, name: 'evil.example' }] });
    expect(reasonOf(parseWhole(two))).toBe('tls:multiple-server-names');
    expect(reasonOf(parseWhole(helloRecords({ serverNames: [{ type: 0, name: '' }] })))).toBe('tls:bad-server-name');
    expect(reasonOf(parseWhole(helloRecords({ serverNames: [{ type: 0, name: 'b\u00e4d.example' }] })))).toBe(
      'tls:bad-server-name',
    );
    expect(reasonOf(parseWhole(helloRecords({ serverNames: [{ type: 0, name: 'a.example\u0000.evil' }] })))).toBe(
      'tls:bad-server-name',
    );
    expect(reasonOf(parseWhole(helloRecords({ serverNames: [] })))).toBe('tls:bad-server-name-list');
    const sn = serverNameExtensionData([{ type: 0, name: 'x.example' }]);
    const longer = new Uint8Array(sn);
    longer[1] = longer[1]! + 1; // list length one more than the data
    expect(reasonOf(parseWhole(helloRecords({ extraExtensions: [{ type: 0, data: longer }] })))).toBe('tls:bad-server-name-list');
    const entryOver = new Uint8Array(sn);
    entryOver[4] = entryOver[4]! + 1; // the host_name length runs past the list
    expect(reasonOf(parseWhole(helloRecords({ extraExtensions: [{ type: 0, data: entryOver }] })))).toBe(
      'tls:bad-server-name-list',
    );
    expect(reasonOf(parseWhole(helloRecords({ extraExtensions: [{ type: 0, data: new Uint8Array(0) }] })))).toBe(
      'tls:bad-server-name-list',
    );
    const second = helloRecords({ sni: 'allowed.example', extraExtensions: [{ type: 0, data: serverNameExtensionData([{ type: 0, name: 'evil.example' }]) }] });
    expect(reasonOf(parseWhole(second))).toBe('tls:duplicate-extension');
  });

  it('ALPN: empty names, inconsistent list length, duplicates', () => {
    expect(reasonOf(parseWhole(helloRecords({ alpn: ['h2', ''] })))).toBe('tls:bad-alpn-list');
    expect(reasonOf(parseWhole(helloRecords({ alpn: [] })))).toBe('tls:bad-alpn-list');
    expect(reasonOf(parseWhole(helloRecords({ extraExtensions: [{ type: 16, data: Uint8Array.of(0, 4, 2, 0x68, 0x32) }] })))).toBe(
      'tls:bad-alpn-list',
    );
    expect(
      reasonOf(parseWhole(helloRecords({ alpn: ['h2'], extraExtensions: [{ type: 16, data: Uint8Array.of(0, 3, 2, 0x68, 0x32) }] }))),
    ).toBe('tls:duplicate-extension');
    expect(reasonOf(parseWhole(helloRecords({ ech: true, extraExtensions: [{ type: 0xfe0d, data: Uint8Array.of(1) }] })))).toBe(
      'tls:duplicate-extension',
    );
  });
});

describe('ClientHelloReader: size bound', () => {
  /** The largest ClientHello the structures allow: every vector at its maximum. */
  const maximal = buildClientHello({
    sni: 'max.example',
    alpn: ['h2'],
    sessionIdLength: 32,
    cipherSuiteCount: 32_767,
    compressionCount: 255,
    padTo: MAX_CLIENT_HELLO_BYTES,
  });

  it('the default bound is the protocol maximum, 131400 bytes', () => {
    expect(MAX_CLIENT_HELLO_BYTES).toBe(131_400);
    expect(new ClientHelloReader().maxHandshakeBytes).toBe(MAX_CLIENT_HELLO_BYTES);
    expect(maximal.length).toBe(MAX_CLIENT_HELLO_BYTES);
    // Every vector is full: the extensions block is 2^16-1 bytes.
    const extLenAt = 4 + 2 + 32 + 33 + 65_536 + 256;
    expect((maximal[extLenAt]! << 8) | maximal[extLenAt + 1]!).toBe(0xffff);
  });

  it('a hello at the protocol maximum parses, in 9 records and in random segments', () => {
    const records = toRecords(maximal, [16_384]);
    expect(parseWhole(records)).toMatchObject({ kind: 'found', sni: 'max.example', alpn: ['h2'] });
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: records.length }), { maxLength: 30 }), (cuts) => {
        const reader = new ClientHelloReader();
        const results = feedAll(reader, splitAt(records, cuts), () => {
          expect(reader.bufferCapacity).toBeLessThanOrEqual(MAX_CLIENT_HELLO_BYTES);
        });
        expect(lastAfterNeedMore(results)).toMatchObject({ kind: 'found', sni: 'max.example' });
      }),
      { numRuns: 20 },
    );
  });

  it('a declared length one past the maximum is refused as soon as the header arrives', () => {
    const reader = new ClientHelloReader();
    const body = MAX_CLIENT_HELLO_BYTES - 4 + 1;
    const r = reader.push(Uint8Array.of(0x16, 0x03, 0x01, 0x40, 0x00, 1, body >> 16, (body >> 8) & 0xff, body & 0xff));
    expect(reasonOf(r)).toBe('tls:hello-too-large');
  });

  it('a configured bound: a hello of exactly the bound parses, one byte more is malformed', () => {
    const exact = buildClientHello({ sni: 'b.example', padTo: 600 });
    const over = buildClientHello({ sni: 'b.example', padTo: 601 });
    expect(parseChunks(splitAt(toRecords(exact, [100]), [3, 250, 251]), { maxHandshakeBytes: 600 })).toMatchObject({
      kind: 'found',
      sni: 'b.example',
    });
    const reader = new ClientHelloReader({ maxHandshakeBytes: 600 });
    // Refused after the first 9 bytes (record header + handshake header), not after 601.
    expect(reader.push(toRecords(over).subarray(0, 9))).toMatchObject({ kind: 'malformed', reason: 'tls:hello-too-large' });
    expect(reader.bufferedBytes).toBe(0);
    expect(() => new ClientHelloReader({ maxHandshakeBytes: 2.5 })).toThrow(RangeError);
  });

  it('memory held grows with bytes received, never past the bound, and is released at the end', () => {
    const max = 40_000;
    const hello = buildClientHello({ sni: 'mem.example', padTo: max });
    const records = toRecords(hello, [1000]);
    const reader = new ClientHelloReader({ maxHandshakeBytes: max });
    let peak = 0;
    const results = feedAll(reader, splitAt(records, Array.from({ length: 200 }, (_, i) => i * 211)), () => {
      peak = Math.max(peak, reader.bufferCapacity);
      expect(reader.bufferedBytes).toBeLessThanOrEqual(reader.bufferCapacity);
      expect(reader.bufferCapacity).toBeLessThanOrEqual(max);
      expect(reader.bufferCapacity).toBeLessThanOrEqual(Math.max(1024, 2 * reader.bufferedBytes));
    });
    expect(lastAfterNeedMore(results)).toMatchObject({ kind: 'found', sni: 'mem.example' });
    expect(peak).toBe(max);
    expect(reader.bufferCapacity).toBe(0);
    expect(reader.bufferedBytes).toBe(0);
  });

  it('a client that announces a huge hello and sends a few bytes costs little memory', () => {
    const reader = new ClientHelloReader();
    const body = MAX_CLIENT_HELLO_BYTES - 4;
    const r = feedAll(reader, [
      Uint8Array.of(0x16, 0x03, 0x01, 0x40, 0x00),
      Uint8Array.of(1, body >> 16, (body >> 8) & 0xff, body & 0xff, 3, 3),
    ]);
    expect(r.map((x) => x.kind)).toEqual(['need-more', 'need-more']);
    expect(reader.bufferCapacity).toBeLessThanOrEqual(1024);
  });
});

describe('ClientHelloReader: never throws', () => {
  function runChunks(bytes: Uint8Array, cuts: number[]): void {
    const reader = new ClientHelloReader({ maxHandshakeBytes: 4096 });
    let terminal: ClientHelloResult | null = null;
    for (const c of splitAt(bytes, cuts)) {
      const r = reader.push(c);
      expect(TERMINAL_OR_MORE.has(r.kind)).toBe(true);
      if (terminal !== null) expect(r).toBe(terminal);
      if (r.kind !== 'need-more') terminal = r;
      expect(reader.bufferCapacity).toBeLessThanOrEqual(4096);
    }
    expect(reader.bytesSeen).toBe(bytes.length);
  }

  it('random bytes end in a terminal result or need-more', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.array(fc.nat(600), { maxLength: 8 }), (bytes, cuts) => {
        runChunks(bytes, cuts);
      }),
      { numRuns: 3000 },
    );
  });

  it('random bytes behind a plausible record and handshake header reach the body parser', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 500 }), fc.array(fc.nat(600), { maxLength: 8 }), (body, cuts) => {
        const hs = withBody(concat([Uint8Array.of(3, 3), body]));
        runChunks(toRecords(hs, [body.length > 100 ? 97 : 16_384]), cuts);
      }),
      { numRuns: 3000 },
    );
  });

  it('real hellos with random bytes changed never throw', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...fixtures),
        fc.array(fc.tuple(fc.nat(600), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(600), { maxLength: 6 }),
        (f, edits, cuts) => {
          const bytes = new Uint8Array(f.bytes);
          for (const [at, v] of edits) bytes[at % bytes.length] = v;
          runChunks(bytes, cuts);
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('test helpers', () => {
  it('toRecords/extractHandshake round-trip, and a re-recorded hello differs from the original stream', () => {
    const hs = buildClientHello({ sni: 'rt.example' });
    const records = toRecords(hs, [7, 1, 300]);
    expect(extractHandshake(records)).toEqual(hs);
    expect(records.length).toBe(hs.length + 5 * Math.ceil(1 + 1 + (hs.length - 8) / 300));
    expect(extension(0x1234, Uint8Array.of(9))).toEqual(Uint8Array.of(0x12, 0x34, 0, 1, 9));
  });
});
