/**
 * The HTTP proxy listener (node:http for the framing, the egress policy for
 * every decision):
 *
 *  - `CONNECT host:port` (RFC 9110 9.3.6): the target is admitted
 *    (targets.ts), the client gets 200, and a Tunnel peeks its first bytes
 *    before dialing (tunnel.ts).
 *  - Absolute-form requests, `GET http://host/path` (RFC 9112 3.2.2): each
 *    request on a keep-alive connection is admitted on its own, so a second
 *    request to another host is decided again. The upstream is dialed by
 *    name to Moat's admitted addresses through an Agent pooled per
 *    host:port, so a connection to one host never carries another's
 *    request. The target URI decides; a Host header is replaced by it.
 *  - Anything else (origin-form `GET /`, `https://` absolute-form, Upgrade)
 *    gets 400 / is closed: this is a forward proxy, not a web server.
 *
 * Blocked requests get the 403 of src/egress/refusals.ts (x-moat-reason,
 * x-moat-decision), exactly as `moat serve` sends it.
 */
import { Agent, createServer, request as httpRequest, type ClientRequestArgs, type IncomingMessage, type RequestOptions, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Egress } from '../egress/egress.js';
import { forbiddenResponse } from '../egress/refusals.js';
import type { Logger } from '../log.js';
import { admit, type Admission } from './targets.js';
import type { Dialer } from './tunnel.js';

/** What the HTTP listener needs from the proxy core. */
export interface HttpProxyHost {
  egress(): Egress;
  dialer: Dialer;
  log: Logger;
  /** Starts a tunnel on an admitted CONNECT. */
  openTunnel(client: Socket, a: Extract<Admission, { ok: true }>, head: Uint8Array): void;
  counters: { requests: number; connects: number; refused: number };
}

/** RFC 9110 7.6.1: hop-by-hop fields never forwarded (plus those the Connection field lists). */
const HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);

const VIA = '1.1 moat';

export function createHttpProxy(host: HttpProxyHost, opts: { maxConnections: number; headersTimeoutMs: number }): { server: Server; agent: Agent } {
  const agent = new DialByNameAgent(host.dialer, opts.maxConnections);
  // requireHostHeader off: in absolute-form the target URI names the host (RFC 9112 3.2.2), not the Host field.
  const server = createServer({ requireHostHeader: false }, (req, res) => void handleRequest(host, agent, req, res));
  server.maxConnections = opts.maxConnections;
  // A client that starts a request head and never finishes it is closed at the peek timeout.
  server.headersTimeout = opts.headersTimeoutMs;
  server.requestTimeout = 0; // bodies (uploads) may take long; the head is bounded above
  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => void handleConnect(host, req, socket as Socket, head));
  server.on('upgrade', (_req: IncomingMessage, socket: Duplex) => {
    socket.end('HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    else socket.destroy();
  });
  return { server, agent };
}

/** "host:port" of a CONNECT request (RFC 9110 9.3.6: authority-form, port required). */
export function parseAuthority(text: string): { host: string; port: number } | null {
  const colon = text.lastIndexOf(':');
  if (colon <= 0) return null;
  const host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 1 || port > 65535) return null;
  if (host.includes(':') && !(host.startsWith('[') && host.endsWith(']'))) return null;
  return { host, port };
}

async function handleConnect(host: HttpProxyHost, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
  host.counters.connects++;
  socket.on('error', () => socket.destroy());
  const target = parseAuthority(req.url ?? '');
  if (target === null) {
    host.counters.refused++;
    socket.end(plainResponse(400, 'Bad Request', `CONNECT needs host:port, got ${JSON.stringify((req.url ?? '').slice(0, 200))}\n`));
    return;
  }
  const a = await admit(host.egress(), target.host, target.port, host.log);
  if (socket.destroyed) return;
  if (!a.ok) {
    host.counters.refused++;
    socket.end(refusalBytes(host.egress(), a, target.host));
    return;
  }
  socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
  host.openTunnel(socket, a, head);
}

async function handleRequest(host: HttpProxyHost, agent: Agent, req: IncomingMessage, res: ServerResponse): Promise<void> {
  host.counters.requests++;
  const raw = req.url ?? '';
  let url: URL | null = null;
  if (/^http:\/\//i.test(raw)) {
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
  }
  if (url === null || url.hostname === '') {
    host.counters.refused++;
    const why = /^https:\/\//i.test(raw) ? 'https:// targets go through CONNECT (set HTTPS_PROXY)' : 'this is a proxy: send absolute-form requests (GET http://host/path)';
    send(res, 400, 'Bad Request', `${why}\n`);
    req.resume();
    return;
  }
  const port = url.port === '' ? 80 : Number(url.port);
  const a = await admit(host.egress(), url.hostname, port, host.log);
  if (!a.ok) {
    host.counters.refused++;
    sendRefusal(res, refusalBytes(host.egress(), a, url.hostname));
    req.resume();
    return;
  }

  const upReq = httpRequest({
    agent,
    host: a.name ?? a.addresses[0],
    port,
    method: req.method,
    path: `${url.pathname}${url.search}`,
    headers: forwardedHeaders(req.rawHeaders, url.host),
    moatAddresses: a.addresses,
  } as RequestOptions);
  upReq.on('response', (upRes: IncomingMessage) => {
    res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, forwardedHeaders(upRes.rawHeaders, null));
    upRes.pipe(res);
    upRes.on('error', () => res.destroy());
  });
  upReq.on('error', (err) => {
    host.log.info('proxy request failed', { dst: a.dst, error: err.message });
    if (!res.headersSent) send(res, 502, 'Bad Gateway', `Moat could not reach ${a.dst}: ${err.message}\n`);
    else res.destroy();
  });
  req.on('error', () => upReq.destroy());
  res.on('close', () => {
    if (!res.writableFinished) upReq.destroy();
  });
  req.pipe(upReq);
}

/**
 * The fields to forward: hop-by-hop ones and those the Connection field
 * names removed (RFC 9110 7.6.1), Via appended (7.6.3), and for requests
 * Host set from the target URI (RFC 9112 3.2.2).
 */
export function forwardedHeaders(rawHeaders: readonly string[], hostFromTarget: string | null): string[] {
  const listed = new Set<string>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    if (name === 'connection' || name === 'proxy-connection') {
      for (const token of rawHeaders[i + 1]!.split(',')) listed.add(token.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  let via: string | null = null;
  if (hostFromTarget !== null) out.push('Host', hostFromTarget);
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed.has(lower)) continue;
    if (hostFromTarget !== null && lower === 'host') continue;
    if (lower === 'via') {
      via = via === null ? rawHeaders[i + 1]! : `${via}, ${rawHeaders[i + 1]!}`;
      continue;
    }
    out.push(name, rawHeaders[i + 1]!);
  }
  out.push('Via', via === null ? VIA : `${via}, ${VIA}`);
  return out;
}

/** The bytes a refused proxy request gets: 403 (serve's forbiddenResponse) or 502 when the name did not resolve. */
function refusalBytes(egress: Egress, a: Extract<Admission, { ok: false }>, host: string): Uint8Array {
  if (a.kind === 'unresolved') {
    return plainResponse(502, 'Bad Gateway', `Moat could not resolve ${host.slice(0, 255)} (decision ${a.id}): ${a.detail ?? ''}\n`, { 'x-moat-reason': 'unresolved', 'x-moat-decision': a.id });
  }
  return forbiddenResponse({ host, reason: a.reason, id: a.id, rules: egress.policy.ruleTexts });
}

/** Writes a complete response's bytes through node's ServerResponse (the connection then closes). */
function sendRefusal(res: ServerResponse, bytes: Uint8Array): void {
  const text = Buffer.from(bytes);
  const end = text.indexOf('\r\n\r\n');
  const lines = text.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.1 (\d{3}) (.*)$/.exec(lines[0]!);
  const headers: string[] = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    headers.push(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  res.shouldKeepAlive = false;
  res.writeHead(Number(status?.[1] ?? 403), status?.[2] ?? 'Forbidden', headers);
  res.end(text.subarray(end + 4));
}

function send(res: ServerResponse, status: number, message: string, body: string): void {
  res.shouldKeepAlive = false;
  res.writeHead(status, message, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
  res.end(body);
}

function plainResponse(status: number, message: string, body: string, extra: Record<string, string> = {}): Uint8Array {
  const b = Buffer.from(body, 'utf8');
  let head = `HTTP/1.1 ${status} ${message}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${b.length}\r\n`;
  for (const [k, v] of Object.entries(extra)) head += `${k}: ${v}\r\n`;
  head += 'connection: close\r\n\r\n';
  return Buffer.concat([Buffer.from(head, 'latin1'), b]);
}

/**
 * An Agent whose connections go to the addresses admission chose (passed
 * as `moatAddresses` in the request options), dialed by connectFirst:
 * node never resolves the name itself. Pooled per host:port by node's own
 * key, keep-alive, bounded in total.
 */
class DialByNameAgent extends Agent {
  constructor(
    private readonly dialer: Dialer,
    maxTotal: number,
  ) {
    super({ keepAlive: true, maxSockets: 64, maxFreeSockets: 16, maxTotalSockets: maxTotal, timeout: 30_000 });
  }

  override createConnection(options: ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    const addresses = (options as { moatAddresses?: readonly string[] }).moatAddresses ?? [];
    const port = Number(options.port ?? 80);
    this.dialer.connectFirst(addresses, port).then(
      (s) => callback?.(null, s),
      (e: Error) => callback?.(e, undefined as unknown as Duplex),
    );
    return undefined;
  }
}
