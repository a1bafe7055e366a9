import { describe, expect, it } from 'vitest';
import { closeSync, openSync } from 'node:fs';
import type { OutputBatch } from '../../netstack/api.js';
import { createLogger } from '../../src/log.js';
import { TapFdLink, writeVnetHeader } from '../../src/transport/tap-fd.js';
import { EXTERNAL6, GUEST6, tcp6Frame, udp6Frame } from '../support/frames6.js';
import { ipv4 } from '../../netstack/addr.js';
import { finishChecksum, sumBytes } from '../../netstack/checksum.js';
import { ParseError } from '../../netstack/errors.js';
import { emitTcpHeader, parseTcp, TCP_ACK, tcpHeaderLength } from '../../netstack/tcp/header.js';

/** An Ethernet + IPv4 + TCP frame with `payload` bytes and a TCP header of `tcpHeader` bytes. */
function tcpFrame(payload: number, tcpHeader = 32, protocol = 6, etherType = 0x0800): Uint8Array {
  const f = new Uint8Array(14 + 20 + tcpHeader + payload);
  f[12] = etherType >> 8;
  f[13] = etherType & 0xff;
  f[14] = 0x45; // IPv4, IHL 5
  const total = 20 + tcpHeader + payload;
  f[16] = total >> 8;
  f[17] = total & 0xff;
  f[23] = protocol;
  f[14 + 20 + 12] = (tcpHeader / 4) << 4;
  return f;
}

/** The header for `frame`, sent as a super-segment of `segmentSize`-byte segments (0: not one). */
const header = (frame: Uint8Array, segmentSize: number, offset = 0, buf = frame): number[] => {
  const h = new Uint8Array(10).fill(0xee); // stale bytes must be cleared
  writeVnetHeader(h, buf, offset, frame.length, segmentSize);
  return [...h];
};

describe('writeVnetHeader (virtio-net header for a TAP opened with IFF_VNET_HDR)', () => {
  it('marks a TCP super-segment as GSO TCPv4 with the segment size its connection sends', () => {
    const f = tcpFrame(65_160); // 45 x 1448
    // flags 0 (checksums are complete), gso_type 1, hdr_len 14+20+32 = 66, gso_size 1448, csum fields 0
    expect(header(f, 1448)).toEqual([0, 1, 66, 0, 1448 & 0xff, 1448 >> 8, 0, 0, 0, 0]);
    // A guest that clamped its MSS to 1000 (988 with timestamps) gets gso_size 988, whatever the link MTU.
    expect(header(tcpFrame(65 * 988), 988)).toEqual([0, 1, 66, 0, 988 & 0xff, 988 >> 8, 0, 0, 0, 0]);
  });

  it('leaves the header all zero for frames that are no super-segment, non-TCP and non-IPv4 frames, and runts', () => {
    expect(header(tcpFrame(1448), 1448)).toEqual(new Array(10).fill(0));
    expect(header(tcpFrame(5000), 0)).toEqual(new Array(10).fill(0)); // not marked by the stack
    expect(header(tcpFrame(5000, 32, 17), 1448)).toEqual(new Array(10).fill(0)); // UDP
    expect(header(tcpFrame(5000, 32, 6, 0x0806), 1448)).toEqual(new Array(10).fill(0)); // ARP ethertype
    expect(header(new Uint8Array(40), 1448)).toEqual(new Array(10).fill(0));
  });

  it('reads the frame where it lies in a larger buffer (offset)', () => {
    const f = tcpFrame(3000, 20);
    const buf = new Uint8Array(100 + f.length);
    buf.set(f, 100);
    expect(header(f, 1460, 100, buf)).toEqual([0, 1, 54, 0, 1460 & 0xff, 1460 >> 8, 0, 0, 0, 0]);
  });
});

describe('checksum offload on output (--tap-offload)', () => {
  it('every IPv4 TCP frame is marked NEEDS_CSUM at its TCP checksum (GSO or not); other frames are not', () => {
    const h = (frame: Uint8Array) => {
      const b = new Uint8Array(10).fill(0xee);
      writeVnetHeader(b, frame, 0, frame.length, frame.length > 1514 ? 1448 : 0, true);
      return [...b];
    };
    expect(h(tcpFrame(65_160))).toEqual([1, 1, 66, 0, 1448 & 0xff, 1448 >> 8, 34, 0, 16, 0]);
    expect(h(tcpFrame(0))).toEqual([1, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
    expect(h(tcpFrame(5000, 32, 17))).toEqual(new Array(10).fill(0));
  });

  it('emitTcpHeader(partial) leaves the pseudo-header sum that, completed over the segment as a NIC does, is the full checksum', () => {
    const payload = Uint8Array.from({ length: 3001 }, (_, i) => (i * 31 + 7) & 0xff);
    const seg = { srcPort: 80, dstPort: 40000, seq: 0xfffffff0, ack: 12345, flags: TCP_ACK, window: 5000, options: { timestamp: { value: 1, echo: 2 } } };
    const hl = tcpHeaderLength(seg);
    const full = new Uint8Array(hl + payload.length);
    const partial = new Uint8Array(hl + payload.length);
    full.set(payload, hl);
    partial.set(payload, hl);
    const src = ipv4(192, 168, 127, 254);
    const dst = ipv4(192, 168, 127, 2);
    emitTcpHeader(full, 0, seg, src, dst, payload.length);
    emitTcpHeader(partial, 0, seg, src, dst, payload.length, true);
    expect([partial[16], partial[17]]).not.toEqual([full[16], full[17]]);
    // The completer: fold and complement the sum over csum_start..end, field included, and store it.
    const completed = finishChecksum(sumBytes(partial, 0, partial.length));
    expect(completed).toBe((full[16]! << 8) | full[17]!);
    expect(parseTcp(full, src, dst)).not.toBeInstanceOf(ParseError);
  });
});

describe('TapFdLink write errors', () => {
  /** A link marked up without start() (which needs a real TAP), writing to `fd`. */
  const linkOn = (fd: number) => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ level: 'info', format: 'json', stream: { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) } });
    let gone = 0;
    const lost: string[] = [];
    const link = new TapFdLink({ fd, vnetHdr: false, mtu: 1500 }, { input() {}, guestGone: () => gone++ }, log, (why) => lost.push(why));
    (link as unknown as { up: boolean }).up = true;
    return { link, lines, lost, gone: () => gone };
  };
  const frame = new Uint8Array(60);
  const batch = (): OutputBatch => ({
    framed: [],
    frameCount: 1,
    forEachFrame: (fn) => fn(frame),
    forEachFrameAt: (fn) => fn(frame, 0, frame.length),
    release() {},
  });

  it('a frame the device refuses (EINVAL) is dropped and counted; the link stays up and warns once', () => {
    // Writing a non-number to our own oom_score_adj answers EINVAL, as a TAP does for a header it rejects.
    const fd = openSync('/proc/self/oom_score_adj', 'w');
    try {
      const t = linkOn(fd);
      t.link.send(batch());
      t.link.send(batch());
      expect(t.link.stats.outputRejected).toBe(2);
      expect(t.link.guestConnected).toBe(true);
      expect(t.lost).toEqual([]);
      expect(t.lines.filter((l) => l['level'] === 'warn')).toHaveLength(1);
    } finally {
      closeSync(fd);
    }
  });

  it('a descriptor that cannot be written (EBADF) ends the link, once', () => {
    const fd = openSync('/dev/null', 'r');
    try {
      const t = linkOn(fd);
      t.link.send(batch());
      t.link.send(batch());
      expect(t.lost).toHaveLength(1);
      expect(t.lost[0]).toMatch(/^write failed: EBADF/);
      expect(t.link.guestConnected).toBe(false);
      expect(t.gone()).toBe(1);
      expect(t.link.stats.outputDroppedNoGuest).toBe(1);
    } finally {
      closeSync(fd);
    }
  });
});

describe('writeVnetHeader over IPv6', () => {
  const seg = { srcPort: 80, dstPort: 40000, seq: 1, ack: 1, flags: TCP_ACK, window: 1000 };
  const frame6 = (payloadLen: number) => tcp6Frame(EXTERNAL6, GUEST6, seg, new Uint8Array(payloadLen));
  const header = (frame: Uint8Array, csum: boolean) => {
    const h = new Uint8Array(10);
    writeVnetHeader(h, frame, 0, frame.length, 1440, csum);
    const v = new DataView(h.buffer);
    return { flags: h[0], gsoType: h[1], hdrLen: v.getUint16(2, true), gsoSize: v.getUint16(4, true), csumStart: v.getUint16(6, true), csumOffset: v.getUint16(8, true) };
  };

  it('an IPv6 TCP super-segment is marked GSO TCPv6 with its segment size', () => {
    expect(header(frame6(10_000), false)).toMatchObject({ gsoType: 4, hdrLen: 14 + 40 + 20, gsoSize: 1500 - 60 });
    expect(header(frame6(1000), false)).toMatchObject({ gsoType: 0, gsoSize: 0 });
  });

  it('with checksum offload, an IPv6 TCP frame is NEEDS_CSUM at its TCP checksum after the 40-byte header', () => {
    expect(header(frame6(100), true)).toMatchObject({ flags: 1, csumStart: 54, csumOffset: 16 });
    expect(header(udp6Frame(EXTERNAL6, 53, GUEST6, 5000, new Uint8Array(10)), true)).toMatchObject({ flags: 0, gsoType: 0 });
  });
});
