/**
 * The IPv6 side of fuzz-gen.ts (issue 9's generators, extended for issue
 * 19): a well-formed guest IPv6 frame (ICMPv6 echo, NDP NS and RS, UDP, TCP
 * SYN, a first fragment, UDP behind a destination-options header) with
 * exactly ONE field made wrong, every other checksum recomputed, and what
 * the stack must do with it (drop, and under which reason prefix).
 */
import fc from 'fast-check';
import { parseIPv6, solicitedNode, writeIPv6, type IPv6 } from '../../netstack/addr.js';
import { finishChecksum, sumBytes, sumPseudoHeader6 } from '../../netstack/checksum.js';
import { ETH_HEADER_LEN } from '../../netstack/ethernet.js';
import { ICMP6_ECHO_REQUEST, ICMP6_NEIGHBOR_SOLICIT, ICMP6_ROUTER_SOLICIT } from '../../netstack/icmp6.js';
import { IPPROTO_DSTOPTS, IPV6_HEADER_LEN, Ipv6Problem, walkIpv6Chain } from '../../netstack/ipv6.js';
import { TCP_SYN } from '../../netstack/tcp/header.js';
import type { FuzzFrame } from './fuzz-gen.js';
import { EXTERNAL6, frame6, fragment6, GUEST_LL, GW6, GW_LL, HOST6, icmp6Frame, PREFIX6, tcp6Frame, udp6, udp6Frame } from './frames6.js';

/** Garbage comes from an address of its own in the prefix (never re-teaching a healthy peer's MAC). */
export const FUZZ_SRC6: IPv6 = parseIPv6('fd6d:6f61:7400::77')!;
const FUZZ_MAC = 0x02aabbccdd77;
const IP = ETH_HEADER_LEN;
const L = ETH_HEADER_LEN + IPV6_HEADER_LEN; // the first header after the fixed one

type Kind6 = 'echo6' | 'ns' | 'rs' | 'udp6' | 'tcp6-syn' | 'frag6' | 'dstopts-udp6';
const KINDS6: readonly Kind6[] = ['echo6', 'ns', 'rs', 'udp6', 'tcp6-syn', 'frag6', 'dstopts-udp6'];

function sllOption(): number[] {
  return [1, 1, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x77];
}

function template(kind: Kind6, port: number, payloadLen: number): Uint8Array {
  const payload = new Uint8Array(payloadLen).map((_, i) => (i * 31 + port) & 0xff);
  const mac = { srcMac: FUZZ_MAC };
  switch (kind) {
    case 'echo6':
      return icmp6Frame(FUZZ_SRC6, GW6, ICMP6_ECHO_REQUEST, 0, port, payload, mac);
    case 'ns': {
      const body = new Uint8Array(24);
      writeIPv6(body, 0, GW6);
      body.set(sllOption(), 16);
      return icmp6Frame(FUZZ_SRC6, solicitedNode(GW6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, body, { ...mac, hopLimit: 255 });
    }
    case 'rs':
      return icmp6Frame(GUEST_LL, parseIPv6('ff02::2')!, ICMP6_ROUTER_SOLICIT, 0, 0, sllOption(), { ...mac, hopLimit: 255 });
    case 'udp6':
      return udp6Frame(FUZZ_SRC6, port, EXTERNAL6, 9, payload, mac);
    case 'tcp6-syn':
      return tcp6Frame(FUZZ_SRC6, EXTERNAL6, {
        srcPort: port, dstPort: 443, seq: port * 7919, ack: 0, flags: TCP_SYN, window: 64240,
        options: { mss: 1440, windowScale: 7, sackPermitted: true, timestamp: { value: port, echo: 0 } },
      });
    case 'frag6': {
      // The first 8-byte-aligned piece of a UDP datagram whose rest never comes.
      const u = udp6(FUZZ_SRC6, port, EXTERNAL6, 9, new Uint8Array(payloadLen + 16));
      const f = fragment6(FUZZ_SRC6, EXTERNAL6, 17, 0, true, port, u.subarray(0, 8 + (payloadLen & ~7)));
      f.set([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x77], 6);
      return f;
    }
    case 'dstopts-udp6': {
      const u = udp6(FUZZ_SRC6, port, EXTERNAL6, 9, payload);
      const p = new Uint8Array(8 + u.length);
      p.set([17, 0, 1, 4, 0, 0, 0, 0]);
      p.set(u, 8);
      return frame6({ src: FUZZ_SRC6, dst: EXTERNAL6, nextHeader: IPPROTO_DSTOPTS, payload: p, ...mac });
    }
  }
}

const addrAt = (f: Uint8Array, at: number): IPv6 =>
  String.fromCharCode(...Array.from({ length: 8 }, (_, i) => (f[at + 2 * i]! << 8) | f[at + 2 * i + 1]!)) as IPv6;

/** Recomputes the upper-layer checksum of an unfragmented packet (TCP, UDP, ICMPv6) over its own pseudo-header. */
export function fixChecksums6(f: Uint8Array): void {
  if (f.length < L || f[12] !== 0x86 || f[13] !== 0xdd) return;
  const plen = (f[IP + 4]! << 8) | f[IP + 5]!;
  if (L + plen > f.length) return;
  const payload = f.subarray(L, L + plen);
  const chain = walkIpv6Chain(payload, f[IP + 6]!, 40, false, false);
  if (chain instanceof Ipv6Problem || chain.fragment !== null) return;
  const at = chain.protocol === 6 ? 16 : chain.protocol === 17 ? 6 : chain.protocol === 58 ? 2 : -1;
  const l4 = L + chain.offset;
  const len = L + plen - l4;
  if (at < 0 || at + 2 > len) return;
  f[l4 + at] = f[l4 + at + 1] = 0;
  let c = finishChecksum(sumBytes(f, l4, len, sumPseudoHeader6(addrAt(f, IP + 8), addrAt(f, IP + 24), chain.protocol, len)));
  if (chain.protocol === 17 && c === 0) c = 0xffff;
  f[l4 + at] = c >> 8;
  f[l4 + at + 1] = c & 0xff;
}

const drop = (frame: Uint8Array, reasonPrefix: string) => ({ frame, mustDrop: true, reasonPrefix });
const maybe = (frame: Uint8Array) => ({ frame, mustDrop: false, reasonPrefix: '' });
const refix = (f: Uint8Array) => (fixChecksums6(f), f);
const upper = (k: Kind6) => (k === 'tcp6-syn' ? 'tcp' : k === 'udp6' || k === 'dstopts-udp6' ? 'udp' : k === 'frag6' ? 'frag' : 'icmp6');
const setAddr = (f: Uint8Array, at: number, a: IPv6) => writeIPv6(f, at, a);

const SPOOFED6: IPv6[] = [GW6, HOST6, GW_LL, PREFIX6, parseIPv6('ff02::1')!, parseIPv6('2001:db8::1')!, parseIPv6('::1')!, parseIPv6('fec0::1')!];

interface Mutation6 {
  name: string;
  applies(kind: Kind6): boolean;
  apply(f: Uint8Array, r: number, kind: Kind6): { frame: Uint8Array; mustDrop: boolean; reasonPrefix: string };
}

export const MUTATIONS6: readonly Mutation6[] = [
  {
    name: 'eth-dst-wrong-multicast',
    applies: () => true,
    apply: (f, r) => {
      f[0] = 0x01; f[1] = 0x00; f[2] = 0x5e; f[5] = r & 0xff;
      return drop(f, 'eth:multicast');
    },
  },
  {
    name: 'ip6-version',
    applies: () => true,
    apply: (f, r) => {
      f[IP] = (((6 + 1 + (r % 15)) % 16) << 4) | (f[IP]! & 0x0f);
      return drop(f, 'ipv6:bad-version');
    },
  },
  {
    name: 'ip6-truncated',
    applies: () => true,
    apply: (f, r) => drop(f.subarray(0, ETH_HEADER_LEN + (r % IPV6_HEADER_LEN)), 'ipv6:truncated'),
  },
  {
    name: 'ip6-payload-length-long',
    applies: () => true,
    apply: (f, r) => {
      const t = f.length - L + 1 + (r % 2000);
      f[IP + 4] = (t >> 8) & 0xff; f[IP + 5] = t & 0xff;
      return drop(f, 'ipv6:bad-payload-length');
    },
  },
  {
    name: 'ip6-payload-length-short',
    applies: () => true,
    apply: (f, r) => {
      // Trailing bytes become Ethernet padding; the layers above see a shorter packet.
      const t = r % Math.max(1, f.length - L);
      f[IP + 4] = t >> 8; f[IP + 5] = t & 0xff;
      return maybe(refix(f));
    },
  },
  {
    name: 'ip6-src-spoofed',
    applies: () => true,
    apply: (f, r) => {
      setAddr(f, IP + 8, SPOOFED6[r % SPOOFED6.length]!);
      return drop(refix(f), 'ipv6:');
    },
  },
  {
    name: 'ip6-dst-other-group',
    applies: (k) => k !== 'ns' && k !== 'rs',
    apply: (f, r) => {
      // A group the gateway is not in, with the Ethernet address it maps to.
      const g = parseIPv6(`ff05::${((r % 0xfffe) + 1).toString(16)}`)!;
      setAddr(f, IP + 24, g);
      f[0] = 0x33; f[1] = 0x33; f[2] = 0; f[3] = 0; f[4] = g.charCodeAt(7) >> 8; f[5] = g.charCodeAt(7) & 0xff;
      return drop(refix(f), 'ipv6:multicast');
    },
  },
  {
    name: 'ip6-next-header',
    applies: () => true,
    apply: (f, r) => {
      f[IP + 6] = [2, 4, 41, 47, 50, 51, 99, 103, 132, 253, 255][r % 11]!;
      return drop(f, 'ipv6:unsupported-next-header');
    },
  },
  {
    name: 'ip6-hop-limit',
    applies: (k) => k !== 'ns' && k !== 'rs',
    apply: (f, r) => {
      f[IP + 7] = r % 2; // 0 or 1: we route nothing; still ours to answer
      return maybe(f);
    },
  },
  {
    name: 'l4-checksum6',
    applies: (k) => k !== 'frag6',
    apply: (f, r, k) => {
      const at = (k === 'dstopts-udp6' ? L + 8 : L) + (k === 'tcp6-syn' ? 16 : upper(k) === 'udp' ? 6 : 2);
      const right = (f[at]! << 8) | f[at + 1]!;
      let wrong = right ^ (1 + (r % 0xfffe));
      if (wrong === 0) wrong = right === 1 ? 2 : 1;
      f[at] = wrong >> 8; f[at + 1] = wrong & 0xff;
      return drop(f, `${upper(k)}:bad-checksum`);
    },
  },
  {
    name: 'udp6-zero-checksum',
    applies: (k) => k === 'udp6',
    apply: (f) => {
      f[L + 6] = 0; f[L + 7] = 0;
      return drop(f, 'udp:zero-checksum-ipv6');
    },
  },
  {
    name: 'ndp-hop-limit',
    applies: (k) => k === 'ns' || k === 'rs',
    apply: (f, r) => {
      f[IP + 7] = r % 255; // anything but 255: a router forwarded it (RFC 4861 §7.1)
      return drop(f, 'ndp:invalid');
    },
  },
  {
    name: 'ndp-option-zero-length',
    applies: (k) => k === 'ns' || k === 'rs',
    apply: (f, _r, k) => {
      f[L + 8 + (k === 'ns' ? 16 : 0) + 1] = 0;
      return drop(refix(f), 'ndp:bad-option');
    },
  },
  {
    name: 'ext-option-action',
    applies: (k) => k === 'dstopts-udp6',
    apply: (f, r) => {
      // An unknown option whose high bits say: discard (01), discard and answer (10, 11).
      f[L + 2] = (0x40 * (1 + (r % 3))) | 0x1e;
      return drop(f, 'ipv6:unknown-option');
    },
  },
  {
    name: 'ext-length-overrun',
    applies: (k) => k === 'dstopts-udp6',
    apply: (f, r) => {
      f[L + 1] = 200 + (r % 56);
      return drop(f, 'ipv6:truncated-extension-header');
    },
  },
  {
    name: 'ext-routing-segments-left',
    applies: (k) => k === 'dstopts-udp6',
    apply: (f, r) => {
      // The destination-options header becomes a routing header with segments left: for another address.
      f[IP + 6] = 43;
      f[L + 2] = r % 256; f[L + 3] = 1 + (r % 255);
      return drop(f, 'ipv6:routing-header');
    },
  },
  {
    name: 'frag6-too-big',
    applies: (k) => k === 'frag6',
    apply: (f) => {
      // The last offset the field can carry: with 8 or more bytes the datagram passes 65535 (the ping of death).
      f[L + 2] = 0xff; f[L + 3] = 0xf8 | 1;
      return drop(f, 'frag:too-big');
    },
  },
  {
    name: 'frag6-odd-length',
    applies: (k) => k === 'frag6',
    apply: (f, r) => {
      const cut = 1 + (r % 7);
      const g = f.slice(0, f.length - cut);
      g[L + 2] = 0; g[L + 3] = 0x08 | 1; // a middle fragment (the first is held to RFC 7112 before its length)
      const plen = g.length - L;
      g[IP + 4] = plen >> 8; g[IP + 5] = plen & 0xff;
      return drop(g, 'frag:bad-length');
    },
  },
  {
    name: 'frag6-tiny-first',
    applies: (k) => k === 'frag6',
    apply: (f) => {
      // A first fragment that ends before the UDP header does (RFC 7112).
      const g = f.slice(0, L + 8);
      g[IP + 4] = 0; g[IP + 5] = 8;
      return drop(g, 'ipv6:first-fragment-incomplete');
    },
  },
];

export function buildAlmostValid6(kindIndex: number, mutationIndex: number, r: number, port: number, payloadLen: number): FuzzFrame {
  const kind = KINDS6[kindIndex % KINDS6.length]!;
  const candidates = MUTATIONS6.filter((m) => m.applies(kind));
  const m = candidates[mutationIndex % candidates.length]!;
  const out = m.apply(template(kind, port, payloadLen), r, kind);
  return { ...out, mutation: `${kind}/${m.name}` };
}

export const KIND6_COUNT = KINDS6.length;

export const almostValidFrame6: fc.Arbitrary<FuzzFrame> = fc
  .tuple(fc.nat(), fc.nat(), fc.nat(), fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 1200 }))
  .map(([k, m, r, port, len]) => buildAlmostValid6(k, m, r, port, len));
