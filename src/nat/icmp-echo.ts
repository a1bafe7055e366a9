/**
 * ICMP echo beyond the gateway, through an unprivileged ICMP ("ping")
 * socket Moat was handed (moat-shim --icmp, `--icmp-fd N`): Node cannot open
 * one, but it can use one (src/transport/ping-socket.ts).
 *
 * A ping socket is a datagram socket that carries ICMP echo messages without
 * the IP header. The kernel overwrites the identifier of every request with
 * the socket's own (its "port") and delivers to the socket only replies
 * carrying that identifier, so all of a guest's echoes leave with one id.
 * Outstanding requests are therefore told apart by the SEQUENCE number:
 * each request leaves with a sequence number Moat chooses (a counter,
 * skipping numbers still outstanding), and the table maps it back to the
 * guest's identifier and sequence number, its source and the destination.
 * A reply is returned only when its sequence number is outstanding AND it
 * comes from the address the request went to; anything else is dropped and
 * counted. So the guest's own id never selects a reply (it cannot ask for
 * another host process's: those go to their own sockets by the kernel's id),
 * and a third host cannot inject a reply for a destination it is not.
 *
 * Bounds: at most `maxOutstanding` requests await a reply (the newest is
 * refused beyond it; an entry older than `timeoutMs` is forgotten when room
 * is needed); a token bucket of `perSecond` requests (burst the same) holds
 * a guest's ping flood to that rate. Policy: the caller decides each
 * request as it decides a UDP flow (by IP rule under an allowlist).
 */
import { TokenBucket } from '../../dns/token-bucket.js';

export const ICMP_ECHO_REPLY = 0;
export const ICMP_ECHO_REQUEST = 8;
const ICMP_HEADER = 8;

/** What the echo forwarder sends through and hears from. */
export interface PingSocket {
  /** Sends an ICMP echo request (header + payload; the kernel sets id and checksum) to `address`. */
  send(icmp: Uint8Array, address: string): void;
  /** Every datagram the socket receives: an ICMP message (no IP header) and where it came from. */
  onMessage(handler: (icmp: Uint8Array, from: string) => void): void;
  /** A send the kernel refused (no route, unreachable), reported later. */
  onError(handler: (e: Error) => void): void;
  close(): void;
}

export interface IcmpEchoOptions {
  maxOutstanding: number;
  perSecond: number;
  /** An outstanding request older than this may be forgotten to make room. */
  timeoutMs: number;
  now: () => number;
}

export const DEFAULT_ICMP_ECHO_TIMEOUT_MS = 10_000;

export interface IcmpEchoStats {
  /** Requests sent to the host. */
  forwarded: number;
  /** Replies returned to the guest. */
  replied: number;
  /** Refused by policy (or the destination is never reachable: loopback, multicast...). */
  refused: number;
  /** Over the per-second budget. */
  rateLimited: number;
  /** Refused because maxOutstanding requests await replies. */
  outstandingFull: number;
  /** No ping socket: echo beyond the gateway cannot be forwarded. */
  unavailable: number;
  /** Replies that matched no outstanding request, or came from another address: dropped. */
  unmatched: number;
  /** The socket refused the send (unreachable, no route...). */
  sendErrors: number;
  /** Requests awaiting a reply now, and the bound. */
  current: number;
  max: number;
}

interface Outstanding {
  guestId: number;
  guestSeq: number;
  /** The guest's source address (where the reply goes) and the destination (who must answer), as uint32. */
  guest: number;
  dst: number;
  dstText: string;
  sentAt: number;
}

/** Where a reply is delivered: the guest's stack, as a message from `from` to `to`. */
export type EchoReplySink = (from: number, to: number, icmp: Uint8Array) => void;

export class IcmpEcho {
  private readonly outstanding = new Map<number, Outstanding>();
  private readonly bucket: TokenBucket;
  private nextSeq = 1;
  private readonly counters = { forwarded: 0, replied: 0, refused: 0, rateLimited: 0, outstandingFull: 0, unavailable: 0, unmatched: 0, sendErrors: 0 };

  constructor(
    private readonly socket: PingSocket | undefined,
    private readonly options: IcmpEchoOptions,
    private readonly deliver: EchoReplySink,
  ) {
    this.bucket = new TokenBucket({ rate: options.perSecond, burst: options.perSecond, now: options.now });
    socket?.onMessage((icmp, from) => this.onReply(icmp, from));
    // The request stays outstanding and expires: a failed send is only counted.
    socket?.onError(() => this.counters.sendErrors++);
  }

  get available(): boolean {
    return this.socket !== undefined;
  }

  /** A request the policy refused (counted here so /stats has one place for echo). */
  refused(): void {
    this.counters.refused++;
  }

  /**
   * A guest echo request (`icmp`: the ICMP message, type 8 code 0, at least
   * 8 bytes) from `guest` to `dst`, already allowed by policy. Returns why it
   * was not sent, or undefined when it was.
   */
  request(guest: number, dst: number, dstText: string, icmp: Uint8Array): 'unavailable' | 'rate-limited' | 'outstanding-full' | undefined {
    if (this.socket === undefined) {
      this.counters.unavailable++;
      return 'unavailable';
    }
    if (!this.bucket.take(1)) {
      this.counters.rateLimited++;
      return 'rate-limited';
    }
    const now = this.options.now();
    if (this.outstanding.size >= this.options.maxOutstanding) this.forgetExpired(now);
    if (this.outstanding.size >= this.options.maxOutstanding) {
      this.counters.outstandingFull++;
      return 'outstanding-full';
    }
    const seq = this.allocateSeq();
    this.outstanding.set(seq, { guestId: (icmp[4]! << 8) | icmp[5]!, guestSeq: (icmp[6]! << 8) | icmp[7]!, guest, dst, dstText, sentAt: now });
    const out = Buffer.from(icmp);
    out[2] = out[3] = 0; // the kernel computes the checksum
    out[4] = out[5] = 0; // and sets the identifier
    out[6] = seq >>> 8;
    out[7] = seq & 0xff;
    try {
      this.socket.send(out, dstText);
      this.counters.forwarded++;
    } catch {
      this.outstanding.delete(seq);
      this.counters.sendErrors++;
    }
    return undefined;
  }

  stats(): IcmpEchoStats {
    return { ...this.counters, current: this.outstanding.size, max: this.options.maxOutstanding };
  }

  /** A new guest: its outstanding requests are not its successor's. */
  reset(): void {
    this.outstanding.clear();
  }

  close(): void {
    this.outstanding.clear();
    this.socket?.close();
  }

  private onReply(icmp: Uint8Array, from: string): void {
    if (icmp.length < ICMP_HEADER || icmp[0] !== ICMP_ECHO_REPLY || icmp[1] !== 0) {
      this.counters.unmatched++;
      return;
    }
    const seq = (icmp[6]! << 8) | icmp[7]!;
    const entry = this.outstanding.get(seq);
    if (entry === undefined || entry.dstText !== from) {
      this.counters.unmatched++;
      return;
    }
    this.outstanding.delete(seq);
    const reply = Buffer.from(icmp);
    reply[4] = entry.guestId >>> 8;
    reply[5] = entry.guestId & 0xff;
    reply[6] = entry.guestSeq >>> 8;
    reply[7] = entry.guestSeq & 0xff;
    this.counters.replied++;
    this.deliver(entry.dst, entry.guest, reply);
  }

  /** The next sequence number not outstanding (there are at most maxOutstanding < 65536). */
  private allocateSeq(): number {
    for (;;) {
      const seq = this.nextSeq;
      this.nextSeq = (this.nextSeq + 1) & 0xffff;
      if (!this.outstanding.has(seq)) return seq;
    }
  }

  /** Forgets requests older than timeoutMs (the Map is in sending order). */
  private forgetExpired(now: number): void {
    for (const [seq, e] of this.outstanding) {
      if (now - e.sentAt < this.options.timeoutMs) return;
      this.outstanding.delete(seq);
    }
  }
}
