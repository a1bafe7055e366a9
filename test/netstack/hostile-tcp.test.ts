/**
 * A hostile TCP peer against Moat's stack (issue 9): RST and SYN in every
 * state, fast-check sequences of wrong sequence numbers, overlapping
 * retransmits, far-away data, bogus ACKs, zero windows and out-of-range SACK
 * blocks against a live connection, a peer that keeps its window at 0
 * forever, and a guest that reuses a four-tuple Moat holds in TIME-WAIT.
 *
 * The peer is raw frames (test/support/frames.ts) so that it can send what no
 * well-behaved stack would.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { OutputBatch, TcpCloseReason, TcpSocket } from '../../netstack/api.js';
import { ipv4 } from '../../netstack/addr.js';
import { ManualClock } from '../../netstack/clock.js';
import { ParseError } from '../../netstack/errors.js';
import { parseEthernet } from '../../netstack/ethernet.js';
import { IPPROTO_TCP, parseIpv4 } from '../../netstack/ipv4.js';
import { createStack, DEFAULT_STACK_CONFIG, type Stack } from '../../netstack/stack.js';
import type { TcpConnection } from '../../netstack/tcp/connection.js';
import { parseTcp, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, type TcpRepr } from '../../netstack/tcp/header.js';
import { GUEST, tcpFrame } from '../support/frames.js';
import { hostileSegment, streamByte, type PeerView } from '../support/fuzz-gen.js';
import { FUZZ_SEED, fuzzFrames } from '../support/fuzz-gen-run.js';
import { prng } from '../support/prng.js';

const SERVER = ipv4(198, 18, 0, 5);
const PEER_ISN = 0xfffff000; // close to the wrap, so that every comparison crosses 2^32 soon
const RECV_BUFFER = 64 * 1024;
const OOO_BYTES = 32 * 1024;

/** Moat's stack, one accepted connection, and a raw peer that plays the guest. */
class Bench {
  readonly clock = new ManualClock(1_000);
  readonly stack: Stack;
  readonly out: TcpRepr[] = [];
  sock: TcpSocket | undefined;
  closed: TcpCloseReason | undefined;
  ended = false;
  readonly received: number[] = [];
  /** Peer's next sequence number and highest Moat sequence seen. */
  sndNxt = (PEER_ISN + 1) >>> 0;
  rcvNxt = 0;
  accepts = 0;
  private deferred: (() => void)[] = [];

  constructor(public port = 40000, tcp: Partial<typeof DEFAULT_STACK_CONFIG.tcp> = {}) {
    this.stack = createStack(
      { ...DEFAULT_STACK_CONFIG, tcp: { ...DEFAULT_STACK_CONFIG.tcp, recvBufferBytes: RECV_BUFFER, oooBytes: OOO_BYTES, ...tcp } },
      {
        onTcpSyn: (p) => {
          this.accepts++;
          this.closed = undefined;
          this.ended = false;
          this.sock = p.accept({
            onData: (d) => {
              for (const b of d) this.received.push(b);
            },
            onEnd: () => {
              this.ended = true;
            },
            onDrain: () => {},
            onClose: (r) => {
              this.closed = r;
            },
          });
        },
        onUdp: () => {},
        onOutput: (b: OutputBatch) =>
          b.forEachFrame((f) => {
            const eth = parseEthernet(f);
            if (eth instanceof ParseError) throw new Error(eth.reason);
            const ip = parseIpv4(eth.payload);
            if (ip instanceof ParseError || ip.protocol !== IPPROTO_TCP) return;
            const t = parseTcp(ip.payload, ip.src, ip.dst);
            if (t instanceof ParseError) throw new Error(t.reason);
            this.out.push({ ...t, payload: t.payload.slice() });
            const end = (t.seq + t.payload.length + (t.flags & TCP_SYN ? 1 : 0) + (t.flags & TCP_FIN ? 1 : 0)) >>> 0;
            if (this.rcvNxt === 0 || ((end - this.rcvNxt) | 0) > 0) this.rcvNxt = end;
          }),
      },
      this.clock,
      (fn) => this.deferred.push(fn),
      { random: prng(FUZZ_SEED) },
    );
  }

  get conn(): TcpConnection {
    return this.sock as TcpConnection;
  }

  tsval(): number {
    return this.clock.now() >>> 0;
  }

  send(seq: number, flags: number, opts: { ack?: number; window?: number; payload?: Uint8Array; sack?: number[] | null; tsval?: number | null } = {}): void {
    const ts = opts.tsval === undefined ? this.tsval() : opts.tsval;
    this.stack.input([
      tcpFrame(
        GUEST,
        SERVER,
        {
          srcPort: this.port,
          dstPort: 80,
          seq: seq >>> 0,
          ack: (opts.ack ?? this.rcvNxt) >>> 0,
          flags,
          window: opts.window ?? 65535,
          options: { timestamp: ts === null ? null : { value: ts, echo: 0 }, sackBlocks: opts.sack ?? null },
        },
        opts.payload,
      ),
    ]);
    this.flush();
  }

  flush(): void {
    while (this.deferred.length) this.deferred.shift()!();
  }

  tick(ms: number): void {
    this.clock.advance(ms);
    this.stack.advance();
    this.flush();
  }

  handshake(isn = PEER_ISN): void {
    this.sndNxt = (isn + 1) >>> 0;
    this.rcvNxt = 0; // a new connection: Moat's next ISN is not comparable with the last one's numbers
    this.send(isn, TCP_SYN, { ack: 0, tsval: this.tsval() });
    const synAck = this.out.at(-1)!;
    if ((synAck.flags & (TCP_SYN | TCP_ACK)) !== (TCP_SYN | TCP_ACK)) throw new Error('no SYN-ACK');
    this.send(this.sndNxt, TCP_ACK);
  }

  /** In-order stream bytes from the peer's current position. */
  sendData(len: number, flags = TCP_ACK): void {
    const at = (this.sndNxt - PEER_ISN - 1) >>> 0;
    this.send(this.sndNxt, flags, { payload: stream(at, len) });
    this.sndNxt = (this.sndNxt + len) >>> 0;
  }

  /** Moat's state for the peer's four-tuple: the socket's, or TIME-WAIT while the stack's TIME-WAIT table holds it. */
  state(): string | undefined {
    const st = this.sock?.state;
    return st === 'CLOSED' && this.stack.inTimeWait({ src: GUEST, srcPort: this.port, dst: SERVER, dstPort: 80 }) ? 'TIME-WAIT' : st;
  }

  lastAckFromMoat(): number {
    for (let i = this.out.length - 1; i >= 0; i--) if (this.out[i]!.flags & TCP_ACK) return this.out[i]!.ack;
    throw new Error('Moat sent no ACK');
  }
}

const stream = (at: number, len: number) => Uint8Array.from({ length: len }, (_, i) => streamByte(at + i));

/** Drives a fresh connection into `state` (Moat's side) and returns the bench. */
function inState(state: string): Bench {
  const b = new Bench();
  b.handshake();
  const s = b.sock!;
  switch (state) {
    case 'SYN-RECEIVED': {
      const c = new Bench();
      c.send(PEER_ISN, TCP_SYN, { ack: 0 });
      return c;
    }
    case 'ESTABLISHED':
      break;
    case 'FIN-WAIT-1':
      s.end();
      b.flush(); // our FIN is out, not acknowledged
      break;
    case 'FIN-WAIT-2':
      s.end();
      b.flush();
      b.send(b.sndNxt, TCP_ACK);
      break;
    case 'CLOSE-WAIT':
      b.send(b.sndNxt, TCP_FIN | TCP_ACK);
      b.sndNxt = (b.sndNxt + 1) >>> 0;
      break;
    case 'CLOSING':
      s.end();
      b.flush();
      // The peer's FIN crosses ours: it does not acknowledge our FIN.
      b.send(b.sndNxt, TCP_FIN | TCP_ACK, { ack: (b.rcvNxt - 1) >>> 0 });
      b.sndNxt = (b.sndNxt + 1) >>> 0;
      break;
    case 'LAST-ACK':
      b.send(b.sndNxt, TCP_FIN | TCP_ACK);
      b.sndNxt = (b.sndNxt + 1) >>> 0;
      s.end();
      b.flush();
      break;
    case 'TIME-WAIT':
      s.end();
      b.flush();
      b.send(b.sndNxt, TCP_FIN | TCP_ACK);
      b.sndNxt = (b.sndNxt + 1) >>> 0;
      break;
  }
  const got = b.state();
  if (got !== state) throw new Error(`wanted ${state}, got ${got}`);
  return b;
}

const STATES = ['ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSE-WAIT', 'CLOSING', 'LAST-ACK', 'TIME-WAIT'];

describe('hostile TCP: RST and SYN in every state (RFC 9293 3.10.7.4, RFC 5961)', () => {
  it('SYN-RECEIVED: an exact RST ends the half-open connection; an in-window one earns a challenge ACK', () => {
    const b = new Bench();
    b.send(PEER_ISN, TCP_SYN, { ack: 0 });
    expect(b.state()).toBe('SYN-RECEIVED');
    const before = b.out.length;
    b.send(b.sndNxt + 100, TCP_RST);
    expect(b.state()).toBe('SYN-RECEIVED');
    expect(b.out.length).toBe(before + 1);
    expect(b.out.at(-1)!.flags).toBe(TCP_ACK);
    b.send(b.sndNxt, TCP_RST);
    expect(b.closed).toBe('reset');
    expect(b.stack.tableSizes().connections).toBe(0);
  });

  for (const state of STATES) {
    it(`${state}: RST off by one or more is answered by a challenge ACK (or nothing) and changes nothing`, () => {
      const b = inState(state);
      for (const delta of [1, 1000, -1, 0x40000000]) {
        const before = b.out.length;
        b.send(b.sndNxt + delta, TCP_RST);
        expect(b.state(), `RST at RCV.NXT${delta >= 0 ? '+' : ''}${delta}`).toBe(state);
        // At most one segment back, and never a RST (no reset war).
        expect(b.out.length - before).toBeLessThanOrEqual(1);
        for (const s of b.out.slice(before)) expect(s.flags & TCP_RST).toBe(0);
      }
      expect(b.closed ?? 'open').toBe(state === 'TIME-WAIT' ? 'closed' : 'open');
    });

    it(`${state}: RST at exactly RCV.NXT ends it`, () => {
      const b = inState(state);
      b.send(b.sndNxt, TCP_RST);
      expect(b.state()).toBe('CLOSED');
      expect(b.stack.tableSizes().connections).toBe(0);
      // TIME-WAIT and a completed close have already told the owner 'closed'; elsewhere it is a reset.
      expect(b.closed).toBe(state === 'TIME-WAIT' ? 'closed' : 'reset');
    });

    if (state !== 'TIME-WAIT') {
      it(`${state}: a SYN (any sequence number) earns a challenge ACK and changes nothing (RFC 5961 4.2)`, () => {
        const b = inState(state);
        for (const seq of [b.sndNxt, b.sndNxt + 500, PEER_ISN, b.sndNxt + 0x80000000]) {
          const before = b.out.length;
          b.tick(1_000); // past the challenge-ACK rate limit
          b.send(seq, TCP_SYN, { ack: 0 });
          expect(b.state()).toBe(state);
          const answers = b.out.slice(before);
          expect(answers.length).toBeLessThanOrEqual(2); // a due retransmission may leave in the same tick
          expect(answers.some((s) => s.flags === TCP_ACK && s.ack === b.sndNxt), `challenge ACK for SYN at ${seq}`).toBe(true);
        }
        expect(b.accepts).toBe(1);
      });
    }
  }
});

describe('hostile TCP: TIME-WAIT reuse (RFC 9293 3.10.7.4, RFC 6191)', () => {
  for (const [what, isn] of [
    ['a higher ISN', (PEER_ISN + 0x10000) >>> 0],
    ['a lower ISN', (PEER_ISN - 0x10000) >>> 0],
    ['the same ISN', PEER_ISN],
  ] as const) {
    it(`a new SYN with ${what} on a four-tuple Moat holds in TIME-WAIT opens a new connection at once`, () => {
      const b = inState('TIME-WAIT');
      const old = b.sock!;
      b.tick(100);
      const before = b.out.length;
      b.send(isn, TCP_SYN, { ack: 0 });
      expect(b.accepts).toBe(2);
      expect(b.sock).not.toBe(old);
      expect(b.state()).toBe('SYN-RECEIVED');
      const synAck = b.out.slice(before).find((s) => (s.flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK));
      expect(synAck?.ack).toBe((isn + 1) >>> 0);
      b.sndNxt = (isn + 1) >>> 0;
      b.rcvNxt = (synAck!.seq + 1) >>> 0; // a new ISN: not comparable with the old connection's numbers
      b.send(b.sndNxt, TCP_ACK, { ack: b.rcvNxt });
      expect(b.state()).toBe('ESTABLISHED');
      expect(b.stack.tableSizes().connections).toBe(1);
    });
  }

  it('a SYN|ACK or a bare ACK on a TIME-WAIT four-tuple does not reopen it', () => {
    const b = inState('TIME-WAIT');
    b.send(PEER_ISN + 5, TCP_SYN | TCP_ACK);
    b.send(PEER_ISN + 9, TCP_ACK);
    expect(b.accepts).toBe(1);
    expect(b.state()).toBe('TIME-WAIT');
  });
});

describe('hostile TCP: TIME-WAIT outside the connection limit, bounded on its own (issue 16 defect 2)', () => {
  /** The server (Moat's owner) closes first on a new source port: Moat holds that four-tuple in TIME-WAIT. */
  function closedByServer(b: Bench, port: number): void {
    b.port = port;
    b.handshake();
    b.sock!.end();
    b.flush();
    b.send(b.sndNxt, TCP_FIN | TCP_ACK);
    b.sndNxt = (b.sndNxt + 1) >>> 0;
    if (b.state() !== 'TIME-WAIT') throw new Error(`port ${port}: wanted TIME-WAIT, got ${b.state()}`);
  }

  it('four-tuples in TIME-WAIT do not count against maxConnections: server-closed connections beyond it are all accepted', () => {
    const b = new Bench(40000, { maxConnections: 4 });
    for (let i = 0; i < 20; i++) closedByServer(b, 41000 + i);
    expect(b.accepts).toBe(20);
    expect(b.stack.stats.drops['tcp:connection-limit']).toBeUndefined();
    expect(b.stack.tableSizes()).toMatchObject({ connections: 0, timeWait: 20 });
    expect(b.stack.stats.tcpTimeWait).toBe(20);
  });

  it('TIME-WAIT answers a retransmitted FIN with an ACK (timestamps echoed), restarts its 60 s, then leaves nothing behind', () => {
    const b = new Bench();
    closedByServer(b, 42000);
    const finAck = b.out.at(-1)!;
    expect(finAck.flags).toBe(TCP_ACK);
    expect(finAck.ack).toBe(b.sndNxt);
    b.tick(30_000);
    const before = b.out.length;
    b.send((b.sndNxt - 1) >>> 0, TCP_FIN | TCP_ACK); // our ACK of the guest's FIN was lost
    const again = b.out.slice(before);
    expect(again).toHaveLength(1);
    expect(again[0]!).toMatchObject({ flags: TCP_ACK, seq: finAck.seq, ack: b.sndNxt, window: finAck.window });
    expect(again[0]!.options.timestamp?.echo).toBe(b.tsval());
    b.tick(59_000); // 89 s after the first FIN, 59 s after the retransmission
    expect(b.stack.tableSizes().timeWait).toBe(1);
    b.tick(2_000);
    expect(b.stack.tableSizes()).toMatchObject({ connections: 0, timeWait: 0, timers: 0 });
    // Now the four-tuple is unknown: a stray ACK gets a reset.
    b.send(b.sndNxt, TCP_ACK);
    expect(b.out.at(-1)!.flags & TCP_RST).toBe(TCP_RST);
  });

  it('at maxTimeWait the oldest four-tuple is recycled first; the newest keep answering', () => {
    const b = new Bench(40000, { maxTimeWait: 3 });
    const ports = [43000, 43001, 43002, 43003, 43004];
    const moatSeqs: number[] = [];
    for (const p of ports) {
      closedByServer(b, p);
      moatSeqs.push(b.rcvNxt);
      b.tick(10);
    }
    expect(b.stack.tableSizes().timeWait).toBe(3);
    expect(b.stack.stats.tcpTimeWaitRecycled).toBe(2);
    // A stray ACK on each: the recycled (oldest) ones are unknown now (RST), the rest are in TIME-WAIT (silent).
    const answers = ports.map((p, i) => {
      b.port = p;
      const before = b.out.length;
      b.send((PEER_ISN + 2) >>> 0, TCP_ACK, { ack: moatSeqs[i]! });
      return b.out.slice(before).map((s) => (s.flags & TCP_RST ? 'rst' : 'ack'));
    });
    expect(answers).toEqual([['rst'], ['rst'], [], [], []]);
  });

  it('maxTimeWait must be a positive integer', () => {
    expect(() => new Bench(40000, { maxTimeWait: 0 })).toThrow(/tcp\.maxTimeWait/);
  });
});

describe('hostile TCP: zero window forever', () => {
  it('a peer that answers every probe with window 0 costs probes with backoff, never more than the send buffer', () => {
    const b = new Bench(40000, { sendBufferBytes: 64 * 1024 });
    b.handshake();
    const s = b.sock!;
    b.send(b.sndNxt, TCP_ACK, { window: 0 });
    const chunk = new Uint8Array(16 * 1024);
    let taken = 0;
    for (let i = 0; i < 20; i++) taken += s.write(chunk);
    expect(taken).toBe(64 * 1024); // backpressure: the rest is refused
    b.flush();
    let probes = 0;
    const start = b.out.length;
    for (let t = 0; t < 3_600; t++) {
      const n = b.out.length;
      b.tick(1_000);
      for (const seg of b.out.slice(n)) {
        probes++;
        // Answer each probe: still window 0, nothing new acknowledged.
        expect(seg.payload.length).toBe(0);
        b.send(b.sndNxt, TCP_ACK, { window: 0, ack: b.rcvNxt });
      }
    }
    console.log(`zero window for an hour: ${probes} probes, ${b.out.length - start} segments, state ${s.state}, buffered ${s.bufferedAmount}`);
    expect(probes).toBeGreaterThan(5);
    expect(probes).toBeLessThan(120); // exponential backoff to the 120 s ceiling: ~35 in an hour
    expect(s.bufferedAmount).toBeLessThanOrEqual(64 * 1024);
    expect(b.stack.stats.drops['stack:internal-error']).toBeUndefined();
  });

  it('a peer that closes its window and goes silent is given up on (timeout), leaving nothing behind', () => {
    const b = new Bench(40001);
    b.handshake();
    b.send(b.sndNxt, TCP_ACK, { window: 0 });
    b.sock!.write(new Uint8Array(5000));
    b.flush();
    for (let t = 0; t < 4 * 3600 && b.closed === undefined; t++) b.tick(1_000);
    expect(b.closed).toBe('timeout');
    expect(b.stack.tableSizes()).toMatchObject({ connections: 0, timers: 0 });
  });
});

describe('hostile TCP: fast-check sequences against a live connection', () => {
  const RUNS = Math.max(200, Math.floor(fuzzFrames(20_000) / 30));
  it(`no reset, no wrong byte, no unbounded buffer, no amplification (${RUNS} sequences)`, () => {
    let segments = 0;
    fc.assert(
      fc.property(fc.array(hostileSegment, { minLength: 1, maxLength: 60 }), fc.integer({ min: 0, max: 4 }), (makers, preload) => {
        const b = new Bench();
        b.handshake();
        // Moat has data in flight, so that ACK numbers matter.
        b.sock!.write(new Uint8Array(3000).fill(7));
        b.flush();
        for (let i = 0; i < preload; i++) b.sendData(700);
        let finSent = false;
        const inBefore = b.stack.stats.framesIn;
        const outBefore = b.stack.stats.framesOut;
        for (const make of makers) {
          const v: PeerView = { sndNxt: b.lastAckFromMoat(), rcvNxt: b.rcvNxt };
          const h = make(v, PEER_ISN);
          if (h.flags & TCP_FIN) finSent = true;
          b.send(h.seq, h.flags, {
            ack: h.ack,
            window: h.window,
            sack: h.sackBlocks,
            tsval: h.tsval ?? undefined,
            payload: h.dataLen > 0 ? stream(h.dataAt, h.dataLen) : undefined,
          });
          segments++;
          const d = b.conn.debug;
          expect(d.recvBuffered).toBeLessThanOrEqual(RECV_BUFFER);
          expect(d.oooBytes).toBeLessThanOrEqual(OOO_BYTES);
        }
        const inFrames = b.stack.stats.framesIn - inBefore;
        const outFrames = b.stack.stats.framesOut - outBefore;
        // Clock frozen: no timer fired, so every frame out answers a frame in (at most ~one each, plus Moat's 3 data segments).
        expect(outFrames).toBeLessThanOrEqual(inFrames + 4);
        expect(b.stack.stats.drops['stack:internal-error']).toBeUndefined();
        // Only an exact RST may kill a connection, and the generator never sends one.
        expect(b.closed, `closed after ${makers.length} hostile segments`).toBeUndefined();
        expect(['ESTABLISHED', 'CLOSE-WAIT']).toContain(b.state());
        // Recovery: the peer behaves again from Moat's RCV.NXT; every byte delivered is the stream's.
        b.sndNxt = b.lastAckFromMoat();
        const target = 12_000;
        while (b.state() === 'ESTABLISHED' && ((b.sndNxt - PEER_ISN - 1) >>> 0) < target) {
          b.sendData(Math.min(1000, target - ((b.sndNxt - PEER_ISN - 1) >>> 0)));
          b.sndNxt = b.lastAckFromMoat();
        }
        for (let i = 0; i < b.received.length; i++) if (b.received[i] !== streamByte(i)) throw new Error(`byte ${i} is ${b.received[i]}, not ${streamByte(i)}`);
        if (!finSent) {
          expect(b.received.length).toBeGreaterThanOrEqual(target);
          b.send(b.sndNxt, TCP_FIN | TCP_ACK);
          expect(b.ended).toBe(true);
        }
        // And it all ends cleanly.
        b.sock!.abort();
        b.flush();
        expect(b.stack.tableSizes()).toMatchObject({ connections: 0 });
      }),
      { numRuns: RUNS, seed: FUZZ_SEED },
    );
    console.log(`hostile sequences: ${RUNS} runs, ${segments} hostile segments`);
  }, 300_000);
});
