/**
 * HttpRequestStream (sni/http-stream.ts): every request on a kept-alive or
 * pipelined HTTP/1.x connection is checked, bodies are skipped by their
 * framing, and a refused request never reaches `out`, not even in part.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { HttpRequestStream, type HttpStreamVerdict } from '../../sni/http-stream.js';
import { bytesOf, concat } from './support/hello-builder.js';

const latin1 = (b: Uint8Array): string => Buffer.from(b).toString('latin1');

interface Run {
  verdicts: HttpStreamVerdict[];
  released: string;
  stream: HttpRequestStream;
}

/** Feeds `chunks` (each a transient buffer, overwritten after the call) and collects what was released. */
function run(chunks: readonly (string | Uint8Array)[], stream = new HttpRequestStream()): Run {
  const out: Uint8Array[] = [];
  const verdicts: HttpStreamVerdict[] = [];
  for (const c of chunks) {
    const transient = new Uint8Array(bytesOf(c));
    verdicts.push(stream.push(transient, (b) => out.push(b.slice())));
    transient.fill(0xee);
  }
  return { verdicts, released: latin1(concat(out)), stream };
}

const get = (host: string, path = '/'): string => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

describe('HttpRequestStream: one connection, one name', () => {
  it('passes kept-alive requests for the same host (case, port and trailing dot aside)', () => {
    const all = get('www.t.test', '/a') + get('WWW.T.TEST:80', '/b') + get('www.t.test.', '/c');
    const r = run([all]);
    expect(r.verdicts).toEqual(['watching']);
    expect(r.released).toBe(all);
    expect(r.stream.requestCount).toBe(3);
    expect(r.stream.name).toBe('www.t.test');
  });

  it('a pipelined second request naming another host: mismatch, and only the first request is released', () => {
    const first = get('www.t.test');
    const r = run([first + get('blocked.test', '/smuggled')]);
    expect(r.verdicts).toEqual(['mismatch']);
    expect(r.released).toBe(first);
    expect(r.stream.secondName).toBe('blocked.test');
    expect(r.stream.reason).toBe('second-name');
    // Sticky: nothing more is released.
    const later = run([get('www.t.test')], r.stream);
    expect(later.verdicts).toEqual(['mismatch']);
    expect(later.released).toBe('');
  });

  it('the second request head arriving in pieces: none of it is released, even the part before its Host', () => {
    const first = get('www.t.test');
    const r = run([first + 'GET /x HTTP/1.1\r\nAcc', 'ept: */*\r\nHost: blocked.te', 'st\r\n\r\n']);
    expect(r.verdicts).toEqual(['watching', 'watching', 'mismatch']);
    expect(r.released).toBe(first);
    expect(latin1(r.stream.unsent())).toBe('GET /x HTTP/1.1\r\nAccept: */*\r\nHost: blocked.test\r\n\r\n');
  });

  it('a second request whose absolute target names another host, or that has no Host, is refused', () => {
    expect(run([get('a.test') + 'GET http://b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n']).verdicts).toEqual(['mismatch']);
    expect(run([get('a.test') + 'GET / HTTP/1.0\r\n\r\n']).verdicts).toEqual(['mismatch']);
    expect(run([get('a.test') + 'GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n']).stream.reason).toBe('http:host-mismatch');
  });

  it('bodies are skipped by Content-Length: a "request" inside a body is body, the next real one is checked', () => {
    const inner = get('blocked.test');
    const post = `POST /u HTTP/1.1\r\nHost: www.t.test\r\nContent-Length: ${inner.length}\r\n\r\n${inner}`;
    const ok = run([post + get('www.t.test')]);
    expect(ok.verdicts).toEqual(['watching']);
    expect(ok.stream.requestCount).toBe(2);
    const bad = run([post + get('blocked.test', '/after')]);
    expect(bad.verdicts).toEqual(['mismatch']);
    expect(bad.released).toBe(post);
  });

  it('chunked bodies: sizes, extensions, trailers; then the next request is checked', () => {
    const body = '5\r\nhello\r\n1a;ext=1;q="x"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n';
    const post = `POST /c HTTP/1.1\r\nHost: www.t.test\r\nTransfer-Encoding: chunked\r\n\r\n${body}`;
    expect(run([post + get('www.t.test')]).stream.requestCount).toBe(2);
    const bad = run([post + get('blocked.test')]);
    expect(bad.verdicts).toEqual(['mismatch']);
    expect(bad.released).toBe(post);
  });

  it.each([
    ['CL and TE together', 'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n', 'http:content-length-and-transfer-encoding'],
    ['two Content-Length', 'Content-Length: 5\r\nContent-Length: 5\r\n', 'http:duplicate-content-length'],
    ['a Content-Length list', 'Content-Length: 5, 5\r\n', 'http:bad-content-length'],
    ['a signed Content-Length', 'Content-Length: +5\r\n', 'http:bad-content-length'],
    ['a hex Content-Length', 'Content-Length: 0x5\r\n', 'http:bad-content-length'],
    ['an empty Content-Length', 'Content-Length: \r\n', 'http:bad-content-length'],
    ['a 16-digit Content-Length', 'Content-Length: 1000000000000000\r\n', 'http:bad-content-length'],
    ['TE gzip, chunked', 'Transfer-Encoding: gzip, chunked\r\n', 'http:bad-transfer-encoding'],
    ['TE chunked twice', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n', 'http:duplicate-transfer-encoding'],
    ['TE "chunked " with a tab inside', 'Transfer-Encoding: chun\tked\r\n', 'http:bad-transfer-encoding'],
    ['TE identity', 'Transfer-Encoding: identity\r\n', 'http:bad-transfer-encoding'],
  ])('ambiguous framing is malformed: %s (on a later request too)', (_, fields, reason) => {
    const head = `POST / HTTP/1.1\r\nHost: www.t.test\r\n${fields}\r\n`;
    const first = run([head]);
    expect(first.verdicts).toEqual(['malformed']);
    expect(first.stream.reason).toBe(reason);
    const later = run([get('www.t.test') + head]);
    expect(later.verdicts).toEqual(['malformed']);
    expect(later.released).toBe(get('www.t.test'));
  });

  it('chunked in HTTP/1.0 is malformed', () => {
    expect(run(['POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n']).stream.reason).toBe('http:transfer-encoding-in-http-1.0');
  });

  it.each([
    ['a space before CRLF', '5 \r\nhello\r\n0\r\n\r\n', 'http:bad-chunk-size'],
    ['a bare LF after the size', '5\nhello\r\n0\r\n\r\n', 'http:bad-chunk-size'],
    ['no size', '\r\nhello\r\n0\r\n\r\n', 'http:bad-chunk-size'],
    ['a 0x prefix', '0x5\r\nhello\r\n0\r\n\r\n', 'http:bad-chunk-size'],
    ['a negative size', '-5\r\nhello\r\n0\r\n\r\n', 'http:bad-chunk-size'],
    ['a 14-digit size', '10000000000000\r\n', 'http:chunk-too-large'],
    ['data longer than its size', '5\r\nhello!\r\n0\r\n\r\n', 'http:bad-chunk-end'],
    ['data end with a bare LF', '5\r\nhello\n0\r\n\r\n', 'http:bad-chunk-end'],
    ['CR inside an extension line', '5;a\rb\r\nhello\r\n0\r\n\r\n', 'http:bad-chunk-line'],
    ['a bare LF in an extension', '5;a\nhello\r\n0\r\n\r\n', 'http:bad-chunk-extension'],
    ['a trailer with obs-fold', '0\r\nX: 1\r\n folded\r\n\r\n', 'http:obs-fold'],
    ['a trailer line without a colon', '0\r\nnocolon\r\n\r\n', 'http:bad-trailer-line'],
    ['a trailer with a bare LF', '0\r\nX: 1\n\r\n', 'http:bare-lf'],
  ])('near-miss chunk framing is malformed: %s', (_, body, reason) => {
    const head = 'POST / HTTP/1.1\r\nHost: www.t.test\r\nTransfer-Encoding: chunked\r\n\r\n';
    const r = run([head + body + get('blocked.test')]);
    expect(r.verdicts).toEqual(['malformed']);
    expect(r.stream.reason).toBe(reason);
    expect(r.released.includes('blocked.test')).toBe(false);
  });

  it('a stray CRLF between requests, or bytes that are not a request, are malformed', () => {
    expect(run([get('a.test') + '\r\n' + get('a.test')]).verdicts).toEqual(['malformed']);
    expect(run([get('a.test') + '\x16\x03\x01']).stream.reason).toBe('http:not-a-request');
  });

  it('bounds: an endless second head is cut at maxHeadBytes, and never held beyond it', () => {
    const stream = new HttpRequestStream({ maxHeadBytes: 256 });
    const r = run([get('a.test'), 'GET / HTTP/1.1\r\n', ...Array.from({ length: 40 }, () => 'X-Pad: 0123456789\r\n')], stream);
    expect(r.verdicts.at(-1)).toBe('malformed');
    expect(stream.reason).toBe('http:head-too-long');
    expect(stream.heldBytes).toBeLessThanOrEqual(256);
  });
});

describe('HttpRequestStream: switching protocols', () => {
  const upgrade = 'GET /ws HTTP/1.1\r\nHost: www.t.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n';

  it('the attack: Upgrade that the server ignores (200), then a second request for another host: refused', () => {
    const stream = new HttpRequestStream();
    const r = run([upgrade + get('blocked.test')], stream);
    expect(r.verdicts).toEqual(['await-server']);
    expect(r.released).toBe(upgrade); // the upgrade request went; what follows waits
    const out: Uint8Array[] = [];
    expect(stream.server(bytesOf('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'), (b) => out.push(b.slice()))).toBe('mismatch');
    expect(out).toEqual([]);
    expect(stream.secondName).toBe('blocked.test');
  });

  it('101 from the server: the parked bytes go and the stream is opaque', () => {
    const stream = new HttpRequestStream();
    const frames = '\x81\x85binary-ish websocket frame GET / HTTP/1.1\r\nHost: other\r\n\r\n';
    const r = run([upgrade, frames], stream);
    expect(r.verdicts).toEqual(['await-server', 'await-server']);
    const out: Uint8Array[] = [];
    // The status line split, and an interim 100 before it.
    expect(stream.server(bytesOf('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 1'), (b) => out.push(b.slice()))).toBe('await-server');
    expect(stream.server(bytesOf('01 Switching Protocols\r\n\r\n'), (b) => out.push(b.slice()))).toBe('opaque');
    expect(latin1(concat(out))).toBe(frames);
    expect(run(['anything at all'], stream).released).toBe('anything at all');
  });

  it('CONNECT as the first request: 2xx switches, anything else keeps parsing', () => {
    const connect = 'CONNECT www.t.test:443 HTTP/1.1\r\nHost: www.t.test:443\r\n\r\n';
    const s1 = new HttpRequestStream();
    run([connect, 'tunnel bytes'], s1);
    expect(s1.server(bytesOf('HTTP/1.1 200 Connection established\r\n\r\n'), () => {})).toBe('opaque');
    const s2 = new HttpRequestStream();
    run([connect, get('blocked.test')], s2);
    expect(s2.server(bytesOf('HTTP/1.1 405 Method Not Allowed\r\n\r\n'), () => {})).toBe('mismatch');
  });

  it('a server answer that is not a status line counts as "did not switch"', () => {
    const s = new HttpRequestStream();
    run([upgrade, get('blocked.test')], s);
    expect(s.server(bytesOf('SSH-2.0-x\r\n'), () => {})).toBe('mismatch');
  });

  it('an Upgrade on a later request is not honoured: the stream stays HTTP (fail closed)', () => {
    const r = run([get('www.t.test') + upgrade + '\x81\x85frame']);
    expect(r.verdicts).toEqual(['malformed']);
    expect(r.stream.awaitingServer).toBe(false);
  });

  it('parked bytes are bounded', () => {
    const s = new HttpRequestStream({ maxParkedBytes: 100 });
    const r = run([upgrade, 'x'.repeat(60), 'y'.repeat(60)], s);
    expect(r.verdicts).toEqual(['await-server', 'await-server', 'malformed']);
    expect(s.reason).toBe('http:too-much-before-switch');
    expect(s.heldBytes).toBe(0);
  });
});

// ------------------------------------------------------------------ properties

interface Req {
  method: 'GET' | 'POST' | 'PUT';
  host: string;
  body: { kind: 'none' } | { kind: 'length'; data: string } | { kind: 'chunked'; chunks: string[]; trailer: boolean };
}

function render(r: Req): string {
  let head = `${r.method} /p HTTP/1.1\r\nHost: ${r.host}\r\nUser-Agent: t\r\n`;
  switch (r.body.kind) {
    case 'none':
      return head + '\r\n';
    case 'length':
      return head + `Content-Length: ${r.body.data.length}\r\n\r\n${r.body.data}`;
    case 'chunked': {
      head += 'Transfer-Encoding: chunked\r\n\r\n';
      const parts = r.body.chunks.filter((c) => c.length > 0).map((c) => `${c.length.toString(16)}\r\n${c}\r\n`);
      return head + parts.join('') + '0\r\n' + (r.body.trailer ? 'X-T: 1\r\n' : '') + '\r\n';
    }
  }
}

/** Body text that looks like requests and framing, to tempt a wrong skip. */
const bodyText = fc.array(fc.constantFrom('a', '\r\n', 'GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n', '0\r\n\r\n', '5\r\n', 'Host: x'), { maxLength: 6 }).map((p) => p.join(''));
const reqArb = (hosts: fc.Arbitrary<string>): fc.Arbitrary<Req> =>
  fc.record({
    method: fc.constantFrom('GET' as const, 'POST' as const, 'PUT' as const),
    host: hosts,
    body: fc.oneof(
      fc.constant({ kind: 'none' as const }),
      bodyText.map((data) => ({ kind: 'length' as const, data })),
      fc.record({ kind: fc.constant('chunked' as const), chunks: fc.array(bodyText, { maxLength: 4 }), trailer: fc.boolean() }),
    ),
  });

/** Cuts `s` at sorted random points. */
function chunked(s: string, cuts: number[]): string[] {
  const points = [...new Set(cuts.map((c) => c % (s.length + 1)))].sort((a, b) => a - b);
  const out: string[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(s.slice(prev, p));
    prev = p;
  }
  out.push(s.slice(prev));
  return out.filter((c) => c.length > 0);
}

describe('HttpRequestStream: properties', () => {
  it('random request sequences for one host, re-chunked arbitrarily: all released, same count, never refused', () => {
    fc.assert(
      fc.property(fc.array(reqArb(fc.constantFrom('www.t.test', 'WWW.t.test:8080', 'www.t.test.')), { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 12 }), (reqs, cuts) => {
        const text = reqs.map(render).join('');
        const r = run(chunked(text, cuts));
        expect(r.verdicts.every((v) => v === 'watching')).toBe(true);
        expect(r.released).toBe(text);
        expect(r.stream.requestCount).toBe(reqs.length);
      }),
      { numRuns: 300 },
    );
  });

  it('a request for another host anywhere in the sequence: everything before it released, nothing of it or after', () => {
    fc.assert(
      fc.property(
        fc.array(reqArb(fc.constant('www.t.test')), { minLength: 1, maxLength: 4 }),
        reqArb(fc.constantFrom('blocked.test', 'www.t.test.evil', 'xwww.t.test', '198.51.100.7')),
        fc.array(reqArb(fc.constant('www.t.test')), { maxLength: 2 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (before, bad, after, cuts) => {
          const prefix = before.map(render).join('');
          const text = prefix + render(bad) + after.map(render).join('');
          const r = run(chunked(text, cuts));
          expect(r.verdicts.at(-1)).toBe('mismatch');
          expect(r.released).toBe(prefix);
          expect(r.stream.secondName).toBe(bad.host);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('one byte changed in a chunked framing line never lets the next request through unchecked', () => {
    fc.assert(
      fc.property(fc.array(bodyText, { minLength: 1, maxLength: 3 }), fc.nat(), fc.constantFrom(' ', '\n', 'g', '-', '\t', ';'), (chunks, at, replacement) => {
        const req = render({ method: 'POST', host: 'www.t.test', body: { kind: 'chunked', chunks, trailer: false } });
        const headEnd = req.indexOf('\r\n\r\n') + 4;
        // Only the framing (size lines and CRLFs), never the chunk data itself.
        const framing: number[] = [];
        let p = headEnd;
        while (p < req.length) {
          const lineEnd = req.indexOf('\r\n', p);
          const size = parseInt(req.slice(p, lineEnd), 16);
          for (let i = p; i < lineEnd + 2; i++) framing.push(i);
          if (size === 0) {
            for (let i = lineEnd + 2; i < req.length; i++) framing.push(i);
            break;
          }
          const dataEnd = lineEnd + 2 + size;
          framing.push(dataEnd, dataEnd + 1);
          p = dataEnd + 2;
        }
        const i = framing[at % framing.length]!;
        if (req[i] === replacement || (replacement === ';' && /[0-9a-f]/.test(req[i - 1] ?? '') && req[i + 1] !== '\n')) return;
        const mutated = req.slice(0, i) + replacement + req.slice(i + 1) + get('blocked.test');
        const r = run([mutated]);
        // Either refused, or (never) reaching the smuggled request unchecked.
        expect(r.released.includes('blocked.test') && r.verdicts.at(-1) === 'watching').toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});
