import { describe, expect, it } from 'vitest';
import type { OutputBatch, PendingTcp, StackConfig, StackEvents, UdpDatagram } from '../../netstack/api.js';
import { formatIPv6, ipv6, parseIPv6, readMac, solicitedNode, type IPv6 } from '../../netstack/addr.js';
import { ManualClock } from '../../netstack/clock.js';
import { ParseError } from '../../netstack/errors.js';
import { ETHERTYPE_IPV6, parseEthernet } from '../../netstack/ethernet.js';
import {
  ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_NEIGHBOR_ADVERT, ICMP6_NEIGHBOR_SOLICIT, ICMP6_PACKET_TOO_BIG,
  ICMP6_PARAM_PROBLEM, ICMP6_ROUTER_ADVERT, ICMP6_ROUTER_SOLICIT, parseIcmp6,
} from '../../netstack/icmp6.js';
import { IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_ICMPV6, IPPROTO_ROUTING, parseIpv6, walkIpv6Chain, type Ipv6Chain } from '../../netstack/ipv6.js';
import {
  NA_OVERRIDE, NA_ROUTER, NA_SOLICITED, NDP_OPT_MTU, NDP_OPT_PREFIX_INFO, NDP_OPT_RDNSS, NDP_OPT_SOURCE_LL, NDP_OPT_TARGET_LL,
  parseNeighborMessage, readRouterAdvertOptions,
} from '../../netstack/ndp.js';
import { createStack, DEFAULT_STACK_CONFIG, type Stack } from '../../netstack/stack.js';
import { parseTcp, TCP_ACK, TCP_RST, TCP_SYN } from '../../netstack/tcp/header.js';
import { parseUdp } from '../../netstack/udp.js';
import { GUEST_MAC, GW_MAC } from '../support/frames.js';
import {
  ALL_NODES, ALL_ROUTERS, EXTERNAL6, frame6, fragment6, fragments6, GUEST6, GUEST_LL, GW6, GW_LL, HOST6, icmp6Frame, IPV6_CONFIG,
  PREFIX6, tcp6Frame, udp6, udp6Frame,
} from '../support/frames6.js';

interface Harness {
  stack: Stack;
  clock: ManualClock;
  out: Uint8Array[];
  syns: PendingTcp[];
  udp: UdpDatagram[];
  drops: Record<string, number>;
}

function harness(config: Partial<StackConfig> = {}, events: Partial<StackEvents> = {}): Harness {
  const clock = new ManualClock(10_000);
  const out: Uint8Array[] = [];
  const syns: PendingTcp[] = [];
  const udp: UdpDatagram[] = [];
  const stack = createStack(
    { ...DEFAULT_STACK_CONFIG, ipv6: IPV6_CONFIG, ...config },
    {
      onTcpSyn: (p) => syns.push(p),
      onUdp: (d) => udp.push({ ...d, payload: d.payload.slice() }),
      ...events,
      onOutput: (b: OutputBatch) => b.forEachFrame((f) => out.push(f.slice())),
    },
    clock,
    (fn) => fn(),
  );
  return { stack, clock, out, syns, udp, drops: stack.stats.drops };
}

/** A frame the stack sent: Ethernet, IPv6, where the upper layer starts. */
function sent(frame: Uint8Array) {
  const eth = parseEthernet(frame);
  if (eth instanceof ParseError) throw new Error(eth.reason);
  expect(eth.etherType).toBe(ETHERTYPE_IPV6);
  const ip = parseIpv6(eth.payload);
  if (ip instanceof ParseError) throw new Error(ip.reason);
  const chain = walkIpv6Chain(ip.payload, ip.nextHeader, 40, false, false) as Ipv6Chain;
  return { eth, ip, chain, upper: ip.payload.subarray(chain.offset) };
}

function icmpOut(frame: Uint8Array) {
  const s = sent(frame);
  expect(s.chain.protocol).toBe(IPPROTO_ICMPV6);
  const m = parseIcmp6(s.upper, s.ip.src, s.ip.dst);
  if (m instanceof ParseError) throw new Error(m.reason);
  return { ...s, m };
}

/** Learn the guest's MAC for GUEST6 as a real guest would (it speaks first). */
function hello(h: Harness): void {
  h.stack.input([icmp6Frame(GUEST6, GW6, ICMP6_ECHO_REQUEST, 0, 1, [1, 2, 3, 4])]);
  h.out.length = 0;
}

const nsBody = (target: IPv6, sll?: number) => {
  const b = new Uint8Array(16 + (sll === undefined ? 0 : 8));
  for (let i = 0; i < 8; i++) { b[2 * i] = target.charCodeAt(i) >> 8; b[2 * i + 1] = target.charCodeAt(i) & 0xff; }
  if (sll !== undefined) {
    b[16] = NDP_OPT_SOURCE_LL; b[17] = 1;
    for (let i = 0; i < 6; i++) b[18 + i] = Math.floor(sll / 2 ** (8 * (5 - i))) % 256;
  }
  return b;
};

describe('Stack IPv6: off', () => {
  it('without an ipv6 config every IPv6 frame is dropped and counted as before', () => {
    const h = harness({ ipv6: undefined });
    h.stack.input([icmp6Frame(GUEST6, GW6, ICMP6_ECHO_REQUEST, 0, 1, [1])]);
    expect(h.out).toHaveLength(0);
    expect(h.drops['ipv6:unsupported']).toBe(1);
  });

  it('refuses a config whose gateway lies outside the prefix, or an MTU below 1280', () => {
    expect(() => harness({ ipv6: { ...IPV6_CONFIG, gatewayIp: EXTERNAL6 } })).toThrow(/ipv6.gatewayIp/);
    expect(() => harness({ mtu: 1000 })).toThrow(/1280/);
    expect(() => harness({ ipv6: { ...IPV6_CONFIG, hostIp: GW6 } })).toThrow(/distinct/);
  });
});

describe('Stack IPv6: NDP (RFC 4861)', () => {
  it('answers NS for each gateway address with a solicited, router, override NA carrying the gateway MAC', () => {
    for (const target of [GW_LL, GW6, HOST6]) {
      const h = harness();
      h.stack.input([icmp6Frame(GUEST_LL, solicitedNode(target), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(target, GUEST_MAC), { hopLimit: 255 })]);
      expect(h.out, formatIPv6(target)).toHaveLength(1);
      const { eth, ip, m } = icmpOut(h.out[0]!);
      expect(eth.dst).toBe(GUEST_MAC);
      expect(ip).toMatchObject({ src: target, dst: GUEST_LL, hopLimit: 255 });
      expect(m.type).toBe(ICMP6_NEIGHBOR_ADVERT);
      expect(m.rest >>> 0).toBe((NA_ROUTER | NA_SOLICITED | NA_OVERRIDE) >>> 0);
      const na = parseNeighborMessage(m.body);
      if (na instanceof ParseError) throw new Error(na.reason);
      expect(na.target).toBe(target);
      expect(na.options.targetLinkAddr).toBe(GW_MAC);
    }
  });

  it('answers a DAD probe for a gateway address with an NA to all-nodes (the guest must not take it)', () => {
    const h = harness();
    h.stack.input([icmp6Frame(ipv6(0, 0, 0, 0, 0, 0, 0, 0), solicitedNode(GW6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GW6), { hopLimit: 255 })]);
    const { eth, ip, m } = icmpOut(h.out[0]!);
    expect(eth.dst).toBe(0x333300000001);
    expect(ip.dst).toBe(ALL_NODES);
    expect(m.rest & NA_SOLICITED).toBe(0);
  });

  it('drops NS for other addresses, NS not at hop limit 255, and DAD probes with a source link-layer option', () => {
    const h = harness();
    h.stack.input([
      icmp6Frame(GUEST_LL, solicitedNode(GUEST6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GUEST6), { hopLimit: 255 }),
      icmp6Frame(GUEST_LL, GW_LL, ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GUEST6), { hopLimit: 255 }),
      icmp6Frame(GUEST_LL, solicitedNode(GW6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GW6), { hopLimit: 64 }),
      icmp6Frame(ipv6(0, 0, 0, 0, 0, 0, 0, 0), solicitedNode(GW6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GW6, GUEST_MAC), { hopLimit: 255 }),
    ]);
    expect(h.out).toHaveLength(0);
    expect(h.drops['ipv6:multicast']).toBe(1); // a group the gateway is not in
    expect(h.drops['ndp:not-ours']).toBe(1);
    expect(h.drops['ndp:invalid']).toBe(2);
  });

  it('answers RS with an RA from its link-local address: prefix (L, A), MTU, RDNSS', () => {
    const h = harness();
    const rs = new Uint8Array(8);
    rs[0] = NDP_OPT_SOURCE_LL; rs[1] = 1;
    rs.set([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], 2);
    h.stack.input([icmp6Frame(GUEST_LL, ALL_ROUTERS, ICMP6_ROUTER_SOLICIT, 0, 0, rs, { hopLimit: 255 })]);
    expect(h.out).toHaveLength(1);
    const { ip, m } = icmpOut(h.out[0]!);
    expect(ip).toMatchObject({ src: GW_LL, dst: GUEST_LL, hopLimit: 255 });
    expect(m.type).toBe(ICMP6_ROUTER_ADVERT);
    expect(m.rest >>> 24).toBe(64); // cur hop limit
    expect(m.rest & 0xffff).toBe(1800); // router lifetime: a default router
    const opts = readRouterAdvertOptions(m.body);
    if (opts instanceof ParseError) throw new Error(opts.reason);
    const byType = new Map(opts.map((o) => [o.type, o.bytes]));
    expect(readMac(byType.get(NDP_OPT_SOURCE_LL)!, 2)).toBe(GW_MAC);
    const mtu = byType.get(NDP_OPT_MTU)!;
    expect((mtu[4]! << 24) | (mtu[5]! << 16) | (mtu[6]! << 8) | mtu[7]!).toBe(1500);
    const pi = byType.get(NDP_OPT_PREFIX_INFO)!;
    expect(pi[2]).toBe(64);
    expect(pi[3]! & 0xc0).toBe(0xc0); // on-link, autonomous
    expect(formatIPv6(String.fromCharCode(...Array.from({ length: 8 }, (_, i) => (pi[16 + 2 * i]! << 8) | pi[17 + 2 * i]!)) as IPv6)).toBe(formatIPv6(PREFIX6));
    const rdnss = byType.get(NDP_OPT_RDNSS)!;
    expect(rdnss.length).toBe(24);
    expect(formatIPv6(String.fromCharCode(...Array.from({ length: 8 }, (_, i) => (rdnss[8 + 2 * i]! << 8) | rdnss[9 + 2 * i]!)) as IPv6)).toBe(formatIPv6(GW6));
  });

  it('answers RS from :: with a multicast RA, at most one per 3 s', () => {
    const h = harness();
    const rs = () => icmp6Frame(ipv6(0, 0, 0, 0, 0, 0, 0, 0), ALL_ROUTERS, ICMP6_ROUTER_SOLICIT, 0, 0, new Uint8Array(0), { hopLimit: 255 });
    h.stack.input([rs(), rs(), rs()]);
    expect(h.out).toHaveLength(1);
    expect(icmpOut(h.out[0]!).ip.dst).toBe(ALL_NODES);
    expect(h.drops['ndp:ra-rate-limited']).toBe(2);
    h.clock.advance(3000);
    h.stack.input([rs()]);
    expect(h.out).toHaveLength(2);
  });

  it('a guest NA or RA claiming a gateway address changes nothing: the gateway still answers with its own MAC', () => {
    const h = harness();
    const attacker = 0x02dead00beef;
    const naBody = new Uint8Array(24);
    naBody.set(nsBody(GW6).subarray(0, 16));
    naBody[16] = NDP_OPT_TARGET_LL; naBody[17] = 1; naBody.set([0x02, 0xde, 0xad, 0x00, 0xbe, 0xef], 18);
    h.stack.input([
      icmp6Frame(GUEST_LL, ALL_NODES, ICMP6_NEIGHBOR_ADVERT, 0, NA_OVERRIDE >>> 0, naBody, { hopLimit: 255, srcMac: attacker }),
      icmp6Frame(GUEST_LL, ALL_NODES, ICMP6_ROUTER_ADVERT, 0, 0x40000708, new Uint8Array(8), { hopLimit: 255, srcMac: attacker }),
      // And a packet whose source is a gateway address: spoofed.
      icmp6Frame(GW6, ALL_NODES, ICMP6_ECHO_REQUEST, 0, 0, [1], { srcMac: attacker }),
    ]);
    expect(h.drops['ndp:spoofed-target']).toBe(1);
    expect(h.drops['ndp:router-advert-from-guest']).toBe(1);
    expect(h.drops['ipv6:spoofed-source']).toBe(1);
    h.stack.input([icmp6Frame(GUEST_LL, solicitedNode(GW6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GW6, GUEST_MAC), { hopLimit: 255 })]);
    const na = parseNeighborMessage(icmpOut(h.out.at(-1)!).m.body) as { options: { targetLinkAddr: number } };
    expect(na.options.targetLinkAddr).toBe(GW_MAC);
  });

  it('an NS flood from thousands of source addresses keeps the neighbour table at its bound', () => {
    const h = harness({ ipv6: { ...IPV6_CONFIG, maxNeighbors: 64 } });
    const frames: Uint8Array[] = [];
    for (let i = 0; i < 5000; i++) {
      const src = ipv6(0xfd6d, 0x6f61, 0x7400, 0, 0x1234, i >> 16, i & 0xffff, 7);
      frames.push(icmp6Frame(src, solicitedNode(GW6), ICMP6_NEIGHBOR_SOLICIT, 0, 0, nsBody(GW6, 0x020000000000 + i), { hopLimit: 255 }));
    }
    h.stack.input(frames);
    expect(h.out).toHaveLength(5000);
    expect(h.stack.tableSizes().neighbors6).toBe(64);
  });
});

describe('Stack IPv6: ICMPv6 (RFC 4443)', () => {
  it('answers echo at the gateway, its link-local address and the host alias; not for the world', () => {
    const h = harness();
    for (const dst of [GW6, GW_LL, HOST6]) {
      const src = dst === GW_LL ? GUEST_LL : GUEST6;
      h.stack.input([icmp6Frame(src, dst, ICMP6_ECHO_REQUEST, 0, 0x12340007, [9, 8, 7])]);
      const { ip, m } = icmpOut(h.out.at(-1)!);
      expect(ip).toMatchObject({ src: dst, dst: src });
      expect(m).toMatchObject({ type: ICMP6_ECHO_REPLY, code: 0, rest: 0x12340007 });
      expect([...m.body]).toEqual([9, 8, 7]);
    }
    const before = h.out.length;
    h.stack.input([icmp6Frame(GUEST6, EXTERNAL6, ICMP6_ECHO_REQUEST, 0, 1, [1])]);
    expect(h.out.length).toBe(before);
    expect(h.drops['icmp6:unhandled']).toBe(1);
  });

  it('answers an unknown next header with Parameter Problem code 1 pointing at byte 6, quoting the packet', () => {
    const h = harness();
    hello(h);
    const bad = frame6({ src: GUEST6, dst: EXTERNAL6, nextHeader: 50, payload: new Uint8Array(16) });
    h.stack.input([bad]);
    const { ip, m } = icmpOut(h.out[0]!);
    expect(ip).toMatchObject({ src: EXTERNAL6, dst: GUEST6 });
    expect(m).toMatchObject({ type: ICMP6_PARAM_PROBLEM, code: 1, rest: 6 });
    expect([...m.body]).toEqual([...bad.subarray(14)]);
    expect(h.drops['ipv6:unsupported-next-header']).toBe(1);
  });

  it('refuses a routing header with segments left (code 0 at its type field), and passes a spent one', () => {
    const h = harness();
    hello(h);
    const rh = (segmentsLeft: number) => {
      const u = udp6(GUEST6, 1000, EXTERNAL6, 53, new Uint8Array([1, 2, 3]));
      const p = new Uint8Array(24 + u.length);
      p.set([17, 2, 0, segmentsLeft], 0);
      p.set(u, 24);
      return frame6({ src: GUEST6, dst: EXTERNAL6, nextHeader: IPPROTO_ROUTING, payload: p });
    };
    h.stack.input([rh(1)]);
    expect(icmpOut(h.out[0]!).m).toMatchObject({ type: ICMP6_PARAM_PROBLEM, code: 0, rest: 42 });
    expect(h.drops['ipv6:routing-header']).toBe(1);
    expect(h.udp).toHaveLength(0);
    h.stack.input([rh(0)]);
    expect(h.udp).toHaveLength(1);
  });

  it('sends at most 10 ICMPv6 errors at once, then refills at 10 per second', () => {
    const h = harness();
    hello(h);
    const bad = () => frame6({ src: GUEST6, dst: EXTERNAL6, nextHeader: 99, payload: new Uint8Array(8) });
    h.stack.input(Array.from({ length: 50 }, bad));
    expect(h.out).toHaveLength(10);
    expect(h.drops['ipv6:unsupported-next-header']).toBe(50);
    h.clock.advance(500);
    h.stack.input(Array.from({ length: 50 }, bad));
    expect(h.out).toHaveLength(15);
  });

  it('answers a packet larger than the link MTU with Packet Too Big carrying the MTU', () => {
    const h = harness();
    hello(h);
    h.stack.input([udp6Frame(GUEST6, 1000, EXTERNAL6, 9, new Uint8Array(1600))]);
    const { m } = icmpOut(h.out[0]!);
    expect(m).toMatchObject({ type: ICMP6_PACKET_TOO_BIG, code: 0, rest: 1500 });
    expect(m.body.length).toBe(1280 - 48);
    expect(h.udp).toHaveLength(0);
  });

  it('drops packets from outside the prefix and from multicast sources, and those to other addresses of the link', () => {
    const h = harness();
    h.stack.input([
      udp6Frame(EXTERNAL6, 1, GW6, 53, new Uint8Array(4)),
      udp6Frame(ALL_NODES, 1, GW6, 53, new Uint8Array(4)),
      udp6Frame(GUEST6, 1, parseIPv6('fd6d:6f61:7400::77')!, 53, new Uint8Array(4)),
    ]);
    expect(h.drops).toMatchObject({ 'ipv6:source-outside-prefix': 1, 'ipv6:multicast-source': 1, 'ipv6:not-for-us': 1 });
    expect(h.udp).toHaveLength(0);
  });
});

describe('Stack IPv6: fragments (RFC 8200 §4.5)', () => {
  const big = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff);

  it('reassembles a UDP datagram from fragments in any order, and an atomic fragment', () => {
    const h = harness();
    const frags = fragments6(GUEST6, EXTERNAL6, 17, udp6(GUEST6, 5000, EXTERNAL6, 9, big), 1232, 77);
    h.stack.input([frags[2]!, frags[0]!, frags[1]!]);
    expect(h.udp).toHaveLength(1);
    expect(h.udp[0]).toMatchObject({ src: GUEST6, srcPort: 5000, dst: EXTERNAL6, dstPort: 9 });
    expect(h.udp[0]!.payload).toEqual(big);
    h.stack.input([fragment6(GUEST6, EXTERNAL6, 17, 0, false, 78, udp6(GUEST6, 5001, EXTERNAL6, 9, new Uint8Array([5])))]);
    expect(h.udp).toHaveLength(2);
    expect(h.stack.tableSizes().fragmentDatagrams).toBe(0);
  });

  it('drops the whole datagram on an overlap (RFC 5722)', () => {
    const h = harness();
    const u = udp6(GUEST6, 5000, EXTERNAL6, 9, big);
    h.stack.input([
      fragment6(GUEST6, EXTERNAL6, 17, 0, true, 5, u.subarray(0, 1232)),
      fragment6(GUEST6, EXTERNAL6, 17, 2456, false, 5, u.subarray(2456)),
      fragment6(GUEST6, EXTERNAL6, 17, 1224, true, 5, u.subarray(1224, 2456)),
    ]);
    expect(h.drops['frag:overlap']).toBe(1);
    expect(h.udp).toHaveLength(0);
    expect(h.stack.tableSizes().fragmentBytes).toBe(0);
  });

  it('refuses a first fragment that does not hold the whole header chain (RFC 7112: tiny fragments)', () => {
    const h = harness();
    hello(h);
    const u = udp6(GUEST6, 5000, EXTERNAL6, 9, big);
    // Destination options, then the UDP header cut after 0 bytes: the first fragment ends inside the chain.
    const chain = new Uint8Array(8 + u.length);
    chain.set([17, 0, 1, 4, 0, 0, 0, 0]);
    chain.set(u, 8);
    h.stack.input([fragment6(GUEST6, EXTERNAL6, IPPROTO_DSTOPTS, 0, true, 9, chain.subarray(0, 8))]);
    expect(h.drops['ipv6:first-fragment-incomplete']).toBe(1);
    expect(icmpOut(h.out[0]!).m).toMatchObject({ type: ICMP6_PARAM_PROBLEM, code: 3 });
    // TCP whose header does not fit the first fragment.
    h.stack.input([fragment6(GUEST6, EXTERNAL6, 6, 0, true, 10, new Uint8Array(16))]);
    expect(h.drops['ipv6:first-fragment-incomplete']).toBe(2);
    expect(h.stack.tableSizes().fragmentDatagrams).toBe(0);
  });

  it('holds at most maxDatagrams datagrams in reassembly, and forgets them after the timeout', () => {
    const h = harness({ fragments: { maxBytes: 1 << 20, maxDatagrams: 4, timeoutMs: 1000 } });
    const frames = Array.from({ length: 20 }, (_, i) => fragment6(GUEST6, EXTERNAL6, 17, 8, true, i, new Uint8Array(64)));
    h.stack.input(frames);
    expect(h.stack.tableSizes().fragmentDatagrams).toBe(4);
    expect(h.drops['frag:limit']).toBe(16);
    h.clock.advance(1001);
    h.stack.advance();
    expect(h.stack.tableSizes().fragmentDatagrams).toBe(0);
  });
});

describe('Stack IPv6: UDP', () => {
  it('raises guest datagrams with IPv6 tuples and sends replies back, fragmented above the MTU', () => {
    const h = harness();
    h.stack.input([udp6Frame(GUEST6, 4444, EXTERNAL6, 53, new Uint8Array([1, 2, 3]))]);
    expect(h.udp[0]).toMatchObject({ src: GUEST6, srcPort: 4444, dst: EXTERNAL6, dstPort: 53 });
    h.stack.sendUdp(EXTERNAL6, 53, GUEST6, 4444, new Uint8Array([4, 5]));
    const s = sent(h.out[0]!);
    expect(s.eth.dst).toBe(GUEST_MAC);
    const u = parseUdp(s.upper, s.ip.src, s.ip.dst);
    if (u instanceof ParseError) throw new Error(u.reason);
    expect(u).toMatchObject({ srcPort: 53, dstPort: 4444 });
    // 4000 bytes at MTU 1500: three fragments that the stack's own reassembler puts back together.
    const payload = Uint8Array.from({ length: 4000 }, (_, i) => i & 0xff);
    h.out.length = 0;
    h.stack.sendUdp(EXTERNAL6, 53, GUEST6, 4444, payload);
    expect(h.out).toHaveLength(3);
    for (const f of h.out) {
      expect(f.length - 14).toBeLessThanOrEqual(1500);
      expect(sent(f).chain.protocol).toBe(IPPROTO_FRAGMENT);
    }
    // Put back together in offset order, the datagram's checksum holds over the whole.
    const whole = new Uint8Array(8 + payload.length);
    for (const f of h.out) {
      const { ip, chain } = sent(f);
      whole.set(ip.payload.subarray(chain.fragment!.dataOffset), chain.fragment!.offset);
    }
    const again = parseUdp(whole, EXTERNAL6, GUEST6);
    if (again instanceof ParseError) throw new Error(again.reason);
    expect(again.payload).toEqual(payload);
  });

  it('refuses a UDP datagram with a zero checksum (RFC 8200 §8.1)', () => {
    const h = harness();
    const f = udp6Frame(GUEST6, 1, EXTERNAL6, 9, new Uint8Array(4));
    f[14 + 40 + 6] = 0;
    f[14 + 40 + 7] = 0;
    h.stack.input([f]);
    expect(h.drops['udp:zero-checksum-ipv6']).toBe(1);
  });
});

describe('Stack IPv6: TCP (the one TCP implementation)', () => {
  it('raises a SYN with IPv6 tuple; accept answers SYN-ACK with MSS = MTU - 60; unknown segments get RST', () => {
    const h = harness();
    hello(h);
    h.stack.input([tcp6Frame(GUEST6, EXTERNAL6, {
      srcPort: 40000, dstPort: 443, seq: 1000, ack: 0, flags: TCP_SYN, window: 65535,
      options: { mss: 1440, windowScale: 7, sackPermitted: true, timestamp: null },
    })]);
    expect(h.syns).toHaveLength(1);
    expect(h.syns[0]!.syn).toMatchObject({ src: GUEST6, dst: EXTERNAL6, srcPort: 40000, dstPort: 443, mss: 1440 });
    const sock = h.syns[0]!.accept({ onData() {}, onEnd() {}, onDrain() {}, onClose() {} });
    const s = sent(h.out.at(-1)!);
    expect(s.ip).toMatchObject({ src: EXTERNAL6, dst: GUEST6 });
    const synAck = parseTcp(s.upper, s.ip.src, s.ip.dst);
    if (synAck instanceof ParseError) throw new Error(synAck.reason);
    expect(synAck.flags).toBe(TCP_SYN | TCP_ACK);
    expect(synAck.options.mss).toBe(1500 - 60);
    // Data on the connection arrives at onData.
    const got: number[] = [];
    sock.pause();
    sock.resume();
    h.stack.input([tcp6Frame(GUEST6, EXTERNAL6, { srcPort: 40000, dstPort: 443, seq: 1001, ack: synAck.seq + 1, flags: TCP_ACK, window: 65535 }, new Uint8Array([1, 2, 3]))]);
    expect(sock.state).toBe('ESTABLISHED');
    void got;
    // A segment for no connection: RST from the address it was for.
    h.out.length = 0;
    h.stack.input([tcp6Frame(GUEST6, EXTERNAL6, { srcPort: 40001, dstPort: 443, seq: 5, ack: 9, flags: TCP_ACK, window: 100 })]);
    const r = sent(h.out[0]!);
    const rst = parseTcp(r.upper, r.ip.src, r.ip.dst);
    if (rst instanceof ParseError) throw new Error(rst.reason);
    expect(rst.flags & TCP_RST).toBe(TCP_RST);
  });

  it('keeps IPv4 and IPv6 connections apart on the same ports', () => {
    const h = harness();
    hello(h);
    const syn = { srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TCP_SYN, window: 1000 };
    h.stack.input([tcp6Frame(GUEST6, EXTERNAL6, syn)]);
    expect(h.syns).toHaveLength(1);
    expect(h.stack.tableSizes().heldSyns).toBe(1);
    expect(typeof h.syns[0]!.syn.src).toBe('string');
  });
});


describe('Stack IPv6: stateless DHCPv6 (RFC 8415 Information-request)', () => {
  const ALL_DHCP = parseIPv6('ff02::1:2')!;
  const infoRequest = (type = 11, extra: number[] = []) =>
    new Uint8Array([type, 0xab, 0xcd, 0xef, 0, 1, 0, 10, 0, 3, 0, 1, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0, 6, 0, 4, 0, 23, 0, 24, ...extra]);

  it('answers from the link-local address with the client id, our DUID, DNS servers, search list and refresh time', () => {
    const h = harness({ searchDomains: ['corp.example', 'example.org'] });
    h.stack.input([udp6Frame(GUEST_LL, 546, ALL_DHCP, 547, infoRequest())]);
    expect(h.out).toHaveLength(1);
    const s = sent(h.out[0]!);
    expect(s.ip).toMatchObject({ src: GW_LL, dst: GUEST_LL });
    const u = parseUdp(s.upper, s.ip.src, s.ip.dst);
    if (u instanceof ParseError) throw new Error(u.reason);
    expect(u).toMatchObject({ srcPort: 547, dstPort: 546 });
    const m = u.payload;
    expect([...m.subarray(0, 4)]).toEqual([7, 0xab, 0xcd, 0xef]);
    const opts = new Map<number, Uint8Array>();
    for (let i = 4; i < m.length; ) {
      const code = (m[i]! << 8) | m[i + 1]!;
      const len = (m[i + 2]! << 8) | m[i + 3]!;
      opts.set(code, m.subarray(i + 4, i + 4 + len));
      i += 4 + len;
    }
    expect([...opts.get(1)!]).toEqual([0, 3, 0, 1, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    expect([...opts.get(2)!]).toEqual([0, 3, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
    expect(opts.get(23)!.length).toBe(16);
    expect(Buffer.from(opts.get(24)!).toString('latin1')).toBe('\x04corp\x07example\x00\x07example\x03org\x00');
    expect([...opts.get(32)!]).toEqual([0, 1, 0x51, 0x80]);
  });

  it('the RA says "other configuration" (O flag) so that guests ask', () => {
    const h = harness();
    h.stack.input([icmp6Frame(GUEST_LL, ALL_ROUTERS, ICMP6_ROUTER_SOLICIT, 0, 0, new Uint8Array(0), { hopLimit: 255 })]);
    expect((icmpOut(h.out[0]!).m.rest >>> 16) & 0x40).toBe(0x40);
  });

  it('refuses Solicit (no stateful DHCPv6), another server id, IA options, truncated options, a global source', () => {
    const h = harness();
    h.stack.input([
      udp6Frame(GUEST_LL, 546, ALL_DHCP, 547, infoRequest(1)),
      udp6Frame(GUEST_LL, 546, ALL_DHCP, 547, infoRequest(11, [0, 2, 0, 10, 0, 3, 0, 1, 1, 2, 3, 4, 5, 6])),
      udp6Frame(GUEST_LL, 546, ALL_DHCP, 547, infoRequest(11, [0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])),
      udp6Frame(GUEST_LL, 546, ALL_DHCP, 547, infoRequest(11, [0, 24, 0, 9, 1])),
      udp6Frame(GUEST6, 546, GW6, 547, infoRequest()),
    ]);
    expect(h.out).toHaveLength(0);
    expect(h.drops).toMatchObject({
      'dhcp6:stateful-unsupported': 1, 'dhcp6:not-our-server-id': 1, 'dhcp6:ia-in-information-request': 1, 'dhcp6:truncated': 1, 'dhcp6:not-link-local': 1,
    });
  });
});

describe('Stack IPv6: unsolicited router advertisements', () => {
  it('sends an RA to all-nodes every 600 s, well inside the 1800 s router lifetime', () => {
    const h = harness();
    h.clock.advance(599_000);
    h.stack.advance();
    expect(h.out).toHaveLength(0);
    for (let i = 1; i <= 3; i++) {
      h.clock.advance(i === 1 ? 1_000 : 600_000);
      h.stack.advance();
      expect(h.out).toHaveLength(i);
      const { ip, m } = icmpOut(h.out.at(-1)!);
      expect(ip).toMatchObject({ src: GW_LL, dst: ALL_NODES, hopLimit: 255 });
      expect(m.type).toBe(ICMP6_ROUTER_ADVERT);
    }
  });

  it('sends none with IPv6 off', () => {
    const h = harness({ ipv6: undefined });
    h.clock.advance(3_600_000);
    h.stack.advance();
    expect(h.out).toHaveLength(0);
    expect(h.stack.nextDeadline()).toBeUndefined();
  });
});
