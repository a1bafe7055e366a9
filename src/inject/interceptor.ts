/**
 * The interceptor: one TLS connection to a host with an injection rule.
 *
 *   guest --TLS (leaf for HOST, Moat's CA)--> Moat --TLS (verified, SNI=HOST)--> HOST
 *
 * The upstream side is opened first, on the TCP connection the caller dialed
 * to the address Moat resolved and pinned for HOST, offering the ALPN
 * protocols the guest offered (h2, http/1.1); whatever the server picks is
 * the only protocol offered back to the guest, so each side speaks the same
 * HTTP version and no translation is needed. A server that fails
 * verification (system trust plus --upstream-ca; name = HOST) never sees a
 * request: the caller refuses the guest with a TLS alert and a decision
 * record (reason upstream-tls).
 *
 * Then the guest's TLS is terminated on a Duplex over its byte stream
 * (GuestStream for `moat serve`, the tunnel's socket for `moat proxy`) and
 * the HTTP bridge for the protocol takes over (http1.ts, http2.ts).
 */
import { connect as tlsConnect, createServer as createTlsServer, rootCertificates, type TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { CertificateAuthority } from './ca.js';
import { DEFAULT_MAX_LEAVES, LeafCertificates } from './certs.js';
import { bridgeHttp1 } from './http1.js';
import { bridgeHttp2 } from './http2.js';
import { ValueMask } from './mask.js';
import { injectHeader, renderTemplate, type InjectRule, type InjectRules, type Secret } from './secrets.js';

export interface InjectSettings {
  readonly secrets: readonly Secret[];
  readonly rules: InjectRules;
  /** PEM of extra CAs upstream servers may chain to (--upstream-ca), besides the system's. */
  readonly upstreamCa?: string;
  /** Where the CA lives (--state-dir). */
  readonly stateDir: string;
  readonly maxLeaves?: number;
}

/** What the bridges need from their connection. */
export interface InterceptContext {
  readonly host: string;
  readonly port: number;
  readonly mask: ValueMask;
  readonly maxHeadBytes: number;
  /** Rewrites the request's header pairs in place by the rules; returns the secret names injected. */
  inject(pairs: [string, string][]): string[];
  /** One request went upstream (decision record: injected NAMES, or none). */
  forwarded(injected: string[], what: string): void;
  /** One request refused (decision record with the reason). */
  refused(reason: string, detail: string): void;
  upstreamFailed(err: Error): void;
  /** A new upstream TLS connection to the pinned address (HTTP/1.1 after the server closed the first). */
  redial(alpn: string[]): Promise<TLSSocket>;
  /** The guest side closed: everything is gone. */
  closed(): void;
}

/** Decision records of an intercepted connection; the caller knows its destination. */
export interface InterceptReporter {
  injected(names: string[], detail: string): void;
  refused(reason: string, detail: string): void;
  closed(): void;
}

export class UpstreamTlsError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'UpstreamTlsError';
  }
}

const UPSTREAM_HANDSHAKE_MS = 10_000;
const HTTP_ALPN = ['h2', 'http/1.1'];
const DEFAULT_MAX_HEAD_BYTES = 16 * 1024;

export class Injector {
  readonly leaves: LeafCertificates;
  private readonly trust: string[] | undefined;
  /** Intercepted connections open now (for /stats). */
  open = 0;
  intercepted = 0;

  constructor(
    readonly settings: InjectSettings,
    readonly ca: CertificateAuthority,
  ) {
    const hosts = new Set(settings.rules.rules.map((r) => r.host));
    this.leaves = new LeafCertificates(ca, Math.max(settings.maxLeaves ?? DEFAULT_MAX_LEAVES, hosts.size));
    // Issued now, not on a guest's first connection: a leaf costs milliseconds of CPU on the event loop.
    for (const h of hosts) this.leaves.contextFor(h);
    this.trust = settings.upstreamCa === undefined ? undefined : [...rootCertificates, settings.upstreamCa];
  }

  /** For /stats: counts only (never a name's value). */
  stats(): { intercepted: number; open: number; leaves: number; leavesIssued: number } {
    return { intercepted: this.intercepted, open: this.open, leaves: this.leaves.size, leavesIssued: this.leaves.issued };
  }

  /** The rules for a canonical host and port: non-empty means the connection is intercepted. */
  rulesFor(host: string, port: number): readonly InjectRule[] {
    return this.settings.rules.for(host, port);
  }

  /** Placeholders and where each may go, without values (start-up log, GET /secrets). */
  describe(): { name: string; placeholder: string; inject: string[] }[] {
    return this.settings.secrets.map((s) => ({
      name: s.name,
      placeholder: s.placeholder,
      inject: this.settings.rules.rules.filter((r) => r.secrets.includes(s)).map((r) => r.text),
    }));
  }

  /** TLS to HOST over `raw` (already connected to Moat's pinned address). Throws UpstreamTlsError. */
  connectUpstream(raw: Socket, host: string, guestAlpn: readonly string[]): Promise<TLSSocket> {
    const offer = guestAlpn.filter((p) => HTTP_ALPN.includes(p));
    return new Promise((resolve, reject) => {
      const s = tlsConnect({ socket: raw, servername: host, ...(offer.length > 0 ? { ALPNProtocols: offer } : {}), ...(this.trust !== undefined ? { ca: this.trust } : {}), minVersion: 'TLSv1.2' });
      const timer = setTimeout(() => fail(new UpstreamTlsError('ETIMEDOUT', `no TLS handshake with ${host} within ${UPSTREAM_HANDSHAKE_MS} ms`)), UPSTREAM_HANDSHAKE_MS);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        s.destroy();
        const code = (err as NodeJS.ErrnoException).code ?? 'ERR_TLS';
        reject(err instanceof UpstreamTlsError ? err : new UpstreamTlsError(code, `${host}: ${err.message}`));
      };
      s.once('error', fail);
      s.once('secureConnect', () => {
        clearTimeout(timer);
        s.off('error', fail);
        resolve(s);
      });
    });
  }

  /**
   * Terminates the guest's TLS on `guest` with a leaf for `host` and bridges
   * its requests to `upstream`. `dial` opens another TCP connection to the
   * pinned address. Returns a function that tears everything down.
   */
  serve(guest: Duplex, upstream: TLSSocket, target: { host: string; port: number; dial: () => Promise<Socket> }, reporter: InterceptReporter): () => void {
    const rules = this.rulesFor(target.host, target.port);
    const protocol = upstream.alpnProtocol === 'h2' ? 'h2' : 'http/1.1';
    // A tls.Server (never listening) terminates the guest's TLS on its Duplex: unlike a bare TLSSocket it
    // completes the server-side handshake state node:http2 waits for. Offered ALPN: only what the upstream
    // agreed to; a guest that sent no ALPN speaks HTTP/1.1 (and so does the upstream).
    const leaf = this.leaves.contextFor(target.host);
    const terminator = createTlsServer({
      SNICallback: (_name, cb) => cb(null, leaf),
      ...(typeof upstream.alpnProtocol === 'string' ? { ALPNProtocols: [protocol] } : {}),
    });
    this.open++;
    this.intercepted++;
    let done = false;
    const ctx: InterceptContext = {
      host: target.host,
      port: target.port,
      mask: new ValueMask(rules.flatMap((r) => r.secrets.map((s) => s.reveal()))),
      maxHeadBytes: DEFAULT_MAX_HEAD_BYTES,
      inject: (pairs) => applyRules(rules, pairs),
      forwarded: (names, what) => reporter.injected(names, what),
      refused: (reason, detail) => reporter.refused(reason, detail),
      upstreamFailed: () => undefined,
      redial: async (alpn) => this.connectUpstream(await target.dial(), target.host, alpn),
      closed: () => {
        if (done) return;
        done = true;
        this.open--;
        upstream.destroy();
        reporter.closed();
      },
    };
    let tls: TLSSocket | undefined;
    terminator.on('secureConnection', (s: TLSSocket) => {
      tls = s;
      s.on('close', () => ctx.closed());
      if (protocol === 'h2') bridgeHttp2(s, upstream, ctx);
      else bridgeHttp1(s, upstream, ctx);
    });
    // The guest did not complete the handshake (it does not trust Moat's CA, or it went away).
    terminator.on('tlsClientError', () => {
      guest.destroy();
      ctx.closed();
    });
    guest.on('close', () => ctx.closed());
    // TLS carries HTTP here, which needs no half-close: the guest's FIN ends the connection. (The TLS socket
    // takes this from the stream it wraps; with half-open allowed, an HTTP/2 session never heard the guest leave.)
    guest.allowHalfOpen = false;
    terminator.emit('connection', guest);
    return () => {
      tls?.destroy();
      guest.destroy();
      ctx.closed();
    };
  }
}

/** Applies every rule to a request's header pairs (names as sent); returns the secret names injected. */
export function applyRules(rules: readonly InjectRule[], pairs: [string, string][]): string[] {
  const injected: string[] = [];
  for (const rule of rules) {
    let present = false;
    for (const pair of pairs) {
      if (pair[0].toLowerCase() !== rule.header) continue;
      present = true;
      const r = injectHeader(rule, pair[1]);
      if (r === null) continue;
      pair[1] = r.value;
      for (const n of r.injected) if (!injected.includes(n)) injected.push(n);
    }
    if (!present) {
      pairs.push([rule.header, renderTemplate(rule)]);
      for (const s of rule.secrets) if (!injected.includes(s.name)) injected.push(s.name);
    }
  }
  return injected;
}
