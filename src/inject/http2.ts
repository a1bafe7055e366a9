/**
 * HTTP/2 inside an intercepted connection (ALPN h2 on both sides): node:http2
 * terminates the guest's session and opens one to the upstream; every guest
 * stream becomes one upstream stream. HPACK means there are no bytes to
 * rewrite in place: headers are decoded, checked, rewritten and re-encoded,
 * so a placeholder split across CONTINUATION frames is whole by the time it
 * is looked at.
 *
 * Per stream: :authority (or Host) must name the connection's host and port
 * (else 421 on that stream, nothing forwarded); CONNECT (also extended
 * CONNECT) is refused with 405; the configured header is rewritten; the
 * response's headers and body come back masked. Trailers are not forwarded
 * (a documented limit: gRPC needs them).
 */
import { connect, constants, createServer, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { sameAuthority } from './authority.js';
import type { InterceptContext } from './interceptor.js';

/** Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2). */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'host']);

export function bridgeHttp2(guest: TLSSocket, upstream: TLSSocket, ctx: InterceptContext): void {
  const client: ClientHttp2Session = connect(`https://${ctx.host}:${ctx.port}`, { createConnection: () => upstream });
  const server = createServer({ maxSessionMemory: 10 });
  let closed = false;
  const closeAll = (): void => {
    if (closed) return;
    closed = true;
    client.destroy();
    guest.destroy();
    ctx.closed();
  };
  client.on('error', (err) => {
    ctx.upstreamFailed(err);
    closeAll();
  });
  client.on('close', closeAll);
  guest.on('close', closeAll);
  server.on('sessionError', closeAll);
  // nghttp2 reads the TLS socket itself: the guest going away shows as the session closing, not as a socket event.
  server.on('session', (session) => session.on('close', closeAll));
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => onStream(stream, headers));
  server.emit('connection', guest);

  function onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', () => undefined);
    const authority = headers[':authority'] ?? headers['host'];
    const method = String(headers[':method'] ?? '');
    if (!sameAuthority(typeof authority === 'string' ? authority : undefined, ctx.host, ctx.port)) {
      ctx.refused('inject-host-mismatch', `HTTP/2 ${method} with :authority "${String(authority ?? '').slice(0, 256)}" on a connection to ${ctx.host}:${ctx.port}`);
      stream.respond({ ':status': 421, 'content-type': 'text/plain' });
      stream.end(`Misdirected Request: this connection is for ${ctx.host}\n`);
      return;
    }
    if (method === 'CONNECT') {
      ctx.refused('inject-connect', 'HTTP/2 CONNECT inside an intercepted connection');
      stream.respond({ ':status': 405 });
      stream.end();
      return;
    }
    const pairs: [string, string][] = [];
    const out: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(headers)) {
      if (CONNECTION_SPECIFIC.has(k) || v === undefined) continue;
      if (k.startsWith(':')) out[k] = v;
      else if (Array.isArray(v)) for (const x of v) pairs.push([k, x]);
      else pairs.push([k, String(v)]);
    }
    const injected = ctx.inject(pairs);
    for (const [k, v] of pairs) {
      const prev = out[k];
      out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [String(prev), v];
    }
    ctx.forwarded(injected, `${method} HTTP/2`);
    let up;
    try {
      up = client.request(out, { endStream: stream.readableEnded });
    } catch (err) {
      ctx.upstreamFailed(err as Error);
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    up.on('response', (h) => {
      const masked: OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(h)) {
        if (CONNECTION_SPECIFIC.has(k) || v === undefined) continue;
        masked[k] = Array.isArray(v) ? v.map((x) => ctx.mask.text(x)) : typeof v === 'string' ? ctx.mask.text(v) : v;
      }
      if (!stream.destroyed) stream.respond(masked);
      up.pipe(ctx.mask.stream()).pipe(stream);
    });
    up.on('error', () => {
      if (!stream.destroyed) stream.close(constants.NGHTTP2_INTERNAL_ERROR);
    });
    stream.on('close', () => {
      if (!up.destroyed) up.close(constants.NGHTTP2_CANCEL);
    });
    if (!stream.readableEnded) stream.pipe(up);
  }
}
