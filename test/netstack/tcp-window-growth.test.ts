/**
 * Receive-window autotuning (tcp/connection.ts growWindow): the window starts
 * at recvWindowInitialBytes and doubles while each ACK covers a quarter of it
 * or more and the owner takes every byte at once; never above
 * recvBufferBytes; not for an owner that pauses, nor for a sender the window
 * does not limit.
 */
import { describe, expect, it } from 'vitest';
import type { TcpConfig } from '../../netstack/tcp/connection.js';
import { bytes, established, GUEST_ISN } from './tcp-harness.js';

const MAX = 256 * 1024;
const INITIAL = 32 * 1024;
const GROWING: TcpConfig = { sendBufferBytes: 64 * 1024, recvBufferBytes: MAX, recvWindowInitialBytes: INITIAL, oooBytes: 64 * 1024, timeWaitMs: 60_000 };
/** The guest's payload per segment: MSS 1460 less the timestamp option. */
const SEG = 1448;

type Guest = ReturnType<typeof established>;

/** The window the last ACK advertised, in bytes (from RCV.NXT to the advertised right edge). */
function advertised(g: Guest): number {
  return g.conn.debug.rcvWnd;
}

/**
 * One round trip of a window-limited sender: as many full segments as the
 * advertised window holds (`fill` of it) in one input batch, ACKed once at
 * its end; returns the window that ACK advertised.
 */
function round(g: Guest, fill = 1, between?: (i: number) => void): number {
  const n = Math.floor((advertised(g) * fill) / SEG);
  const flush = g.host.flush.bind(g.host);
  g.host.flush = () => {}; // g.send flushes per segment; a batch is ACKed once, at its end
  try {
    for (let i = 0; i < n; i++) {
      g.send({ payload: bytes(SEG, g.rcv) });
      g.rcv += SEG;
      between?.(i);
    }
  } finally {
    g.host.flush = flush;
  }
  g.host.flush();
  g.host.take();
  return advertised(g);
}

describe('receive window autotuning', () => {
  it('starts at the initial window and doubles, round by round, while the peer fills it and the owner keeps up, up to the maximum and never beyond', () => {
    const g = established({ cfg: GROWING });
    expect(g.conn.debug.rcvWnd).toBeLessThanOrEqual(INITIAL);
    const windows: number[] = [];
    // Drive far past the point where the maximum is reached.
    for (let r = 0; r < 40; r++) windows.push(round(g));
    expect(windows[0]).toBeLessThanOrEqual(2 * INITIAL);
    expect(Math.max(...windows)).toBe(MAX);
    for (const w of windows) expect(w).toBeLessThanOrEqual(MAX);
    for (let i = 1; i < windows.length; i++) expect(windows[i]).toBeGreaterThanOrEqual(windows[i - 1]!); // never shrinks here
    expect(g.conn.debug.rcvWndCap).toBe(MAX);
    expect(g.rec.bytes).toBe(g.rcv - (GUEST_ISN + 1));
  });

  it('does not grow for a sender that sends less than a quarter of the window per ACK (the window does not limit it)', () => {
    const g = established({ cfg: GROWING });
    for (let r = 0; r < 200; r++) round(g, 0.24);
    expect(g.conn.debug.rcvWndCap).toBe(INITIAL);
    expect(advertised(g)).toBeLessThanOrEqual(INITIAL + 2 ** g.conn.debug.rcvShift);
  });

  it('does not grow while the owner pauses within every window (a host slower than the guest): the ring holds at most the window it had', () => {
    const g = established({ cfg: GROWING });
    for (let r = 0; r < 40; r++) {
      // The owner pauses after the first segment of each batch and takes the rest after the batch.
      round(g, 1, (i) => {
        if (i === 0) g.conn.pause();
      });
      expect(g.conn.debug.recvBuffered).toBeLessThanOrEqual(INITIAL);
      g.conn.resume();
      g.host.flush();
    }
    expect(g.conn.debug.rcvWndCap).toBe(INITIAL);
    expect(g.conn.debug.allocatedBytes).toBeLessThanOrEqual(64 * 1024 + INITIAL);
  });

  it('without recvWindowInitialBytes the window is recvBufferBytes from the start and stays there', () => {
    const g = established({ cfg: { ...GROWING, recvWindowInitialBytes: undefined } });
    for (let r = 0; r < 10; r++) expect(round(g)).toBeLessThanOrEqual(MAX);
    expect(g.conn.debug.rcvWndCap).toBe(MAX);
  });
});
