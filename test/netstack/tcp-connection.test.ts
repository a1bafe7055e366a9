import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { ManualClock } from '../../netstack/clock.js';
import { TimerWheel } from '../../netstack/timer-wheel.js';
import { TcpConnection, rstForUnknown, type TcpConfig } from '../../netstack/tcp/connection.js';
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, type TcpRepr } from '../../netstack/tcp/header.js';
import { seqAdd, seqLt, seqGt, seqDiff } from '../../netstack/tcp/seq.js';
import { FakeHost, Recorder, TUPLE, MIRROR, linuxSyn, seg, flagsText, Network, CFG, GUEST_ISN, OUR_ISN, bytes, established } from './tcp-harness.js';

describe('passive open (answering a Linux SYN)', () => {
  it('negotiates MSS, window scale, SACK and timestamps only as offered', () => {
    const g = established();
    const sa = g.synAck;
    expect(sa).toHaveLength(1);
    expect(flagsText(sa[0]!.flags)).toBe('S.');
    expect(sa[0]!.seq).toBe(OUR_ISN);
    expect(sa[0]!.ack).toBe(GUEST_ISN + 1);
    expect(sa[0]!.options.mss).toBe(1460);
    expect(sa[0]!.options.sackPermitted).toBe(true);
    expect(sa[0]!.options.windowScale).toBe(1); // 64 KiB needs a shift of 1
    expect(sa[0]!.options.timestamp!.echo).toBe(77);
    expect(sa[0]!.headerLength).toBe(40); // MSS, SACK_PERM, TS, NOP, WS like Linux
    expect(g.conn.debug.smss).toBe(1460 - 12);
    expect(g.conn.debug.sndShift).toBe(7);
    expect(g.conn.debug.sndWnd).toBe(2000 * 128);

    const clock = new ManualClock(0);
    const host = new FakeHost(clock, new TimerWheel(clock), 9000, 1);
    const c = TcpConnection.acceptSyn(host, CFG, TUPLE, linuxSyn({ windowScale: null, sackPermitted: false, timestamp: null, mss: 1200 }), new Recorder());
    const [sa2] = host.take();
    expect(sa2!.options).toEqual({ mss: 9000, windowScale: null, sackPermitted: false, timestamp: null, sackBlocks: null });
    expect(c.debug.rcvShift).toBe(0);
    expect(c.state).toBe('SYN-RECEIVED');
  });

  it('retransmits the SYN-ACK on a repeated SYN and on timeout, then gives up', () => {
    const clock = new ManualClock(0);
    const timers = new TimerWheel(clock);
    const host = new FakeHost(clock, timers, 1460, 1);
    const rec = new Recorder();
    const c = TcpConnection.acceptSyn(host, { ...CFG, synAckRetries: 2 }, TUPLE, linuxSyn(), rec);
    host.take();
    c.input(linuxSyn());
    expect(host.take().map((s) => flagsText(s.flags))).toEqual(['S.']);
    const times: number[] = [];
    host.onTransmit = () => times.push(clock.now());
    for (let t = 0; t < 10_000; t += 50) {
      clock.advance(50);
      timers.advance();
    }
    expect(times).toEqual([1000, 3000]);
    expect(rec.closed).toBe('timeout');
    expect(host.releasedCount).toBe(1);
  });

  it('answers an unacceptable ACK in SYN-RECEIVED with RST', () => {
    const clock = new ManualClock(0);
    const host = new FakeHost(clock, new TimerWheel(clock), 1460, 1);
    const c = TcpConnection.acceptSyn(host, CFG, TUPLE, linuxSyn(), new Recorder());
    host.take();
    c.input(seg({ seq: GUEST_ISN + 1, ack: 999, flags: TCP_ACK, ts: { value: 80, echo: 0 } }));
    const [rst] = host.take();
    expect(flagsText(rst!.flags)).toBe('R');
    expect(rst!.seq).toBe(999);
    expect(c.state).toBe('SYN-RECEIVED');
  });
});

describe('active open', () => {
  it('sends a Linux-layout SYN, connects on SYN-ACK, and is refused by RST', () => {
    const clock = new ManualClock(0);
    const timers = new TimerWheel(clock);
    const host = new FakeHost(clock, timers, 1460, 7);
    const rec = new Recorder();
    const c = TcpConnection.connect(host, CFG, TUPLE, rec);
    const [syn] = host.take();
    expect(flagsText(syn!.flags)).toBe('S');
    expect(syn!.headerLength).toBe(40);
    expect(c.state).toBe('SYN-SENT');
    c.input(seg({ seq: 0, ack: 8, flags: TCP_RST | TCP_ACK }));
    expect(rec.closed).toBe('refused');
    expect(host.releasedCount).toBe(1);

    const rec2 = new Recorder();
    const c2 = TcpConnection.connect(host, CFG, TUPLE, rec2);
    host.take();
    c2.input({ ...seg({ seq: 900, ack: 8, flags: TCP_SYN | TCP_ACK, window: 65535 }), options: { mss: 1400, windowScale: 3, sackPermitted: true, timestamp: { value: 9, echo: 1 }, sackBlocks: null } });
    host.flush();
    expect(rec2.connected).toBe(true);
    expect(c2.state).toBe('ESTABLISHED');
    const [ack] = host.take();
    expect(flagsText(ack!.flags)).toBe('.');
    expect(ack!.ack).toBe(901);
    expect(c2.debug.smss).toBe(1400 - 12);
  });

  it('times out after the SYN retries with exponential backoff', () => {
    const clock = new ManualClock(0);
    const timers = new TimerWheel(clock);
    const host = new FakeHost(clock, timers, 1460, 7);
    const rec = new Recorder();
    TcpConnection.connect(host, { ...CFG, synRetries: 3 }, TUPLE, rec);
    const times: number[] = [];
    host.onTransmit = () => times.push(clock.now());
    for (let i = 0; i < 400; i++) {
      clock.advance(50);
      timers.advance();
    }
    expect(times).toEqual([1000, 3000, 7000]);
    expect(rec.closed).toBe('timeout');
  });

  it('simultaneous open reaches ESTABLISHED on both sides', () => {
    const net = new Network({ drop: 0, duplicate: 0, reorder: 0, delayMs: 5, jitterMs: 0 }, 3);
    const ra = new Recorder();
    const rb = new Recorder();
    net.a = TcpConnection.connect(net.hostA, CFG, TUPLE, ra);
    net.b = TcpConnection.connect(net.hostB, CFG, MIRROR, rb);
    expect(net.run(() => net.a!.state === 'ESTABLISHED' && net.b.state === 'ESTABLISHED', 10_000)).toBe(true);
    expect(ra.connected && rb.connected).toBe(true);
    net.a.write(bytes(5000));
    expect(net.run(() => rb.bytes === 5000, 10_000)).toBe(true);
  });
});

describe('receiving', () => {
  it('delivers in-order data zero-copy and ACKs once per batch', () => {
    const g = established();
    const views: Uint8Array[] = [];
    g.rec.onData = (d) => views.push(d);
    const p1 = bytes(1000);
    const p2 = bytes(1000, 1);
    g.conn.input(seg({ seq: g.rcv, ack: g.una, flags: TCP_ACK, window: 2000, payload: p1, ts: { value: 200, echo: 0 } }));
    g.conn.input(seg({ seq: g.rcv + 1000, ack: g.una, flags: TCP_ACK, window: 2000, payload: p2, ts: { value: 201, echo: 0 } }));
    expect(views[0]).toBe(p1); // the very same view: no copy
    expect(views[1]).toBe(p2);
    expect(g.host.sent).toHaveLength(0); // nothing until the end of the batch
    g.host.flush();
    const acks = g.host.take();
    expect(acks).toHaveLength(1);
    expect(acks[0]!.ack).toBe(g.rcv + 2000);
    // RFC 7323 §4.3: a delayed ACK echoes the timestamp of the earliest segment it acknowledges.
    expect(acks[0]!.options.timestamp!.echo).toBe(200);
  });

  it('answers out-of-order data at once with SACK blocks and delivers when the hole fills', () => {
    const g = established();
    const data = bytes(4000);
    g.send({ seq: g.rcv + 1000, payload: data.subarray(1000, 2000) });
    g.send({ seq: g.rcv + 3000, payload: data.subarray(3000, 4000) });
    const dup = g.host.take();
    expect(dup.map((s) => s.ack)).toEqual([g.rcv, g.rcv]);
    expect(dup[0]!.options.sackBlocks).toEqual([g.rcv + 1000, g.rcv + 2000]);
    // Most recent first (RFC 2018 §4).
    expect(dup[1]!.options.sackBlocks).toEqual([g.rcv + 3000, g.rcv + 4000, g.rcv + 1000, g.rcv + 2000]);
    expect(g.rec.bytes).toBe(0);
    g.send({ seq: g.rcv, payload: data.subarray(0, 1000) });
    expect(g.rec.data()).toEqual(data.subarray(0, 2000));
    g.send({ seq: g.rcv + 2000, payload: data.subarray(2000, 3000) });
    expect(g.rec.data()).toEqual(data);
    const last = g.host.take().at(-1)!;
    expect(last.ack).toBe(g.rcv + 4000);
    expect(last.options.sackBlocks).toBe(null);
  });

  it('bounds the out-of-order bytes: beyond the bound the newest is dropped and not SACKed', () => {
    const g = established({ cfg: { ...CFG, oooBytes: 2000 } });
    g.send({ seq: g.rcv + 1000, payload: bytes(1000) });
    g.send({ seq: g.rcv + 3000, payload: bytes(1000) });
    g.send({ seq: g.rcv + 5000, payload: bytes(1000) });
    expect(g.conn.debug.oooBytes).toBe(2000);
    const last = g.host.take().at(-1)!;
    expect(last.options.sackBlocks).toEqual([g.rcv + 3000, g.rcv + 4000, g.rcv + 1000, g.rcv + 2000]);
  });

  it('re-ACKs duplicates and keepalive probes, and ignores the urgent pointer', () => {
    const g = established();
    g.send({ payload: bytes(100) });
    g.rcv += 100;
    g.host.take();
    g.send({ seq: g.rcv - 100, payload: bytes(100) }); // duplicate
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv]);
    g.send({ seq: g.rcv - 1, payload: new Uint8Array(1) }); // keepalive with one garbage byte
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv]);
    g.clock.advance(1000);
    g.send({ seq: g.rcv - 1 }); // keepalive without data
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv]);
    g.send({ flags: TCP_ACK | 0x20, payload: bytes(10) });
    expect(g.rec.bytes).toBe(110);
  });

  it('pause closes the window as the ring fills, resume delivers and reopens it', () => {
    const g = established({ cfg: { ...CFG, recvBufferBytes: 8192 } }); // shift 0
    g.conn.pause();
    let sent = 0;
    const data = bytes(8192, 3);
    while (sent < 8192) {
      g.send({ seq: g.rcv + sent, payload: data.subarray(sent, sent + 1024) });
      sent += 1024;
      const ack = g.host.take().at(-1)!;
      expect(ack.ack).toBe(g.rcv + sent);
      // Right edge never moves left: ack + window is constant while paused.
      expect(ack.ack + ack.window).toBe(g.rcv + 8192);
    }
    expect(g.rec.bytes).toBe(0);
    expect(g.conn.debug.rcvWnd).toBe(0);
    g.send({ seq: g.rcv + sent, payload: bytes(10) }); // beyond a zero window: dropped, ACKed
    expect(g.host.take().at(-1)!.ack).toBe(g.rcv + 8192);
    g.conn.resume();
    expect(g.rec.data()).toEqual(data);
    g.host.flush();
    const update = g.host.take();
    expect(update).toHaveLength(1);
    expect(update[0]!.window).toBe(8192);
  });

  it('drops segments with an old timestamp (PAWS) and ACKs them', () => {
    const g = established();
    g.send({ payload: bytes(10), tsval: 500 });
    g.rcv += 10;
    g.host.take();
    g.send({ payload: bytes(10), tsval: 400 });
    expect(g.rec.bytes).toBe(10);
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv]);
  });
});

describe('delayed ACK for request/response (delayedAckMs)', () => {
  const DCFG: TcpConfig = { ...CFG, delayedAckMs: 4 };
  /** The guest sends `n` bytes of in-order data; returns what we sent at the end of that batch. */
  function request(g: ReturnType<typeof established>, n: number): TcpRepr[] {
    g.send({ payload: bytes(n), flags: TCP_ACK | TCP_PSH });
    g.rcv += n;
    return g.host.take();
  }
  /** We answer `n` bytes (the application's write) and the turn ends. */
  function answer(g: ReturnType<typeof established>, n: number): TcpRepr[] {
    g.conn.write(bytes(n, 7));
    g.host.flush();
    const out = g.host.take();
    g.una += n;
    return out;
  }

  it('acknowledges at once until the connection has answered, then lets the answer carry the ACK', () => {
    const g = established({ cfg: DCFG });
    // First request: not known to be request/response yet: pure ACK at the end of the batch.
    expect(request(g, 64).map((s) => [flagsText(s.flags), s.ack])).toEqual([['.', g.rcv]]);
    g.clock.advance(1);
    answer(g, 64); // answered within delayedAckMs: pingpong
    // Second request: no pure ACK at the end of the batch...
    expect(request(g, 64)).toEqual([]);
    g.clock.advance(1);
    // ...the answer acknowledges it.
    const out = answer(g, 100);
    expect(out).toHaveLength(1);
    expect(out[0]!.payload.length).toBe(100);
    expect(out[0]!.ack).toBe(g.rcv);
    // Nothing more is sent when the delay runs out.
    g.tick(10);
    expect(g.host.take()).toEqual([]);
  });

  it('sends the ACK alone after delayedAckMs when no answer comes, and stops delaying', () => {
    const g = established({ cfg: DCFG });
    request(g, 10);
    answer(g, 10);
    expect(request(g, 10)).toEqual([]);
    g.tick(3);
    expect(g.host.take()).toEqual([]);
    g.tick(2);
    const late = g.host.take();
    expect(late.map((s) => [flagsText(s.flags), s.ack, s.payload.length])).toEqual([['.', g.rcv, 0]]);
    // The next small segment is acknowledged at once again.
    expect(request(g, 10).map((s) => s.ack)).toEqual([g.rcv]);
  });

  it('never delays the ACK of a full-sized segment, a FIN or out-of-order data', () => {
    const g = established({ cfg: DCFG });
    request(g, 10);
    answer(g, 10);
    expect(request(g, 1460).map((s) => s.ack)).toEqual([g.rcv]); // a full segment (localMss 1460)
    answer(g, 10);
    g.send({ seq: g.rcv + 100, payload: bytes(10) }); // a hole
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv]);

    const f = established({ cfg: DCFG });
    request(f, 10);
    answer(f, 10);
    f.send({ payload: bytes(10), flags: TCP_ACK | TCP_FIN });
    f.rcv += 11;
    expect(f.host.take().map((s) => s.ack)).toEqual([f.rcv]);
  });

  it('an answer later than delayedAckMs does not start delaying', () => {
    const g = established({ cfg: DCFG });
    request(g, 10);
    g.clock.advance(5);
    answer(g, 10);
    expect(request(g, 10).map((s) => s.ack)).toEqual([g.rcv]);
  });

  it('with delayedAckMs 0 (the TcpConnection default) every batch is acknowledged at once', () => {
    const g = established();
    request(g, 10);
    answer(g, 10);
    expect(request(g, 10).map((s) => s.ack)).toEqual([g.rcv]);
  });
});

describe('RFC 5961', () => {
  it('resets only on an exact RST, challenges in-window ones, ignores others', () => {
    const g = established();
    g.send({ flags: TCP_RST, seq: g.rcv + 100 });
    expect(g.rec.closed).toBe(null);
    const ch = g.host.take();
    expect(ch).toHaveLength(1);
    expect(flagsText(ch[0]!.flags)).toBe('.');
    expect(ch[0]!.ack).toBe(g.rcv);
    g.send({ flags: TCP_RST, seq: g.rcv + 10_000_000 });
    expect(g.host.take()).toHaveLength(0);
    g.send({ flags: TCP_RST, seq: g.rcv });
    expect(g.rec.closed).toBe('reset');
    expect(g.host.releasedCount).toBe(1);
  });

  it('answers a SYN in ESTABLISHED with a rate-limited challenge ACK', () => {
    const g = established();
    for (let i = 0; i < 50; i++) g.send({ flags: TCP_SYN, seq: g.rcv + 5 });
    const acks = g.host.take();
    expect(acks.length).toBe(10);
    expect(acks.every((a) => a.ack === g.rcv && flagsText(a.flags) === '.')).toBe(true);
    expect(g.conn.state).toBe('ESTABLISHED');
    g.clock.advance(1000);
    g.send({ flags: TCP_SYN, seq: g.rcv + 5 });
    expect(g.host.take()).toHaveLength(1);
  });

  it('drops ACKs for data never sent and ACKs far in the past', () => {
    const g = established();
    g.conn.write(bytes(100));
    g.host.flush();
    g.host.take();
    g.send({ ack: g.una + 5000, payload: bytes(10) });
    expect(g.rec.bytes).toBe(0); // dropped
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv]);
    g.send({ ack: g.una - 1_000_000, payload: bytes(10) });
    expect(g.rec.bytes).toBe(0);
    expect(g.conn.bufferedAmount).toBe(100);
  });
});

describe('sending and loss recovery', () => {
  it('sends MSS-sized segments, respects the peer window, and signals drain', () => {
    const g = established({ cfg: { ...CFG, sendBufferBytes: 10_000 } });
    expect(g.conn.write(bytes(15_000))).toBe(10_000);
    expect(g.conn.writableSpace).toBe(0);
    g.host.flush();
    const segs = g.host.take();
    expect(segs.reduce((n, s) => n + s.payload.length, 0)).toBe(10_000);
    expect(segs.slice(0, -1).every((s) => s.payload.length === 1448)).toBe(true);
    expect(flagsText(segs.at(-1)!.flags)).toBe('P.');
    g.send({ ack: g.una + 6000 });
    expect(g.rec.drains).toBe(1);
    expect(g.conn.bufferedAmount).toBe(4000);
  });

  it('waitForRoom: a writer that stops before a short write gets onDrain once half the buffer is free; not when it is already', () => {
    const g = established({ cfg: { ...CFG, sendBufferBytes: 10_000 } });
    expect(g.conn.waitForRoom()).toBe(false); // empty: nothing to wait for
    expect(g.conn.write(bytes(9_000))).toBe(9_000); // all taken: no drain owed by write()
    expect(g.conn.waitForRoom()).toBe(true);
    g.host.flush();
    g.host.take();
    g.send({ ack: g.una + 2000 });
    expect(g.rec.drains).toBe(0); // 3,000 free: not yet half
    g.send({ ack: g.una + 6000 });
    expect(g.rec.drains).toBe(1);
  });

  it('retransmits on RTO with doubling backoff, then times out with RST', () => {
    // Without SACK: no tail loss probe comes before the RTO.
    const g = established({ sack: false, cfg: { ...CFG, maxRetries: 4 } });
    g.conn.write(bytes(100));
    g.host.flush();
    g.host.take();
    const times: number[] = [];
    const start = g.clock.now();
    g.host.onTransmit = (s) => times.push(g.clock.now() - start + (s.flags & TCP_RST ? 0.5 : 0));
    for (let i = 0; i < 2000; i++) g.tick(10);
    // RTT sample ~0 from the handshake's timestamp: RTO = 200 ms floor.
    expect(times).toEqual([200, 600, 1400, 3000, 6200.5]);
    expect(g.rec.closed).toBe('timeout');
  });

  it('fast-retransmits after three duplicate ACKs and handles a NewReno partial ACK', () => {
    const g = established({ sack: false });
    g.conn.write(bytes(1448 * 10));
    g.host.flush();
    const first = g.host.take();
    expect(first).toHaveLength(10); // initial window of 10 segments
    const s = first.map((x) => x.seq);
    // Segments 0 and 3 are lost; the peer ACKs segment 0's start for 1, 2, 4...
    for (let i = 0; i < 2; i++) g.send({ ack: s[0]!, sack: null });
    expect(g.host.take()).toHaveLength(0);
    g.send({ ack: s[0]! });
    const rtx = g.host.take();
    expect(rtx[0]!.seq).toBe(s[0]);
    expect(rtx[0]!.payload.length).toBe(1448);
    expect(g.conn.debug.inRecovery).toBe(true);
    // Partial ACK up to the second hole: it is retransmitted at once.
    g.send({ ack: s[3]! });
    const after = g.host.take();
    expect(after.some((x) => x.seq === s[3] && x.payload.length === 1448)).toBe(true);
    expect(g.conn.debug.inRecovery).toBe(true);
    g.send({ ack: seqAdd(s[9]!, 1448) });
    expect(g.conn.debug.inRecovery).toBe(false);
    expect(g.conn.bufferedAmount).toBe(0);
  });

  it('with SACK but no blocks on the duplicates, three duplicate ACKs still resend the first segment', () => {
    const g = established();
    g.conn.write(bytes(1448 * 10));
    g.host.flush();
    const first = g.host.take();
    for (let i = 0; i < 2; i++) g.send({ ack: first[0]!.seq });
    expect(g.host.take().filter((x) => x.seq === first[0]!.seq)).toHaveLength(0);
    g.send({ ack: first[0]!.seq });
    expect(g.host.take().filter((x) => x.seq === first[0]!.seq && x.payload.length === 1448)).toHaveLength(1);
    expect(g.conn.debug.inRecovery).toBe(true);
  });

  it('with SACK, a lost tail draws a tail loss probe (the last segment again) before any RTO', () => {
    const g = established();
    g.send({ payload: bytes(10), tsval: 500 }); // an RTT sample: the handshake's was 0 ms
    g.rcv += 10;
    g.host.take();
    g.conn.write(bytes(1448 * 4));
    g.host.flush();
    const sent = g.host.take().filter((x) => x.payload.length > 0);
    expect(sent).toHaveLength(4);
    const times: [number, number][] = [];
    const start = g.clock.now();
    g.host.onTransmit = (s) => times.push([g.clock.now() - start, s.seq]);
    for (let i = 0; i < 30; i++) g.tick(5);
    // The probe: the last segment again, 2 x SRTT (floored at 10 ms) after the flight left; the RTO (200 ms) has not fired.
    expect(times).toEqual([[10, sent[3]!.seq]]);
  });

  it('probes a zero window with backoff and resumes when it opens', () => {
    const g = established();
    g.send({ window: 0 });
    g.conn.write(bytes(3000));
    g.host.flush();
    expect(g.host.take()).toHaveLength(0);
    const probes: number[] = [];
    const start = g.clock.now();
    g.host.onTransmit = (s) => {
      expect(s.seq).toBe(g.una - 1);
      probes.push(g.clock.now() - start);
    };
    for (let i = 0; i < 200; i++) g.tick(10);
    expect(probes).toEqual([200, 600, 1400]);
    g.host.onTransmit = null;
    g.send({ window: 100 }); // 12800 bytes
    const data = g.host.take();
    expect(data.reduce((n, x) => n + x.payload.length, 0)).toBe(3000);
  });
});

describe('closing', () => {
  it('active close: FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT, released after 2MSL', () => {
    const g = established();
    g.conn.write(bytes(10));
    g.conn.end();
    expect(g.conn.state).toBe('FIN-WAIT-1');
    expect(g.conn.write(bytes(1))).toBe(0);
    g.host.flush();
    const [d] = g.host.take();
    expect(flagsText(d!.flags)).toBe('FP.');
    g.send({ ack: g.una + 11 });
    expect(g.conn.state).toBe('FIN-WAIT-2');
    g.send({ ack: g.una + 11, payload: bytes(5) }); // half-closed: the peer may still send
    expect(g.rec.bytes).toBe(5);
    g.send({ seq: g.rcv + 5, ack: g.una + 11, flags: TCP_FIN | TCP_ACK });
    expect(g.conn.state).toBe('TIME-WAIT');
    expect(g.rec.events).toEqual(['end', 'close:closed']);
    expect(g.host.take().at(-1)!.ack).toBe(g.rcv + 6);
    // A retransmitted FIN is ACKed again.
    g.send({ seq: g.rcv + 5, ack: g.una + 11, flags: TCP_FIN | TCP_ACK });
    expect(g.host.take().map((s) => s.ack)).toEqual([g.rcv + 6]);
    expect(g.host.releasedCount).toBe(0);
    g.tick(60_001);
    expect(g.conn.state).toBe('CLOSED');
    expect(g.host.releasedCount).toBe(1);
    expect(g.rec.closeCount).toBe(1);
  });

  it('passive close: CLOSE-WAIT, LAST-ACK, CLOSED', () => {
    const g = established();
    g.send({ flags: TCP_FIN | TCP_ACK });
    expect(g.conn.state).toBe('CLOSE-WAIT');
    expect(g.rec.ended).toBe(true);
    expect(g.host.take().at(-1)!.ack).toBe(g.rcv + 1);
    g.conn.write(bytes(20)); // the other direction still works
    g.conn.end();
    expect(g.conn.state).toBe('LAST-ACK');
    g.host.flush();
    expect(flagsText(g.host.take().at(-1)!.flags)).toBe('FP.');
    g.send({ seq: g.rcv + 1, ack: g.una + 21 });
    expect(g.conn.state).toBe('CLOSED');
    expect(g.rec.closed).toBe('closed');
    expect(g.host.releasedCount).toBe(1);
  });

  it('simultaneous close: CLOSING then TIME-WAIT', () => {
    const g = established();
    g.conn.end();
    g.host.flush();
    const [fin] = g.host.take();
    expect(flagsText(fin!.flags)).toBe('F.');
    g.send({ flags: TCP_FIN | TCP_ACK, ack: g.una }); // the peer's FIN crosses ours
    expect(g.conn.state).toBe('CLOSING');
    g.send({ seq: g.rcv + 1, ack: g.una + 1 });
    expect(g.conn.state).toBe('TIME-WAIT');
  });

  it('delivers onEnd only after paused bytes, and onClose after that', () => {
    const g = established();
    g.conn.pause();
    g.send({ payload: bytes(100) });
    g.send({ seq: g.rcv + 100, flags: TCP_FIN | TCP_ACK });
    expect(g.rec.ended).toBe(false);
    g.conn.resume();
    expect(g.rec.bytes).toBe(100);
    expect(g.rec.ended).toBe(true);
  });

  it('abort sends RST and closes once', () => {
    const g = established();
    g.conn.abort();
    const [rst] = g.host.take();
    expect(flagsText(rst!.flags)).toBe('R.');
    expect(rst!.seq).toBe(g.una);
    expect(g.rec.closed).toBe('aborted');
    g.conn.abort();
    expect(g.rec.closeCount).toBe(1);
    expect(g.host.releasedCount).toBe(1);
  });

  it('sends keepalive probes when configured and times out without answers', () => {
    const g = established({ cfg: { ...CFG, keepaliveMs: 1000, keepaliveIntervalMs: 100, keepaliveProbes: 2 } });
    const seen: TcpRepr[] = [];
    g.host.onTransmit = (s) => seen.push(s);
    for (let i = 0; i < 200; i++) g.tick(10);
    expect(seen.slice(0, 2).every((s) => s.seq === g.una - 1 && flagsText(s.flags) === '.')).toBe(true);
    expect(g.rec.closed).toBe('timeout');
  });
});

describe('rstForUnknown (RFC 9293 §3.10.7.1)', () => {
  it('builds the reset for segments matching no connection', () => {
    expect(rstForUnknown(seg({ seq: 1, flags: TCP_RST }), 0)).toBe(null);
    const a = rstForUnknown(seg({ seq: 1, ack: 77, flags: TCP_ACK }), 10)!;
    expect(a).toMatchObject({ seq: 77, flags: TCP_RST, srcPort: TUPLE.dstPort, dstPort: TUPLE.srcPort });
    const s = rstForUnknown(seg({ seq: 0xffffffff, flags: TCP_SYN }), 0)!;
    expect(s).toMatchObject({ seq: 0, ack: 0, flags: TCP_RST | TCP_ACK });
    const f = rstForUnknown(seg({ seq: 10, flags: TCP_FIN | TCP_PSH }), 5)!;
    expect(f.ack).toBe(16);
  });
});

describe('sequence arithmetic', () => {
  it('orders across the 2^32 wrap', () => {
    expect(seqLt(0xfffffff0, 5)).toBe(true);
    expect(seqGt(5, 0xfffffff0)).toBe(true);
    expect(seqAdd(0xffffffff, 2)).toBe(1);
    expect(seqDiff(1, 0xffffffff)).toBe(2);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 2 ** 31 - 1 }), (a, n) => {
        const b = seqAdd(a, n);
        expect(seqLt(a, b)).toBe(true);
        expect(seqGt(b, a)).toBe(true);
        expect(seqDiff(b, a)).toBe(n);
      }),
    );
  });
});

describe('TIME-WAIT keeps nothing but the four-tuple and its timer', () => {
  it('the side that closes first drops its buffers and its handlers once onClose has fired', () => {
    const net = new Network({ drop: 0, duplicate: 0, reorder: 0, delayMs: 2, jitterMs: 0 }, 11);
    const ra = new Recorder();
    const rb = new Recorder();
    net.a = TcpConnection.connect(net.hostA, CFG, TUPLE, ra);
    net.b = TcpConnection.connect(net.hostB, CFG, MIRROR, rb);
    expect(net.run(() => net.a!.state === 'ESTABLISHED' && net.b.state === 'ESTABLISHED', 10_000)).toBe(true);
    net.a.write(bytes(20_000));
    net.b.write(bytes(3000, 1));
    expect(net.run(() => rb.bytes === 20_000 && ra.bytes === 3000, 10_000)).toBe(true);
    expect(net.a.debug.allocatedBytes).toBeGreaterThan(0); // the rings grew for the transfer
    net.a.end(); // A closes first: A waits out TIME-WAIT
    expect(net.run(() => rb.ended, 10_000)).toBe(true);
    net.b.end();
    expect(net.run(() => ra.closed !== null && net.a!.state === 'TIME-WAIT', 10_000)).toBe(true);
    expect(ra.closed).toBe('closed');
    expect(net.a.debug.allocatedBytes).toBe(0);
    // A retransmitted FIN from B in TIME-WAIT is answered (and restarts the timer) without touching the old handlers.
    const events = ra.events.length;
    net.b.end();
    net.run(() => false, net.clock.now() + 50);
    expect(ra.events.length).toBe(events);
    expect(ra.closeCount).toBe(1);
  });
});
