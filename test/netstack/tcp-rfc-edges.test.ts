/**
 * Edges of netstack/tcp/connection.ts that a mutation pass found undriven
 * (issue 14) and the defects of issue 16, each pinned by a segment-level test
 * against one connection and a scripted guest (tcp-harness.ts).
 */
import { describe, expect, it } from 'vitest';
import type { TcpSocket } from '../../netstack/api.js';
import { ManualClock } from '../../netstack/clock.js';
import { TimerWheel } from '../../netstack/timer-wheel.js';
import { TcpConnection, type TcpConfig } from '../../netstack/tcp/connection.js';
import { TCP_ACK, TCP_RST, TCP_SYN } from '../../netstack/tcp/header.js';
import { GUEST_IP, HOST_ALIAS, Link } from '../support/link.js';
import { streamBytes } from '../support/link-scenario.js';
import { bytes, established, FakeHost, flagsText, linuxSyn, Recorder, seg, TUPLE } from './tcp-harness.js';

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


describe('active open: the receive window starts at the peer ISN (issue 16 defect 1)', () => {
  const PEER_ISNS = [0x10000000, 0xf0000000, 0x7fffffff, 0x80000001];

  for (const irs of PEER_ISNS) {
    it(`peer ISN 0x${irs.toString(16)}: the advertised window is what the SYN said, data beyond it is not taken, resume() reopens it at once`, () => {
      const clock = new ManualClock(0);
      const timers = new TimerWheel(clock);
      const host = new FakeHost(clock, timers, 1460, 7);
      const rec = new Recorder();
      const recvBufferBytes = 16 * 1024;
      const c = TcpConnection.connect(host, { sendBufferBytes: 16 * 1024, recvBufferBytes, oooBytes: 8192 }, TUPLE, rec);
      host.take();
      c.input({ ...seg({ seq: irs, ack: 8, flags: TCP_SYN | TCP_ACK, window: 65535 }), options: { mss: 1460, windowScale: 7, sackPermitted: true, timestamp: null, sackBlocks: null } });
      host.flush();
      host.take();
      expect(c.state).toBe('ESTABLISHED');
      expect(c.debug.rcvWnd).toBe(recvBufferBytes);
      c.pause();
      const rcv = (irs + 1) >>> 0;
      // Fill the window exactly, then offer bytes past its right edge.
      for (let off = 0; off < recvBufferBytes; off += 1024) c.input(seg({ seq: rcv + off, ack: 8, flags: TCP_ACK, payload: bytes(1024) }));
      host.flush();
      expect(c.debug.rcvWnd).toBe(0);
      expect(() => c.input(seg({ seq: rcv + recvBufferBytes, ack: 8, flags: TCP_ACK, payload: bytes(1024) }))).not.toThrow();
      host.flush();
      expect(c.debug.recvBuffered).toBe(recvBufferBytes);
      host.take();
      c.resume();
      host.flush();
      expect(rec.bytes).toBe(recvBufferBytes);
      const update = host.take();
      expect(update).toHaveLength(1);
      expect(update[0]!.ack).toBe((rcv + recvBufferBytes) >>> 0);
      expect(update[0]!.window).toBeGreaterThan(0);
    });
  }

  it('a port-forward-style open (Moat connects into the guest, peer ISN 0xf0000000) resumes at once after a 20 s pause', () => {
    let guestSock: TcpSocket | undefined;
    const total = 3 * 1024 * 1024;
    const data = streamBytes(3, total);
    let written = 0;
    const pump = () => {
      while (guestSock !== undefined && written < total) {
        const n = guestSock.write(data.subarray(written, Math.min(total, written + 64 * 1024)));
        written += n;
        if (n === 0) return;
      }
    };
    const link = new Link({
      faults: { drop: 0, duplicate: 0, reorder: 0, delayMs: 1, jitterMs: 0 },
      isn: { guest: () => 0xf0000000, moat: () => 0x10000000 },
      moatEvents: { onTcpSyn: (p) => p.ignore(), onUdp: () => {} },
      guestEvents: {
        onTcpSyn: (p) => {
          guestSock = p.accept({ onData() {}, onEnd() {}, onDrain: pump, onClose() {} });
          pump();
        },
        onUdp: () => {},
      },
    });
    const got = new Recorder();
    const sock = link.moat.connectTcp({ from: HOST_ALIAS, fromPort: 40000, to: GUEST_IP, toPort: 8080 }, got);
    sock.pause(); // the host client is slow
    const conn = sock as TcpConnection;
    // Closed up to the scale unit's rounding (the guest's sender holds back a runt).
    expect(link.run(() => conn.debug.recvBuffered > 0 && conn.debug.rcvWnd < 1024, 10_000)).toBe(true);
    link.run(() => false, 20_000);
    const resumedAt = link.clock.now();
    sock.resume();
    expect(link.run(() => got.bytes === total, 60_000)).toBe(true);
    const stalled = link.clock.now() - resumedAt;
    // 3 MiB over a 1 ms link with 1 MiB windows takes a few RTTs; the defect waited for the guest's backed-off probe (seconds).
    expect(stalled).toBeLessThan(500);
    expect(Buffer.from(got.data()).equals(Buffer.from(data))).toBe(true);
    expect(link.moat.stats.drops['stack:internal-error']).toBeUndefined();
  });
});

describe('NewReno: a new recovery may start at the old "recover" (RFC 6582 §3.2 step 2, issue 16 defect 3)', () => {
  it('after a full recovery, the first segment of the next flight lost is fast-retransmitted on three duplicate ACKs', () => {
    const g = established({ sack: false });
    g.conn.write(bytes(1448 * 10));
    g.host.flush();
    const first = g.host.take();
    for (let i = 0; i < 3; i++) g.send({ ack: first[0]!.seq });
    expect(g.conn.debug.inRecovery).toBe(true);
    const end = (first.at(-1)!.seq + first.at(-1)!.payload.length) >>> 0;
    g.send({ ack: end }); // full ACK: recovery over, recover = end
    expect(g.conn.debug.inRecovery).toBe(false);
    g.host.take();
    g.conn.write(bytes(1448 * 10));
    g.host.flush();
    const second = g.host.take();
    expect(second[0]!.seq).toBe(end);
    // The first new segment is lost: every duplicate ACK says exactly `recover`.
    for (let i = 0; i < 3; i++) g.send({ ack: end });
    const rtx = g.host.take();
    expect(rtx.map((s) => s.seq)).toContain(end);
    expect(g.conn.debug.inRecovery).toBe(true);
  });

  it('after an RTO, duplicate ACKs for the same flight still do not start a second reduction', () => {
    const g = established({ sack: false });
    g.conn.write(bytes(1448 * 10));
    g.host.flush();
    const first = g.host.take();
    g.tick(250); // RTO (200 ms floor): go back to SND.UNA
    g.host.take();
    const ssthresh = g.conn.debug.ssthresh;
    for (let i = 0; i < 3; i++) g.send({ ack: first[0]!.seq });
    expect(g.conn.debug.inRecovery).toBe(false);
    expect(g.conn.debug.ssthresh).toBe(ssthresh);
  });
});

describe('a floor on the peer MSS (Linux TCP_MIN_SND_MSS 48, CVE-2019-11479, issue 16 defect 5)', () => {
  for (const mss of [1, 13, 47]) {
    it(`a guest SYN with MSS ${mss} is served segments of 48 bytes less options, not one per byte`, () => {
      const clock = new ManualClock(0);
      const timers = new TimerWheel(clock);
      const host = new FakeHost(clock, timers, 1460, 1000);
      const conn = TcpConnection.acceptSyn(host, { sendBufferBytes: 64 * 1024, recvBufferBytes: 64 * 1024, oooBytes: 8192 }, TUPLE, linuxSyn({ mss, timestamp: null }), new Recorder());
      host.take();
      conn.input(seg({ seq: 5001, ack: 1001, flags: TCP_ACK, window: 2000 }));
      expect(conn.state).toBe('ESTABLISHED');
      expect(conn.debug.smss).toBe(48);
      conn.write(bytes(480));
      host.flush();
      const out = host.take();
      expect(out.every((s) => s.payload.length === 48)).toBe(true);
      expect(out).toHaveLength(10);
    });
  }
});

describe('congestion window validation (RFC 7661) and restart after idle (RFC 5681 §4.1), issue 16 defect 4', () => {
  const BIG: TcpConfig = { sendBufferBytes: 4 * 1024 * 1024, recvBufferBytes: 64 * 1024, oooBytes: 32 * 1024 };
  const PEER_WINDOW = 0xffff; // << 7: 8 MiB, never the limit here

  /** ACKs everything in flight, as the guest would. */
  function ackAll(g: ReturnType<typeof established>, sent: { seq: number; payload: Uint8Array }[]): void {
    const last = sent.at(-1)!;
    g.send({ ack: (last.seq + last.payload.length) >>> 0, window: PEER_WINDOW });
  }

  it('an application-limited flow (one segment per round trip) does not grow cwnd; its next big write leaves as one initial window', () => {
    const g = established({ cfg: BIG });
    const iw = g.conn.debug.cwnd;
    for (let i = 0; i < 200; i++) {
      g.conn.write(bytes(1000));
      g.host.flush();
      const out = g.host.take();
      g.tick(1);
      ackAll(g, out);
    }
    expect(g.conn.debug.cwnd).toBeLessThanOrEqual(iw);
    g.conn.write(bytes(1024 * 1024));
    g.host.flush();
    expect(g.host.take().length).toBeLessThanOrEqual(10);
  });

  it('a flow that was cwnd-limited and then idle for more than an RTO restarts from the initial window', () => {
    const g = established({ cfg: BIG });
    g.conn.write(bytes(3 * 1024 * 1024));
    for (let round = 0; round < 6; round++) {
      g.host.flush();
      const out = g.host.take();
      g.tick(1);
      ackAll(g, out);
    }
    const grown = g.conn.debug.cwnd;
    expect(grown).toBeGreaterThan(100 * g.conn.debug.smss); // slow start while every flight filled cwnd
    // Drain what is left, then go quiet for 10 s.
    for (let round = 0; round < 100 && g.conn.bufferedAmount > 0; round++) {
      g.host.flush();
      const out = g.host.take();
      g.tick(1);
      if (out.length > 0) ackAll(g, out);
    }
    expect(g.conn.bufferedAmount).toBe(0);
    g.tick(10_000);
    g.conn.write(bytes(1024 * 1024));
    g.host.flush();
    expect(g.host.take().length).toBeLessThanOrEqual(10);
  });
});

describe('issue 16 defect 6: the minor ones', () => {
  it('an RST whose payload covers RCV.NXT does not reset: only SEG.SEQ = RCV.NXT does, before any trimming (RFC 5961 §3.2)', () => {
    const g = established();
    g.send({ flags: TCP_RST | TCP_ACK, seq: g.rcv - 10, payload: bytes(20) });
    expect(g.rec.closed).toBe(null);
    expect(g.conn.state).toBe('ESTABLISHED');
  });

  it('ACKs to out-of-window SYNs are rate-limited like challenge ACKs (RFC 5961 §7)', () => {
    const g = established();
    for (let i = 0; i < 100; i++) g.send({ flags: TCP_SYN, seq: g.rcv + 0x40000000 + i });
    const answers = g.host.take();
    expect(answers.length).toBeLessThanOrEqual(10);
    expect(answers.every((a) => flagsText(a.flags) === '.' && a.ack === g.rcv)).toBe(true);
    expect(g.conn.state).toBe('ESTABLISHED');
  });

  it('TS.Recent older than 24 days is invalid: PAWS lets the next segment in (RFC 7323 §5.5)', () => {
    const g = established();
    g.send({ payload: bytes(10), tsval: 0x70000000 });
    g.rcv += 10;
    g.host.take();
    g.tick(25 * 24 * 3600 * 1000);
    g.send({ payload: bytes(10), tsval: 5 }); // "older" than TS.Recent in timestamp space
    expect(g.rec.bytes).toBe(20);
    g.rcv += 10;
    // And the new TSval became TS.Recent: the segment after it is judged against 5.
    g.send({ payload: bytes(10), tsval: 6 });
    expect(g.rec.bytes).toBe(30);
  });

  it('within 24 days an old TSval is still dropped by PAWS', () => {
    const g = established();
    g.send({ payload: bytes(10), tsval: 0x70000000 });
    g.host.take();
    g.tick(23 * 24 * 3600 * 1000);
    g.send({ seq: g.rcv + 10, payload: bytes(10), tsval: 5 });
    expect(g.rec.bytes).toBe(10);
  });
});

describe('initial sequence numbers: RFC 6528 clock + keyed hash (issue 16 defect 6)', () => {
  /** ISN and time of each active open Moat makes into the guest, one after the other. */
  function opens(seed: number, ports: number[], gapMs: number): { iss: number; at: number }[] {
    const link = new Link({
      seed,
      moatEvents: { onTcpSyn: (p) => p.ignore(), onUdp: () => {} },
      guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => {} },
    });
    const out: { iss: number; at: number }[] = [];
    for (const fromPort of ports) {
      link.clock.advance(gapMs);
      const s = link.moat.connectTcp({ from: HOST_ALIAS, fromPort, to: GUEST_IP, toPort: 8080 }, new Recorder());
      out.push({ iss: (s as TcpConnection).debug.iss, at: link.clock.now() });
      link.run(() => s.state === 'CLOSED', 5_000);
    }
    return out;
  }

  it('one four-tuple opened again later gets an ISN higher by 250 per ms (4 µs ticks); another four-tuple an unrelated one', () => {
    const [a, b] = opens(5, [40000, 40000], 1_000);
    expect((b!.iss - a!.iss) >>> 0).toBe(250 * (b!.at - a!.at));
    const [c] = opens(5, [40001], 1_000);
    expect(c!.at).toBe(a!.at);
    expect(c!.iss).not.toBe(a!.iss);
  });

  it('the same seed and clock replay the same ISNs; another seed does not', () => {
    expect(opens(9, [40000, 40001, 40002], 10)).toEqual(opens(9, [40000, 40001, 40002], 10));
    expect(opens(10, [40000], 10)[0]!.iss).not.toBe(opens(9, [40000], 10)[0]!.iss);
  });
});

describe('limited transmit (RFC 3042), without SACK', () => {
  it('each of the first two duplicate ACKs lets one new segment out; the third starts fast retransmit', () => {
    const g = established({ sack: false });
    g.conn.write(bytes(1448 * 20));
    g.host.flush();
    const first = g.host.take();
    expect(first).toHaveLength(10); // the initial window
    const next = (first.at(-1)!.seq + 1448) >>> 0;
    g.send({ ack: first[0]!.seq });
    expect(g.host.take().map((s) => s.seq)).toEqual([next]);
    g.send({ ack: first[0]!.seq });
    expect(g.host.take().map((s) => s.seq)).toEqual([(next + 1448) >>> 0]);
    g.send({ ack: first[0]!.seq });
    expect(g.host.take().map((s) => s.seq)).toContain(first[0]!.seq);
  });
});

describe('segmentation offload at the connection\'s own segment size (issue 16 defect 6, GSO size)', () => {
  it('a guest with MSS 1460 on a 65520-MTU offloading link gets super-segments of whole 1448-byte segments (the host marks them with segmentSize 1448)', () => {
    const clock = new ManualClock(0);
    const timers = new TimerWheel(clock);
    const host = new FakeHost(clock, timers, 65_480, 1000);
    const cfg: TcpConfig = { sendBufferBytes: 256 * 1024, recvBufferBytes: 64 * 1024, oooBytes: 8192, segmentOffloadBytes: 65_455 };
    const conn = TcpConnection.acceptSyn(host, cfg, TUPLE, linuxSyn({ mss: 1460 }), new Recorder());
    host.take();
    conn.input(seg({ seq: 5001, ack: 1001, flags: TCP_ACK, window: 0xffff, ts: { value: 78, echo: 0 } }));
    expect(conn.debug.smss).toBe(1448);
    expect(conn.segmentSize).toBe(1448);
    conn.write(bytes(100_000));
    host.flush();
    const sizes = host.take().map((s) => s.payload.length).filter((n) => n > 0);
    expect(sizes.length).toBeGreaterThan(0);
    expect(Math.max(...sizes)).toBe(10 * 1448); // the initial window, in one super-segment
    for (const n of sizes) expect(n % 1448).toBe(0);
  });

  it('a guest whose MSS fills the link MTU still gets whole-MSS super-segments', () => {
    const clock = new ManualClock(0);
    const timers = new TimerWheel(clock);
    const host = new FakeHost(clock, timers, 1460, 1000);
    const cfg: TcpConfig = { sendBufferBytes: 256 * 1024, recvBufferBytes: 64 * 1024, oooBytes: 8192, segmentOffloadBytes: 65_455 };
    const conn = TcpConnection.acceptSyn(host, cfg, TUPLE, linuxSyn({ mss: 1460 }), new Recorder());
    host.take();
    conn.input(seg({ seq: 5001, ack: 1001, flags: TCP_ACK, window: 0xffff, ts: { value: 78, echo: 0 } }));
    conn.write(bytes(100_000));
    host.flush();
    const sizes = host.take().map((s) => s.payload.length).filter((n) => n > 0);
    expect(Math.max(...sizes)).toBe(10 * 1448); // the initial window, in one super-segment
  });
});

describe('a spurious timeout is undone (Eifel, RFC 3522 / RFC 4015)', () => {
  for (const sack of [true, false]) {
    it(`${sack ? 'with' : 'without'} SACK: an ACK echoing a TSval from before the RTO restores the window and sends new data, not the flight again`, () => {
      const g = established({ sack });
      g.conn.write(bytes(1448 * 20));
      g.host.flush();
      const flight = g.host.take();
      expect(flight).toHaveLength(10);
      const sndMax = (flight.at(-1)!.seq + 1448) >>> 0;
      const originalTsval = flight[4]!.options.timestamp!.value;
      const before = { cwnd: g.conn.debug.cwnd, ssthresh: g.conn.debug.ssthresh };
      for (let t = 0; t < 250; t += 5) g.tick(5); // the guest was descheduled: the RTO fires (after a tail loss probe, with SACK)
      expect(g.host.take().map((s) => s.seq)).toContain(flight[0]!.seq);
      expect(g.conn.debug.ssthresh).toBeLessThan(before.ssthresh);
      // Then its delayed ACK of the originals arrives, echoing their TSval.
      g.conn.input(seg({ seq: g.rcv, ack: flight[5]!.seq, flags: TCP_ACK, window: 2000, ts: { value: 1000, echo: originalTsval } }));
      g.host.flush();
      expect(g.conn.debug.ssthresh).toBe(before.ssthresh);
      expect(g.conn.debug.cwnd).toBeGreaterThanOrEqual(before.cwnd);
      const after = g.host.take().filter((s) => s.payload.length > 0);
      expect(after.length).toBeGreaterThan(0);
      // Nothing of the old flight is sent again: only new data, from SND.MAX on.
      expect(after.every((s) => ((s.seq - sndMax) | 0) >= 0)).toBe(true);
    });
  }

  it('an ACK drawn by the retransmission (echoing its TSval) keeps the reduction', () => {
    const g = established();
    g.conn.write(bytes(1448 * 10));
    g.host.flush();
    const flight = g.host.take();
    for (let t = 0; t < 250; t += 5) g.tick(5);
    const rtx = g.host.take().find((s) => s.seq === flight[0]!.seq);
    g.conn.input(seg({ seq: g.rcv, ack: (flight[0]!.seq + 1448) >>> 0, flags: TCP_ACK, window: 2000, ts: { value: 1000, echo: rtx!.options.timestamp!.value } }));
    g.host.flush();
    expect(g.conn.debug.ssthresh).toBeLessThan(0x7fffffff);
  });
});

describe('D-SACK on receive (RFC 2883)', () => {
  it('a segment received twice is reported in a D-SACK block, first, in the ACK that answers it', () => {
    const g = established();
    g.send({ payload: bytes(100) });
    g.host.take();
    g.send({ payload: bytes(100) }); // the peer retransmitted it (its RTO was spurious)
    const [ack] = g.host.take();
    expect(ack!.ack).toBe(g.rcv + 100);
    expect(ack!.options.sackBlocks).toEqual([g.rcv, g.rcv + 100]);
    // Only once: the next ACK carries no D-SACK.
    g.send({ seq: g.rcv + 100, payload: bytes(10) });
    expect(g.host.take().at(-1)!.options.sackBlocks).toBe(null);
  });

  it('a segment that overlaps data already received reports the overlap, ahead of the out-of-order blocks', () => {
    const g = established();
    g.send({ payload: bytes(100) });
    g.send({ seq: g.rcv + 300, payload: bytes(50) }); // out of order: a hole at 100..300
    g.host.take();
    g.send({ seq: g.rcv + 50, payload: bytes(100) }); // 50..100 again, then 100..150 new
    const last = g.host.take().at(-1)!;
    expect(last.ack).toBe(g.rcv + 150);
    expect(last.options.sackBlocks).toEqual([g.rcv + 50, g.rcv + 100, g.rcv + 300, g.rcv + 350]);
  });

  it('without SACK negotiated, no blocks at all', () => {
    const g = established({ sack: false });
    g.send({ payload: bytes(100) });
    g.host.take();
    g.send({ payload: bytes(100) });
    expect(g.host.take()[0]!.options.sackBlocks).toBe(null);
  });
});
