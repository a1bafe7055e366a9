import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  emitTcpHeader,
  parseTcp,
  tcpHeaderLength,
  TCP_ACK,
  TCP_SYN,
  type TcpOptions,
  type TcpSegmentFields,
} from '../../netstack/tcp/header.js';
import { ParseError } from '../../netstack/errors.js';
import { kernelFrames } from '../support/pcap-read.js';

const SRC = 0x0a000001;
const DST = 0x0a000002;

function build(f: TcpSegmentFields, payload: Uint8Array, src = SRC, dst = DST): Uint8Array {
  const hl = tcpHeaderLength(f);
  const buf = new Uint8Array(hl + payload.length + 7);
  buf.set(payload, 3 + hl);
  const end = emitTcpHeader(buf, 3, f, src, dst, payload.length);
  expect(end).toBe(3 + hl);
  return buf.subarray(3, 3 + hl + payload.length);
}

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const optionsArb = fc.record({
  mss: fc.option(fc.integer({ min: 0, max: 0xffff }), { nil: null }),
  windowScale: fc.option(fc.integer({ min: 0, max: 14 }), { nil: null }),
  sackPermitted: fc.boolean(),
  timestamp: fc.option(fc.record({ value: u32, echo: u32 }), { nil: null }),
  sackBlocks: fc.option(fc.array(u32, { minLength: 1, maxLength: 3 }).map((a) => a.flatMap((x) => [x, (x + 1000) >>> 0])), { nil: null }),
});

describe('TCP header', () => {
  it('parse(emit(x)) == x for random headers, options and payloads', () => {
    fc.assert(
      fc.property(
        fc.record({
          srcPort: fc.integer({ min: 0, max: 0xffff }),
          dstPort: fc.integer({ min: 0, max: 0xffff }),
          seq: u32,
          ack: u32,
          flags: fc.integer({ min: 0, max: 0xff }),
          window: fc.integer({ min: 0, max: 0xffff }),
        }),
        optionsArb,
        fc.uint8Array({ maxLength: 300 }),
        (h, options, payload) => {
          // SYN-only options and SACK blocks together would exceed 40 bytes; the emitter caps SACK blocks.
          const f: TcpSegmentFields = { ...h, options };
          const bytes = build(f, payload);
          const r = parseTcp(bytes, SRC, DST);
          if (r instanceof ParseError) throw new Error(r.reason);
          expect(r.headerLength).toBe(tcpHeaderLength(f));
          expect(r.headerLength % 4).toBe(0);
          expect(r.headerLength).toBeLessThanOrEqual(60);
          expect({ ...r, payload: undefined, headerLength: undefined, options: undefined }).toEqual({ ...h, urgent: 0, payload: undefined, headerLength: undefined, options: undefined });
          expect(r.payload).toEqual(payload);
          const expected: TcpOptions = { ...options, sackBlocks: options.sackBlocks };
          const room = 40 - (options.mss !== null ? 4 : 0) - (options.timestamp !== null || options.sackPermitted ? (options.timestamp !== null ? 12 : 4) : 0) - (options.windowScale !== null ? 4 : 0);
          if (options.sackBlocks !== null) {
            const fit = Math.min(options.sackBlocks.length / 2, options.timestamp !== null ? 3 : 4, Math.floor((room - 4) / 8));
            expected.sackBlocks = fit > 0 ? options.sackBlocks.slice(0, fit * 2) : null;
          }
          if (r.headerLength <= 60) expect(r.options).toEqual(expected);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('lays out SYN options the way Linux does: MSS, SACK_PERM, TS, NOP, WS', () => {
    const bytes = build(
      { srcPort: 1, dstPort: 2, seq: 1, ack: 0, flags: TCP_SYN, window: 65535, options: { mss: 1460, sackPermitted: true, timestamp: { value: 5, echo: 0 }, windowScale: 7 } },
      new Uint8Array(0),
    );
    expect([...bytes.subarray(20)]).toEqual([2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 5, 0, 0, 0, 0, 1, 3, 3, 7]);
  });

  it('lays out data options as NOP NOP TS NOP NOP SACK', () => {
    const bytes = build(
      { srcPort: 1, dstPort: 2, seq: 1, ack: 2, flags: TCP_ACK, window: 100, options: { timestamp: { value: 1, echo: 2 }, sackBlocks: [10, 20] } },
      new Uint8Array(0),
    );
    expect([...bytes.subarray(20)]).toEqual([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 10, 0, 0, 0, 10, 0, 0, 0, 20]);
  });

  it('rejects truncated, bad offsets, bad checksums and malformed options; never throws', () => {
    const good = build({ srcPort: 1, dstPort: 2, seq: 3, ack: 4, flags: TCP_ACK, window: 5, options: { timestamp: { value: 1, echo: 2 } } }, new Uint8Array([1, 2, 3]));
    expect(parseTcp(good.subarray(0, 19), SRC, DST)).toBe(ParseError.of('tcp:truncated'));
    const badOff = good.slice();
    badOff[12] = 4 << 4;
    expect(parseTcp(badOff, SRC, DST)).toBe(ParseError.of('tcp:bad-offset'));
    const tooLong = good.slice(0, 24);
    expect(parseTcp(tooLong, SRC, DST)).toBe(ParseError.of('tcp:truncated'));
    const badSum = good.slice();
    badSum[good.length - 1] ^= 1;
    expect(parseTcp(badSum, SRC, DST)).toBe(ParseError.of('tcp:bad-checksum'));
    expect(parseTcp(good, SRC, DST + 1)).toBe(ParseError.of('tcp:bad-checksum'));
    // An option length running past the header, with a valid checksum.
    const f: TcpSegmentFields = { srcPort: 1, dstPort: 2, seq: 3, ack: 4, flags: TCP_ACK, window: 5, options: { mss: 1000 } };
    const bad = build(f, new Uint8Array(0)).slice();
    bad[21] = 9; // MSS length 9 > header
    const fixed = fixChecksum(bad);
    expect(parseTcp(fixed, SRC, DST)).toBe(ParseError.of('tcp:bad-option'));
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), fc.boolean(), (junk, fix) => {
        const seg = fix && junk.length >= 20 ? fixChecksum(junk) : junk;
        const r = parseTcp(seg, SRC, DST);
        expect(r instanceof ParseError || typeof r.seq === 'number').toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('skips unknown options by their length', () => {
    const bytes = build({ srcPort: 1, dstPort: 2, seq: 0, ack: 0, flags: TCP_SYN, window: 1, options: { mss: 1400, windowScale: 2 } }, new Uint8Array(0)).slice();
    // Replace the NOP WS (1,3,3,2) with an unknown 4-byte option (kind 30).
    bytes.set([30, 4, 0xaa, 0xbb], 24);
    const r = parseTcp(fixChecksum(bytes), SRC, DST);
    if (r instanceof ParseError) throw new Error(r.reason);
    expect(r.options.mss).toBe(1400);
    expect(r.options.windowScale).toBe(null);
  });

  it('parses the real Linux capture and re-emits byte-identical headers', () => {
    let tcp = 0;
    let syn = 0;
    for (const frame of kernelFrames()) {
      if (frame[12] !== 0x08 || frame[13] !== 0x00 || frame[23] !== 6) continue;
      const ihl = (frame[14]! & 0x0f) * 4;
      const total = (frame[16]! << 8) | frame[17]!;
      const src = ((frame[26]! << 24) | (frame[27]! << 16) | (frame[28]! << 8) | frame[29]!) >>> 0;
      const dst = ((frame[30]! << 24) | (frame[31]! << 16) | (frame[32]! << 8) | frame[33]!) >>> 0;
      const segment = frame.subarray(14 + ihl, 14 + total);
      const r = parseTcp(segment, src, dst);
      if (r instanceof ParseError) throw new Error(r.reason);
      tcp++;
      if (r.flags & TCP_SYN) {
        syn++;
        expect(r.options.mss).toBeGreaterThan(0);
        expect(r.options.sackPermitted).toBe(true);
        expect(r.options.timestamp).not.toBe(null);
        expect(r.options.windowScale).not.toBe(null);
      }
      const again = build({ ...r }, r.payload, src, dst);
      expect([...again]).toEqual([...segment]);
    }
    expect(tcp).toBeGreaterThanOrEqual(4);
    expect(syn).toBe(2);
  });
});

function fixChecksum(seg: Uint8Array): Uint8Array {
  const s = seg.slice();
  s[16] = 0;
  s[17] = 0;
  let sum = (SRC >>> 16) + (SRC & 0xffff) + (DST >>> 16) + (DST & 0xffff) + 6 + s.length;
  for (let i = 0; i + 1 < s.length; i += 2) sum += (s[i]! << 8) | s[i + 1]!;
  if (s.length & 1) sum += s[s.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  const c = ~sum & 0xffff;
  s[16] = c >>> 8;
  s[17] = c & 0xff;
  return s;
}
