/**
 * Every frame of a capture made by the real Linux kernel (see
 * test/fixtures/kernel/capture.sh) must parse with our parsers, verify, and,
 * where our emitters can express the same fields, be re-emitted byte for byte.
 */
import { describe, it, expect } from 'vitest';
import { kernelFrames } from '../support/pcap-read.js';
import { parseEthernet, emitEthernetHeader, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HEADER_LEN, type EthernetRepr } from '../../netstack/ethernet.js';
import { parseArp, emitArp, ARP_REQUEST, ARP_REPLY, ARP_LEN } from '../../netstack/arp.js';
import { parseIpv4, emitIpv4Header, isFragment, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, type Ipv4Repr } from '../../netstack/ipv4.js';
import { parseIcmp, emitIcmp, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH } from '../../netstack/icmp.js';
import { parseUdp, emitUdp } from '../../netstack/udp.js';
import { Reassembler } from '../../netstack/reassembly.js';
import { sumBytes, sumPseudoHeader, finishChecksum } from '../../netstack/checksum.js';
import { ParseError } from '../../netstack/errors.js';
import { TimerWheel } from '../../netstack/timer-wheel.js';
import { ManualClock } from '../../netstack/clock.js';
import { ipv4, parseMac, MAC_BROADCAST } from '../../netstack/addr.js';

const A_IP = ipv4(10, 99, 0, 1);
const B_IP = ipv4(10, 99, 0, 2);
const A_MAC = parseMac('02:00:00:99:00:01')!;
const B_MAC = parseMac('02:00:00:99:00:02')!;

function ok<T>(x: T | ParseError): T {
  if (x instanceof ParseError) throw new Error(`unexpected ${x.reason}`);
  return x;
}

interface Decoded { eth: EthernetRepr; ip?: Ipv4Repr; frame: Uint8Array }

const frames = kernelFrames();
const decoded: Decoded[] = frames.map((frame) => {
  const eth = ok(parseEthernet(frame));
  return eth.etherType === ETHERTYPE_IPV4 ? { eth, ip: ok(parseIpv4(eth.payload)), frame } : { eth, frame };
});
const ipPackets = decoded.filter((d) => d.ip !== undefined).map((d) => d.ip!);

describe('golden capture from the Linux kernel (linux-basic.pcap)', () => {
  it('holds the scenarios capture.sh makes, and is small', () => {
    expect(frames.length).toBeGreaterThanOrEqual(20);
    expect(frames.reduce((n, f) => n + f.length + 16, 24)).toBeLessThan(50_000);
    expect(decoded.filter((d) => d.eth.etherType === ETHERTYPE_ARP)).toHaveLength(2);
    expect(ipPackets.filter((p) => p.protocol === IPPROTO_TCP).length).toBeGreaterThanOrEqual(8);
    expect(ipPackets.filter((p) => p.protocol === IPPROTO_UDP)).toHaveLength(1);
    expect(ipPackets.filter(isFragment)).toHaveLength(6);
  });

  it('every frame parses as Ethernet II between the two veth MACs, and re-emits its header', () => {
    for (const { eth, frame } of decoded) {
      expect([ETHERTYPE_ARP, ETHERTYPE_IPV4]).toContain(eth.etherType);
      expect([A_MAC, B_MAC]).toContain(eth.src);
      expect([A_MAC, B_MAC, MAC_BROADCAST]).toContain(eth.dst);
      const header = new Uint8Array(ETH_HEADER_LEN);
      emitEthernetHeader(header, 0, eth.dst, eth.src, eth.etherType);
      expect(header).toEqual(frame.subarray(0, ETH_HEADER_LEN));
    }
  });

  it('ARP request and reply parse and re-emit byte for byte', () => {
    const arps = decoded.filter((d) => d.eth.etherType === ETHERTYPE_ARP);
    const [request, reply] = arps.map((d) => ok(parseArp(d.eth.payload)));
    expect(request).toEqual({ op: ARP_REQUEST, senderMac: A_MAC, senderIp: A_IP, targetMac: 0, targetIp: B_IP });
    expect(arps[0]!.eth.dst).toBe(MAC_BROADCAST);
    expect(reply).toEqual({ op: ARP_REPLY, senderMac: B_MAC, senderIp: B_IP, targetMac: A_MAC, targetIp: A_IP });
    arps.forEach((d, i) => {
      const out = new Uint8Array(ARP_LEN);
      emitArp(out, 0, [request, reply][i]!);
      expect(out).toEqual(d.eth.payload.subarray(0, ARP_LEN));
    });
  });

  it('every IPv4 header verifies and re-emits byte for byte from its repr', () => {
    for (const d of decoded.filter((x) => x.ip !== undefined)) {
      const ip = d.ip!;
      expect(ip.headerLength).toBe(20); // Linux sends no IP options here
      expect([A_IP, B_IP]).toContain(ip.src);
      const out = new Uint8Array(20);
      emitIpv4Header(out, 0, { ...ip, payloadLength: ip.payload.length });
      expect(out).toEqual(d.frame.subarray(ETH_HEADER_LEN, ETH_HEADER_LEN + 20));
    }
  });

  it('ICMP echo request/reply verify and re-emit byte for byte', () => {
    const echoes = ipPackets.filter((p) => p.protocol === IPPROTO_ICMP && !isFragment(p)).map((p) => ok(parseIcmp(p.payload)));
    const request = echoes.find((e) => e.type === ICMP_ECHO_REQUEST)!;
    const reply = echoes.find((e) => e.type === ICMP_ECHO_REPLY)!;
    expect(request.payload.length).toBe(56);
    expect(reply.rest).toBe(request.rest); // same identifier and sequence
    expect(reply.payload).toEqual(request.payload);
    for (const p of ipPackets.filter((q) => q.protocol === IPPROTO_ICMP && !isFragment(q))) {
      const icmp = ok(parseIcmp(p.payload));
      const out = new Uint8Array(p.payload.length);
      emitIcmp(out, 0, icmp.type, icmp.code, icmp.rest, icmp.payload);
      expect(out).toEqual(p.payload);
    }
  });

  it('the UDP datagram verifies with its pseudo-header and re-emits byte for byte', () => {
    const ip = ipPackets.find((p) => p.protocol === IPPROTO_UDP)!;
    const udp = ok(parseUdp(ip.payload, ip.src, ip.dst));
    expect(udp.dstPort).toBe(5353);
    expect(new TextDecoder().decode(udp.payload)).toBe('hello, moat!');
    expect((ip.payload[6]! << 8) | ip.payload[7]!).not.toBe(0); // Linux did compute a checksum
    const out = new Uint8Array(ip.payload.length);
    emitUdp(out, 0, ip.src, ip.dst, udp.srcPort, udp.dstPort, udp.payload);
    expect(out).toEqual(ip.payload);
  });

  it('the port unreachable quotes the UDP datagram it answers', () => {
    const errors = ipPackets.filter((p) => p.protocol === IPPROTO_ICMP).map((p) => parseIcmp(p.payload))
      .filter((m): m is Exclude<typeof m, ParseError> => !(m instanceof ParseError) && m.type === ICMP_DEST_UNREACH);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.code).toBe(ICMP_PORT_UNREACH);
    // Linux quotes the whole datagram (RFC 1812 §4.3.2.3 allows up to 576 bytes), not only header + 8.
    const quoted = ok(parseIpv4(errors[0]!.payload));
    expect([quoted.src, quoted.dst, quoted.protocol]).toEqual([A_IP, B_IP, IPPROTO_UDP]);
    expect(ok(parseUdp(quoted.payload, quoted.src, quoted.dst)).dstPort).toBe(5353);
  });

  it('every TCP segment checksum verifies with the pseudo-header', () => {
    for (const ip of ipPackets.filter((p) => p.protocol === IPPROTO_TCP)) {
      const sum = sumBytes(ip.payload, 0, ip.payload.length, sumPseudoHeader(ip.src, ip.dst, IPPROTO_TCP, ip.payload.length));
      expect(finishChecksum(sum)).toBe(0);
    }
  });

  it('the fragmented pings reassemble to 3008-byte ICMP messages that verify', () => {
    const clock = new ManualClock();
    const r = new Reassembler({ maxBytes: 1 << 20, maxDatagrams: 4, timeoutMs: 30_000 }, new TimerWheel(clock));
    const fragments = ipPackets.filter(isFragment);
    expect(fragments.map((f) => [f.fragmentOffset, f.payload.length, f.moreFragments])).toEqual([
      [0, 1480, true], [1480, 1480, true], [2960, 48, false],
      [0, 1480, true], [1480, 1480, true], [2960, 48, false],
    ]);
    const whole = fragments.map((f) => r.push(f)).filter((x): x is Uint8Array => x instanceof Uint8Array);
    expect(whole.map((w) => w.length)).toEqual([3008, 3008]);
    const [request, reply] = whole.map((w) => ok(parseIcmp(w)));
    expect([request!.type, reply!.type]).toEqual([ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY]);
    expect(reply!.payload).toEqual(request!.payload);
    expect(r.datagrams).toBe(0);
    expect(r.bufferedBytes).toBe(0);
  });
});
