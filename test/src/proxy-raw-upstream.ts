/**
 * A raw TCP HTTP/1.1 origin for the `moat proxy` framing tests: it parses
 * requests itself, as a compliant server does (RFC 9112 6: chunked, else
 * Content-Length, else no body; both, or a transfer coding other than a
 * final chunked, is a 400 and a close), and logs every request line it
 * parses, so a request smuggled inside a body shows up as a line of its own.
 *
 * Modes (reset() picks one and clears the logs):
 *   keep-alive          answer every request, keep the connection
 *   close-after-answer  answer, then close the connection (an idle pooled
 *                       connection the server has timed out)
 *   drop-second         answer the first request of each connection; close a
 *                       connection that carries a second one without answering
 *   close-delimited     answer without Content-Length: the body ends at the close
 *   naive-get           like keep-alive, but a GET never has a body (what a
 *                       server that ignores GET bodies does: the "CL.0" desync)
 */
import { connect, createServer, type Socket } from 'node:net';

export type RawMode = 'keep-alive' | 'close-after-answer' | 'drop-second' | 'close-delimited' | 'naive-get';

export interface RawHttpUpstream {
  /** "METHOD target HTTP/1.1" of every request parsed, in order. */
  readonly requestLines: string[];
  /** The Host field of each request. */
  readonly hosts: string[];
  /** Each request's body (dechunked). */
  readonly bodies: string[];
  /** The connection number each request arrived on. */
  readonly connectionOf: number[];
  reset(mode: RawMode): void;
  /** Resolves once `n` connections have closed since reset(). */
  closed(n: number): Promise<void>;
  /** Resolves once `n` request heads have been parsed since reset() (bodies may still be arriving). */
  headsSeen(n: number): Promise<void>;
  close(): Promise<void>;
}

/** Largest request head or body this test server buffers. */
const MAX_BUFFER = 1 << 20;

type Parsed = { kind: 'need-more' } | { kind: 'bad' } | { kind: 'request'; line: string; host: string; body: Buffer; used: number };

/** One request from the front of `buf` (RFC 9112 6.3 message body length; `naiveGet`: a GET has none). */
export function parseHttpRequest(buf: Buffer, naiveGet = false): Parsed {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return { kind: 'need-more' };
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const line = lines[0]!;
  if (!/^[A-Z]+ \S+ HTTP\/1\.[01]$/.test(line)) return { kind: 'bad' };
  if (naiveGet && line.startsWith('GET ')) return { kind: 'request', line, host: /\r\nhost:\s*([^\r]*)/i.exec(buf.subarray(0, end).toString('latin1'))?.[1] ?? '', body: Buffer.alloc(0), used: end + 4 };
  let host = '';
  let te: string | null = null;
  let cl: string | null = null;
  for (const h of lines.slice(1)) {
    const colon = h.indexOf(':');
    if (colon <= 0) return { kind: 'bad' };
    const name = h.slice(0, colon).toLowerCase();
    const value = h.slice(colon + 1).trim();
    if (name === 'host') host = value;
    else if (name === 'transfer-encoding') te = te === null ? value : `${te}, ${value}`;
    else if (name === 'content-length') {
      if (cl !== null) return { kind: 'bad' };
      cl = value;
    }
  }
  let at = end + 4;
  if (te !== null) {
    if (cl !== null || te.toLowerCase() !== 'chunked') return { kind: 'bad' };
    const parts: Buffer[] = [];
    for (;;) {
      const eol = buf.indexOf('\r\n', at);
      if (eol < 0) return { kind: 'need-more' };
      const size = parseInt(buf.subarray(at, eol).toString('latin1').split(';')[0]!, 16);
      if (!Number.isFinite(size) || size < 0) return { kind: 'bad' };
      at = eol + 2;
      if (size === 0) {
        // Trailer section, then the empty line.
        for (;;) {
          const t = buf.indexOf('\r\n', at);
          if (t < 0) return { kind: 'need-more' };
          const empty = t === at;
          at = t + 2;
          if (empty) return { kind: 'request', line, host, body: Buffer.concat(parts), used: at };
        }
      }
      if (buf.length < at + size + 2) return { kind: 'need-more' };
      parts.push(buf.subarray(at, at + size));
      at += size + 2;
    }
  }
  const n = cl === null ? 0 : /^\d+$/.test(cl) ? Number(cl) : NaN;
  if (!Number.isFinite(n)) return { kind: 'bad' };
  if (buf.length < at + n) return { kind: 'need-more' };
  return { kind: 'request', line, host, body: buf.subarray(at, at + n), used: at + n };
}

export async function startRawHttpUpstream(address: string, port: number): Promise<RawHttpUpstream> {
  let mode: RawMode = 'keep-alive';
  const requestLines: string[] = [];
  const hosts: string[] = [];
  const bodies: string[] = [];
  const connectionOf: number[] = [];
  let heads = 0;
  let closedCount = 0;
  let nextConnection = 0;
  const sockets = new Set<Socket>();
  const waiters = new Set<() => void>();
  const poke = (): void => {
    for (const w of [...waiters]) w();
  };
  const until = (cond: () => boolean): Promise<void> =>
    new Promise((resolve) => {
      const check = (): void => {
        if (!cond()) return;
        waiters.delete(check);
        resolve();
      };
      waiters.add(check);
      check();
    });

  const server = createServer((s) => {
    const id = nextConnection++;
    let served = 0;
    let buf = Buffer.alloc(0);
    let headCounted = false;
    sockets.add(s);
    s.on('error', () => s.destroy());
    s.on('close', () => {
      sockets.delete(s);
      closedCount++;
      poke();
    });
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MAX_BUFFER) return s.destroy();
      for (;;) {
        if (!headCounted && buf.indexOf('\r\n\r\n') >= 0) {
          headCounted = true;
          heads++;
          poke();
        }
        const r = parseHttpRequest(buf, mode === 'naive-get');
        if (r.kind === 'need-more') return;
        if (r.kind === 'bad') {
          s.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
          return;
        }
        buf = buf.subarray(r.used);
        headCounted = false;
        served++;
        if (mode === 'drop-second' && served > 1) {
          requestLines.push(r.line);
          s.destroy();
          return;
        }
        requestLines.push(r.line);
        hosts.push(r.host);
        bodies.push(r.body.toString('latin1'));
        connectionOf.push(id);
        poke();
        const text = `answer to ${r.line.split(' ').slice(0, 2).join(' ')}\n`;
        if (mode === 'close-delimited') {
          s.end(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n${text}${'x'.repeat(100_000)}\n`);
          return;
        }
        s.write(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ${text.length}\r\nkeep-alive: timeout=60\r\n\r\n${text}`);
        if (mode === 'close-after-answer') setTimeout(() => s.destroy(), 20);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => resolve());
  });
  return {
    requestLines,
    hosts,
    bodies,
    connectionOf,
    reset(m) {
      mode = m;
      requestLines.length = 0;
      hosts.length = 0;
      bodies.length = 0;
      connectionOf.length = 0;
      heads = 0;
      closedCount = 0;
    },
    closed: (n) => until(() => closedCount >= n),
    headsSeen: (n) => until(() => heads >= n),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

/**
 * Sends `bytes` to the proxy at `address` ("host:port") on a new connection
 * and resolves with the first response (head and its Content-Length or
 * chunked body), or with what arrived and "TIMEOUT" after `timeoutMs`.
 */
export function rawExchange(address: string, bytes: string, timeoutMs = 5_000): Promise<string> {
  const colon = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = connect(Number(address.slice(colon + 1)), address.slice(0, colon));
    let got = Buffer.alloc(0);
    const done = (text: string): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(text);
    };
    const timer = setTimeout(() => done(`TIMEOUT after ${timeoutMs} ms: ${got.toString('latin1')}`), timeoutMs);
    s.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = got.subarray(0, end).toString('latin1');
      // A CONNECT's 2xx has no body: the tunnel starts after the head (RFC 9110 9.3.6).
      if (bytes.startsWith('CONNECT ') && /^HTTP\/1\.1 2\d\d /.test(head)) return done(got.subarray(0, end + 4).toString('latin1'));
      const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (cl !== null && got.length >= end + 4 + Number(cl[1])) return done(got.subarray(0, end + 4 + Number(cl[1])).toString('latin1'));
      if (/\r\ntransfer-encoding:\s*chunked/i.test(head) && got.indexOf('\r\n0\r\n\r\n', end) >= 0) return done(got.toString('latin1'));
    });
    s.on('error', () => done(`ERROR: ${got.toString('latin1')}`));
    s.on('close', () => done(got.toString('latin1')));
    s.write(bytes);
  });
}
