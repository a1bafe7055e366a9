/**
 * Receive offload (issue 16): frames a link marks with netstack/rx-marks.ts.
 * A GSO-marked TCP segment may be larger than the MTU and is taken in one
 * piece; a checksum-marked TCP/UDP frame is not checked (the checksum field
 * of a NEEDS_CSUM frame holds only the pseudo-header sum); a mark never
 * stretches past what it describes (non-TCP, fragments).
 */
import { describe, expect, it } from 'vitest';
import { ipv4 } from '../../netstack/addr.js';
import type { OutputBatch, PendingTcp, StackEvents, UdpDatagram } from '../../netstack/api.js';
import { finishChecksum, sumBytes, sumPseudoHeader } from '../../netstack/checksum.js';
import { ManualClock } from '../../netstack/clock.js';
import { parseEthernet, ETH_HEADER_LEN } from '../../netstack/ethernet.js';
import { ParseError } from '../../netstack/errors.js';
import { IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_LEN, parseIpv4 } from '../../netstack/ipv4.js';
import { MAX_GSO_FRAME, RX_GSO_TCP, RX_L4_CHECKSUM_OK } from '../../netstack/rx-marks.js';
import { createStack, DEFAULT_STACK_CONFIG } from '../../netstack/stack.js';
import { parseTcp, TCP_ACK, TCP_SYN } from '../../netstack/tcp/header.js';
import { arpFrame, GUEST, GUEST_MAC, GW_IP, tcpFrame, udpFrame } from '../support/frames.js';

const SERVER = ipv4(198, 18, 0, 5);

function harness(mtu = 1500) {
  const clock = new ManualClock(0);
  const out: Uint8Array[] = [];
  const syns: PendingTcp[] = [];
  const udp: UdpDatagram[] = [];
  const deferred: (() => void)[] = [];
  const events: StackEvents = {
    onTcpSyn: (p) => syns.push(p),
    onUdp: (d) => udp.push({ ...d, payload: d.payload.slice() }),
    onIcmp: () => {},
    onOutput: (b: OutputBatch) => b.forEachFrame((f) => out.push(f.slice())),
  };
  const stack = createStack({ ...DEFAULT_STACK_CONFIG, mtu }, events, clock, (fn) => deferred.push(fn));
  const run = () => {
    while (deferred.length) deferred.shift()!();
  };
  return { stack, clock, out, syns, udp, run };
}

/** Rewrites the L4 checksum of an IPv4 frame as a NEEDS_CSUM sender leaves it: the pseudo-header sum only. */
function leavePartialChecksum(frame: Uint8Array, protocol: number, checksumAt: number): void {
  const l4 = ETH_HEADER_LEN + IPV4_HEADER_LEN;
  const len = frame.length - l4;
  const src = (frame[ETH_HEADER_LEN + 12]! << 24) | (frame[ETH_HEADER_LEN + 13]! << 16) | (frame[ETH_HEADER_LEN + 14]! << 8) | frame[ETH_HEADER_LEN + 15]!;
  const dst = (frame[ETH_HEADER_LEN + 16]! << 24) | (frame[ETH_HEADER_LEN + 17]! << 16) | (frame[ETH_HEADER_LEN + 18]! << 8) | frame[ETH_HEADER_LEN + 19]!;
  // ~finish(pseudo) = the folded pseudo-header sum, as Linux's __tcp_v4_send_check stores it.
  const partial = ~finishChecksum(sumPseudoHeader(src >>> 0, dst >>> 0, protocol, len)) & 0xffff;
  frame[l4 + checksumAt] = partial >> 8;
  frame[l4 + checksumAt + 1] = partial & 0xff;
  // It must not happen to be the right checksum, or the test proves nothing.
  expect(finishChecksum(sumBytes(frame, l4, frame.length - l4, sumPseudoHeader(src >>> 0, dst >>> 0, protocol, len)))).not.toBe(0);
}

/** Opens a connection from the guest and returns what the test needs to send data on it. */
function established(h: ReturnType<typeof harness>) {
  h.stack.input([tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1000, ack: 0, flags: TCP_SYN, window: 65535, options: { mss: 65480 } })]);
  const received: Uint8Array[] = [];
  h.syns[0]!.accept({ onData: (d) => received.push(d.slice()), onEnd: () => {}, onDrain: () => {}, onClose: () => {} });
  h.run();
  const synAck = lastTcp(h);
  h.out.length = 0;
  h.stack.input([tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1001, ack: synAck.seq + 1, flags: TCP_ACK, window: 65535 })]);
  h.run();
  return { received, ack: synAck.seq + 1 };
}

function lastTcp(h: ReturnType<typeof harness>) {
  const eth = parseEthernet(h.out[h.out.length - 1]!);
  if (eth instanceof ParseError) throw new Error(eth.reason);
  const ip = parseIpv4(eth.payload);
  if (ip instanceof ParseError) throw new Error(ip.reason);
  const seg = parseTcp(ip.payload, ip.src, ip.dst);
  if (seg instanceof ParseError) throw new Error(seg.reason);
  return seg;
}

const bytes = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff);

describe('receive offload marks', () => {
  it('takes a GSO TCP segment far larger than the MTU in one piece, NEEDS_CSUM checksum and all, and ACKs all of it', () => {
    const h = harness(1500);
    const c = established(h);
    const payload = bytes(40_000);
    const seg = tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1001, ack: c.ack, flags: TCP_ACK, window: 65535 }, payload);
    leavePartialChecksum(seg, IPPROTO_TCP, 16);
    h.stack.input([seg], [RX_GSO_TCP | RX_L4_CHECKSUM_OK]);
    h.run();
    expect(Buffer.concat(c.received).equals(Buffer.from(payload))).toBe(true);
    expect(lastTcp(h).ack).toBe(1001 + payload.length);
    expect(h.stack.stats.drops).toEqual({});
  });

  it('without the checksum mark the same NEEDS_CSUM segment is a bad checksum (marks are what tells them apart)', () => {
    const h = harness(65520);
    const c = established(h);
    const seg = tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1001, ack: c.ack, flags: TCP_ACK, window: 65535 }, bytes(1000));
    leavePartialChecksum(seg, IPPROTO_TCP, 16);
    h.stack.input([seg]);
    h.stack.input([seg], [RX_GSO_TCP]);
    expect(h.stack.stats.drops['tcp:bad-checksum']).toBe(2);
    expect(c.received).toHaveLength(0);
  });

  it('admits a frame of a whole 65535-byte IPv4 packet only with the GSO mark', () => {
    const h = harness(1500);
    const c = established(h);
    const payload = bytes(65535 - IPV4_HEADER_LEN - 20);
    const seg = tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1001, ack: c.ack, flags: TCP_ACK, window: 65535 }, payload);
    expect(seg.length).toBe(MAX_GSO_FRAME);
    h.stack.input([seg]);
    expect(h.stack.stats.drops['eth:oversized']).toBe(1);
    const longer = new Uint8Array(MAX_GSO_FRAME + 1);
    longer.set(seg);
    h.stack.input([longer], [RX_GSO_TCP]);
    expect(h.stack.stats.drops['eth:oversized']).toBe(2);
    h.stack.input([seg], [RX_GSO_TCP]);
    h.run();
    // The window (64 KiB unscaled) takes what fits; none of it is lost or duplicated.
    const got = Buffer.concat(c.received);
    expect(got.length).toBeGreaterThan(60_000);
    expect(got.equals(Buffer.from(payload.subarray(0, got.length)))).toBe(true);
    expect(h.stack.stats.drops['stack:internal-error']).toBeUndefined();
  });

  it('drops a GSO mark on anything but an unfragmented IPv4 TCP frame, counted as offload:gso-not-tcp', () => {
    const h = harness(1500);
    h.stack.input([udpFrame(GUEST, 5000, GW_IP, 53, bytes(10))], [RX_GSO_TCP]);
    h.stack.input([arpFrame(1, GUEST_MAC, GUEST, GW_IP)], [RX_GSO_TCP]);
    const frag = tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TCP_SYN, window: 1000 });
    frag[ETH_HEADER_LEN + 6] = 0x20; // more fragments
    frag[ETH_HEADER_LEN + 10] = frag[ETH_HEADER_LEN + 11] = 0;
    const sum = finishChecksum(sumBytes(frag, ETH_HEADER_LEN, IPV4_HEADER_LEN));
    frag[ETH_HEADER_LEN + 10] = sum >> 8;
    frag[ETH_HEADER_LEN + 11] = sum & 0xff;
    h.stack.input([frag], [RX_GSO_TCP]);
    expect(h.stack.stats.drops).toEqual({ 'offload:gso-not-tcp': 3 });
    expect(h.udp).toHaveLength(0);
    expect(h.out).toHaveLength(0);
  });

  it('a checksum mark lets a NEEDS_CSUM UDP datagram through, and is ignored on a fragment', () => {
    const h = harness(1500);
    const d = udpFrame(GUEST, 5000, SERVER, 7, bytes(100));
    leavePartialChecksum(d, IPPROTO_UDP, 6);
    h.stack.input([d]);
    expect(h.stack.stats.drops['udp:bad-checksum']).toBe(1);
    h.stack.input([d], [RX_L4_CHECKSUM_OK]);
    expect(h.udp).toHaveLength(1);
    expect(Buffer.from(h.udp[0]!.payload).equals(Buffer.from(bytes(100)))).toBe(true);
    // The same datagram as two fragments, each marked: the mark describes a frame, not the reassembled datagram.
    const l4 = d.subarray(ETH_HEADER_LEN + IPV4_HEADER_LEN);
    const frags = [l4.subarray(0, 64), l4.subarray(64)].map((part, i) => {
      const f = new Uint8Array(ETH_HEADER_LEN + IPV4_HEADER_LEN + part.length);
      f.set(d.subarray(0, ETH_HEADER_LEN + IPV4_HEADER_LEN));
      f.set(part, ETH_HEADER_LEN + IPV4_HEADER_LEN);
      const ip = ETH_HEADER_LEN;
      const total = IPV4_HEADER_LEN + part.length;
      f[ip + 2] = total >> 8;
      f[ip + 3] = total & 0xff;
      const fragField = (i === 0 ? 0x2000 : 0) | (i === 0 ? 0 : 64 / 8);
      f[ip + 6] = fragField >> 8;
      f[ip + 7] = fragField & 0xff;
      f[ip + 10] = f[ip + 11] = 0;
      const s = finishChecksum(sumBytes(f, ip, IPV4_HEADER_LEN));
      f[ip + 10] = s >> 8;
      f[ip + 11] = s & 0xff;
      return f;
    });
    h.stack.input(frags, [RX_L4_CHECKSUM_OK, RX_L4_CHECKSUM_OK]);
    expect(h.udp).toHaveLength(1);
    expect(h.stack.stats.drops['udp:bad-checksum']).toBe(2);
  });

  it('frames without marks (or mark 0) are checked in full, as before', () => {
    const h = harness(1500);
    const d = udpFrame(GUEST, 5000, SERVER, 7, bytes(100));
    h.stack.input([d], [0]);
    h.stack.input([d]);
    expect(h.udp).toHaveLength(2);
    d[d.length - 1]! ^= 0xff;
    h.stack.input([d], [0]);
    expect(h.stack.stats.drops['udp:bad-checksum']).toBe(1);
  });
});

