/**
 * `moat proxy` HTTP framing (issue 14, finding 3): what an absolute-form
 * request carries to the upstream must be framed exactly as the client
 * framed it, so the upstream can never parse a second request out of a body;
 * and a pooled upstream connection the server has closed never makes the
 * next request hang.
 *
 * The upstream is a raw TCP server (raw-http-upstream.ts) that parses
 * HTTP/1.1 itself, as a compliant origin does (Content-Length, chunked,
 * otherwise no body), and logs every request line it parses: a smuggled
 * request shows up there as a second line.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { requestFraming } from '../../src/proxy/http-proxy.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { rawExchange, startRawHttpUpstream, type RawHttpUpstream } from './proxy-raw-upstream.js';

const RAW = '127.66.14.11';
let dns: TestUpstream;
let upstream: RawHttpUpstream;
let proxy: RunningProxy;

beforeAll(async () => {
  upstream = await startRawHttpUpstream(RAW, 80);
  dns = await startTestUpstream({ 'raw.test': { a: [RAW] } });
  const parsed = parseProxyArgs([
    '--listen', '127.0.0.1:0',
    '--allow', 'raw.test',
    '--resolver', `127.0.0.1:${dns.port}`,
    '--admit-resolved', '127.66.14.0/24',
  ]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  proxy = await startProxy(parsed.config, NULL_LOGGER);
});

afterAll(async () => {
  await proxy?.close();
  await upstream?.close();
  await dns?.close();
});

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: blocked.test\r\n\r\n';

function chunked(body: string): string {
  return `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;
}

describe('moat proxy: request framing', () => {
  it('a chunked GET carrying a second request reaches the upstream as one request (or is refused)', async () => {
    upstream.reset('keep-alive');
    const head = 'GET http://raw.test/first HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n';
    const reply = await rawExchange(proxy.http, head + chunked(SMUGGLED));
    // Then an ordinary request on the pooled upstream connection, which a desynchronised one would answer with the smuggled response.
    const next = await rawExchange(proxy.http, 'GET http://raw.test/next HTTP/1.1\r\nHost: raw.test\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 (200|400) /);
    expect(next).toMatch(/^HTTP\/1\.1 200 /);
    expect(next).toContain('answer to GET /next');
    expect(upstream.requestLines.filter((l) => l.includes('/smuggled'))).toEqual([]);
    expect(upstream.hosts).not.toContain('blocked.test');
    if (reply.startsWith('HTTP/1.1 200')) expect(upstream.bodies.some((b) => b === SMUGGLED)).toBe(true);
  });

  it('to a server that ignores GET bodies, a GET body carrying a request still cannot be parsed as one (sent chunked)', async () => {
    for (const framing of ['length', 'chunked'] as const) {
      upstream.reset('naive-get');
      const head = `GET http://raw.test/naive HTTP/1.1\r\nHost: raw.test\r\n${framing === 'length' ? `Content-Length: ${Buffer.byteLength(SMUGGLED)}\r\n\r\n${SMUGGLED}` : `Transfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`}`;
      const reply = await rawExchange(proxy.http, head);
      expect(reply).toMatch(/^HTTP\/1\.1 200 /);
      expect(upstream.requestLines).toEqual(['GET /naive HTTP/1.1']);
      expect(upstream.hosts).not.toContain('blocked.test');
    }
  });

  it('a Content-Length GET body is forwarded as one request', async () => {
    upstream.reset('keep-alive');
    const head = `GET http://raw.test/cl HTTP/1.1\r\nHost: raw.test\r\nContent-Length: ${Buffer.byteLength(SMUGGLED)}\r\n\r\n`;
    const reply = await rawExchange(proxy.http, head + SMUGGLED);
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(upstream.requestLines).toEqual(['GET /cl HTTP/1.1']);
    expect(upstream.bodies).toEqual([SMUGGLED]);
  });

  it('a chunked POST is forwarded chunked (the upstream reads the same body)', async () => {
    upstream.reset('keep-alive');
    const reply = await rawExchange(proxy.http, 'POST http://raw.test/post HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n' + chunked('hello world'));
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(upstream.requestLines).toEqual(['POST /post HTTP/1.1']);
    expect(upstream.bodies).toEqual(['hello world']);
  });

  it('a transfer coding other than chunked cannot be framed: 400, nothing reaches the upstream', async () => {
    upstream.reset('keep-alive');
    const reply = await rawExchange(proxy.http, 'POST http://raw.test/gz HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n' + chunked('x'));
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(upstream.requestLines).toEqual([]);
  });

  it('Content-Length and Transfer-Encoding together: 400, nothing reaches the upstream', async () => {
    upstream.reset('keep-alive');
    const reply = await rawExchange(
      proxy.http,
      'POST http://raw.test/both HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n' + chunked(SMUGGLED),
    );
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(upstream.requestLines).toEqual([]);
  });

  it('a GET with a body goes on an upstream connection of its own, never reused', async () => {
    upstream.reset('keep-alive');
    const head = `GET http://raw.test/body HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\n\r\nhello`;
    expect(await rawExchange(proxy.http, head)).toMatch(/^HTTP\/1\.1 200 /);
    expect(await rawExchange(proxy.http, 'GET http://raw.test/after HTTP/1.1\r\nHost: raw.test\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    expect(upstream.requestLines).toEqual(['GET /body HTTP/1.1', 'GET /after HTTP/1.1']);
    // The first request's connection was closed after its answer: the second came on another.
    expect(upstream.connectionOf).toHaveLength(2);
    expect(upstream.connectionOf[0]).not.toBe(upstream.connectionOf[1]);
  });
});

describe('moat proxy: pooling', () => {
  it('bodyless requests and POSTs with a body share one pooled upstream connection', async () => {
    upstream.reset('keep-alive');
    for (let i = 0; i < 10; i++) {
      expect(await rawExchange(proxy.http, `GET http://raw.test/p${i} HTTP/1.1\r\nHost: raw.test\r\n\r\n`)).toMatch(/^HTTP\/1\.1 200 /);
      expect(await rawExchange(proxy.http, `POST http://raw.test/q${i} HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 2\r\n\r\nhi`)).toMatch(/^HTTP\/1\.1 200 /);
    }
    expect(upstream.connectionOf).toHaveLength(20);
    expect(new Set(upstream.connectionOf).size).toBe(1);
  });
});

describe('moat proxy: dead pooled upstream connections', () => {
  it('a pooled connection the server closed is not used again: the next request is answered, no hang', async () => {
    upstream.reset('close-after-answer');
    expect(await rawExchange(proxy.http, 'GET http://raw.test/one HTTP/1.1\r\nHost: raw.test\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    await upstream.closed(1);
    const started = Date.now();
    const second = await rawExchange(proxy.http, 'GET http://raw.test/two HTTP/1.1\r\nHost: raw.test\r\n\r\n', 5_000);
    expect(second).toMatch(/^HTTP\/1\.1 200 /);
    expect(second).toContain('answer to GET /two');
    expect(Date.now() - started).toBeLessThan(5_000); // sanity bound; the figure is milliseconds
  });

  it('a server that drops a reused connection without answering: an idempotent request is retried on a fresh one', async () => {
    upstream.reset('drop-second');
    expect(await rawExchange(proxy.http, 'GET http://raw.test/a HTTP/1.1\r\nHost: raw.test\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    const second = await rawExchange(proxy.http, 'GET http://raw.test/b HTTP/1.1\r\nHost: raw.test\r\n\r\n', 5_000);
    expect(second).toMatch(/^HTTP\/1\.1 200 /);
    expect(second).toContain('answer to GET /b');
  });

  it('the same drop on a request with a body is not retried: 502, never a hang', async () => {
    upstream.reset('drop-second');
    expect(await rawExchange(proxy.http, 'GET http://raw.test/c HTTP/1.1\r\nHost: raw.test\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    const post = await rawExchange(proxy.http, 'POST http://raw.test/d HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 2\r\n\r\nhi', 5_000);
    expect(post).toMatch(/^HTTP\/1\.1 502 /);
    expect(upstream.requestLines.filter((l) => l.startsWith('POST'))).toEqual(['POST /d HTTP/1.1']);
  });
});

describe('moat proxy: responses', () => {
  it('a response whose body ends at the close arrives whole (the close of the upstream is not a truncation)', async () => {
    upstream.reset('close-delimited');
    const r = await rawExchange(proxy.http, 'GET http://raw.test/eof HTTP/1.1\r\nHost: raw.test\r\n\r\n');
    expect(r).toMatch(/^HTTP\/1\.1 200 /);
    expect(r).toMatch(/transfer-encoding: chunked/i);
    const body = r.slice(r.indexOf('\r\n\r\n') + 4).replace(/\r\n[0-9a-f]+\r\n/g, '').replace(/^[0-9a-f]+\r\n/, '');
    expect(body).toContain(`answer to GET /eof\n${'x'.repeat(100_000)}\n`);
  });
});

describe('requestFraming', () => {
  const f = (...h: string[]) => requestFraming(h);
  it('reads the framing node:http parsed, for every method', () => {
    expect(f('Host', 'a')).toEqual({ kind: 'none' });
    expect(f('Transfer-Encoding', 'Chunked')).toEqual({ kind: 'chunked' });
    expect(f('Content-Length', '12')).toEqual({ kind: 'length', length: 12 });
    expect(f('Content-Length', '0')).toEqual({ kind: 'length', length: 0 });
  });
  it('refuses what cannot be forwarded with its framing', () => {
    expect(f('Transfer-Encoding', 'gzip, chunked').kind).toBe('bad');
    expect(f('Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked').kind).toBe('bad');
    expect(f('Transfer-Encoding', 'chunked', 'Content-Length', '3').kind).toBe('bad');
    expect(f('Content-Length', '3', 'Content-Length', '4').kind).toBe('bad');
    expect(f('Content-Length', '0x10').kind).toBe('bad');
    expect(f('Content-Length', '1'.repeat(16)).kind).toBe('bad');
  });
});

describe('moat proxy: a client that goes away mid-body', () => {
  it('the upstream connection carrying the partial body is closed, not pooled', async () => {
    upstream.reset('keep-alive');
    const colon = proxy.http.lastIndexOf(':');
    const s = connect(Number(proxy.http.slice(colon + 1)), proxy.http.slice(0, colon));
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write('POST http://raw.test/partial HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 100\r\n\r\nonly-part');
    await upstream.headsSeen(1);
    s.destroy();
    await upstream.closed(1);
    expect(await rawExchange(proxy.http, 'GET http://raw.test/later HTTP/1.1\r\nHost: raw.test\r\n\r\n')).toContain('answer to GET /later');
  });
});
