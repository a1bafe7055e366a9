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
 *    The body goes with the framing node:http parsed (forward()), never
 *    unframed: an unframed body is the next request to the upstream.
 *  - With --auth-file, every request and CONNECT needs Proxy-Authorization
 *    (407 otherwise), checked before anything is decided.
 *  - Anything else (origin-form `GET /`, `https://` absolute-form, Upgrade)
 *    gets 400 / is closed: this is a forward proxy, not a web server.
 *
 * Blocked requests get the 403 of src/egress/refusals.ts (x-moat-reason,
 * x-moat-decision), exactly as `moat serve` sends it.
 */
import { Agent, createServer, request as httpRequest, type ClientRequest, type ClientRequestArgs, type IncomingMessage, type RequestOptions, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Egress, InFlight } from '../egress/egress.js';
import { forbiddenResponse } from '../egress/refusals.js';
import type { Logger } from '../log.js';
import { PROXY_AUTHENTICATE, type AuthFailureLog, type ProxyCredentials } from './auth.js';
import { admit, admittedInFlight, type Admission } from './targets.js';
import type { Dialer } from './tunnel.js';
import { MeteredStream } from '../traffic/metered-stream.js';
import type { ClientRates } from '../traffic/client-rates.js';

/** What the HTTP listener needs from the proxy core. */
export interface HttpProxyHost {
  egress(): Egress;
  dialer: Dialer;
  log: Logger;
  /** Starts a tunnel on an admitted CONNECT. */
  openTunnel(client: Socket, a: Extract<Admission, { ok: true }>, head: Uint8Array): void;
  /** --auth-file: every request and CONNECT must carry Proxy-Authorization; undefined = none asked. */
  auth: ProxyCredentials | undefined;
  authFailures: AuthFailureLog;
  counters: { requests: number; connects: number; refused: number };
  /** Rate limits per client address (a forwarded request's body and answer pass through them). */
  clientRates?: ClientRates;
}

/** RFC 9110 7.6.1: hop-by-hop fields never forwarded (plus those the Connection field lists). */
const HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);

const VIA = '1.1 moat';

/** Upstream connections: pooled keep-alive ones, and one-shot ones for requests with a framing doubt. */
export interface ProxyAgents {
  pooled: DialByNameAgent;
  oneShot: DialByNameAgent;
  /**
   * An allowlist reload with ?drop=1: each upstream connection, idle or
   * carrying a request, is re-decided as the request that dialed it was
   * admitted (Egress.recheck, a decision record per refusal); refused ones
   * are closed (a request on one gets the 403). Returns how many.
   */
  dropRefused(): number;
  /** Closes every upstream connection (at shutdown). */
  destroy(): void;
}

export function createHttpProxy(host: HttpProxyHost, opts: { maxConnections: number; headersTimeoutMs: number }): { server: Server; agents: ProxyAgents } {
  const pooled = new DialByNameAgent(host.dialer, opts.maxConnections, true);
  const oneShot = new DialByNameAgent(host.dialer, opts.maxConnections, false);
  const agents: ProxyAgents = {
    pooled,
    oneShot,
    dropRefused: () => pooled.dropRefused(host.egress()) + oneShot.dropRefused(host.egress()),
    destroy: () => {
      pooled.destroy();
      oneShot.destroy();
    },
  };
  // requireHostHeader off: in absolute-form the target URI names the host (RFC 9112 3.2.2), not the Host field.
  const server = createServer({ requireHostHeader: false }, (req, res) => void handleRequest(host, agents, req, res));
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
  return { server, agents };
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

/**
 * --auth-file: does this request carry a valid Proxy-Authorization? A
 * failure is counted and logged with the client's address, never with what
 * it presented.
 */
function authorized(host: HttpProxyHost, req: IncomingMessage): boolean {
  if (host.auth === undefined || host.auth.checkProxyAuthorization(req.headers['proxy-authorization'])) return true;
  host.authFailures.record('http', req.socket.remoteAddress, req.headers['proxy-authorization'] !== undefined);
  return false;
}

/** 407 (RFC 9110 15.5.8): the client must send Proxy-Authorization: Basic. */
const AUTH_REQUIRED_BODY = 'Moat proxy requires a user and password (http://USER:PASSWORD@proxy)\n';

async function handleConnect(host: HttpProxyHost, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
  host.counters.connects++;
  socket.on('error', () => socket.destroy());
  if (!authorized(host, req)) {
    socket.end(plainResponse(407, 'Proxy Authentication Required', AUTH_REQUIRED_BODY, { 'proxy-authenticate': PROXY_AUTHENTICATE }));
    return;
  }
  const target = parseAuthority(req.url ?? '');
  if (target === null) {
    host.counters.refused++;
    socket.end(plainResponse(400, 'Bad Request', `CONNECT needs host:port, got ${JSON.stringify((req.url ?? '').slice(0, 200))}\n`));
    return;
  }
  const gone = new AbortController();
  socket.once('close', () => gone.abort());
  // Ask mode may hold the CONNECT for seconds: read meanwhile, so that a client that gives up is seen at once.
  const early = host.egress().ask === undefined ? undefined : readWhileDeciding(socket, gone);
  const a = await admit(host.egress(), target.host, target.port, host.log, gone.signal);
  const extra = early?.stop() ?? [];
  if (socket.destroyed) return;
  if (!a.ok) {
    host.counters.refused++;
    socket.end(refusalBytes(host.egress(), a, target.host));
    return;
  }
  socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
  host.openTunnel(socket, a, extra.length === 0 ? head : Buffer.concat([head, ...extra]));
}

/** Bytes a CONNECT client may send before its answer (a client speaking early); beyond, it is closed. */
const MAX_EARLY_BYTES = 64 * 1024;

/**
 * Reads a CONNECT client's socket while its target is decided: its end (the
 * client gave up) ends the wait, and what it sent early is kept (bounded)
 * for the tunnel. stop() must run in the same turn as the tunnel's start,
 * so that no byte falls between the two listeners.
 */
function readWhileDeciding(socket: Socket, gone: AbortController): { stop(): Buffer[] } {
  const chunks: Buffer[] = [];
  let bytes = 0;
  const onData = (d: Buffer): void => {
    bytes += d.length;
    if (bytes > MAX_EARLY_BYTES) socket.destroy();
    else chunks.push(d);
  };
  const onEnd = (): void => {
    gone.abort();
    socket.destroy();
  };
  socket.on('data', onData);
  socket.once('end', onEnd);
  return {
    stop: () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      return chunks;
    },
  };
}

async function handleRequest(host: HttpProxyHost, agents: ProxyAgents, req: IncomingMessage, res: ServerResponse): Promise<void> {
  host.counters.requests++;
  if (!authorized(host, req)) {
    res.shouldKeepAlive = false;
    res.writeHead(407, 'Proxy Authentication Required', {
      'proxy-authenticate': PROXY_AUTHENTICATE,
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(AUTH_REQUIRED_BODY),
      connection: 'close',
    });
    res.end(AUTH_REQUIRED_BODY);
    req.resume();
    return;
  }
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
  // A body that cannot be forwarded with its own framing is refused before anything is decided or dialed.
  const framing = requestFraming(req.rawHeaders);
  if (framing.kind === 'bad') {
    host.counters.refused++;
    host.log.info('proxy request refused', { dst: url.host, reason: 'unframeable', detail: framing.why });
    send(res, 400, 'Bad Request', `${framing.why}\n`);
    req.resume();
    return;
  }
  const port = url.port === '' ? 80 : Number(url.port);
  const gone = new AbortController();
  res.once('close', () => gone.abort());
  const a = await admit(host.egress(), url.hostname, port, host.log, gone.signal);
  if (!a.ok) {
    host.counters.refused++;
    sendRefusal(res, refusalBytes(host.egress(), a, url.hostname));
    req.resume();
    return;
  }

  forward(host, agents, req, res, { a, port, path: `${url.pathname}${url.search}`, authority: url.host, framing });
}

/** Methods that are idempotent (RFC 9110 9.2.2): a bodyless one may be sent again on a fresh connection. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);
/** Methods whose content has defined semantics (RFC 9110 9.3): a body on any other is a framing doubt. */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);
/** Fresh attempts after a pooled connection died under a bodyless idempotent request. */
const MAX_RETRIES = 2;

interface Forwarding {
  a: Extract<Admission, { ok: true }>;
  port: number;
  path: string;
  authority: string;
  framing: Exclude<BodyFraming, { kind: 'bad' }>;
}

/**
 * Sends the admitted request upstream and its response back. The body is
 * forwarded with the framing node:http parsed (never unframed); a request
 * with a framing doubt (a body on a method that defines none, or an answer
 * that came before the body was sent) goes on a connection nobody reuses,
 * and a body on a method that defines none is sent chunked. A
 * pooled connection that dies before answering a bodyless idempotent
 * request is replaced by a fresh one (RFC 9112 9.3.1), else the client gets
 * a 502: never a hang.
 *
 * The upstream connection is handed to the request only if the rules still
 * allow what it was dialed for (issue 14 finding 4): a request admitted
 * before a reload whose dial completes after it, or that waited for a pooled
 * connection, is re-decided then (Egress.recheck) and refused with a 403
 * before a byte is written upstream.
 */
function forward(host: HttpProxyHost, agents: ProxyAgents, req: IncomingMessage, res: ServerResponse, f: Forwarding): void {
  const method = req.method ?? 'GET';
  const hasBody = f.framing.kind === 'chunked' || (f.framing.kind === 'length' && f.framing.length > 0);
  const doubt = hasBody && !BODY_METHODS.has(method);
  // A server that ignores a body on GET (the "CL.0" desync) would read a
  // Content-Length body as the next request; sent chunked, the body starts
  // with a hex chunk-size line that no server takes for a request line.
  const framing: Forwarding['framing'] = doubt ? { kind: 'chunked' } : f.framing;
  let current: ClientRequest | null = null;
  const admitted = admittedInFlight(f.a);
  // The client's rate limits and the admitting rule's budget: the body up and the answer down pass through meters.
  const m = requestMeters(host, req, res, f);
  const attempt = (n: number): void => {
    const agent = doubt ? agents.oneShot : agents.pooled;
    const upReq = httpRequest({
      agent,
      host: f.a.name ?? f.a.addresses[0],
      port: f.port,
      method,
      path: f.path,
      headers: framedHeaders(forwardedHeaders(req.rawHeaders, f.authority), framing),
      moatAddresses: f.a.addresses,
      moatInFlight: admitted,
    } as RequestOptions);
    current = upReq;
    let answered = false;
    // node emits 'socket' before it writes anything to the socket: the last moment to re-decide.
    upReq.on('socket', (socket: Socket) => {
      const decided = agent.decisionOf(socket) ?? admitted;
      if (decided === undefined) return;
      const r = host.egress().recheck(decided, upReq.reusedSocket ? 'while pooled' : 'while dialing', socket.remoteAddress);
      if (!r.keep) upReq.destroy(new ReloadRefusal(r.id, r.reason));
    });
    upReq.on('response', (upRes: IncomingMessage) => {
      answered = true;
      // Answered before the body was all sent: the connection's state is in doubt, never pool it.
      if (!upReq.writableFinished) upReq.shouldKeepAlive = false;
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, forwardedHeaders(upRes.rawHeaders, null));
      if (m !== undefined) upRes.pipe(m.down).pipe(res);
      else upRes.pipe(res);
      upRes.on('error', () => res.destroy());
    });
    upReq.on('error', (err) => {
      if (err instanceof ReloadRefusal) {
        host.counters.refused++;
        if (res.headersSent) res.destroy();
        else sendRefusal(res, forbiddenResponse({ host: f.a.name ?? f.a.addresses[0]!, reason: err.reason, id: err.id, rules: host.egress().options.refusalDetails ? host.egress().policy.ruleTexts : null }));
        return;
      }
      if (!answered && upReq.reusedSocket && !hasBody && IDEMPOTENT.has(method) && n < MAX_RETRIES && !res.destroyed) {
        host.log.debug('proxy request retried on a fresh connection', { dst: f.a.dst, error: err.message });
        attempt(n + 1);
        return;
      }
      host.log.info('proxy request failed', { dst: f.a.dst, error: err.message });
      if (!res.headersSent) send(res, 502, 'Bad Gateway', `Moat could not reach ${f.a.dst}: ${err.message}\n`);
      else res.destroy();
    });
    if (hasBody) {
      if (m !== undefined) req.pipe(m.up).pipe(upReq);
      else req.pipe(upReq);
    } else upReq.end();
  };
  req.on('error', () => current?.destroy());
  res.on('close', () => {
    if (!res.writableFinished) current?.destroy();
  });
  attempt(0);
}

/**
 * The meters of one forwarded request (undefined when no rate or budget
 * applies). A spent budget ends both the request and the client connection
 * (recorded, reason budget); its client is never answered 200.
 */
function requestMeters(host: HttpProxyHost, req: IncomingMessage, res: ServerResponse, f: Forwarding): { up: MeteredStream; down: MeteredStream } | undefined {
  const egress = host.egress();
  let cut = false;
  const onCut = (): void => {
    if (cut) return;
    cut = true;
    egress.recordBudgetCut('tcp', f.a.name ?? f.a.addresses[0]!, f.port, f.a.rule ?? '', f.a.name, 'target');
    req.socket.resetAndDestroy();
    res.destroy();
  };
  const meter = egress.budgets?.open(f.a.rule ?? null, onCut);
  const rate = host.clientRates?.acquire(req.socket.remoteAddress);
  if (meter === undefined && rate === undefined) return undefined;
  res.once('close', () => {
    meter?.close();
    rate?.release();
  });
  return {
    up: new MeteredStream({ limiter: rate?.egress, meter, direction: 'egress', onCut }),
    down: new MeteredStream({ limiter: rate?.ingress, meter, direction: 'ingress', onCut }),
  };
}

/** A request body's framing as node:http parsed it (RFC 9112 6.3), or why it cannot be forwarded. */
export type BodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'bad'; why: string };

/**
 * Re-derives the framing from the request's fields, for every method:
 * chunked is the only transfer coding forwarded (another one would be
 * dropped with the hop-by-hop Transfer-Encoding field, and the upstream
 * would read the body with a framing the client did not send); Content-Length
 * must be one decimal number. node:http already refuses both together.
 */
export function requestFraming(rawHeaders: readonly string[]): BodyFraming {
  const codings: string[] = [];
  const lengths: string[] = [];
  let te = false;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    const value = rawHeaders[i + 1]!;
    if (name === 'transfer-encoding') {
      te = true;
      for (const c of value.split(',')) if (c.trim() !== '') codings.push(c.trim().toLowerCase());
    } else if (name === 'content-length') lengths.push(value.trim());
  }
  if (te && lengths.length > 0) return { kind: 'bad', why: 'Content-Length and Transfer-Encoding together cannot be framed' };
  if (te) {
    if (codings.length === 1 && codings[0] === 'chunked') return { kind: 'chunked' };
    return { kind: 'bad', why: `Transfer-Encoding ${JSON.stringify(codings.join(', ').slice(0, 100))} cannot be forwarded: only chunked is` };
  }
  if (lengths.length === 0) return { kind: 'none' };
  if (!lengths.every((l) => /^\d{1,15}$/.test(l) && l === lengths[0])) return { kind: 'bad', why: 'Content-Length must be one decimal number' };
  return { kind: 'length', length: Number(lengths[0]) };
}

/** The forwarded fields with the body framing stated by us: Content-Length re-derived, or chunked. */
function framedHeaders(headers: string[], framing: Exclude<BodyFraming, { kind: 'bad' }>): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== 'content-length') out.push(headers[i]!, headers[i + 1]!);
  }
  if (framing.kind === 'length') out.push('Content-Length', String(framing.length));
  else if (framing.kind === 'chunked') out.push('Transfer-Encoding', 'chunked');
  return out;
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
  return forbiddenResponse({ host, reason: a.reason, id: a.id, rules: egress.options.refusalDetails ? egress.policy.ruleTexts : null });
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

/** An upstream connection the rules refuse now (after a reload): the request gets a 403 naming the decision. */
class ReloadRefusal extends Error {
  constructor(
    readonly id: string,
    readonly reason: string,
  ) {
    super(`refused: the allowlist changed (decision ${id}, ${reason})`);
  }
}

/**
 * An Agent whose connections go to the addresses admission chose (passed
 * as `moatAddresses` in the request options), dialed by connectFirst:
 * node never resolves the name itself. Pooled per host:port by node's own
 * key, keep-alive (or one request per connection), bounded in total. Each
 * connection keeps what the request that dialed it was admitted as
 * (`moatInFlight`), so that a later request on it, or a reload with drop,
 * re-decides that.
 */
class DialByNameAgent extends Agent {
  private readonly decisions = new WeakMap<Duplex, InFlight>();

  constructor(
    private readonly dialer: Dialer,
    maxTotal: number,
    keepAlive: boolean,
  ) {
    super({ keepAlive, maxSockets: 64, maxFreeSockets: 16, maxTotalSockets: maxTotal, timeout: 30_000 });
  }

  override createConnection(options: ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    const addresses = (options as { moatAddresses?: readonly string[] }).moatAddresses ?? [];
    const port = Number(options.port ?? 80);
    const decided = (options as { moatInFlight?: InFlight }).moatInFlight;
    this.dialer.connectFirst(addresses, port).then(
      (s) => {
        if (decided !== undefined) this.decisions.set(s, decided);
        // The dialer's sockets are half-open (the NAT needs that); node's
        // client only watches 'end' during a request, so a pooled socket the
        // server closed would stay in the pool, take the next request, and
        // never answer. An HTTP/1.1 client has no use for half-close.
        s.on('end', () => s.destroy());
        callback?.(null, s);
      },
      (e: Error) => callback?.(e, undefined as unknown as Duplex),
    );
    return undefined;
  }

  /** What the request that dialed `socket` was admitted as (undefined: unknown, never re-decided). */
  decisionOf(socket: Duplex): InFlight | undefined {
    return this.decisions.get(socket);
  }

  /** See ProxyAgents.dropRefused. */
  dropRefused(egress: Egress): number {
    let closed = 0;
    for (const [lists, inUse] of [
      [this.sockets, true],
      [this.freeSockets, false],
    ] as const) {
      for (const list of Object.values(lists)) {
        for (const socket of [...(list ?? [])]) {
          const decided = this.decisions.get(socket);
          if (decided === undefined) continue;
          const r = egress.recheck(decided, 'while open', socket.remoteAddress);
          if (r.keep) continue;
          // A request on it fails with the refusal (403, or cut if its answer began); an idle one just closes.
          if (inUse) socket.destroy(new ReloadRefusal(r.id, r.reason));
          else socket.destroy();
          closed++;
        }
      }
    }
    return closed;
  }
}
