/**
 * HTTP/1.1 inside an intercepted connection: node's own server parser
 * (llhttp, strict: no obs-fold, no Content-Length together with
 * Transfer-Encoding, one Host) reads each request the guest sends on the
 * kept-alive connection, so Moat and the server cannot disagree on where a
 * request ends (request smuggling): the upstream gets a request node
 * re-framed, never the guest's bytes.
 *
 * Per request: Host (and an absolute-form target) must name the connection's
 * host (else 421 and the connection closes); the configured header is
 * rewritten (placeholder -> value, or set from the template); it goes to the
 * upstream over a keep-alive Agent of one socket (the pre-dialed TLS
 * connection first, re-dialed to the pinned address when the server closed
 * it); the response comes back with the values masked (mask.ts).
 *
 * WebSocket (Upgrade): the upgrade request is checked and injected the same
 * way and written to a fresh upstream connection, whose bytes then pipe both
 * ways untouched. CONNECT inside the tunnel is refused (node closes it).
 */
import { Agent, createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { sameAuthority, targetAllowed } from './authority.js';
import type { InterceptContext } from './interceptor.js';

/** Per-connection, hop-by-hop: never forwarded (node frames each side itself). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'upgrade', 'expect', 'http2-settings']);

export function bridgeHttp1(guest: TLSSocket, first: TLSSocket, ctx: InterceptContext): void {
  let spare: TLSSocket | undefined = first;
  const take = (): Promise<TLSSocket> => {
    const s = spare;
    spare = undefined;
    return s !== undefined && !s.destroyed ? Promise.resolve(s) : ctx.redial(['http/1.1']);
  };
  const agent = new Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 });
  (agent as unknown as { createConnection: unknown }).createConnection = (_o: unknown, cb: (err: Error | null, s?: Duplex) => void) => {
    take().then(
      (s) => cb(null, s),
      (err: Error) => cb(err),
    );
    return undefined;
  };
  const server = createServer({ requireHostHeader: true, maxHeaderSize: ctx.maxHeadBytes });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => forward(req, res));
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => upgrade(req, socket, head));
  server.on('clientError', (_err, socket: Duplex) => {
    ctx.refused('malformed', 'HTTP/1.1 request refused by the parser');
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  });
  guest.on('close', () => {
    agent.destroy();
    spare?.destroy();
    ctx.closed();
  });
  server.emit('connection', guest);

  function misdirected(req: IncomingMessage): boolean {
    // node keeps the first of two Host fields and drops the rest from req.headers, but rawHeaders (what is forwarded) has both.
    let hosts = 0;
    for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'host') hosts++;
    const ok = hosts === 1 && sameAuthority(req.headers.host, ctx.host, ctx.port) && targetAllowed(req.url ?? '', req.method ?? '', ctx.host, ctx.port);
    if (!ok) ctx.refused('inject-host-mismatch', `HTTP/1.1 ${req.method ?? '?'} with ${hosts === 1 ? `Host "${(req.headers.host ?? '').slice(0, 256)}"` : `${hosts} Host fields`} on a connection to ${ctx.host}:${ctx.port}`);
    return !ok;
  }

  function headersFor(req: IncomingMessage, keepUpgrade: boolean): { pairs: [string, string][]; injected: string[] } {
    const pairs: [string, string][] = [];
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const k = raw[i]!.toLowerCase();
      if (HOP_BY_HOP.has(k) && !(keepUpgrade && (k === 'connection' || k === 'upgrade'))) continue;
      pairs.push([raw[i]!, raw[i + 1]!]);
    }
    const injected = ctx.inject(pairs);
    return { pairs, injected };
  }

  function forward(req: IncomingMessage, res: ServerResponse): void {
    if (misdirected(req)) {
      res.writeHead(421, { 'content-type': 'text/plain', connection: 'close' });
      res.end(`Misdirected Request: this connection is for ${ctx.host}\n`);
      return;
    }
    const { pairs, injected } = headersFor(req, false);
    const te = req.headers['transfer-encoding'];
    if (te !== undefined) pairs.push(['Transfer-Encoding', 'chunked']); // node de-chunked it; it re-chunks
    ctx.forwarded(injected, `${req.method} HTTP/1.1`);
    const up = request({ agent, method: req.method, path: req.url, headers: pairs.flat(), setHost: false });
    up.on('response', (ur: IncomingMessage) => {
      const out: string[] = [];
      for (let i = 0; i < ur.rawHeaders.length; i += 2) {
        const k = ur.rawHeaders[i]!.toLowerCase();
        if (k === 'connection' || k === 'keep-alive' || k === 'proxy-connection') continue;
        out.push(ur.rawHeaders[i]!, ctx.mask.text(ur.rawHeaders[i + 1]!));
      }
      res.writeHead(ur.statusCode ?? 502, ur.statusMessage, out);
      ur.pipe(ctx.mask.stream()).pipe(res);
    });
    up.on('error', (err) => {
      ctx.upstreamFailed(err);
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain', connection: 'close' });
        res.end('Bad Gateway: the upstream connection failed\n');
      } else res.destroy();
    });
    req.pipe(up);
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
  }

  function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (misdirected(req)) {
      socket.end(`HTTP/1.1 421 Misdirected Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    const { pairs, injected } = headersFor(req, true);
    ctx.forwarded(injected, `${req.method} HTTP/1.1 upgrade`);
    const headText = `${req.method} ${req.url} HTTP/1.1\r\n${pairs.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
    take().then(
      (up) => {
        up.write(headText);
        if (head.length > 0) up.write(head);
        // The server's answer (101 and its headers) and the frames after it pass untouched, masked like a body.
        up.pipe(ctx.mask.stream()).pipe(socket);
        socket.pipe(up);
        up.on('error', () => socket.destroy());
        socket.on('error', () => up.destroy());
        up.on('close', () => socket.destroy());
        socket.on('close', () => up.destroy());
      },
      (err: Error) => {
        ctx.upstreamFailed(err);
        socket.destroy();
      },
    );
  }
}

