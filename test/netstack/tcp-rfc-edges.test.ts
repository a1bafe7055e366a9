/**
 * Edges of netstack/tcp/connection.ts that a mutation pass found undriven
 * (issue 14) and the defects of issue 16, each pinned by a segment-level test
 * against one connection and a scripted guest (tcp-harness.ts).
 */
import { describe, expect, it } from 'vitest';
import { TCP_RST } from '../../netstack/tcp/header.js';
import { bytes, established, flagsText } from './tcp-harness.js';

describe('PAWS is not applied to RST (RFC 7323 §5.3, issue 14)', () => {
  it('an RST at exactly RCV.NXT with an old timestamp still resets the connection', () => {
    const g = established();
    g.send({ payload: bytes(10), tsval: 5000 });
    g.rcv += 10;
    g.host.take();
    // TS.Recent is 5000 now; a reset carrying an older TSval is still a valid reset (RFC 5961 §3.2 decides).
    g.send({ flags: TCP_RST, seq: g.rcv, tsval: 4000 });
    expect(g.rec.closed).toBe('reset');
    expect(g.host.releasedCount).toBe(1);
  });

  it('an in-window RST with an old timestamp earns a challenge ACK, not a PAWS duplicate ACK', () => {
    const g = established();
    g.send({ payload: bytes(10), tsval: 5000 });
    g.rcv += 10;
    g.host.take();
    g.send({ flags: TCP_RST, seq: g.rcv + 100, tsval: 4000 });
    expect(g.rec.closed).toBe(null);
    const ch = g.host.take();
    expect(ch).toHaveLength(1);
    expect(ch[0]!.ack).toBe(g.rcv);
  });
});

describe('acceptability of zero-length segments: the right edge (RFC 9293 §3.10.7.4, issue 14)', () => {
  /** Our data in flight, so that an ACK that is processed shows (the send buffer drains). */
  function withDataInFlight() {
    const g = established();
    g.conn.write(bytes(100));
    g.host.flush();
    g.host.take();
    return g;
  }

  it('a pure ACK at RCV.NXT + RCV.WND - 1 is acceptable: its acknowledgment is processed', () => {
    const g = withDataInFlight();
    const wnd = g.conn.debug.rcvWnd;
    expect(wnd).toBeGreaterThan(0);
    g.send({ seq: g.rcv + wnd - 1, ack: g.una + 100 });
    expect(g.conn.bufferedAmount).toBe(0);
  });

  it('a pure ACK at RCV.NXT + RCV.WND (the right edge) or beyond is not: it is answered and its ACK ignored', () => {
    for (const past of [0, 1, 1000]) {
      const g = withDataInFlight();
      const wnd = g.conn.debug.rcvWnd;
      g.send({ seq: g.rcv + wnd + past, ack: g.una + 100 });
      expect(g.conn.bufferedAmount, `ACK at RCV.NXT+RCV.WND+${past}`).toBe(100);
      const answer = g.host.take();
      expect(answer).toHaveLength(1);
      expect(flagsText(answer[0]!.flags)).toBe('.');
      expect(answer[0]!.ack).toBe(g.rcv);
    }
  });

  it('with a zero receive window only SEG.SEQ = RCV.NXT is acceptable for an empty segment', () => {
    const g = established({ cfg: { sendBufferBytes: 64 * 1024, recvBufferBytes: 8192, oooBytes: 8192 } });
    g.conn.pause();
    for (let sent = 0; sent < 8192; sent += 1024) g.send({ seq: g.rcv + sent, payload: bytes(1024) });
    g.rcv += 8192;
    expect(g.conn.debug.rcvWnd).toBe(0);
    g.conn.write(bytes(100));
    g.host.flush();
    g.host.take();
    g.send({ seq: g.rcv + 1, ack: g.una + 100 });
    expect(g.conn.bufferedAmount).toBe(100);
    g.send({ seq: g.rcv, ack: g.una + 100 });
    expect(g.conn.bufferedAmount).toBe(0);
  });
});

