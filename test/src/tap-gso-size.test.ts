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
import { parseTcp, TCP_ACK, TCP_SYN } from '../../netstack/tcp/header.js';
import { ParseError } from '../../netstack/errors.js';
import { createLogger } from '../../src/log.js';
import { TapFdLink } from '../../src/transport/tap-fd.js';
import { GUEST, tcpFrame } from '../support/frames.js';

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

/** Splits what the link wrote (virtio-net header, then an IPv4 frame whose length its header gives) into records. */
function records(file: Uint8Array): Written[] {
  const out: Written[] = [];
  let p = 0;
  while (p < file.length) {
    const h = file.subarray(p, p + VNET);
    const ip = p + VNET + 14;
    const frameLength = 14 + ((file[ip + 2]! << 8) | file[ip + 3]!);
    const frame = file.subarray(p + VNET, p + VNET + frameLength);
    p += VNET + frameLength;
    if (frame[23] !== 6) continue; // not TCP (ARP etc.)
    const src = ((frame[26]! << 24) | (frame[27]! << 16) | (frame[28]! << 8) | frame[29]!) >>> 0;
    const dst = ((frame[30]! << 24) | (frame[31]! << 16) | (frame[32]! << 8) | frame[33]!) >>> 0;
    // The checksum is left partial (NEEDS_CSUM, the guest kernel completes it): parse without checking it.
    const seg = parseTcp(frame.slice(34), src, dst, true);
    if (seg instanceof ParseError) throw new Error(seg.reason);
    out.push({ flags: h[0]!, gsoType: h[1]!, hdrLen: h[2]! | (h[3]! << 8), gsoSize: h[4]! | (h[5]! << 8), seq: seg.seq, payload: seg.payload.slice() });
  }
  return out;
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A stack on an MTU `mtu` TAP with virtio-net header and offloads, whose guest opens a connection advertising `mss`; `n` bytes are sent to it. */
function sendThroughTap(mtu: number, mss: number, n: number): { written: Written[]; sent: Uint8Array } {
  const dir = mkdtempSync(join(tmpdir(), 'moat-gso-'));
  dirs.push(dir);
  const path = join(dir, 'tap');
  const fd = openSync(path, 'w');
  try {
    const log = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } });
    const link = new TapFdLink({ fd, vnetHdr: true, offload: true, mtu }, { input() {}, guestGone() {} }, log);
    (link as unknown as { up: boolean }).up = true; // start() needs a real TAP
    const clock = new ManualClock(0);
    const syns: PendingTcp[] = [];
    const deferred: (() => void)[] = [];
    const events: StackEvents = { onTcpSyn: (p) => syns.push(p), onUdp: () => {}, onOutput: (b: OutputBatch) => link.send(b) };
    const stack = createStack(
      { ...DEFAULT_STACK_CONFIG, mtu, tcp: { ...DEFAULT_STACK_CONFIG.tcp, checksumOffload: true, segmentOffloadBytes: 65_455 } },
      events,
      clock,
      (fn) => deferred.push(fn),
      { syncOutput: true },
    );
    const run = () => {
      while (deferred.length) deferred.shift()!();
    };
    const opts = { mss, windowScale: 7, sackPermitted: true, timestamp: { value: 1, echo: 0 }, sackBlocks: null };
    stack.input([tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1000, ack: 0, flags: TCP_SYN, window: 65535, options: opts })]);
    const sock = syns[0]!.accept({ onData: () => {}, onEnd: () => {}, onDrain: () => {}, onClose: () => {} });
    run();
    const synAck = records(readFileSync(path)).at(-1)!;
    const ackOpts = { mss: null, windowScale: null, sackPermitted: false, timestamp: { value: 2, echo: 0 }, sackBlocks: null };
    stack.input([tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1001, ack: (synAck.seq + 1) >>> 0, flags: TCP_ACK, window: 8192, options: ackOpts })]);
    run();
    const sent = Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff);
    sock.write(sent);
    run();
    return { written: records(readFileSync(path)).filter((r) => r.payload.length > 0), sent };
  } finally {
    closeSync(fd);
  }
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

  it('a guest whose MSS fills the MTU still gets gso_size MTU - 52', () => {
    const { written } = sendThroughTap(1500, 1460, 100_000);
    const smss = 1448;
    expect(written.some((w) => w.payload.length > smss && w.gsoSize === 1448)).toBe(true);
  });
});
