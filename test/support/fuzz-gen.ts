/**
 * fast-check generators for hostile input to a Stack (issue 9, "fail closed
 * on bad input"):
 *
 * - `almostValidFrame`: a well-formed guest frame (ARP, ICMP echo, UDP, TCP
 *   with options, an IPv4 fragment) with exactly ONE field made wrong, every
 *   other checksum recomputed so that parsing reaches the layer under test.
 *   Each case says whether the stack MUST drop it and under which reason
 *   prefix, so that a test can check "dropped and counted", not only "did not
 *   throw".
 * - `hostileSegment`: a TCP segment aimed at a live connection whose
 *   sequence state the attacker knows roughly: wrong sequence numbers around
 *   and far from the window, overlapping retransmits (same bytes), RST and
 *   SYN with in-window / exact / stale numbers, window 0, SACK blocks out of
 *   range, bogus ACK numbers.
 *
 * The frames come from the emitters in frames.ts (pinned by their own
 * round-trip and kernel-capture tests); mutations are applied afterwards on
 * the bytes.
 */
import fc from 'fast-check';
import { ipv4, type IPv4, type Mac } from '../../netstack/addr.js';
import { ARP_REQUEST } from '../../netstack/arp.js';
import { finishChecksum, sumBytes, sumPseudoHeader } from '../../netstack/checksum.js';
import { ETH_HEADER_LEN } from '../../netstack/ethernet.js';
import { ICMP_ECHO_REQUEST } from '../../netstack/icmp.js';
import { emitIpv4Header, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_LEN } from '../../netstack/ipv4.js';
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG } from '../../netstack/tcp/header.js';
import { emitUdp, UDP_HEADER_LEN } from '../../netstack/udp.js';
import { arpFrame, GW_IP, GW_MAC, HOST_ALIAS, icmpFrame, tcpFrame, udpFrame } from './frames.js';

/** Garbage comes from a second address of the guest subnet, so that it never re-teaches the MAC of a healthy peer at .2. */
export const FUZZ_SRC: IPv4 = ipv4(192, 168, 127, 77);
export const FUZZ_SRC_MAC: Mac = 0x02aabbccddee;
const EXTERNAL: IPv4 = ipv4(198, 18, 0, 9);

export interface FuzzFrame {
  frame: Uint8Array;
  /** Which field was made wrong (for messages and per-mutation counts). */
  mutation: string;
  /** The stack must drop this frame and count it under a reason starting with `reasonPrefix`. */
  mustDrop: boolean;
  reasonPrefix: string;
}

type Kind = 'arp' | 'icmp' | 'udp-gw' | 'udp-ext' | 'tcp-syn' | 'tcp-ack' | 'frag';

const IP = ETH_HEADER_LEN; // IPv4 header offset in every template
const L4 = ETH_HEADER_LEN + IPV4_HEADER_LEN;

function template(kind: Kind, port: number, payloadLen: number): Uint8Array {
  const payload = new Uint8Array(payloadLen).map((_, i) => (i * 31 + port) & 0xff);
  switch (kind) {
    case 'arp':
      return arpFrame(ARP_REQUEST, FUZZ_SRC_MAC, FUZZ_SRC, GW_IP);
    case 'icmp':
      return icmpFrame(FUZZ_SRC, GW_IP, ICMP_ECHO_REQUEST, port, payload);
    case 'udp-gw':
      return udpFrame(FUZZ_SRC, port, GW_IP, 53, payload);
    case 'udp-ext':
      return udpFrame(FUZZ_SRC, port, EXTERNAL, 9, payload);
    case 'tcp-syn':
      return tcpFrame(FUZZ_SRC, EXTERNAL, {
        srcPort: port, dstPort: 80, seq: port * 7919, ack: 0, flags: TCP_SYN, window: 64240,
        options: { mss: 1460, windowScale: 7, sackPermitted: true, timestamp: { value: port, echo: 0 } },
      });
    case 'tcp-ack':
      return tcpFrame(FUZZ_SRC, HOST_ALIAS, { srcPort: port, dstPort: 8080, seq: port, ack: 12345, flags: TCP_ACK | TCP_PSH, window: 500 }, payload);
    case 'frag': {
      // The first 8-byte-aligned piece of a UDP datagram whose rest never comes.
      const len = 8 + (payloadLen & ~7);
      const f = new Uint8Array(L4 + len);
      f.set(udpFrame(FUZZ_SRC, port, EXTERNAL, 9, payload).subarray(0, ETH_HEADER_LEN)); // the Ethernet header
      emitIpv4Header(f, IP, { src: FUZZ_SRC, dst: EXTERNAL, protocol: IPPROTO_UDP, payloadLength: len, id: port, moreFragments: true });
      emitUdp(f, L4, FUZZ_SRC, EXTERNAL, port, 9, payload.subarray(0, len - UDP_HEADER_LEN));
      return f;
    }
  }
}

const u32 = (f: Uint8Array, at: number) => ((f[at]! << 24) | (f[at + 1]! << 16) | (f[at + 2]! << 8) | f[at + 3]!) >>> 0;

/** Recomputes the IPv4 header checksum and the L4 checksum (TCP/UDP/ICMP) where the bytes allow. */
export function fixChecksums(f: Uint8Array): void {
  if (f.length < L4 || f[12] !== 0x08 || f[13] !== 0x00) return;
  const ihl = (f[IP]! & 0x0f) * 4;
  if (ihl < 20 || IP + ihl > f.length) return;
  f[IP + 10] = f[IP + 11] = 0;
  const s = finishChecksum(sumBytes(f, IP, ihl));
  f[IP + 10] = s >> 8;
  f[IP + 11] = s & 0xff;
  const fragmentOffset = ((f[IP + 6]! & 0x1f) << 8) | f[IP + 7]!;
  if (fragmentOffset !== 0 || (f[IP + 6]! & 0x20) !== 0) return; // a fragment's L4 checksum covers bytes we don't have
  const l4 = IP + ihl;
  const total = (f[IP + 2]! << 8) | f[IP + 3]!;
  const end = Math.min(f.length, IP + total);
  const proto = f[IP + 9]!;
  const at = proto === IPPROTO_TCP ? 16 : proto === IPPROTO_UDP ? 6 : proto === IPPROTO_ICMP ? 2 : -1;
  if (at < 0 || l4 + at + 2 > end) return;
  f[l4 + at] = f[l4 + at + 1] = 0;
  const len = end - l4;
  const pseudo = proto === IPPROTO_ICMP ? 0 : sumPseudoHeader(u32(f, IP + 12), u32(f, IP + 16), proto, len);
  let c = finishChecksum(sumBytes(f, l4, len, pseudo));
  if (proto === IPPROTO_UDP && c === 0) c = 0xffff; // RFC 768: 0 means "no checksum"
  f[l4 + at] = c >> 8;
  f[l4 + at + 1] = c & 0xff;
}

/** Flips bits of a 16-bit checksum field so that it is wrong whatever it was (never to 0 for UDP, which means "none"). */
function breakChecksum(f: Uint8Array, at: number, flip: number): void {
  const right = (f[at]! << 8) | f[at + 1]!;
  let wrong = right ^ (1 + (flip % 0xfffe));
  if (wrong === 0) wrong = right === 1 ? 2 : 1;
  f[at] = wrong >> 8;
  f[at + 1] = wrong & 0xff;
}

interface Mutation {
  name: string;
  applies(kind: Kind): boolean;
  /** Mutates f (checksums already right) and returns the frame plus what the stack must do. */
  apply(f: Uint8Array, r: number, kind: Kind): { frame: Uint8Array; mustDrop: boolean; reasonPrefix: string };
}

const isIp = (k: Kind) => k !== 'arp';
const l4Kind = (k: Kind) => (k === 'arp' ? 'arp' : k === 'tcp-syn' || k === 'tcp-ack' ? 'tcp' : k === 'icmp' ? 'icmp' : k === 'frag' ? 'frag' : 'udp');
const drop = (frame: Uint8Array, reasonPrefix: string) => ({ frame, mustDrop: true, reasonPrefix });
const maybe = (frame: Uint8Array) => ({ frame, mustDrop: false, reasonPrefix: '' });
const refix = (f: Uint8Array) => (fixChecksums(f), f);

const SPOOFED_SOURCES: IPv4[] = [GW_IP, HOST_ALIAS, ipv4(192, 168, 127, 255), ipv4(10, 0, 0, 1), ipv4(127, 0, 0, 1), ipv4(224, 0, 0, 1), ipv4(169, 254, 169, 254)];

export const MUTATIONS: readonly Mutation[] = [
  {
    name: 'eth-dst-other-unicast',
    applies: () => true,
    apply: (f, r) => {
      f[0] = 0x02; f[5] = (r & 0xfe) | 0x02; // locally administered, unicast, not the gateway's
      return drop(f, 'eth:not-for-us');
    },
  },
  {
    name: 'eth-dst-multicast',
    applies: () => true,
    apply: (f, r) => {
      f[0] = 0x01; f[1] = 0x00; f[2] = 0x5e; f[5] = r & 0xff;
      return drop(f, 'eth:multicast');
    },
  },
  {
    name: 'ethertype',
    applies: () => true,
    apply: (f, r) => {
      const types = [0x86dd, 0x8100, 0x88a8, 0x0005, 0x05ff, 0x0600 + (r % 0x1000), 0x9000];
      let t = types[r % types.length]!;
      if (t === 0x0800 || t === 0x0806) t = 0x0900;
      f[12] = t >> 8; f[13] = t & 0xff;
      return drop(f, t === 0x86dd ? 'ipv6:' : 'eth:');
    },
  },
  {
    name: 'truncated',
    applies: () => true,
    apply: (f, r, k) => {
      const cut = r % f.length;
      // Cut inside the Ethernet header, the ARP body or before the IPv4 total length: always a drop.
      const g = f.subarray(0, cut);
      return drop(g, cut < ETH_HEADER_LEN ? 'eth:' : k === 'arp' ? 'arp:' : 'ipv4:');
    },
  },
  {
    name: 'arp-field',
    applies: (k) => k === 'arp',
    apply: (f, r) => {
      // htype (2 bytes), ptype (2), hlen, plen, the high byte of op (an op >= 256 is neither request nor reply).
      const at = [14, 15, 16, 17, 18, 19, 20][r % 7]!;
      const want = [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00][r % 7]!;
      f[at] = want ^ (1 + ((r >> 3) % 255));
      return drop(f, 'arp:');
    },
  },
  {
    name: 'ip-version',
    applies: isIp,
    apply: (f, r) => {
      f[IP] = (((4 + 1 + (r % 15)) % 16) << 4) | (f[IP]! & 0x0f);
      return drop(refix(f), 'ipv4:');
    },
  },
  {
    name: 'ip-ihl-short',
    applies: isIp,
    apply: (f, r) => {
      f[IP] = 0x40 | (r % 5);
      return drop(f, 'ipv4:');
    },
  },
  {
    name: 'ip-ihl-long',
    applies: isIp,
    apply: (f, r) => {
      f[IP] = 0x40 | (6 + (r % 10)); // header claims L4 bytes as options
      return maybe(refix(f));
    },
  },
  {
    name: 'ip-total-length-long',
    applies: isIp,
    apply: (f, r) => {
      const t = f.length - IP + 1 + (r % 2000);
      f[IP + 2] = (t >> 8) & 0xff; f[IP + 3] = t & 0xff;
      return drop(refix(f), 'ipv4:');
    },
  },
  {
    name: 'ip-total-length-below-header',
    applies: isIp,
    apply: (f, r) => {
      f[IP + 3] = r % 20; f[IP + 2] = 0;
      return drop(refix(f), 'ipv4:');
    },
  },
  {
    name: 'ip-total-length-short',
    applies: isIp,
    apply: (f, r) => {
      // Trailing bytes become Ethernet padding: legal at this layer, L4 sees a shorter segment.
      const t = 20 + (r % Math.max(1, f.length - IP - 20));
      f[IP + 2] = t >> 8; f[IP + 3] = t & 0xff;
      fixChecksums(f); // only the IPv4 one can still be right for the shortened L4
      return maybe(f);
    },
  },
  {
    name: 'ip-checksum',
    applies: isIp,
    apply: (f, r) => {
      breakChecksum(f, IP + 10, r);
      return drop(f, 'ipv4:bad-checksum');
    },
  },
  {
    name: 'ip-flags-offset',
    applies: isIp,
    apply: (f, r) => {
      // Reserved bit, DF+MF, a nonzero offset on what was a whole datagram...
      f[IP + 6] = [0x80, 0x60, 0x20, 0x00, 0x1f, 0xa0][r % 6]!;
      f[IP + 7] = (r >> 3) & 0xff;
      return maybe(refix(f));
    },
  },
  {
    name: 'ip-src-spoofed',
    applies: isIp,
    apply: (f, r) => {
      const s = SPOOFED_SOURCES[r % SPOOFED_SOURCES.length]!;
      f[IP + 12] = s >>> 24; f[IP + 13] = (s >>> 16) & 0xff; f[IP + 14] = (s >>> 8) & 0xff; f[IP + 15] = s & 0xff;
      return drop(refix(f), 'ipv4:');
    },
  },
  {
    name: 'ip-dst-multicast',
    // Fragments are reassembled before the destination is judged (bounded by the reassembly limits).
    applies: (k) => isIp(k) && k !== 'frag',
    apply: (f, r) => {
      f[IP + 16] = 224 + (r % 16); f[IP + 19] = r & 0xff;
      return drop(refix(f), 'ipv4:multicast');
    },
  },
  {
    name: 'ip-protocol',
    applies: (k) => isIp(k) && k !== 'frag',
    apply: (f, r) => {
      const p = [0, 2, 4, 41, 47, 50, 58, 132, 255][r % 9]!;
      f[IP + 9] = p;
      return drop(refix(f), 'ipv4:unsupported-protocol');
    },
  },
  {
    name: 'ip-ttl',
    applies: isIp,
    apply: (f, r) => {
      f[IP + 8] = r % 2; // 0 or 1: nothing to route, still ours to answer
      return maybe(refix(f));
    },
  },
  {
    name: 'l4-checksum',
    applies: (k) => isIp(k) && k !== 'frag',
    apply: (f, r, k) => {
      const at = L4 + (l4Kind(k) === 'tcp' ? 16 : l4Kind(k) === 'udp' ? 6 : 2);
      breakChecksum(f, at, r);
      return drop(f, `${l4Kind(k)}:bad-checksum`);
    },
  },
  {
    name: 'tcp-data-offset-short',
    applies: (k) => l4Kind(k) === 'tcp',
    apply: (f, r) => {
      f[L4 + 12] = (r % 5) << 4;
      return drop(refix(f), 'tcp:');
    },
  },
  {
    name: 'tcp-data-offset-long',
    applies: (k) => l4Kind(k) === 'tcp',
    apply: (f) => {
      const seg = f.length - L4;
      if (seg >= 60) return maybe(refix(f));
      const words = Math.min(15, Math.floor(seg / 4) + 1);
      f[L4 + 12] = words << 4;
      return drop(refix(f), 'tcp:');
    },
  },
  {
    name: 'tcp-flags',
    applies: (k) => l4Kind(k) === 'tcp',
    apply: (f, r) => {
      // Every combination, the nonsensical ones included (SYN+FIN, SYN+RST, none, all).
      f[L4 + 13] = r & 0xff;
      return maybe(refix(f));
    },
  },
  {
    name: 'tcp-option-bytes',
    applies: (k) => k === 'tcp-syn',
    apply: (f, r) => {
      // The SYN template carries 20 bytes of options: garble one (kind or length: 0, 1, overrunning).
      const at = L4 + 20 + (r % 20);
      f[at] = [0, 1, 2, 3, 4, 5, 8, 40, 255][(r >> 5) % 9]!;
      return maybe(refix(f));
    },
  },
  {
    name: 'udp-length',
    applies: (k) => l4Kind(k) === 'udp',
    apply: (f, r) => {
      const avail = f.length - L4;
      const bad = r % 2 === 0 ? r % 8 : avail + 1 + (r % 100);
      f[L4 + 4] = (bad >> 8) & 0xff; f[L4 + 5] = bad & 0xff;
      return drop(refix(f), 'udp:');
    },
  },
  {
    name: 'frag-overflow',
    applies: (k) => k === 'frag',
    apply: (f, r) => {
      // An offset whose end passes 65535 with the header (the ping of death).
      const off = 8189 + (r % 3); // x 8 bytes = 65,512+: with the header and 8+ bytes, past 65,535
      f[IP + 6] = 0x20 | (off >> 8); f[IP + 7] = off & 0xff;
      return drop(refix(f), 'frag:');
    },
  },
];

const KINDS: readonly Kind[] = ['arp', 'icmp', 'udp-gw', 'udp-ext', 'tcp-syn', 'tcp-ack', 'frag'];

/** Builds the one-field-wrong frame for (kind, mutation, random word). Deterministic: a failing case replays. */
export function buildAlmostValid(kindIndex: number, mutationIndex: number, r: number, port: number, payloadLen: number): FuzzFrame {
  const kind = KINDS[kindIndex % KINDS.length]!;
  const candidates = MUTATIONS.filter((m) => m.applies(kind));
  const m = candidates[mutationIndex % candidates.length]!;
  const f = template(kind, port, payloadLen);
  const out = m.apply(f, r, kind);
  return { ...out, mutation: `${kind}/${m.name}` };
}

export const almostValidFrame: fc.Arbitrary<FuzzFrame> = fc
  .tuple(fc.nat(), fc.nat(), fc.nat(), fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 1400 }))
  .map(([k, m, r, port, len]) => buildAlmostValid(k, m, r, port, len));

/** Raw random bytes, for the layers before any header is right. */
export const randomBytesFrame: fc.Arbitrary<FuzzFrame> = fc
  .uint8Array({ minLength: 0, maxLength: 200 })
  .map((frame) => ({ frame, mutation: 'random-bytes', mustDrop: false, reasonPrefix: '' }));

// ------------------------------------------------------------------ hostile TCP segments

/** What the attacker knows about a live connection, from the guest side. */
export interface PeerView {
  /** Next sequence number the guest would send (Moat's RCV.NXT). */
  sndNxt: number;
  /** Highest sequence number Moat has sent (what the guest may acknowledge). */
  rcvNxt: number;
}

export interface HostileSegment {
  what: string;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** Offset of the payload in the guest's stream (payload bytes are streamByte(offset + i)), or -1 for none. */
  dataAt: number;
  dataLen: number;
  sackBlocks: number[] | null;
  /** Timestamp value, or null to send none. */
  tsval: number | null;
}

/** The guest's stream content is a function of the byte's offset: overlapping retransmits always carry the same bytes. */
export const streamByte = (offset: number) => (offset * 131 + (offset >>> 8) * 7 + 1) & 0xff;

/**
 * Hostile segment relative to the peer's view: `rel` picks a sequence number
 * (exact, in window, just below, far away, wrapped), `kind` what it carries.
 */
export const hostileSegment: fc.Arbitrary<(v: PeerView, isn: number) => HostileSegment> = fc
  .record({
    kind: fc.constantFrom('data-overlap', 'data-ahead', 'data-far', 'rst-inwindow', 'rst-stale', 'rst-exact-old', 'syn', 'syn-ack', 'fin-ahead', 'ack-future', 'ack-ancient', 'zero-window', 'sack-out-of-range', 'urg', 'ts-old'),
    back: fc.integer({ min: 0, max: 3000 }),
    ahead: fc.integer({ min: 1, max: 200_000 }),
    len: fc.integer({ min: 1, max: 1400 }),
    far: fc.integer({ min: 0x10000000, max: 0x7fffffff }),
    junk: fc.nat(),
  })
  .map(({ kind, back, ahead, len, far, junk }) => (v: PeerView, isn: number): HostileSegment => {
    const off = (seq: number) => ((seq - isn - 1) >>> 0); // stream offset of a sequence number
    const base: HostileSegment = { what: kind, seq: v.sndNxt, ack: v.rcvNxt, flags: TCP_ACK, window: 65535, dataAt: -1, dataLen: 0, sackBlocks: null, tsval: null };
    switch (kind) {
      case 'data-overlap': {
        // A retransmit starting before RCV.NXT that overlaps new bytes: same content as the original.
        const seq = (v.sndNxt - Math.min(back, off(v.sndNxt))) >>> 0;
        return { ...base, seq, flags: TCP_ACK | TCP_PSH, dataAt: off(seq), dataLen: len };
      }
      case 'data-ahead': {
        const seq = (v.sndNxt + ahead) >>> 0;
        return { ...base, seq, flags: TCP_ACK, dataAt: off(seq), dataLen: len };
      }
      case 'data-far': {
        // Outside any window: must be answered with at most an ACK, never stored.
        const seq = (v.sndNxt + far) >>> 0;
        return { ...base, seq, dataAt: off(seq), dataLen: len };
      }
      case 'rst-inwindow':
        return { ...base, seq: (v.sndNxt + 1 + (ahead % 60_000)) >>> 0, flags: TCP_RST };
      case 'rst-stale':
        return { ...base, seq: (v.sndNxt - 1 - back) >>> 0, flags: TCP_RST | TCP_ACK };
      case 'rst-exact-old':
        return { ...base, seq: (v.sndNxt + far) >>> 0, flags: TCP_RST };
      case 'syn':
        return { ...base, seq: (v.sndNxt + (junk % 3 === 0 ? 0 : ahead)) >>> 0, flags: TCP_SYN };
      case 'syn-ack':
        return { ...base, seq: (v.sndNxt - back) >>> 0, flags: TCP_SYN | TCP_ACK };
      case 'fin-ahead':
        return { ...base, seq: (v.sndNxt + ahead) >>> 0, flags: TCP_FIN | TCP_ACK };
      case 'ack-future':
        return { ...base, ack: (v.rcvNxt + 1 + (junk % 1_000_000)) >>> 0 };
      case 'ack-ancient':
        return { ...base, ack: (v.rcvNxt - far) >>> 0 };
      case 'zero-window':
        return { ...base, window: 0 };
      case 'sack-out-of-range': {
        const a = (v.rcvNxt + ahead) >>> 0;
        const blocks = junk % 2 === 0 ? [a, (a - 10) >>> 0] : [(v.rcvNxt - far) >>> 0, (v.rcvNxt + far) >>> 0, a, (a + len) >>> 0];
        return { ...base, sackBlocks: blocks };
      }
      case 'urg':
        return { ...base, flags: TCP_ACK | TCP_URG | TCP_PSH, dataAt: off(v.sndNxt), dataLen: Math.min(len, 50) };
      case 'ts-old':
        return { ...base, tsval: 1, dataAt: off(v.sndNxt), dataLen: Math.min(len, 100) };
      default:
        return base;
    }
  });
