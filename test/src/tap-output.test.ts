/**
 * A per-connection GSO size carried to the link (issue 16): the stack marks
 * each TCP super-segment with its connection's segment size and the TAP
 * writer puts that size in the virtio-net header (gso_size), so a guest that
 * clamped its MSS below the link MTU's (`ip route ... advmss 1000`) still
 * gets send offload, cut at the MSS it asked for. The TAP here is a file:
 * TapFdLink writes each header + frame to it as it would to /dev/net/tun.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ipv4 } from '../../netstack/addr.js';
import type { OutputBatch, PendingTcp, StackEvents } from '../../netstack/api.js';
import { ManualClock } from '../../netstack/clock.js';
import { createStack, DEFAULT_STACK_CONFIG } from '../../netstack/stack.js';
import { parseTcp, TCP_ACK, TCP_SYN, type TcpSegmentFields } from '../../netstack/tcp/header.js';
import { ParseError } from '../../netstack/errors.js';
import { createLogger } from '../../src/log.js';
import { TapFdLink } from '../../src/transport/tap-fd.js';
import { FrameArena } from '../../netstack/frame-arena.js';
import { GUEST, tcpFrame } from '../support/frames.js';
import { EXTERNAL6, GUEST6, IPV6_CONFIG, tcp6Frame } from '../support/frames6.js';

const SERVER = ipv4(198, 18, 0, 5);
const VNET = 10;

interface Written {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  seq: number;
  payload: Uint8Array;
}

/** The frames in what the link wrote, each after its virtio-net header (if any). */
function rawFrames(file: Uint8Array, headroom: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let p = 0; p < file.length; ) {
    const ip = p + headroom + 14;
    const frameLength = 14 + ((file[ip + 2]! << 8) | file[ip + 3]!);
    out.push(file.slice(p + headroom, p + headroom + frameLength));
    p += headroom + frameLength;
  }
  return out;
}

/** Splits what the link wrote (the virtio-net header if any, then an IPv4 frame whose length its header gives) into records. */
function records(file: Uint8Array, headroom = VNET): Written[] {
  const out: Written[] = [];
  let p = 0;
  const none = new Uint8Array(VNET);
  while (p < file.length) {
    const h = headroom > 0 ? file.subarray(p, p + VNET) : none;
    const ip = p + headroom + 14;
    const frameLength = 14 + ((file[ip + 2]! << 8) | file[ip + 3]!);
    const frame = file.subarray(p + headroom, p + headroom + frameLength);
    p += headroom + frameLength;
    if (frame[23] !== 6) continue; // not TCP (ARP etc.)
    const src = ((frame[26]! << 24) | (frame[27]! << 16) | (frame[28]! << 8) | frame[29]!) >>> 0;
    const dst = ((frame[30]! << 24) | (frame[31]! << 16) | (frame[32]! << 8) | frame[33]!) >>> 0;
    // With the virtio-net header the checksum is left partial (NEEDS_CSUM, the guest kernel completes it): not checked then.
    const seg = parseTcp(frame.slice(34), src, dst, headroom > 0);
    if (seg instanceof ParseError) throw new Error(seg.reason);
    out.push({ flags: h[0]!, gsoType: h[1]!, hdrLen: h[2]! | (h[3]! << 8), gsoSize: h[4]! | (h[5]! << 8), seq: seg.seq, payload: seg.payload.slice() });
  }
  return out;
}

const dirs: string[] = [];
const fds: number[] = [];
afterEach(() => {
  for (const fd of fds.splice(0)) closeSync(fd);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface TapOptions {
  mtu: number;
  /** The MSS the guest's SYN advertises. */
  mss: number;
  /** The TAP has the virtio-net header and offloads (default true). */
  vnetHdr?: boolean;
  /** StackOptions.gatherPayload (default false). */
  gather?: boolean;
}

/**
 * A stack on a TAP (a file here) whose guest has opened a connection
 * advertising `mss`: send() writes to the guest, ack() acknowledges all
 * written so far, written() reads back what the link wrote.
 */
function tapHarness(o: TapOptions) {
  const dir = mkdtempSync(join(tmpdir(), 'moat-tapout-'));
  dirs.push(dir);
  const path = join(dir, 'tap');
  const fd = openSync(path, 'w');
  fds.push(fd);
  const vnetHdr = o.vnetHdr ?? true;
  const log = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } });
  const link = new TapFdLink({ fd, vnetHdr, offload: vnetHdr, mtu: o.mtu }, { input() {}, guestGone() {} }, log);
  (link as unknown as { up: boolean }).up = true; // start() needs a real TAP
  const captured: Uint8Array[] = [];
  link.tap = { frameIn() {}, frameOut: (f) => captured.push(f.slice()) };
  const clock = new ManualClock(0);
  const syns: PendingTcp[] = [];
  const deferred: (() => void)[] = [];
  const pieces = { gathered: 0, split: 0 };
  const onOutput = (b: OutputBatch) => {
    b.forEachFramePart?.((_buf, _offset, _head, payload, payload2) => {
      if (payload !== null) pieces.gathered++;
      if (payload2 !== null) pieces.split++;
    });
    link.send(b);
  };
  const events: StackEvents = { onTcpSyn: (p) => syns.push(p), onUdp: () => {}, onOutput };
  const tcp = vnetHdr ? { checksumOffload: true, segmentOffloadBytes: 65_455 } : {};
  const stack = createStack({ ...DEFAULT_STACK_CONFIG, mtu: o.mtu, tcp: { ...DEFAULT_STACK_CONFIG.tcp, ...tcp } }, events, clock, (fn) => deferred.push(fn), {
    syncOutput: true,
    gatherPayload: o.gather === true,
  });
  const run = () => {
    while (deferred.length) deferred.shift()!();
  };
  const written = () => records(readFileSync(path), vnetHdr ? VNET : 0);
  const opts = { mss: o.mss, windowScale: 7, sackPermitted: true, timestamp: { value: 1, echo: 0 }, sackBlocks: null };
  stack.input([tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1000, ack: 0, flags: TCP_SYN, window: 65535, options: opts })]);
  const sock = syns[0]!.accept({ onData: () => {}, onEnd: () => {}, onDrain: () => {}, onClose: () => {} });
  run();
  const iss = written().at(-1)!.seq;
  let tsval = 2;
  const ackTo = (ack: number) => {
    const ackOpts = { mss: null, windowScale: null, sackPermitted: false, timestamp: { value: tsval++, echo: 0 }, sackBlocks: null };
    stack.input([tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1001, ack: ack >>> 0, flags: TCP_ACK, window: 8192, options: ackOpts })]);
    run();
  };
  ackTo(iss + 1);
  return {
    written: () => written().filter((r) => r.payload.length > 0),
    /** Everything the link wrote, virtio-net headers taken off: the frames themselves. */
    frames: () => rawFrames(readFileSync(path), vnetHdr ? VNET : 0),
    /** Frames that left from pieces, and those whose payload was in two (the ring wrapped under it). */
    pieces,
    captured,
    send(bytes: Uint8Array) {
      expect(sock.write(bytes)).toBe(bytes.length);
      run();
    },
    /** Acknowledges everything written so far. */
    ack() {
      const data = written().filter((r) => r.payload.length > 0);
      ackTo(Math.max(...data.map((r) => (r.seq + r.payload.length) >>> 0)));
    },
    /** The stream as the guest would have it: every payload at its place from the first data byte. */
    stream(length: number): { bytes: Uint8Array; covered: number } {
      const bytes = new Uint8Array(length);
      let covered = 0;
      for (const w of written().filter((r) => r.payload.length > 0)) {
        const at = (w.seq - iss - 1) >>> 0;
        bytes.set(w.payload, at);
        covered = Math.max(covered, at + w.payload.length);
      }
      return { bytes, covered };
    },
  };
}

const pattern = (n: number, seed = 3) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

/** A stack on an MTU `mtu` TAP with virtio-net header and offloads, whose guest opens a connection advertising `mss`; `n` bytes are sent to it. */
function sendThroughTap(mtu: number, mss: number, n: number): { written: Written[]; sent: Uint8Array } {
  const t = tapHarness({ mtu, mss });
  const sent = pattern(n);
  t.send(sent);
  return { written: t.written(), sent };
}

describe('a per-connection GSO size carried to the TAP (issue 16)', () => {
  it('a guest advertising MSS 1000 on an MTU-1500 TAP gets super-segments marked gso_size 988 (its MSS less timestamps), not 1448', () => {
    const { written, sent } = sendThroughTap(1500, 1000, 200_000);
    const smss = 1000 - 12;
    const supers = written.filter((w) => w.payload.length > smss);
    expect(supers.length).toBeGreaterThan(0);
    for (const w of supers) {
      expect(w).toMatchObject({ flags: 1, gsoType: 1, hdrLen: 14 + 20 + 32, gsoSize: 988 });
      expect(w.payload.length % 988).toBe(0);
    }
    // No frame carries more than one segment unmarked, and none more than one segment of 988 per cut.
    expect(Math.max(...written.map((w) => w.payload.length))).toBeGreaterThan(smss);
    for (const w of written.filter((x) => x.payload.length <= smss)) expect(w.gsoType).toBe(0);
    // The bytes on the wire are the stream, in order.
    const first = written[0]!.seq;
    const wire = new Uint8Array(sent.length);
    let covered = 0;
    for (const w of written) {
      wire.set(w.payload, (w.seq - first) >>> 0);
      covered += w.payload.length;
    }
    expect(covered).toBeLessThanOrEqual(sent.length);
    expect(Buffer.from(wire.subarray(0, covered)).equals(Buffer.from(sent.subarray(0, covered)))).toBe(true);
  });

  it('a guest with MSS 1460 on an MTU-65520 TAP gets super-segments of 1448-byte segments (was: no offload at all)', () => {
    const { written } = sendThroughTap(65_520, 1460, 200_000);
    const smss = 1448;
    const supers = written.filter((w) => w.payload.length > smss);
    expect(supers.length).toBeGreaterThan(0);
    for (const w of supers) expect(w).toMatchObject({ gsoType: 1, gsoSize: 1448 });
  });

  it('a guest advertising the smallest MSS Moat sends to (48) gets super-segments of gso_size 36, not one frame per 36 bytes', () => {
    const { written, sent } = sendThroughTap(1500, 48, 50_000);
    const supers = written.filter((w) => w.payload.length > 36);
    expect(supers.length).toBeGreaterThan(0);
    for (const w of supers) expect(w).toMatchObject({ gsoType: 1, gsoSize: 36 });
    expect(written.length).toBeLessThan(sent.length / 36 / 10);
  });

  it('a guest whose MSS fills the MTU still gets gso_size MTU - 52', () => {
    const { written } = sendThroughTap(1500, 1460, 100_000);
    const smss = 1448;
    expect(written.some((w) => w.payload.length > smss && w.gsoSize === 1448)).toBe(true);
  });
});

describe('frames written from pieces: TCP payload straight from the send ring (gatherPayload, issue 16)', () => {
  /** Writes 100,000 bytes, then more while the first are acknowledged, so that the ring wraps under a segment being sent. */
  const wrapScenario = (t: ReturnType<typeof tapHarness>) => {
    const first = pattern(100_000, 5);
    t.send(first); // the ring is 100,000 bytes; the initial window leaves at once
    t.ack(); // the window doubles and the next flight leaves
    const second = pattern(14_480, 11); // fits the ring exactly: stored at its start, behind the unsent end of `first`
    t.send(second);
    t.ack();
    t.ack();
    t.ack();
    const all = new Uint8Array(first.length + second.length);
    all.set(first);
    all.set(second, first.length);
    return all;
  };

  it('the guest gets the same bytes, headers and virtio-net headers as from whole frames, with a segment that spans the end of the ring', () => {
    const whole = tapHarness({ mtu: 1500, mss: 1460 });
    const gathered = tapHarness({ mtu: 1500, mss: 1460, gather: true });
    const sent = wrapScenario(whole);
    wrapScenario(gathered);
    const a = whole.written();
    const b = gathered.written();
    expect(b.length).toBeGreaterThan(3);
    // Every data frame left from pieces, one of them from both ends of the ring; none did without gatherPayload.
    expect(gathered.pieces.gathered).toBe(b.length);
    expect(gathered.pieces.split).toBeGreaterThan(0);
    expect(whole.pieces.gathered).toBe(0);
    expect(b.map((w) => [w.flags, w.gsoType, w.hdrLen, w.gsoSize, w.payload.length])).toEqual(a.map((w) => [w.flags, w.gsoType, w.hdrLen, w.gsoSize, w.payload.length]));
    const stream = gathered.stream(sent.length);
    expect(stream.covered).toBe(sent.length);
    expect(Buffer.from(stream.bytes).equals(Buffer.from(sent))).toBe(true);
  });

  it('--pcap still captures whole frames, equal to what went to the TAP', () => {
    const t = tapHarness({ mtu: 1500, mss: 1460, gather: true });
    wrapScenario(t);
    expect(t.pieces.split).toBeGreaterThan(0);
    const frames = t.frames();
    expect(t.captured.length).toBe(frames.length);
    t.captured.forEach((f, i) => expect(Buffer.from(f).equals(Buffer.from(frames[i]!)), `frame ${i}`).toBe(true));
  });

  it('on a plain TAP (no virtio-net header, no checksum offload) gatherPayload changes nothing: whole frames, full checksums, byte-exact', () => {
    // gatherPayload needs checksum offload: without it the stack copies as before, and the frames check out on any wire.
    const t = tapHarness({ mtu: 1500, mss: 1460, vnetHdr: false, gather: true });
    const sent = wrapScenario(t);
    expect(t.pieces.gathered).toBe(0);
    const stream = t.stream(sent.length);
    expect(stream.covered).toBe(sent.length);
    expect(Buffer.from(stream.bytes).equals(Buffer.from(sent))).toBe(true);
  });
});

describe('TapFdLink writes a frame from pieces as one frame', () => {
  for (const vnetHdr of [false, true]) {
    it(`${vnetHdr ? 'with' : 'without'} the virtio-net header: head + two payload slices leave as one write, in order`, () => {
      const dir = mkdtempSync(join(tmpdir(), 'moat-tapout-'));
      dirs.push(dir);
      const fd = openSync(join(dir, 'tap'), 'w');
      fds.push(fd);
      const log = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } });
      const link = new TapFdLink({ fd, vnetHdr, offload: vnetHdr, mtu: 1500 }, { input() {}, guestGone() {} }, log);
      (link as unknown as { up: boolean }).up = true;
      const arena = new FrameArena(undefined, undefined, true);
      const whole = tcpFrame(SERVER, GUEST, { srcPort: 80, dstPort: 40000, seq: 7, ack: 9, flags: TCP_ACK, window: 100 }, pattern(3000));
      const head = 14 + 20 + 20;
      const off = arena.begin(whole.length);
      arena.buf.set(whole.subarray(0, head), off);
      arena.commitGathered(head, 1460, whole.slice(head, head + 1001), whole.slice(head + 1001));
      link.send(arena.take()!);
      const file = readFileSync(join(dir, 'tap'));
      expect(file.length).toBe((vnetHdr ? VNET : 0) + whole.length);
      expect(Buffer.from(file.subarray(vnetHdr ? VNET : 0)).equals(Buffer.from(whole))).toBe(true);
      if (vnetHdr) expect([file[1], file[4]! | (file[5]! << 8)]).toEqual([1, 1460]); // GSO TCPv4 at the segment size given
      expect(link.stats.framesOut).toBe(1);
      expect(link.stats.bytesOut).toBe(whole.length);
    });
  }
});

describe('gathered output over IPv6', () => {
  /** Runs the same IPv6 download through a stack with and without gatherPayload; returns what each TAP got. */
  const run = (gather: boolean) => {
    const dir = mkdtempSync(join(tmpdir(), 'moat-tapout6-'));
    dirs.push(dir);
    const path = join(dir, 'tap');
    const fd = openSync(path, 'w');
    fds.push(fd);
    const log = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } });
    const link = new TapFdLink({ fd, vnetHdr: true, offload: true, mtu: 1500 }, { input() {}, guestGone() {} }, log);
    (link as unknown as { up: boolean }).up = true;
    let sndMax = 0;
    let gathered = 0;
    const onOutput = (b: OutputBatch) => {
      b.forEachFramePart?.((buf, offset, _head, payload) => {
        if (payload !== null) gathered++;
        if (buf[offset + 12] !== 0x86 || buf[offset + 20] !== 6) return;
        const tcp = offset + 54;
        const seq = ((buf[tcp + 4]! << 24) | (buf[tcp + 5]! << 16) | (buf[tcp + 6]! << 8) | buf[tcp + 7]!) >>> 0;
        const len = ((buf[offset + 18]! << 8) | buf[offset + 19]!) - (buf[tcp + 12]! >> 4) * 4;
        sndMax = Math.max(sndMax, seq + len);
      });
      link.send(b);
    };
    const syns: PendingTcp[] = [];
    const deferred: (() => void)[] = [];
    const stack = createStack(
      { ...DEFAULT_STACK_CONFIG, ipv6: IPV6_CONFIG, tcp: { ...DEFAULT_STACK_CONFIG.tcp, checksumOffload: true, segmentOffloadBytes: 65_455 } },
      { onTcpSyn: (p) => syns.push(p), onUdp: () => {}, onOutput },
      new ManualClock(0),
      (fn) => deferred.push(fn),
      { syncOutput: true, gatherPayload: gather, isn: () => 5000, random: () => 0.5 },
    );
    const flush = () => {
      while (deferred.length) deferred.shift()!();
    };
    const seg = (flags: number, ack: number, options: TcpSegmentFields['options']) => tcp6Frame(GUEST6, EXTERNAL6, { srcPort: 40000, dstPort: 80, seq: flags === TCP_SYN ? 1000 : 1001, ack, flags, window: 8192, options });
    stack.input([seg(TCP_SYN, 0, { mss: 1440, windowScale: 7, sackPermitted: true, timestamp: { value: 1, echo: 0 }, sackBlocks: null })]);
    const sock = syns[0]!.accept({ onData: () => {}, onEnd: () => {}, onDrain: () => {}, onClose: () => {} });
    flush();
    let ts = 2;
    const ack = (n: number) => {
      stack.input([seg(TCP_ACK, n >>> 0, { mss: null, windowScale: null, sackPermitted: false, timestamp: { value: ts++, echo: 0 }, sackBlocks: null })]);
      flush();
    };
    ack(5001);
    expect(sock.write(pattern(150_000, 9))).toBe(150_000);
    flush();
    for (let i = 0; i < 6; i++) ack(sndMax);
    return { file: readFileSync(path), gathered, acked: sndMax - 5001 };
  };

  it('an IPv6 download leaves byte for byte as without gathering (virtio-net headers included)', () => {
    const off = run(false);
    const on = run(true);
    expect(off.gathered).toBe(0);
    expect(on.gathered).toBeGreaterThan(2);
    expect(on.acked).toBe(150_000);
    expect(on.file.length).toBeGreaterThan(150_000);
    expect(on.file.equals(off.file)).toBe(true);
  });
});
