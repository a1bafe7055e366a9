/**
 * DNS on the gateway (UDP and TCP :53), forwarded to the host's resolvers.
 *
 * The guest's packet is forwarded as-is (only the 16-bit ID is replaced on
 * UDP, see below), so every record type, EDNS option and DNSSEC bit works
 * without Moat understanding it. What Moat adds:
 *  - UDP queries from every guest flow share one host socket per address
 *    family. Each query gets a fresh random upstream ID that is unique among
 *    queries in flight, so two guest queries with the same ID cannot be
 *    confused; a reply is matched by (upstream ID, question) and given back
 *    the guest's ID. Unmatched replies are dropped (RFC 5452 section 9.1).
 *  - Retries: a query unanswered after `attemptTimeoutMs` is resent to the
 *    next upstream (resolv.conf order, cycling), like the libc resolver.
 *  - A query still unanswered after `timeoutMs`, or one that cannot be sent
 *    (no upstream, too many in flight) is answered SERVFAIL (RFC 1035 4.1.1,
 *    RCODE 2) built here from the query's header and question.
 *  - TCP (RFC 7766): the guest's connection is read as 2-byte-length framed
 *    messages; each query is sent to an upstream on its own host TCP
 *    connection (so answers larger than a UDP datagram work) and the answers
 *    go back framed, in query order.
 */
import { readFileSync } from 'node:fs';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket, type RemoteInfo } from 'node:dgram';
import type { TcpCloseReason, TcpHandlers, TcpSocket } from '../netstack/api.js';
import type { DnsUpstream } from './nat/options.js';
import type { DnsAnswerer, DnsTcpLimits, GatewayDns } from './gateway-dns.js';
import type { Logger } from './log.js';

export type { DnsUpstream } from './nat/options.js';

export interface DnsForwarderOptions extends DnsTcpLimits {
  upstreams: DnsUpstream[];
  /** Whole-query deadline; past it the guest gets SERVFAIL. */
  timeoutMs: number;
  /** Resend to the next upstream after this long without an answer (UDP). */
  attemptTimeoutMs: number;
  /** Queries in flight at once (UDP and TCP together). */
  maxInFlight: number;
}

export const DEFAULT_DNS_FORWARDER_OPTIONS: Readonly<DnsForwarderOptions> = Object.freeze({
  upstreams: [],
  timeoutMs: 5_000,
  attemptTimeoutMs: 1_500,
  maxInFlight: 256,
  maxTcpPipelined: 16,
  tcpIdleTimeoutMs: 30_000,
});

export interface DnsForwarderStats {
  mode: 'forward';
  queries: number;
  answered: number;
  servfail: number;
  timeouts: number;
  overloaded: number;
  malformed: number;
  unmatchedReplies: number;
  inFlight: number;
}

const HEADER_BYTES = 12;
const MAX_MESSAGE = 65_535;

/** Nameservers from resolv.conf text (IPv4 and IPv6, zone ids kept), port 53. */
export function parseResolvConf(text: string): DnsUpstream[] {
  const out: DnsUpstream[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const m = /^nameserver\s+(\S+)$/.exec(line);
    if (m === null) continue;
    const host = m[1]!;
    if (isIP(host.replace(/%.*$/, '')) === 0) continue;
    out.push({ host, port: 53 });
  }
  return out;
}

/** The host's resolvers from /etc/resolv.conf; empty when it cannot be read. */
export function systemUpstreams(path = '/etc/resolv.conf'): DnsUpstream[] {
  try {
    return parseResolvConf(readFileSync(path, 'utf8'));
  } catch {
    return [];
  }
}

/**
 * Byte length of the question section, or undefined if the message is
 * malformed or its question names use compression (a query's never need to).
 */
function questionSectionEnd(msg: Uint8Array): number | undefined {
  if (msg.length < HEADER_BYTES) return undefined;
  const qdcount = (msg[4]! << 8) | msg[5]!;
  let off = HEADER_BYTES;
  for (let q = 0; q < qdcount; q++) {
    for (;;) {
      if (off >= msg.length) return undefined;
      const len = msg[off]!;
      if (len === 0) {
        off += 1;
        break;
      }
      if (len >= 0x40) return undefined; // pointer or reserved label type
      off += 1 + len;
    }
    off += 4; // QTYPE, QCLASS
    if (off > msg.length) return undefined;
  }
  return off;
}

/**
 * The question section as a comparable key (names case-folded: resolvers may
 * echo 0x20-randomised case differently). Undefined if malformed.
 */
export function dnsQuestionKey(msg: Uint8Array): string | undefined {
  const end = questionSectionEnd(msg);
  if (end === undefined) return undefined;
  let key = '';
  for (let i = HEADER_BYTES; i < end; i++) {
    let b = msg[i]!;
    if (b >= 0x41 && b <= 0x5a) b |= 0x20;
    key += String.fromCharCode(b);
  }
  return key;
}

/** A SERVFAIL answer to `query` (same ID, RD copied, question echoed), or undefined if the query is unusable. */
export function servfailFor(query: Uint8Array): Uint8Array | undefined {
  const end = questionSectionEnd(query);
  if (end === undefined) return undefined;
  if ((query[2]! & 0x80) !== 0) return undefined; // a response, not a query: never answer it
  const out = new Uint8Array(end);
  out.set(query.subarray(0, end));
  // QR=1, OPCODE kept, AA=0, TC=0, RD kept; RA=1, Z=0, RCODE=2 (SERVFAIL).
  out[2] = 0x80 | (query[2]! & 0x79);
  out[3] = 0x80 | 0x02;
  out.fill(0, 6, 12); // ANCOUNT, NSCOUNT, ARCOUNT
  return out;
}

interface UdpQuery {
  readonly upstreamId: number;
  readonly guestId: number;
  readonly key: string;
  readonly packet: Uint8Array; // with the upstream ID in place
  upstreamIndex: number;
  attemptTimer: NodeJS.Timeout | undefined;
  deadlineTimer: NodeJS.Timeout;
  resolve(answer: Uint8Array | undefined): void;
}

export class DnsForwarder implements GatewayDns {
  readonly opts: DnsForwarderOptions;
  private readonly udpQueries = new Map<number, UdpQuery>();
  private tcpInFlight = 0;
  private udp4: UdpSocket | undefined;
  private udp6: UdpSocket | undefined;
  private readonly tcpUpstreamSockets = new Set<Socket>();
  private readonly sessions = new Set<DnsTcpSession>();
  private closed = false;
  private readonly counters = {
    queries: 0,
    answered: 0,
    servfail: 0,
    timeouts: 0,
    overloaded: 0,
    malformed: 0,
    unmatchedReplies: 0,
  };

  constructor(
    opts: Partial<DnsForwarderOptions>,
    private readonly log: Logger,
  ) {
    this.opts = { ...DEFAULT_DNS_FORWARDER_OPTIONS, ...opts };
  }

  stats(): DnsForwarderStats {
    return { mode: 'forward', ...this.counters, inFlight: this.udpQueries.size + this.tcpInFlight };
  }

  /**
   * Answers one DNS message: the upstream's answer, or SERVFAIL. Resolves
   * undefined when there is nothing to answer (malformed query, a response
   * sent to us, forwarder closed). `query` is copied before this returns.
   */
  resolve(query: Uint8Array, via: 'udp' | 'tcp'): Promise<Uint8Array | undefined> {
    this.counters.queries++;
    const key = dnsQuestionKey(query);
    if (key === undefined || (query[2]! & 0x80) !== 0 || this.closed) {
      this.counters.malformed++;
      return Promise.resolve(undefined);
    }
    if (this.opts.upstreams.length === 0) return Promise.resolve(this.servfail(query, 'no-upstream'));
    if (this.udpQueries.size + this.tcpInFlight >= this.opts.maxInFlight) {
      this.counters.overloaded++;
      return Promise.resolve(this.servfail(query, 'overloaded'));
    }
    return via === 'udp' ? this.resolveUdp(query, key) : this.resolveTcp(query, key);
  }

  /** Handlers for a guest TCP connection to the gateway's :53; bind the accepted socket with session.bind(). */
  openTcpSession(): DnsTcpSession {
    const session = new DnsTcpSession(this, this.opts, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  /** Fails every query in flight (resolving undefined), closes host sockets and guest sessions. */
  async close(): Promise<void> {
    this.closed = true;
    for (const q of [...this.udpQueries.values()]) this.finishUdp(q, undefined);
    for (const s of [...this.sessions]) s.abort();
    for (const s of this.tcpUpstreamSockets) s.destroy();
    const closing: Promise<void>[] = [];
    for (const sock of [this.udp4, this.udp6]) {
      if (sock !== undefined) closing.push(new Promise((r) => sock.close(() => r())));
    }
    this.udp4 = this.udp6 = undefined;
    await Promise.all(closing);
  }

  private servfail(query: Uint8Array, why: string): Uint8Array | undefined {
    this.counters.servfail++;
    this.log.debug('dns servfail', { why });
    return servfailFor(query);
  }

  // --- UDP upstream -------------------------------------------------------

  private udpSocketFor(host: string): UdpSocket {
    const v6 = isIP(host.replace(/%.*$/, '')) === 6;
    let sock = v6 ? this.udp6 : this.udp4;
    if (sock === undefined) {
      sock = createSocket(v6 ? 'udp6' : 'udp4');
      sock.on('message', (msg, rinfo) => this.udpAnswer(msg, rinfo));
      sock.on('error', (err) => this.log.warn('dns upstream socket error', { error: err.message }));
      sock.bind(0);
      if (v6) this.udp6 = sock;
      else this.udp4 = sock;
    }
    return sock;
  }

  private freshId(): number {
    // maxInFlight is far below 65536, so this ends quickly.
    for (;;) {
      const id = Math.floor(Math.random() * 0x10000);
      if (!this.udpQueries.has(id)) return id;
    }
  }

  private resolveUdp(query: Uint8Array, key: string): Promise<Uint8Array | undefined> {
    return new Promise((resolve) => {
      const packet = new Uint8Array(query); // copy: the caller's view is short-lived
      const upstreamId = this.freshId();
      packet[0] = upstreamId >>> 8;
      packet[1] = upstreamId & 0xff;
      const q: UdpQuery = {
        upstreamId,
        guestId: (query[0]! << 8) | query[1]!,
        key,
        packet,
        upstreamIndex: 0,
        attemptTimer: undefined,
        deadlineTimer: setTimeout(() => {
          this.counters.timeouts++;
          this.finishUdp(q, this.servfailWithGuestId(q));
        }, this.opts.timeoutMs),
        resolve,
      };
      this.udpQueries.set(upstreamId, q);
      this.sendAttempt(q);
    });
  }

  private servfailWithGuestId(q: UdpQuery): Uint8Array | undefined {
    const answer = this.servfail(q.packet, 'timeout');
    if (answer !== undefined) {
      answer[0] = q.guestId >>> 8;
      answer[1] = q.guestId & 0xff;
    }
    return answer;
  }

  private sendAttempt(q: UdpQuery): void {
    const upstream = this.opts.upstreams[q.upstreamIndex % this.opts.upstreams.length]!;
    this.udpSocketFor(upstream.host).send(q.packet, upstream.port, upstream.host, (err) => {
      if (err) this.log.debug('dns upstream send failed', { upstream: upstream.host, error: err.message });
    });
    q.attemptTimer = setTimeout(() => {
      q.upstreamIndex++;
      this.sendAttempt(q);
    }, this.opts.attemptTimeoutMs);
  }

  private udpAnswer(msg: Buffer, _rinfo: RemoteInfo): void {
    if (msg.length < HEADER_BYTES || (msg[2]! & 0x80) === 0) {
      this.counters.unmatchedReplies++;
      return;
    }
    const q = this.udpQueries.get(msg.readUInt16BE(0));
    if (q === undefined || dnsQuestionKey(msg) !== q.key) {
      this.counters.unmatchedReplies++;
      return;
    }
    msg[0] = q.guestId >>> 8;
    msg[1] = q.guestId & 0xff;
    this.counters.answered++;
    this.finishUdp(q, msg);
  }

  private finishUdp(q: UdpQuery, answer: Uint8Array | undefined): void {
    if (this.udpQueries.get(q.upstreamId) !== q) return;
    this.udpQueries.delete(q.upstreamId);
    clearTimeout(q.deadlineTimer);
    if (q.attemptTimer !== undefined) clearTimeout(q.attemptTimer);
    q.resolve(answer);
  }

  // --- TCP upstream -------------------------------------------------------

  private resolveTcp(query: Uint8Array, key: string): Promise<Uint8Array | undefined> {
    const packet = new Uint8Array(query);
    this.tcpInFlight++;
    return new Promise<Uint8Array | undefined>((resolve) => {
      let done = false;
      let socket: Socket | undefined;
      const finish = (answer: Uint8Array | undefined): void => {
        if (done) return;
        done = true;
        clearTimeout(deadline);
        this.tcpInFlight--;
        if (socket !== undefined) {
          socket.destroy();
          this.tcpUpstreamSockets.delete(socket);
        }
        resolve(answer);
      };
      const deadline = setTimeout(() => {
        this.counters.timeouts++;
        finish(this.servfail(packet, 'timeout'));
      }, this.opts.timeoutMs);
      const attempt = (index: number): void => {
        if (done) return;
        if (index >= this.opts.upstreams.length || this.closed) {
          finish(this.closed ? undefined : this.servfail(packet, 'upstreams-failed'));
          return;
        }
        const upstream = this.opts.upstreams[index]!;
        const sock = netConnect({ host: upstream.host, port: upstream.port });
        socket = sock;
        this.tcpUpstreamSockets.add(sock);
        const frame = new Uint8Array(2 + packet.length);
        frame[0] = packet.length >>> 8;
        frame[1] = packet.length & 0xff;
        frame.set(packet, 2);
        sock.write(frame);
        const reader = new FrameReader(MAX_MESSAGE);
        let failed = false;
        const fail = (why: string): void => {
          if (failed || done) return;
          failed = true;
          this.log.debug('dns tcp upstream failed', { upstream: upstream.host, why });
          sock.destroy();
          this.tcpUpstreamSockets.delete(sock);
          socket = undefined;
          attempt(index + 1);
        };
        sock.on('data', (chunk: Buffer) => {
          const frames = reader.push(chunk);
          if (frames === undefined) return fail('oversized');
          for (const answer of frames) {
            if (answer.length >= HEADER_BYTES && dnsQuestionKey(answer) === key && answer[0] === packet[0] && answer[1] === packet[1]) {
              this.counters.answered++;
              return finish(answer);
            }
            this.counters.unmatchedReplies++;
          }
        });
        sock.on('error', (err) => fail(err.message));
        sock.on('close', () => fail('closed'));
      };
      attempt(0);
    });
  }
}

/** Cuts a byte stream into RFC 1035 4.2.2 messages (2-byte big-endian length prefix). Bounded by one message. */
export class FrameReader {
  private buf = new Uint8Array(0);

  constructor(private readonly maxMessage: number) {}

  /** Appends bytes; returns the complete messages, or undefined if a length exceeds the bound. */
  push(bytes: Uint8Array): Uint8Array[] | undefined {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf);
    joined.set(bytes, this.buf.length);
    const out: Uint8Array[] = [];
    let off = 0;
    while (joined.length - off >= 2) {
      const len = (joined[off]! << 8) | joined[off + 1]!;
      if (len > this.maxMessage) return undefined;
      if (joined.length - off - 2 < len) break;
      out.push(joined.slice(off + 2, off + 2 + len));
      off += 2 + len;
    }
    this.buf = joined.slice(off);
    return out;
  }

  get bufferedBytes(): number {
    return this.buf.length;
  }
}

/**
 * One guest TCP connection to the gateway's DNS port, served by any
 * DnsAnswerer (the forwarder, or the allowlist's responder). Reads framed queries,
 * answers them in order, pauses the guest when too many are outstanding,
 * half-closes after the last answer once the guest sent FIN.
 */
export class DnsTcpSession {
  readonly handlers: TcpHandlers;
  private tcp: TcpSocket | undefined;
  private readonly reader = new FrameReader(MAX_MESSAGE);
  /** Answers in query order; undefined until the answer arrives. */
  private readonly slots: { answer: Uint8Array | undefined; ready: boolean }[] = [];
  /** Framed answer bytes the guest's send buffer did not take yet. */
  private unsent: Uint8Array | undefined;
  private guestEnded = false;
  private endSent = false;
  private closed = false;
  private paused = false;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly answerer: DnsAnswerer,
    private readonly limits: DnsTcpLimits,
    private readonly onGone: () => void,
  ) {
    this.handlers = {
      onData: (d) => this.data(d),
      onEnd: () => {
        this.guestEnded = true;
        this.pump();
      },
      onDrain: () => this.pump(),
      onClose: (reason) => this.gone(reason),
    };
  }

  bind(tcp: TcpSocket): void {
    this.tcp = tcp;
    this.touch();
  }

  abort(): void {
    if (this.closed) return;
    this.tcp?.abort();
    this.gone('aborted');
  }

  private touch(): void {
    if (this.idleTimer === undefined) {
      this.idleTimer = setTimeout(() => this.idle(), this.limits.tcpIdleTimeoutMs);
    } else {
      this.idleTimer.refresh();
    }
  }

  private idle(): void {
    if (this.closed) return;
    if (this.slots.length > 0 || this.unsent !== undefined) {
      this.touch();
      return;
    }
    this.guestEnded = true; // stop reading; close our side
    this.pump();
  }

  private data(bytes: Uint8Array): void {
    if (this.closed) return;
    this.touch();
    const frames = this.reader.push(bytes);
    if (frames === undefined) {
      this.abort();
      return;
    }
    for (const query of frames) {
      const slot: { answer: Uint8Array | undefined; ready: boolean } = { answer: undefined, ready: false };
      this.slots.push(slot);
      void this.answerer.resolve(query, 'tcp').then((answer) => {
        slot.answer = answer;
        slot.ready = true;
        this.pump();
      });
    }
    if (this.slots.length >= this.limits.maxTcpPipelined && !this.paused) {
      this.paused = true;
      this.tcp?.pause();
    }
  }

  /** Writes ready answers in order, resumes reading, ends when done. */
  private pump(): void {
    const tcp = this.tcp;
    if (this.closed || tcp === undefined) return;
    for (;;) {
      if (this.unsent !== undefined) {
        const taken = tcp.write(this.unsent);
        if (taken < this.unsent.length) {
          this.unsent = this.unsent.subarray(taken);
          return; // onDrain calls pump again
        }
        this.unsent = undefined;
      }
      const head = this.slots[0];
      if (head === undefined || !head.ready) break;
      this.slots.shift();
      if (head.answer === undefined) continue; // nothing to say to that message
      const framed = new Uint8Array(2 + head.answer.length);
      framed[0] = head.answer.length >>> 8;
      framed[1] = head.answer.length & 0xff;
      framed.set(head.answer, 2);
      this.unsent = framed;
    }
    if (this.paused && this.slots.length < this.limits.maxTcpPipelined) {
      this.paused = false;
      tcp.resume();
    }
    if (this.guestEnded && this.slots.length === 0 && !this.endSent) {
      this.endSent = true;
      tcp.end();
    }
  }

  private gone(_reason: TcpCloseReason): void {
    if (this.closed) return;
    this.closed = true;
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.slots.length = 0;
    this.unsent = undefined;
    this.onGone();
  }
}
