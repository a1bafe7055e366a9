/**
 * Loopback fixtures for the interceptor: an "upstream" HTTPS server (h1 and
 * h2 on one port, ALPN) with a certificate from its own test CA, and Moat's
 * Injector in front of it on a plain TCP listener that plays the guest link.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as netServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NamePeeker } from '../../sni/peek.js';
import { loadOrCreateCa, type CertificateAuthority } from '../../src/inject/ca.js';
import { LeafCertificates } from '../../src/inject/certs.js';
import { Injector, type InterceptReporter } from '../../src/inject/interceptor.js';
import { InjectRules, parseInjectRule, parseSecret, type InjectRule, type Secret } from '../../src/inject/secrets.js';

/** Reads the guest's ClientHello (NamePeeker, as the NAT and the proxy do), puts the bytes back, returns its ALPN list. */
export function peekAlpn(guest: Socket): Promise<string[]> {
  const peeker = new NamePeeker();
  const held: Buffer[] = [];
  return new Promise((resolve, reject) => {
    const onData = (c: Buffer): void => {
      held.push(c);
      const r = peeker.push(c);
      if (r.kind === 'need-more') return;
      guest.off('data', onData);
      guest.pause();
      guest.unshift(Buffer.concat(held));
      if (r.kind === 'name') resolve(r.alpn);
      else reject(new Error(r.kind));
    };
    guest.on('data', onData);
  });
}

export const VALUE = 'sk-live-THE-REAL-VALUE-7f3a9c';

export interface Seen {
  authority: string | undefined;
  headers: Record<string, string | string[] | undefined>;
  version: string;
  body: string;
}

export interface Fixture {
  dirs: string[];
  upstreamCa: CertificateAuthority;
  moatCa: CertificateAuthority;
  upstream: Http2SecureServer;
  upstreamPort: number;
  front: Server;
  frontPort: number;
  injector: Injector;
  seen: Seen[];
  /** TLS connections the upstream accepted. */
  readonly upstreamConnections: number;
  records: { kind: 'injected' | 'refused'; names?: string[]; reason?: string; detail: string }[];
  close(): Promise<void>;
}

export function makeSecret(name = 'api', value = VALUE): Secret {
  const s = parseSecret(`${name}=env:X`, { readEnv: () => value, readFile: () => '' });
  if (typeof s === 'string') throw new Error(s);
  return s;
}

export function rule(text: string, secrets: Secret[]): InjectRule {
  const r = parseInjectRule(text, new Map(secrets.map((s) => [s.name, s])));
  if (typeof r === 'string') throw new Error(r);
  return r;
}

/** `echo`: the upstream answers with the request's headers as JSON (a server that echoes the value back). */
export async function startFixture(opts: { host?: string; rules?: (port: number, s: Secret) => string[]; upstreamTrusted?: boolean } = {}): Promise<Fixture> {
  const host = opts.host ?? 'api.test';
  const dirs = [mkdtempSync(join(tmpdir(), 'moat-inject-up-')), mkdtempSync(join(tmpdir(), 'moat-inject-ca-'))];
  const upstreamCa = loadOrCreateCa(dirs[0]!);
  const upLeaves = new LeafCertificates(upstreamCa);
  const seen: Seen[] = [];
  let upstreamConnections = 0;
  const upstream = createSecureServer({ allowHTTP1: true, SNICallback: (name, cb) => cb(null, upLeaves.contextFor(name)) }, (req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ authority: req.headers[':authority'] as string | undefined ?? req.headers.host, headers: { ...req.headers }, version: req.httpVersion, body });
      const text = JSON.stringify({ headers: req.headers, body });
      // /close: an HTTP/1.1 server that closes the kept-alive connection after answering.
      if (req.url === '/close' && req.httpVersion === '1.1') res.setHeader('connection', 'close');
      res.writeHead(200, { 'content-type': 'application/json', 'x-echo-auth': String(req.headers['authorization'] ?? ''), 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  upstream.on('secureConnection', () => upstreamConnections++);
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const upstreamPort = (upstream.address() as { port: number }).port;
  const moatCa = loadOrCreateCa(dirs[1]!);
  const secret = makeSecret();
  const rules = (opts.rules ?? ((port) => [`${host}:${port} Authorization: Bearer \${api}`]))(upstreamPort, secret).map((t) => rule(t, [secret]));
  const injector = new Injector({ secrets: [secret], rules: new InjectRules(rules), stateDir: dirs[1]!, ...(opts.upstreamTrusted === false ? {} : { upstreamCa: upstreamCa.certPem }) }, moatCa);
  const records: Fixture['records'] = [];
  const reporter = (): InterceptReporter => ({
    injected: (names, detail) => records.push({ kind: 'injected', names, detail }),
    refused: (reason, detail) => records.push({ kind: 'refused', reason, detail }),
    closed: () => undefined,
  });
  const dial = (): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = netConnect(upstreamPort, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
  const front = netServer((guest) => {
    guest.on('error', () => undefined);
    void (async () => {
      try {
        // As Moat does: the ClientHello is peeked for its ALPN, then given back to the stream.
        const alpn = await peekAlpn(guest);
        const up = await injector.connectUpstream(await dial(), host, alpn);
        injector.serve(guest, up, { host, port: upstreamPort, dial }, reporter());
      } catch (err) {
        records.push({ kind: 'refused', reason: 'upstream-tls', detail: (err as Error).message });
        guest.destroy();
      }
    })();
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  const frontPort = (front.address() as { port: number }).port;
  return {
    dirs, upstreamCa, moatCa, upstream, upstreamPort, front, frontPort, injector, seen, records,
    get upstreamConnections() {
      return upstreamConnections;
    },
    close: async () => {
      front.close();
      upstream.close();
      await new Promise((r) => setTimeout(r, 20));
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
  };
}
