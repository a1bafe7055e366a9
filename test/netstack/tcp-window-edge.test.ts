/**
 * The receive window's right edge under window scaling (tcp/connection.ts
 * windowField), with a paused owner: the window the peer sees must close at
 * the window granted (rcvWndCap, plus less than one scale unit of rounding),
 * every byte inside any edge ever announced must be accepted (RFC 9293
 * §3.8.6.2.2: the window is not shrunk under the peer; RFC 7323 §2.4: a
 * retraction by less than one unit is the only one allowed), and zero-window
 * probes (Linux's: 1 byte, or what fits a partial window) are answered.
 */
import { describe, expect, it } from 'vitest';
import type { TcpConfig } from '../../netstack/tcp/connection.js';
import { seqAdd, seqDiff, seqGt } from '../../netstack/tcp/seq.js';
import { bytes, established } from './tcp-harness.js';

type Guest = ReturnType<typeof established>;

/** Config whose window scale is `shift` (chooseShift: the smallest that advertises recvBufferBytes), starting at `initial`. */
function cfgForShift(shift: number, initial: number): TcpConfig {
  const recvBufferBytes = 0xffff * 2 ** (shift - 1) + 1; // needs exactly `shift`
  return { sendBufferBytes: 64 * 1024, recvBufferBytes, recvWindowInitialBytes: initial, oooBytes: 64 * 1024, timeWaitMs: 60_000 };
}

/** A Linux-like sender's view of our window: the edge from the latest ACK, and the farthest edge ever announced. */
class View {
  latest: number;
  farthest: number;
  una: number;
  acks = 0;
  constructor(private readonly g: Guest) {
    // The SYN-ACK's window is never scaled (RFC 7323 §2.2).
    const synAck = g.synAck[0]!;
    this.latest = this.farthest = seqAdd(synAck.ack, synAck.window);
    this.una = synAck.ack;
  }
  /** Reads the segments we sent since the last call. */
  update(): this {
    const shift = this.g.conn.debug.rcvShift;
    for (const s of this.g.host.take()) {
      this.acks++;
      this.latest = seqAdd(s.ack, s.window * 2 ** shift);
      if (seqGt(this.latest, this.farthest)) this.farthest = this.latest;
      this.una = s.ack;
    }
    return this;
  }
}

/**
 * Sends segments of `size` (or what fits) up to the edge the latest ACK
 * announced, each ACKed on its own (one input batch each), until the
 * announced window is zero or `limit` bytes went. Returns the bytes sent.
 */
function fillWindow(g: Guest, v: View, size: number, limit: number): number {
  let sent = 0;
  for (;;) {
    const room = seqDiff(v.update().latest, g.rcv);
    if (room <= 0 || sent >= limit) return sent;
    const n = Math.min(size, room);
    g.send({ payload: bytes(n, g.rcv) });
    g.rcv = seqAdd(g.rcv, n);
    sent += n;
  }
}

describe('receive window edge with window scaling and a paused owner', () => {
  for (const shift of [7, 14]) {
    for (const size of [1448, 100, 7]) {
      it(`shift ${shift}, ${size}-byte segments: the window closes at the granted window (+ < one unit), every byte is acknowledged`, () => {
        const initial = 64 * 1024;
        const g = established({ cfg: cfgForShift(shift, initial) });
        expect(g.conn.debug.rcvShift).toBe(shift);
        g.conn.pause();
        const unit = 2 ** shift;
        // Small segments one by one: bounded so a window that never closes fails fast instead of hanging.
        const v = new View(g);
        const sent = fillWindow(g, v, size, initial + 4 * unit + 4 * 1448);
        const una = v.una;
        expect(una, 'every byte sent inside an announced window is acknowledged').toBe(g.rcv);
        expect(g.conn.debug.recvBuffered).toBe(sent);
        expect(sent, `window closed after ${sent} B (granted ${initial}, unit ${unit})`).toBeLessThan(initial + unit);
      });
    }
  }

  for (const shift of [7, 14]) {
    it(`shift ${shift}: bytes up to the farthest edge ever announced are accepted after the announced window retracted; a probe past it is answered with the window, and resume() reopens it at once`, () => {
      const initial = 64 * 1024;
      const g = established({ cfg: cfgForShift(shift, initial) });
      g.conn.pause();
      const v = new View(g);
      // Odd-sized segments: RCV.NXT falls between scale units, the announced field rounds.
      fillWindow(g, v, 1000, 4 * initial);
      expect(seqDiff(v.latest, g.rcv)).toBeLessThanOrEqual(0);
      // A sender that sent before the last ACK reached it keeps to the farthest edge it was offered.
      const inFlight = seqDiff(v.farthest, g.rcv);
      expect(inFlight, 'the announced edge retracted (less than one unit): the case under test').toBeGreaterThan(0);
      expect(inFlight).toBeLessThan(2 ** shift);
      g.send({ payload: bytes(inFlight, g.rcv) });
      g.rcv = seqAdd(g.rcv, inFlight);
      expect(v.update().una, 'bytes inside an edge once offered are accepted').toBe(g.rcv);
      const held = g.conn.debug.recvBuffered;
      expect(held).toBeLessThan(initial + 2 ** shift);
      // Zero-window probes as Linux sends them: one byte of new data (a retransmission at a zero window) and a partial segment.
      for (const n of [1, 700]) {
        g.send({ payload: bytes(n, g.rcv) });
        const answer = g.host.take();
        expect(answer, `probe of ${n} B answered`).toHaveLength(1);
        expect(answer[0]!.ack).toBe(g.rcv);
        expect(answer[0]!.window).toBe(0);
        expect(g.conn.debug.recvBuffered).toBe(held);
      }
      // The owner takes everything: the reopened window is announced without waiting for the peer's next probe.
      g.conn.resume();
      g.host.flush();
      const update = g.host.take();
      expect(update).toHaveLength(1);
      expect(update[0]!.ack).toBe(g.rcv);
      expect(update[0]!.window * 2 ** shift).toBeGreaterThanOrEqual(initial - 2 ** shift);
    });
  }
});
