/**
 * The virtio-net header of a TAP with receive offload (src/transport/vnet-header.ts):
 * a hostile guest controls it, so every field is checked against the frame,
 * every lie is dropped under its own reason, and a mark never vouches for
 * more than was checked. Then random headers on random and near-valid
 * frames, through the checker and into a stack: never a throw, never an
 * internal error, and every mark that passes is true of its frame.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ipv4 } from '../../netstack/addr.js';
import { ETH_HEADER_LEN } from '../../netstack/ethernet.js';
import { IPV4_HEADER_LEN } from '../../netstack/ipv4.js';
import { RX_GSO_TCP, RX_L4_CHECKSUM_OK } from '../../netstack/rx-marks.js';
import { TCP_ACK } from '../../netstack/tcp/header.js';
import { readVnetHeader, VNET_DROP_REASONS, VNET_HDR_BYTES } from '../../src/transport/vnet-header.js';
import { arpFrame, GUEST, GUEST_MAC, GW_IP, icmpFrame, tcpFrame, udpFrame } from '../support/frames.js';
import { bareStack, FUZZ_SEED, fuzzFrames } from '../support/fuzz-gen-run.js';
import { EXTERNAL6, GUEST6, IPV6_CONFIG, tcp6Frame, udp6Frame } from '../support/frames6.js';

const SERVER = ipv4(198, 18, 0, 5);
const MTU = 1500;
const L4 = ETH_HEADER_LEN + IPV4_HEADER_LEN;

interface Hdr {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

function hdr(h: Hdr): Uint8Array {
  const b = new Uint8Array(VNET_HDR_BYTES);
  const v = new DataView(b.buffer);
  b[0] = h.flags ?? 0;
  b[1] = h.gsoType ?? 0;
  v.setUint16(2, h.hdrLen ?? 0, true);
  v.setUint16(4, h.gsoSize ?? 0, true);
  v.setUint16(6, h.csumStart ?? 0, true);
  v.setUint16(8, h.csumOffset ?? 0, true);
  return b;
}

const payload = (n: number) => new Uint8Array(n).fill(0x5a);
const tcp = (n: number) => tcpFrame(GUEST, SERVER, { srcPort: 40000, dstPort: 80, seq: 1, ack: 1, flags: TCP_ACK, window: 1000 }, payload(n));
const udp = () => udpFrame(GUEST, 5000, SERVER, 53, payload(20));
const TCP_HDRS = L4 + 20;
/** What Linux's tun puts before a TSO frame of the guest's: GSO TCPv4, NEEDS_CSUM at the TCP checksum. */
const gsoHdr = (over: Hdr = {}): Hdr => ({ flags: 1, gsoType: 1, hdrLen: TCP_HDRS, gsoSize: 1448, csumStart: L4, csumOffset: 16, ...over });
const check = (h: Hdr, frame: Uint8Array, offload = true) => readVnetHeader(hdr(h), 0, frame, offload, MTU);

describe('virtio-net header: what is believed', () => {
  it('an all-zero header is no mark at all, with or without offload', () => {
    expect(check({}, tcp(10))).toBe(0);
    expect(check({}, tcp(10), false)).toBe(0);
  });

  it('a GSO TCPv4 frame with NEEDS_CSUM at its TCP checksum: GSO and checksum marks (ECN variant too)', () => {
    expect(check(gsoHdr(), tcp(20_000))).toBe(RX_GSO_TCP | RX_L4_CHECKSUM_OK);
    expect(check(gsoHdr({ gsoType: 0x81 }), tcp(20_000))).toBe(RX_GSO_TCP | RX_L4_CHECKSUM_OK);
    // hdr_len is Linux's linear length: it may cover some payload too.
    expect(check(gsoHdr({ hdrLen: TCP_HDRS + 100 }), tcp(20_000))).toBe(RX_GSO_TCP | RX_L4_CHECKSUM_OK);
  });

  it('NEEDS_CSUM alone on TCP and UDP: the checksum mark', () => {
    expect(check({ flags: 1, csumStart: L4, csumOffset: 16 }, tcp(100))).toBe(RX_L4_CHECKSUM_OK);
    expect(check({ flags: 1, csumStart: L4, csumOffset: 6 }, udp())).toBe(RX_L4_CHECKSUM_OK);
  });

  it('DATA_VALID: believed for TCP/UDP only when offload was asked for; never for other protocols', () => {
    expect(check({ flags: 2 }, tcp(100))).toBe(RX_L4_CHECKSUM_OK);
    expect(check({ flags: 2 }, udp())).toBe(RX_L4_CHECKSUM_OK);
    expect(check({ flags: 2 }, tcp(100), false)).toBe(0);
    expect(check({ flags: 2 }, icmpFrame(GUEST, GW_IP, 8, 1, payload(8)))).toBe(0);
    expect(check({ flags: 2 }, arpFrame(1, GUEST_MAC, GUEST, GW_IP))).toBe(0);
  });
});

describe('virtio-net header: every lie dropped under its reason', () => {
  const rows: [string, Hdr, Uint8Array, string, boolean?][] = [
    ['offload headers nobody asked for (GSO)', gsoHdr(), tcp(20_000), 'vnet:offload-not-enabled', false],
    ['offload headers nobody asked for (NEEDS_CSUM)', { flags: 1, csumStart: L4, csumOffset: 16 }, tcp(100), 'vnet:offload-not-enabled', false],
    ['unknown flag bits', { flags: 4 }, tcp(100), 'vnet:bad-flags'],
    ['NEEDS_CSUM and DATA_VALID at once', { flags: 3, csumStart: L4, csumOffset: 16 }, tcp(100), 'vnet:bad-flags'],
    ['GSO UDP', gsoHdr({ gsoType: 3 }), udp(), 'vnet:gso-unsupported'],
    ['GSO TCPv6', gsoHdr({ gsoType: 4 }), tcp(20_000), 'vnet:gso-unsupported'],
    ['GSO UDP_L4', gsoHdr({ gsoType: 5 }), udp(), 'vnet:gso-unsupported'],
    ['GSO TCPv4 mark on a UDP frame', gsoHdr({ csumOffset: 6 }), udp(), 'vnet:gso-not-ipv4-tcp'],
    ['GSO TCPv4 mark on an ARP frame', gsoHdr(), arpFrame(1, GUEST_MAC, GUEST, GW_IP), 'vnet:gso-not-ipv4-tcp'],
    ['GSO TCPv4 mark on a truncated frame', gsoHdr(), tcp(20_000).subarray(0, 1000), 'vnet:gso-not-ipv4-tcp'],
    ['gso_size 0', gsoHdr({ gsoSize: 0 }), tcp(20_000), 'vnet:bad-gso-size'],
    ['gso_size below the MSS floor', gsoHdr({ gsoSize: 1 }), tcp(20_000), 'vnet:bad-gso-size'],
    ['gso_size above MTU - 40', gsoHdr({ gsoSize: MTU - 39 }), tcp(20_000), 'vnet:bad-gso-size'],
    ['gso_size 65535', gsoHdr({ gsoSize: 65535 }), tcp(20_000), 'vnet:bad-gso-size'],
    ['gso_size without GSO', { gsoSize: 1448 }, tcp(100), 'vnet:bad-gso-size'],
    ['hdr_len short of the headers', gsoHdr({ hdrLen: TCP_HDRS - 1 }), tcp(20_000), 'vnet:bad-hdr-len'],
    ['hdr_len past the frame', gsoHdr({ hdrLen: 65535 }), tcp(20_000), 'vnet:bad-hdr-len'],
    ['GSO without NEEDS_CSUM', gsoHdr({ flags: 0 }), tcp(20_000), 'vnet:gso-without-csum'],
    ['GSO with DATA_VALID instead of NEEDS_CSUM', gsoHdr({ flags: 2 }), tcp(20_000), 'vnet:gso-without-csum'],
    ['csum_start off the L4 header', { flags: 1, csumStart: L4 + 4, csumOffset: 12 }, tcp(100), 'vnet:bad-csum-offsets'],
    ['csum_offset off the TCP checksum', { flags: 1, csumStart: L4, csumOffset: 6 }, tcp(100), 'vnet:bad-csum-offsets'],
    ['csum_offset past the frame', { flags: 1, csumStart: L4, csumOffset: 65000 }, tcp(100), 'vnet:bad-csum-offsets'],
    ['csum_start past the frame', { flags: 1, csumStart: 65535, csumOffset: 16 }, tcp(100), 'vnet:bad-csum-offsets'],
    ['NEEDS_CSUM on ICMP', { flags: 1, csumStart: L4, csumOffset: 2 }, icmpFrame(GUEST, GW_IP, 8, 1, payload(8)), 'vnet:bad-csum-offsets'],
    ['NEEDS_CSUM on ARP', { flags: 1, csumStart: 14, csumOffset: 0 }, arpFrame(1, GUEST_MAC, GUEST, GW_IP), 'vnet:bad-csum-offsets'],
  ];
  for (const [name, h, frame, reason, offload] of rows) {
    it(`${name}: ${reason}`, () => {
      expect(check(h, frame, offload ?? true)).toBe(reason);
    });
  }

  it('NEEDS_CSUM on an IP fragment: dropped (a fragment has no checksum to complete)', () => {
    const f = udp();
    f[ETH_HEADER_LEN + 6] = 0x20;
    expect(check({ flags: 1, csumStart: L4, csumOffset: 6 }, f)).toBe('vnet:bad-csum-offsets');
  });

  it('a GSO frame whose IPv4 total length says more than the frame holds is no TCP frame to believe', () => {
    const f = tcp(20_000);
    f[ETH_HEADER_LEN + 2] = 0xff;
    f[ETH_HEADER_LEN + 3] = 0xff;
    expect(check(gsoHdr(), f)).toBe('vnet:gso-not-ipv4-tcp');
  });
});

describe('virtio-net header fuzz', () => {
  const N = fuzzFrames(20_000);
  const field16 = fc.oneof(fc.constantFrom(0, 1, 6, 16, 34, 47, 48, 54, 1460, MTU - 40, MTU - 39, 65535), fc.integer({ min: 0, max: 65535 }));
  const anyHeader = fc.record({
    flags: fc.oneof(fc.constantFrom(0, 1, 2, 3), fc.integer({ min: 0, max: 255 })),
    gsoType: fc.oneof(fc.constantFrom(0, 1, 3, 4, 5, 0x81), fc.integer({ min: 0, max: 255 })),
    hdrLen: field16,
    gsoSize: field16,
    csumStart: fc.oneof(fc.constantFrom(L4, L4 + 4, 14), field16),
    csumOffset: fc.oneof(fc.constantFrom(16, 6, 2), field16),
  });
  // Mostly what Linux sends (GSO + NEEDS_CSUM, NEEDS_CSUM, DATA_VALID) with zero or one field wrong.
  const fields = ['flags', 'gsoType', 'hdrLen', 'gsoSize', 'csumStart', 'csumOffset'] as const;
  const nearHeader = fc
    .tuple(
      fc.constantFrom<Hdr>(gsoHdr(), { flags: 1, csumStart: L4, csumOffset: 16 }, { flags: 1, csumStart: L4, csumOffset: 6 }, { flags: 2 }, {}),
      fc.option(fc.tuple(fc.constantFrom(...fields), field16), { nil: undefined }),
    )
    .map(([base, wrong]) => (wrong === undefined ? base : { ...base, [wrong[0]]: wrong[0] === 'flags' || wrong[0] === 'gsoType' ? wrong[1] & 0xff : wrong[1] }));
  const header = fc.oneof({ arbitrary: nearHeader, weight: 3 }, { arbitrary: anyHeader, weight: 1 });
  const frame = fc.oneof(
    fc.integer({ min: 0, max: 30_000 }).map((n) => tcp(n)),
    fc.constant(udp()),
    fc.constant(icmpFrame(GUEST, GW_IP, 8, 1, payload(8))),
    fc.constant(arpFrame(1, GUEST_MAC, GUEST, GW_IP)),
    fc.tuple(fc.integer({ min: 0, max: 30_000 }), fc.integer({ min: 14, max: 60 }), fc.integer({ min: 0, max: 255 })).map(([n, at, v]) => {
      const f = tcp(n);
      f[at] = v; // one header byte wrong (IP or TCP)
      return f;
    }),
    fc.uint8Array({ minLength: 0, maxLength: 200 }),
  );

  it(`random headers on random and near-valid frames: a mark or a known reason, marks true of the frame, and the stack never throws (${N} frames)`, () => {
    const h = bareStack();
    const reasons = new Set<string>(VNET_DROP_REASONS);
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(header, frame, fc.oneof({ arbitrary: fc.constant(true), weight: 4 }, { arbitrary: fc.constant(false), weight: 1 }), (hd, f, offload) => {
        const v = check(hd, f, offload);
        const key = typeof v === 'string' ? v : `mark:${v}`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
        if (typeof v === 'string') {
          expect(reasons.has(v)).toBe(true);
          return;
        }
        expect(v & ~(RX_GSO_TCP | RX_L4_CHECKSUM_OK)).toBe(0);
        if (!offload) expect(v).toBe(0);
        if (v !== 0) {
          // IPv4, unfragmented, TCP/UDP (GSO: TCP), total length inside the frame.
          expect(f[12] === 0x08 && f[13] === 0x00 && f[ETH_HEADER_LEN]! >> 4 === 4).toBe(true);
          expect(((f[ETH_HEADER_LEN + 6]! & 0x3f) << 8) | f[ETH_HEADER_LEN + 7]!).toBe(0);
          const proto = f[ETH_HEADER_LEN + 9];
          expect(v & RX_GSO_TCP ? proto === 6 : proto === 6 || proto === 17).toBe(true);
          expect(ETH_HEADER_LEN + ((f[ETH_HEADER_LEN + 2]! << 8) | f[ETH_HEADER_LEN + 3]!)).toBeLessThanOrEqual(f.length);
        }
        const before = h.stack.stats.drops['stack:internal-error'] ?? 0;
        h.stack.input([f], [v]);
        h.runDeferred();
        expect(h.stack.stats.drops['stack:internal-error'] ?? 0).toBe(before);
      }),
      { numRuns: N, seed: FUZZ_SEED },
    );
    console.log(`vnet-header fuzz: ${N} frames: ${JSON.stringify(Object.fromEntries(seen))}`);
    // The generator reaches the marks and most reasons.
    expect(seen.get(`mark:${RX_GSO_TCP | RX_L4_CHECKSUM_OK}`) ?? 0).toBeGreaterThan(0);
    expect([...seen.keys()].filter((k) => reasons.has(k)).length).toBeGreaterThanOrEqual(7);
  }, 120_000);
});

describe('virtio-net header: IPv6 (the guest leaves its IPv6 TCP/UDP checksums to the TAP too)', () => {
  const L6 = ETH_HEADER_LEN + 40;
  const tcp6 = () => tcp6Frame(GUEST6, EXTERNAL6, { srcPort: 40000, dstPort: 80, seq: 1, ack: 1, flags: TCP_ACK, window: 1000 }, payload(100));
  const udp6f = () => udp6Frame(GUEST6, 5000, EXTERNAL6, 53, payload(20));

  it('NEEDS_CSUM at the TCP or UDP checksum right after the fixed header is believed', () => {
    expect(check({ flags: 1, csumStart: L6, csumOffset: 16 }, tcp6())).toBe(RX_L4_CHECKSUM_OK);
    expect(check({ flags: 1, csumStart: L6, csumOffset: 6 }, udp6f())).toBe(RX_L4_CHECKSUM_OK);
  });

  it('a wrong place, or behind an extension header, is dropped; GSO TCPv4 on an IPv6 frame is a lie', () => {
    expect(check({ flags: 1, csumStart: L6 - 4, csumOffset: 16 }, tcp6())).toBe('vnet:bad-csum-offsets');
    expect(check({ flags: 1, csumStart: L6, csumOffset: 6 }, tcp6())).toBe('vnet:bad-csum-offsets');
    expect(check({ flags: 1, gsoType: 1, hdrLen: L6 + 20, gsoSize: 1428, csumStart: L6, csumOffset: 16 }, tcp6())).toBe('vnet:gso-not-ipv4-tcp');
  });

  it('a stack with the mark takes a partially checksummed IPv6 TCP SYN and UDP datagram', () => {
    const syns: unknown[] = [];
    const udps: unknown[] = [];
    const h = bareStack({ onTcpSyn: (p) => { syns.push(p.syn); p.refuse(); }, onUdp: (d) => udps.push(d) }, { ipv6: IPV6_CONFIG });
    const syn = tcp6Frame(GUEST6, EXTERNAL6, { srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: 2, window: 1000 });
    syn[L6 + 16] ^= 0x55; // what a partial checksum looks like to a verifier: wrong
    const u = udp6f();
    u[L6 + 6] ^= 0x55;
    h.stack.input([syn, u], [RX_L4_CHECKSUM_OK, RX_L4_CHECKSUM_OK]);
    expect(syns).toHaveLength(1);
    expect(udps).toHaveLength(1);
  });
});
