import { afterEach, describe, expect, it } from 'vitest';
import { connect as h2connect } from 'node:http2';
import { request as httpsRequest, Agent } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { startFixture, VALUE, type Fixture } from './support.js';

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.close();
  fx = undefined;
});

function h1(f: Fixture, agent: Agent, headers: Record<string, string>, path = '/'): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: f.frontPort, servername: 'api.test', ca: f.moatCa.certPem, agent, path, headers: { host: `api.test:${f.upstreamPort}`, ...headers } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('interceptor (loopback)', () => {
  it('HTTP/1.1: the placeholder becomes the value upstream, on every request of a kept-alive connection; echoes come back masked', async () => {
    fx = await startFixture();
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ALPNProtocols: ['http/1.1'] });
    const a = await h1(fx, agent, { authorization: 'Bearer moat-secret-api' });
    const b = await h1(fx, agent, { authorization: 'Bearer moat-secret-api' });
    agent.destroy();
    expect(fx.seen.map((s) => s.headers['authorization'])).toEqual([`Bearer ${VALUE}`, `Bearer ${VALUE}`]);
    expect(fx.seen.every((s) => s.version === '1.1')).toBe(true);
    expect(fx.injector.intercepted).toBe(1); // both requests on one intercepted connection
    for (const r of [a, b]) {
      expect(r.status).toBe(200);
      expect(r.body).not.toContain(VALUE);
      expect(r.body).toContain('*'.repeat(VALUE.length));
      expect(String(r.headers['x-echo-auth'])).toBe(`Bearer ${'*'.repeat(VALUE.length)}`);
    }
    expect(fx.records.filter((x) => x.kind === 'injected').map((x) => x.names)).toEqual([['api'], ['api']]);
    expect(JSON.stringify(fx.records)).not.toContain(VALUE);
  });

  it('HTTP/1.1: when the server closes the kept-alive upstream connection, the next request re-dials (pinned address) and is injected too', async () => {
    fx = await startFixture();
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ALPNProtocols: ['http/1.1'] });
    const a = await h1(fx, agent, { authorization: 'Bearer moat-secret-api' }, '/close');
    const b = await h1(fx, agent, { authorization: 'Bearer moat-secret-api' });
    agent.destroy();
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(fx.injector.intercepted).toBe(1); // one guest connection
    expect(fx.upstreamConnections).toBe(2); // two upstream connections
    expect(fx.seen.map((s) => s.headers['authorization'])).toEqual([`Bearer ${VALUE}`, `Bearer ${VALUE}`]);
  });

  it('HTTP/1.1: a request without the header gets it set from the template', async () => {
    fx = await startFixture();
    const agent = new Agent({ ALPNProtocols: ['http/1.1'] });
    await h1(fx, agent, {});
    expect(fx.seen[0]!.headers['authorization']).toBe(`Bearer ${VALUE}`);
  });

  it('HTTP/1.1: a Host naming another host on the intercepted connection gets 421 and is never forwarded', async () => {
    fx = await startFixture();
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ALPNProtocols: ['http/1.1'] });
    const r = await h1(fx, agent, { host: 'other.test', authorization: 'Bearer moat-secret-api' });
    const r2 = await h1(fx, new Agent({ ALPNProtocols: ['http/1.1'] }), { host: `api.test:1`, authorization: 'Bearer moat-secret-api' });
    const r3 = await h1(fx, new Agent({ ALPNProtocols: ['http/1.1'] }), { authorization: 'Bearer moat-secret-api' }, 'https://other.test/');
    agent.destroy();
    expect([r.status, r2.status, r3.status]).toEqual([421, 421, 421]);
    expect(fx.seen).toEqual([]);
    expect(fx.records.filter((x) => x.kind === 'refused').map((x) => x.reason)).toEqual(['inject-host-mismatch', 'inject-host-mismatch', 'inject-host-mismatch']);
  });

  it('HTTP/2: every stream is injected; a stream whose :authority names another host gets 421 and is not forwarded', async () => {
    fx = await startFixture();
    const session = h2connect(`https://127.0.0.1:${fx.frontPort}`, { servername: 'api.test', ca: fx.moatCa.certPem });
    const get = (authority: string): Promise<{ status: number; body: string; echo: unknown }> =>
      new Promise((resolve, reject) => {
        const s = session.request({ ':path': '/', ':authority': authority, authorization: 'Bearer moat-secret-api' });
        let status = 0;
        let echo: unknown;
        let body = '';
        s.on('response', (h) => {
          status = Number(h[':status']);
          echo = h['x-echo-auth'];
        });
        s.on('data', (c: Buffer) => (body += c.toString()));
        s.on('end', () => resolve({ status, body, echo }));
        s.on('error', reject);
        s.end();
      });
    const a = await get(`api.test:${fx.upstreamPort}`);
    const b = await get(`api.test:${fx.upstreamPort}`);
    const c = await get('other.test');
    session.close();
    expect([a.status, b.status, c.status]).toEqual([200, 200, 421]);
    expect(fx.seen.map((s) => [s.version, s.headers['authorization']])).toEqual([
      ['2.0', `Bearer ${VALUE}`],
      ['2.0', `Bearer ${VALUE}`],
    ]);
    expect(a.body + b.body + String(a.echo)).not.toContain(VALUE);
    expect(fx.injector.intercepted).toBe(1);
    // The guest's session closing closes the interception (nghttp2 reads the socket itself: no socket event says so).
    await waitUntil(() => fx!.injector.open === 0, 3000, () => `open=${fx!.injector.open}`);
  });

  it('HTTP/2: a placeholder in a header block spread over HEADERS + CONTINUATION frames is replaced', async () => {
    fx = await startFixture();
    const session = h2connect(`https://127.0.0.1:${fx.frontPort}`, { servername: 'api.test', ca: fx.moatCa.certPem });
    // 40,000 characters (~30 KB after HPACK's Huffman code) before the placeholder: past the 16 KiB frame size, so node's client continues the block in CONTINUATION frames.
    const status = await new Promise<number>((resolve, reject) => {
      const s = session.request({ ':path': '/cont', ':authority': `api.test:${fx!.upstreamPort}`, 'x-pad': 'p'.repeat(40_000), authorization: 'Bearer moat-secret-api' });
      let st = 0;
      s.on('response', (h) => (st = Number(h[':status'])));
      s.on('data', () => undefined);
      s.on('end', () => resolve(st));
      s.on('error', reject);
      s.end();
    });
    session.close();
    expect(status).toBe(200);
    expect(fx.seen.map((x) => x.headers['authorization'])).toEqual([`Bearer ${VALUE}`]);
  });

  it('an upstream that fails verification is never sent a request (upstream-tls)', async () => {
    fx = await startFixture({ upstreamTrusted: false });
    const guest = tlsConnect({ host: '127.0.0.1', port: fx.frontPort, servername: 'api.test', ca: fx.moatCa.certPem });
    const outcome = await new Promise<string>((resolve) => {
      guest.on('secureConnect', () => resolve('connected'));
      guest.on('error', (e) => resolve(`error ${e.message}`));
      guest.on('close', () => resolve('closed'));
    });
    expect(outcome).not.toBe('connected');
    expect(fx.seen).toEqual([]);
    expect(fx.records.map((r) => r.reason)).toEqual(['upstream-tls']);
  });

  it('the guest sees a leaf for the host issued by Moat\'s CA (and only a client trusting that CA accepts it)', async () => {
    fx = await startFixture();
    const untrusting = tlsConnect({ host: '127.0.0.1', port: fx.frontPort, servername: 'api.test' });
    const err = await new Promise<string>((resolve) => {
      untrusting.on('secureConnect', () => resolve('connected'));
      untrusting.on('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? e.message));
    });
    expect(err).toMatch(/SELF_SIGNED|UNABLE_TO_GET_ISSUER|UNABLE_TO_VERIFY/);
    const ok = tlsConnect({ host: '127.0.0.1', port: fx.frontPort, servername: 'api.test', ca: fx.moatCa.certPem, ALPNProtocols: ['http/1.1'] });
    const cert = await new Promise<{ subject: string; issuer: string; san: string }>((resolve, reject) => {
      ok.on('secureConnect', () => {
        const c = ok.getPeerX509Certificate()!;
        resolve({ subject: c.subject, issuer: c.issuer, san: c.subjectAltName ?? '' });
      });
      ok.on('error', reject);
    });
    ok.destroy();
    expect(cert.san).toBe('DNS:api.test');
    expect(cert.issuer).toContain('Moat credential injection CA');
  });
});

/** A raw TLS client: writes `chunks` (each its own TLS record when `split`), returns everything the server sent until close. */
async function raw(f: Fixture, chunks: string[], wait = 1500): Promise<string> {
  const s = tlsConnect({ host: '127.0.0.1', port: f.frontPort, servername: 'api.test', ca: f.moatCa.certPem, ALPNProtocols: ['http/1.1'] });
  await new Promise<void>((resolve, reject) => {
    s.on('secureConnect', resolve);
    s.on('error', reject);
  });
  let out = '';
  s.on('data', (c: Buffer) => (out += c.toString()));
  s.on('error', () => undefined);
  for (const c of chunks) {
    s.write(c);
    await new Promise((r) => setImmediate(r));
  }
  await new Promise<void>((resolve) => {
    const t = setTimeout(resolve, wait);
    s.on('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
  s.destroy();
  return out;
}

describe('interceptor: hostile HTTP/1.1 (raw TLS client)', () => {
  const host = (f: Fixture): string => `api.test:${f.upstreamPort}`;

  it('a placeholder split across many TLS records / TCP segments is still replaced', async () => {
    fx = await startFixture();
    const req = `GET /split HTTP/1.1\r\nHost: ${host(fx)}\r\nAuthorization: Bearer moat-secret-api\r\nConnection: close\r\n\r\n`;
    const out = await raw(fx, [...req]); // one byte per write
    expect(out).toMatch(/^HTTP\/1\.1 200/);
    expect(fx.seen.map((s) => s.headers['authorization'])).toEqual([`Bearer ${VALUE}`]);
  });

  it('request smuggling: Content-Length with Transfer-Encoding, two Content-Lengths, a bad chunk — 400, nothing after it forwarded', async () => {
    fx = await startFixture();
    const smuggled = `GET /inner HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer moat-secret-api\r\n\r\n`;
    const attempts = [
      `POST /a HTTP/1.1\r\nHost: ${host(fx)}\r\nContent-Length: ${4 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      `POST /b HTTP/1.1\r\nHost: ${host(fx)}\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      `POST /c HTTP/1.1\r\nHost: ${host(fx)}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n${smuggled}`,
      `POST /d HTTP/1.1\r\nHost: ${host(fx)}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
    ];
    for (const a of attempts) {
      const out = await raw(fx, [a]);
      expect(out, a).toMatch(/^HTTP\/1\.1 400/);
    }
    // Nothing reached the server with another Host, and the value went nowhere but api.test.
    expect(fx.seen.filter((s) => s.authority !== host(fx))).toEqual([]);
    expect(fx.seen.filter((s) => s.headers['authorization'] !== undefined && !String(s.authority).startsWith('api.test'))).toEqual([]);
  });

  it('header folding (obs-fold) and a bare LF: 400; two Host fields: 421; none forwarded', async () => {
    fx = await startFixture();
    const attempts = [
      `GET /fold HTTP/1.1\r\nHost: ${host(fx)}\r\nAuthorization: Bearer\r\n moat-secret-api\r\n\r\n`,
      `GET /twohosts HTTP/1.1\r\nHost: ${host(fx)}\r\nHost: other.test\r\n\r\n`, // 421 (two Hosts), below
      `GET /lf HTTP/1.1\nHost: ${host(fx)}\nX: y\n\n`,
    ];
    const outs: string[] = [];
    for (const a of attempts) outs.push(await raw(fx, [a]));
    // Folding and a bare LF do not parse (400); two Host fields parse, and are refused as misdirected (421).
    expect(outs.map((o) => o.slice(0, 12))).toEqual(['HTTP/1.1 400', 'HTTP/1.1 421', 'HTTP/1.1 400']);
    expect(fx.seen).toEqual([]);
  });

  it('pipelined requests: each is checked; the one naming another host gets 421 and the connection closes', async () => {
    fx = await startFixture();
    const ok = `GET /1 HTTP/1.1\r\nHost: ${host(fx)}\r\nAuthorization: Bearer moat-secret-api\r\n\r\n`;
    const bad = `GET /2 HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer moat-secret-api\r\n\r\n`;
    const out = await raw(fx, [ok + bad + ok]);
    expect(out.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 421']);
    expect(fx.seen.length).toBe(1);
  });
});

describe('interceptor: WebSocket', () => {
  it('the upgrade request is injected (and Host-checked), then frames pass both ways untouched', async () => {
    fx = await startFixture();
    const upgrades: string[] = [];
    fx.upstream.on('upgrade', (req: { headers: Record<string, string> }, socket: import('node:net').Socket) => {
      upgrades.push(String(req.headers['authorization']));
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      socket.on('data', (d: Buffer) => socket.write(Buffer.concat([Buffer.from('echo:'), d])));
    });
    const head = (h: string): string => `GET /ws HTTP/1.1\r\nHost: ${h}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer moat-secret-api\r\n\r\n`;
    const s = tlsConnect({ host: '127.0.0.1', port: fx.frontPort, servername: 'api.test', ca: fx.moatCa.certPem, ALPNProtocols: ['http/1.1'] });
    let out = '';
    s.on('data', (c: Buffer) => (out += c.toString()));
    await new Promise<void>((r) => s.on('secureConnect', r));
    s.write(head(`api.test:${fx.upstreamPort}`));
    await waitUntil(() => out.includes('101'), 3000, () => `out=${out} upgrades=${upgrades.join()} seen=${fx!.seen.length} records=${JSON.stringify(fx!.records)}`);
    s.write('frame-1');
    await waitUntil(() => out.includes('echo:frame-1'));
    s.destroy();
    expect(upgrades).toEqual([`Bearer ${VALUE}`]);
    // Another Host on the upgrade: 421, no upgrade reaches the server.
    const bad = await raw(fx, [head('other.test')], 800);
    expect(bad).toMatch(/^HTTP\/1\.1 421/);
    expect(upgrades.length).toBe(1);
  });
});

async function waitUntil(cond: () => boolean, ms = 5000, why: () => string = () => ''): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting ${why()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
