/**
 * Test support for netstack/tcp: a fake TcpHost that puts every segment
 * through the real wire format (tcpHeaderLength + emitTcpHeader + parseTcp),
 * and a two-connection "network" with a deterministic lossy link.
 */
import { expect } from 'vitest';
import { ManualClock } from '../../netstack/clock.js';
import { TimerWheel } from '../../netstack/timer-wheel.js';
import type { FourTuple, TcpCloseReason, TcpHandlers } from '../../netstack/api.js';
import { ParseError } from '../../netstack/errors.js';
import {
  emitTcpHeader,
  parseTcp,
  tcpHeaderLength,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  type TcpOptions,
  type TcpRepr,
  type TcpSegmentFields,
} from '../../netstack/tcp/header.js';
import { TcpConnection, rstForUnknown, type PayloadSource, type TcpConfig, type TcpHost } from '../../netstack/tcp/connection.js';
import { prng } from '../support/prng.js';
import type { LinkFaults } from '../support/link.js';

export type { LinkFaults };

export const GUEST_IP = 0xc0a87f02; // 192.168.127.2
export const REMOTE_IP = 0x5db8d822; // 93.184.216.34

/** Tuple as the Stack holds it: src = guest side. */
export const TUPLE: FourTuple = { src: GUEST_IP, srcPort: 40000, dst: REMOTE_IP, dstPort: 80 };
/** The same flow seen from the other end (for a second connection playing the guest). */
export const MIRROR: FourTuple = { src: REMOTE_IP, srcPort: 80, dst: GUEST_IP, dstPort: 40000 };

export function flagsText(f: number): string {
  const names: [number, string][] = [[TCP_SYN, 'S'], [TCP_FIN, 'F'], [TCP_RST, 'R'], [TCP_PSH, 'P'], [TCP_ACK, '.']];
  return names.filter(([b]) => (f & b) !== 0).map(([, n]) => n).join('');
}

/** Serializes a segment exactly as the Stack would and parses it back. */
export function wireRoundTrip(
  tuple: FourTuple,
  seg: TcpSegmentFields,
  source: PayloadSource | null,
  from: number,
  len: number,
): TcpRepr {
  const hl = tcpHeaderLength(seg);
  const buf = new Uint8Array(hl + len);
  if (len > 0 && source !== null) source.copyOut(from, buf, hl, len);
  // Our side is tuple.dst; the segment travels to tuple.src.
  emitTcpHeader(buf, 0, seg, tuple.dst, tuple.src, len);
  const r = parseTcp(buf, tuple.dst, tuple.src);
  if (r instanceof ParseError) throw new Error(`emitted segment does not parse: ${r.reason}`);
  return r;
}

export class FakeHost implements TcpHost {
  readonly sent: TcpRepr[] = [];
  readonly flushQueue = new Set<TcpConnection>();
  releasedCount = 0;
  onTransmit: ((seg: TcpRepr) => void) | null = null;

  constructor(
    readonly clock: ManualClock,
    readonly timers: TimerWheel,
    readonly localMss = 1460,
    private readonly fixedIsn: number | null = 1000,
  ) {}

  isn(): number {
    return this.fixedIsn ?? Math.floor(Math.random() * 2 ** 32);
  }

  transmit(conn: TcpConnection, seg: TcpSegmentFields, source: PayloadSource | null, from: number, len: number): void {
    const r = wireRoundTrip(conn.tuple, seg, source, from, len);
    // Keep a private copy: the frame buffer is ours here, but be explicit.
    r.payload = r.payload.slice();
    this.sent.push(r);
    this.onTransmit?.(r);
  }

  scheduleFlush(conn: TcpConnection): void {
    this.flushQueue.add(conn);
  }

  released(): void {
    this.releasedCount++;
  }

  /** End of batch: flush every connection that asked. */
  flush(): void {
    for (const c of [...this.flushQueue]) {
      this.flushQueue.delete(c);
      c.flushAck();
    }
  }

  take(): TcpRepr[] {
    return this.sent.splice(0);
  }
}

export class Recorder implements TcpHandlers {
  readonly chunks: Uint8Array[] = [];
  bytes = 0;
  ended = false;
  endedAt = -1;
  closed: TcpCloseReason | null = null;
  closeCount = 0;
  connected = false;
  drains = 0;
  events: string[] = [];

  onData(d: Uint8Array): void {
    if (this.closed !== null) throw new Error('onData after onClose');
    if (this.ended) throw new Error('onData after onEnd');
    this.chunks.push(d.slice());
    this.bytes += d.length;
  }
  onEnd(): void {
    if (this.ended) throw new Error('onEnd twice');
    this.ended = true;
    this.events.push('end');
  }
  onDrain(): void {
    this.drains++;
  }
  onClose(reason: TcpCloseReason): void {
    this.closed = reason;
    this.closeCount++;
    this.events.push(`close:${reason}`);
  }
  onConnect(): void {
    this.connected = true;
    this.events.push('connect');
  }
  data(): Uint8Array {
    const out = new Uint8Array(this.bytes);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

export const SMALL_CONFIG: TcpConfig = { sendBufferBytes: 64 * 1024, recvBufferBytes: 64 * 1024, oooBytes: 64 * 1024 };

/** A guest-side SYN as Linux sends it (MSS, SACK_PERM, TS, NOP, WS 7). */
export function linuxSyn(over: Partial<TcpOptions> = {}, seq = 5000): TcpRepr {
  return {
    srcPort: TUPLE.srcPort,
    dstPort: TUPLE.dstPort,
    seq,
    ack: 0,
    flags: TCP_SYN,
    window: 64240,
    urgent: 0,
    headerLength: 40,
    options: { mss: 1460, windowScale: 7, sackPermitted: true, timestamp: { value: 77, echo: 0 }, sackBlocks: null, ...over },
    payload: new Uint8Array(0),
  };
}

/** Builds a guest->us segment. */
export function seg(
  fields: { seq: number; ack?: number; flags: number; window?: number; payload?: Uint8Array; ts?: { value: number; echo: number } | null; sack?: number[] | null },
): TcpRepr {
  return {
    srcPort: TUPLE.srcPort,
    dstPort: TUPLE.dstPort,
    seq: fields.seq >>> 0,
    ack: (fields.ack ?? 0) >>> 0,
    flags: fields.flags,
    window: fields.window ?? 1000,
    urgent: 0,
    headerLength: 20,
    options: { mss: null, windowScale: null, sackPermitted: false, timestamp: fields.ts ?? null, sackBlocks: fields.sack ?? null },
    payload: fields.payload ?? new Uint8Array(0),
  };
}

/** Deterministic PRNG (mulberry32). */
export const rng = prng;


interface InFlight {
  at: number;
  order: number;
  to: 'a' | 'b';
  seg: TcpRepr;
}

/**
 * Two connections over one clock and one timer wheel, joined by a link that
 * drops, duplicates, reorders and delays segments deterministically.
 * Side A is "us" (tuple TUPLE), side B plays the guest (tuple MIRROR).
 */
export class Network {
  readonly clock = new ManualClock(0);
  readonly timers = new TimerWheel(this.clock, 1, 4096);
  readonly hostA: FakeHost;
  readonly hostB: FakeHost;
  private queue: InFlight[] = [];
  private order = 0;
  private readonly rand: () => number;
  a: TcpConnection | undefined = undefined as TcpConnection | undefined;
  b!: TcpConnection;
  /** Side A accepts the first SYN from B with these. */
  listener: { config: TcpConfig; handlers: TcpHandlers } | null = null;
  segmentsCarried = 0;
  /** Set to false to stop faults (e.g. to let a test finish). */
  faulty = true;

  constructor(readonly faults: LinkFaults, seed: number, mss = 1460) {
    this.rand = rng(seed);
    this.hostA = new FakeHost(this.clock, this.timers, mss, 100_000 + (seed % 1000));
    this.hostB = new FakeHost(this.clock, this.timers, mss, 4_294_960_000); // near wraparound
    this.hostA.onTransmit = (s) => this.send('b', s);
    this.hostB.onTransmit = (s) => this.send('a', s);
  }

  private send(to: 'a' | 'b', seg: TcpRepr): void {
    this.segmentsCarried++;
    const f = this.faults;
    if (this.faulty && this.rand() < f.drop) return;
    const copies = this.faulty && this.rand() < f.duplicate ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      let at = this.clock.now() + f.delayMs + (this.faulty ? Math.floor(this.rand() * (f.jitterMs + 1)) : 0);
      if (this.faulty && this.rand() < f.reorder) at += f.delayMs + 5;
      this.queue.push({ at, order: this.order++, to, seg });
    }
  }

  private deliverDue(): boolean {
    const now = this.clock.now();
    const due: InFlight[] = this.queue.filter((q) => q.at <= now).sort((x, y) => x.at - y.at || x.order - y.order);
    if (due.length === 0) return false;
    this.queue = this.queue.filter((q) => q.at > now);
    for (const d of due) {
      if (d.to === 'a' && this.a === undefined) {
        if (this.listener !== null && d.seg.flags === TCP_SYN) this.a = TcpConnection.acceptSyn(this.hostA, this.listener.config, TUPLE, d.seg, this.listener.handlers);
        continue;
      }
      const conn = d.to === 'a' ? this.a! : this.b;
      if (conn.state === 'CLOSED') {
        // What the Stack does for a four-tuple it no longer knows: answer with a reset.
        const rst = rstForUnknown(d.seg, d.seg.payload.length);
        if (rst !== null) (d.to === 'a' ? this.hostA : this.hostB).onTransmit?.(wireRoundTrip(conn.tuple, rst, null, 0, 0));
        continue;
      }
      conn.input(d.seg);
    }
    this.hostA.flush();
    this.hostB.flush();
    return true;
  }

  /** Runs until `done()` or the clock passes `limitMs`. Returns true if done. */
  run(done: () => boolean, limitMs: number): boolean {
    for (let guard = 0; guard < 2_000_000; guard++) {
      this.hostA.flush();
      this.hostB.flush();
      if (this.deliverDue()) continue;
      if (done()) return true;
      const nextQ = this.queue.length > 0 ? Math.min(...this.queue.map((q) => q.at)) : Infinity;
      const nextT = this.timers.nextDeadline() ?? Infinity;
      const next = Math.min(nextQ, nextT);
      if (next === Infinity || next > limitMs) return done();
      if (next > this.clock.now()) this.clock.set(next);
      this.timers.advance();
    }
    return done();
  }
}

// ---------------------------------------------------------------- one connection against a scripted guest

export const CFG: TcpConfig = { sendBufferBytes: 64 * 1024, recvBufferBytes: 64 * 1024, oooBytes: 32 * 1024, timeWaitMs: 60_000 };
export const GUEST_ISN = 5000;
export const OUR_ISN = 1000;

export function bytes(n: number, salt = 0): Uint8Array {
  return new Uint8Array(n).map((_, i) => (i + salt) & 0xff);
}

/** A connection accepted from a Linux-like SYN (with or without timestamps) and established. */
/** `mss`: both ends' MSS (default 1460); `handlers`: the owner (default the Recorder `rec`). */
export function established(opts: { ts?: boolean; sack?: boolean; cfg?: TcpConfig; window?: number; mss?: number; handlers?: TcpHandlers } = {}) {
  const clock = new ManualClock(10_000);
  const timers = new TimerWheel(clock);
  const host = new FakeHost(clock, timers, opts.mss ?? 1460, OUR_ISN);
  const rec = new Recorder();
  const ts = opts.ts ?? true;
  const syn = linuxSyn({ ...(ts ? {} : { timestamp: null }), ...(opts.sack === false ? { sackPermitted: false } : {}), ...(opts.mss !== undefined ? { mss: opts.mss } : {}) });
  const conn = TcpConnection.acceptSyn(host, opts.cfg ?? CFG, TUPLE, syn, opts.handlers ?? rec);
  const synAck = host.take();
  let peerTs = 100;
  const g = {
    clock, timers, host, rec, conn, synAck,
    rcv: GUEST_ISN + 1, // guest's next seq
    una: OUR_ISN + 1, // what the guest acknowledges
    ts,
    /** A guest segment with its timestamp (echoing the last TSval we sent). */
    send(f: { seq?: number; ack?: number; flags?: number; window?: number; payload?: Uint8Array; sack?: number[] | null; tsval?: number }) {
      const last = host.sent.length > 0 ? host.sent[host.sent.length - 1]! : synAck[0]!;
      const echo = last.options.timestamp?.value ?? 0;
      const r = seg({
        seq: f.seq ?? g.rcv,
        ack: f.ack ?? g.una,
        flags: f.flags ?? TCP_ACK,
        window: f.window ?? 2000, // scaled by 7: 256000 bytes
        payload: f.payload,
        ts: ts ? { value: f.tsval ?? peerTs++, echo } : null,
        sack: f.sack ?? null,
      });
      conn.input(r);
      host.flush();
    },
    tick(ms: number) {
      clock.advance(ms);
      timers.advance();
      host.flush();
    },
  };
  g.send({ seq: GUEST_ISN + 1, ack: OUR_ISN + 1 });
  expect(conn.state).toBe('ESTABLISHED');
  host.take();
  return g;
}

