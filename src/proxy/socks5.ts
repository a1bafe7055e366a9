/**
 * The SOCKS5 listener (RFC 1928). Without --auth-file only method 0x00 (no
 * authentication) is accepted; with it only 0x02 (username/password, RFC
 * 1929), so a client that cannot authenticate gets 0xFF:
 *
 *   client: VER=5 NMETHODS METHODS...        -> server: 5 0x00 | 5 0x02 (or 5 0xFF: no acceptable method)
 *   (0x02) client: 1 ULEN UNAME PLEN PASSWD  -> server: 1 0x00, or 1 0x01 and the close
 *   client: VER=5 CMD RSV ATYP DST.ADDR DST.PORT
 *           -> server: 5 REP 0 ATYP=1 BND.ADDR=0.0.0.0 BND.PORT=0, then the tunnel
 *
 * CMD CONNECT (1) and UDP ASSOCIATE (3, socks5-udp.ts: each datagram needs
 * an IP/CIDR rule, as UDP does in `moat serve`); BIND (2) gets REP 0x07
 * "command not supported". ATYP domain (3) is decided by name, IPv4 (1) and
 * IPv6 (4) by address (the same policy: IPv4-in-IPv6 forms as their IPv4
 * address, fe80::/10 and the metadata fd00:ec2::/32 like 169.254/16).
 * Policy refusals get 0x02 "connection not allowed by ruleset"; a name that
 * does not resolve 0x04 "host unreachable". The success reply is sent
 * before the dial (the tunnel is peeked first), so its BND fields are zeros.
 *
 * The handshake is parsed from a bounded buffer (the longest request is
 * 4 + 1 + 255 + 2 bytes) and must finish within the peek timeout.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Egress } from '../egress/egress.js';
import type { Logger } from '../log.js';
import { parseUserPass, USERPASS_FAILED, USERPASS_OK, type AuthFailureLog, type ProxyCredentials } from './auth.js';
import { openUdpAssociation, type UdpAssociationCounters } from './socks5-udp.js';
import { admit, type Admission } from './targets.js';

export interface Socks5Host {
  egress(): Egress;
  log: Logger;
  openTunnel(client: Socket, a: Extract<Admission, { ok: true }>, head: Uint8Array): void;
  /** --auth-file: method 0x02 required; undefined = method 0x00. */
  auth: ProxyCredentials | undefined;
  authFailures: AuthFailureLog;
  counters: { socksConnects: number; refused: number; udpAssociations: number } & UdpAssociationCounters;
}

export const SOCKS_VERSION = 5;
export const REP = Object.freeze({
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  hostUnreachable: 0x04,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
});

/** Greeting (2 + 255), RFC 1929 request (3 + 255 + 255) and request (4 + 1 + 255 + 2): the most a client may send before the tunnel. */
const MAX_HANDSHAKE_BYTES = 257 + 513 + 262;

export const METHOD = Object.freeze({ noAuth: 0x00, userPass: 0x02, noAcceptable: 0xff });

export type Socks5Parse<T> = { kind: 'need-more' } | { kind: 'error'; reason: string } | ({ kind: 'ok'; used: number } & T);

/** The greeting: does the client offer "no authentication", "username/password"? */
export function parseGreeting(b: Uint8Array): Socks5Parse<{ noAuth: boolean; userPass: boolean }> {
  if (b.length < 2) return { kind: 'need-more' };
  if (b[0] !== SOCKS_VERSION) return { kind: 'error', reason: `not SOCKS5 (version byte ${b[0]})` };
  const n = b[1]!;
  if (b.length < 2 + n) return { kind: 'need-more' };
  const methods = b.subarray(2, 2 + n);
  return { kind: 'ok', used: 2 + n, noAuth: methods.includes(METHOD.noAuth), userPass: methods.includes(METHOD.userPass) };
}

export type Socks5Address = { atyp: 'ipv4'; host: string } | { atyp: 'domain'; host: string } | { atyp: 'ipv6'; host: string };

/** The request: command and destination. */
export function parseRequest(b: Uint8Array): Socks5Parse<{ cmd: number; address: Socks5Address | null; port: number }> {
  if (b.length < 5) return { kind: 'need-more' };
  if (b[0] !== SOCKS_VERSION) return { kind: 'error', reason: `not SOCKS5 (version byte ${b[0]})` };
  const cmd = b[1]!;
  const atyp = b[3]!;
  let addrEnd: number;
  let address: Socks5Address | null;
  if (atyp === 0x01) {
    addrEnd = 4 + 4;
    if (b.length < addrEnd + 2) return { kind: 'need-more' };
    address = { atyp: 'ipv4', host: `${b[4]}.${b[5]}.${b[6]}.${b[7]}` };
  } else if (atyp === 0x03) {
    const len = b[4]!;
    addrEnd = 5 + len;
    if (b.length < addrEnd + 2) return { kind: 'need-more' };
    if (len === 0) return { kind: 'error', reason: 'empty domain name' };
    address = { atyp: 'domain', host: Buffer.from(b.subarray(5, addrEnd)).toString('latin1') };
  } else if (atyp === 0x04) {
    addrEnd = 4 + 16;
    if (b.length < addrEnd + 2) return { kind: 'need-more' };
    const parts: string[] = [];
    for (let i = 0; i < 16; i += 2) parts.push(((b[4 + i]! << 8) | b[5 + i]!).toString(16));
    address = { atyp: 'ipv6', host: parts.join(':') };
  } else {
    // Unknown ATYP: the rest of the request cannot be framed; answer 0x08 and close.
    return { kind: 'ok', used: b.length, cmd, address: null, port: 0 };
  }
  const port = (b[addrEnd]! << 8) | b[addrEnd + 1]!;
  return { kind: 'ok', used: addrEnd + 2, cmd, address, port };
}

/** A reply with an IPv4 bound address (zeros unless given: CONNECT replies before the dial). */
export function reply(rep: number, bound: { address: string; port: number } = { address: '0.0.0.0', port: 0 }): Uint8Array {
  const [a, b, c, d] = bound.address.split('.').map(Number);
  return Uint8Array.from([SOCKS_VERSION, rep, 0x00, 0x01, a ?? 0, b ?? 0, c ?? 0, d ?? 0, bound.port >> 8, bound.port & 0xff]);
}

export function createSocks5Server(host: Socks5Host, opts: { maxConnections: number; handshakeTimeoutMs: number }): Server {
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => handshake(host, socket, opts.handshakeTimeoutMs));
  server.maxConnections = opts.maxConnections;
  return server;
}

function handshake(host: Socks5Host, socket: Socket, timeoutMs: number): void {
  let buf = Buffer.alloc(0);
  let stage: 'greeting' | 'auth' | 'request' | 'deciding' = 'greeting';
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  const fail = (rep: number | null): void => {
    clearTimeout(timer);
    socket.off('data', onData);
    if (rep === null) socket.destroy();
    else socket.end(reply(rep));
  };
  /** Ends the handshake with bytes that are not a request reply (method refusal, RFC 1929 failure). */
  const refuse = (bytes: Uint8Array): void => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.end(bytes);
  };
  const onData = (chunk: Buffer): void => {
    if (stage === 'deciding') return; // bytes sent before our reply: not expected from a SOCKS5 client
    buf = Buffer.concat([buf, chunk]);
    if (buf.length > MAX_HANDSHAKE_BYTES) return fail(null);
    if (stage === 'greeting') {
      const g = parseGreeting(buf);
      if (g.kind === 'need-more') return;
      if (g.kind === 'error') return fail(null);
      // With --auth-file only username/password will do; without it only "no authentication".
      const method = host.auth !== undefined ? (g.userPass ? METHOD.userPass : null) : g.noAuth ? METHOD.noAuth : null;
      if (method === null) {
        if (host.auth !== undefined) host.authFailures.record('socks', socket.remoteAddress, false);
        return refuse(Uint8Array.from([SOCKS_VERSION, METHOD.noAcceptable])); // RFC 1928 3: no acceptable methods
      }
      socket.write(Uint8Array.from([SOCKS_VERSION, method]));
      buf = buf.subarray(g.used);
      stage = method === METHOD.userPass ? 'auth' : 'request';
      if (buf.length === 0) return;
    }
    if (stage === 'auth') {
      const u = parseUserPass(buf);
      if (u.kind === 'need-more') return;
      if (u.kind === 'error' || !host.auth!.check(u.user, u.password)) {
        host.authFailures.record('socks', socket.remoteAddress, true);
        return refuse(USERPASS_FAILED); // RFC 1929 2: on failure the server closes the connection
      }
      socket.write(USERPASS_OK);
      buf = buf.subarray(u.used);
      stage = 'request';
      if (buf.length === 0) return;
    }
    const r = parseRequest(buf);
    if (r.kind === 'need-more') return;
    if (r.kind === 'error') return fail(REP.generalFailure);
    host.counters.socksConnects++;
    if (r.address === null) {
      host.counters.refused++;
      return fail(REP.addressTypeNotSupported);
    }
    if (r.cmd === 0x03) {
      stage = 'deciding';
      clearTimeout(timer);
      socket.off('data', onData);
      void openUdpAssociation(socket, host.egress, host.counters, host.log).then(
        (bound) => {
          host.counters.udpAssociations++;
          socket.write(reply(REP.succeeded, bound));
          socket.resume(); // the control connection carries nothing more; its close ends the association
        },
        (err: Error) => {
          host.log.info('socks5 udp associate failed', { error: err.message });
          socket.end(reply(REP.generalFailure));
        },
      );
      return;
    }
    if (r.cmd !== 0x01) {
      host.counters.refused++;
      host.log.info('socks5 command refused', { cmd: r.cmd, reason: 'bind-not-supported' });
      return fail(REP.commandNotSupported);
    }
    stage = 'deciding';
    socket.pause();
    // The handshake is complete: the wait from here is the decision's (ask mode may hold it up to --ask-timeout-ms), not the client's.
    clearTimeout(timer);
    const rest = buf.subarray(r.used);
    const target = r.address.host;
    const gone = new AbortController();
    socket.once('close', () => gone.abort());
    void admit(host.egress(), target, r.port, host.log, gone.signal).then((a) => {
      clearTimeout(timer);
      socket.off('data', onData);
      if (socket.destroyed) return;
      if (!a.ok) {
        host.counters.refused++;
        socket.end(reply(a.kind === 'unresolved' ? REP.hostUnreachable : a.kind === 'unsupported' ? REP.addressTypeNotSupported : REP.notAllowed));
        return;
      }
      socket.write(reply(REP.succeeded));
      // Resume BEFORE the tunnel takes the socket: a tunnel that dials at once (an address target)
      // pauses it again until it is piped; resumed after, the client's first bytes (sent on our reply)
      // flowed to no listener while the dial was in flight and were lost.
      socket.resume();
      host.openTunnel(socket, a, rest);
    });
  };
  socket.on('data', onData);
  socket.on('error', () => {
    clearTimeout(timer);
    socket.destroy();
  });
  socket.on('close', () => clearTimeout(timer));
}
