import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { OutputBatch, PendingTcp, StackEvents, UdpDatagram } from '../../netstack/api.js';
import { ipv4, MAC_BROADCAST } from '../../netstack/addr.js';
import { ARP_REPLY, ARP_REQUEST, parseArp } from '../../netstack/arp.js';
import { finishChecksum, sumBytes, sumPseudoHeader } from '../../netstack/checksum.js';
import { ManualClock } from '../../netstack/clock.js';
import { encodeDhcp, MsgType, Opt, parseDhcp, messageTypeOf, ipOption, chaddrFromMac } from '../../netstack/dhcp.js';
import { ParseError } from '../../netstack/errors.js';
import { ETH_HEADER_LEN, parseEthernet } from '../../netstack/ethernet.js';
import { ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, parseIcmp } from '../../netstack/icmp.js';
import { IPPROTO_TCP, IPPROTO_UDP, parseIpv4 } from '../../netstack/ipv4.js';
import { createStack, DEFAULT_STACK_CONFIG, type Stack } from '../../netstack/stack.js';
import { parseTcp, TCP_ACK, TCP_RST, TCP_SYN } from '../../netstack/tcp/header.js';
import { parseUdp } from '../../netstack/udp.js';
import { arpFrame, GUEST, GUEST_MAC, GW_IP, GW_MAC, HOST_ALIAS, icmpFrame, tcpFrame, udpFrame } from '../support/frames.js';

interface Harness {
  stack: Stack;
  clock: ManualClock;
  out: Uint8Array[];
  syns: PendingTcp[];
  udp: UdpDatagram[];
  runDeferred(): void;
}

function harness(events: Partial<StackEvents> = {}, config = {}): Harness {
  const clock = new ManualClock(0);
  const out: Uint8Array[] = [];
  const syns: PendingTcp[] = [];
  const udp: UdpDatagram[] = [];
  const deferred: (() => void)[] = [];
  const stack = createStack(
    { ...DEFAULT_STACK_CONFIG, ...config },
    {
      onTcpSyn: (p) => syns.push(p),
      onUdp: (d) => udp.push({ ...d, payload: d.payload.slice() }),
      ...events,
      onOutput: (b: OutputBatch) => b.forEachFrame((f) => out.push(f.slice())),
    },
    clock,
    (fn) => deferred.push(fn),
  );
  return {
    stack,
    clock,
    out,
    syns,
    udp,
    runDeferred: () => {
      while (deferred.length) deferred.shift()!();
    },
  };
}

function ipOf(frame: Uint8Array) {
  const eth = parseEthernet(frame);
  if (eth instanceof ParseError) throw new Error(eth.reason);
  const ip = parseIpv4(eth.payload);
  if (ip instanceof ParseError) throw new Error(ip.reason);
  return { eth, ip };
}

describe('Stack: ARP', () => {
  it('answers ARP for the gateway and the host alias with the gateway MAC', () => {
    const h = harness();
    h.stack.input([arpFrame(ARP_REQUEST, GUEST_MAC, GUEST, GW_IP), arpFrame(ARP_REQUEST, GUEST_MAC, GUEST, HOST_ALIAS)]);
    expect(h.out).toHaveLength(2);
    for (const [i, target] of [GW_IP, HOST_ALIAS].entries()) {
      const eth = parseEthernet(h.out[i]!) as Exclude<ReturnType<typeof parseEthernet>, ParseError>;
      expect(eth.dst).toBe(GUEST_MAC);
      const arp = parseArp(eth.payload);
      if (arp instanceof ParseError) throw new Error(arp.reason);
      expect(arp).toMatchObject({ op: ARP_REPLY, senderMac: GW_MAC, senderIp: target, targetMac: GUEST_MAC, targetIp: GUEST });
    }
  });

  it('stays silent for addresses it does not play (another guest, a probe for the guest itself)', () => {
    const h = harness();
    h.stack.input([arpFrame(ARP_REQUEST, GUEST_MAC, GUEST, ipv4(192, 168, 127, 9)), arpFrame(ARP_REQUEST, GUEST_MAC, 0, GUEST)]);
    expect(h.out).toHaveLength(0);
    expect(h.stack.stats.drops['arp:not-ours']).toBe(2);
  });
});

describe('Stack: ICMP', () => {
  it('answers echo to the gateway with the same id, sequence and payload', () => {
    const h = harness();
    const payload = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
    h.stack.input([icmpFrame(GUEST, GW_IP, ICMP_ECHO_REQUEST, 0x12340007, payload)]);
    expect(h.out).toHaveLength(1);
    const { eth, ip } = ipOf(h.out[0]!);
    expect(eth.dst).toBe(GUEST_MAC);
    expect(ip.src).toBe(GW_IP);
    expect(ip.dst).toBe(GUEST);
    const icmp = parseIcmp(ip.payload);
    if (icmp instanceof ParseError) throw new Error(icmp.reason);
    expect(icmp.type).toBe(ICMP_ECHO_REPLY);
    expect(icmp.rest).toBe(0x12340007);
    expect([...icmp.payload]).toEqual([...payload]);
  });

  it('never fakes echo replies for other addresses: raised to the owner instead', () => {
    const seen: number[] = [];
    const h = harness({ onIcmp: (_s, dst) => seen.push(dst) });
    h.stack.input([icmpFrame(GUEST, ipv4(198, 18, 0, 9), ICMP_ECHO_REQUEST, 1, new Uint8Array(8))]);
    expect(h.out).toHaveLength(0);
    expect(seen).toEqual([ipv4(198, 18, 0, 9)]);
  });
});

describe('Stack: DHCP through the stack', () => {
  function dhcpRequest(type: number, extra: { code: number; data: Uint8Array }[] = []) {
    return encodeDhcp({
      op: 1,
      htype: 1,
      hlen: 6,
      hops: 0,
      xid: 0x1234abcd,
      secs: 0,
      flags: 0,
      ciaddr: 0,
      yiaddr: 0,
      siaddr: 0,
      giaddr: 0,
      chaddr: chaddrFromMac(GUEST_MAC),
      sname: new Uint8Array(64),
      file: new Uint8Array(128),
      options: [{ code: Opt.MessageType, data: new Uint8Array([type]) }, ...extra],
    } as Parameters<typeof encodeDhcp>[0]);
  }

  it('DISCOVER -> OFFER of the guest address with router, DNS and MTU; REQUEST -> ACK; lease listed', () => {
    const h = harness({}, { mtu: 9000 });
    h.stack.input([udpFrame(0, 68, 0xffffffff, 67, dhcpRequest(MsgType.Discover), MAC_BROADCAST)]);
    expect(h.out).toHaveLength(1);
    const { ip } = ipOf(h.out[0]!);
    expect(ip.src).toBe(GW_IP);
    const udp = parseUdp(ip.payload, ip.src, ip.dst);
    if (udp instanceof ParseError) throw new Error(udp.reason);
    expect(udp.srcPort).toBe(67);
    expect(udp.dstPort).toBe(68);
    const offer = parseDhcp(udp.payload);
    if (offer instanceof ParseError) throw new Error(offer.reason);
    expect(messageTypeOf(offer)).toBe(MsgType.Offer);
    expect(offer.yiaddr).toBe(GUEST);
    expect(ipOption(offer, Opt.Router)).toBe(GW_IP);

    const req = dhcpRequest(MsgType.Request, [
      { code: Opt.RequestedIp, data: new Uint8Array([192, 168, 127, 2]) },
      { code: Opt.ServerId, data: new Uint8Array([192, 168, 127, 1]) },
    ]);
    h.stack.input([udpFrame(0, 68, 0xffffffff, 67, req, MAC_BROADCAST)]);
    expect(h.out).toHaveLength(2);
    const ack = ipOf(h.out[1]!);
    const ackUdp = parseUdp(ack.ip.payload, ack.ip.src, ack.ip.dst);
    if (ackUdp instanceof ParseError) throw new Error(ackUdp.reason);
    const ackMsg = parseDhcp(ackUdp.payload);
    if (ackMsg instanceof ParseError) throw new Error(ackMsg.reason);
    expect(messageTypeOf(ackMsg)).toBe(MsgType.Ack);
    expect(h.stack.dhcpLeases()).toEqual([expect.objectContaining({ mac: GUEST_MAC, ip: GUEST })]);
  });
});

describe('Stack: UDP and TCP events', () => {
  it('raises UDP to any non-gateway service as onUdp with the four-tuple', () => {
    const h = harness();
    h.stack.input([udpFrame(GUEST, 5353, GW_IP, 53, new Uint8Array([9, 9, 9]))]);
    expect(h.udp).toHaveLength(1);
    expect(h.udp[0]).toMatchObject({ src: GUEST, srcPort: 5353, dst: GW_IP, dstPort: 53 });
    expect([...h.udp[0]!.payload]).toEqual([9, 9, 9]);
  });

  it('drops broadcast UDP that is not DHCP', () => {
    const h = harness();
    h.stack.input([udpFrame(GUEST, 1000, 0xffffffff, 1000, new Uint8Array(4), MAC_BROADCAST)]);
    expect(h.udp).toHaveLength(0);
    expect(h.stack.stats.drops['udp:broadcast']).toBe(1);
  });

  it('sends UDP larger than the MTU as fragments the guest can reassemble', () => {
    const h = harness();
    h.stack.input([arpFrame(ARP_REQUEST, GUEST_MAC, GUEST, GW_IP)]);
    h.out.length = 0;
    const payload = new Uint8Array(4000).map((_, i) => i & 0xff);
    h.stack.sendUdp(GW_IP, 53, GUEST, 40000, payload);
    h.runDeferred();
    expect(h.out.length).toBe(3);
    const parts = h.out.map((f) => ipOf(f).ip);
    expect(parts.every((p) => p.id === parts[0]!.id && p.protocol === IPPROTO_UDP)).toBe(true);
    const whole = new Uint8Array(8 + payload.length);
    for (const p of parts) whole.set(p.payload, p.fragmentOffset);
    const udp = parseUdp(whole, GW_IP, GUEST);
    if (udp instanceof ParseError) throw new Error(udp.reason);
    expect(Buffer.from(udp.payload).equals(Buffer.from(payload))).toBe(true);
  });

  it('raises a SYN once, absorbs its retransmissions while held, and refuse() answers RST', () => {
    const h = harness();
    const syn = tcpFrame(GUEST, ipv4(198, 18, 0, 5), { srcPort: 40000, dstPort: 80, seq: 1000, ack: 0, flags: TCP_SYN, window: 64240, options: { mss: 1460 } });
    h.stack.input([syn]);
    h.stack.input([syn]);
    expect(h.syns).toHaveLength(1);
    expect(h.syns[0]!.syn).toMatchObject({ src: GUEST, srcPort: 40000, dst: ipv4(198, 18, 0, 5), dstPort: 80, mss: 1460 });
    expect(h.out).toHaveLength(0);
    h.syns[0]!.refuse();
    h.runDeferred();
    expect(h.out).toHaveLength(1);
    const { ip } = ipOf(h.out[0]!);
    expect(ip.protocol).toBe(IPPROTO_TCP);
    const rst = parseTcp(ip.payload, ip.src, ip.dst);
    if (rst instanceof ParseError) throw new Error(rst.reason);
    expect(rst.flags & (TCP_RST | TCP_ACK)).toBe(TCP_RST | TCP_ACK);
    expect(rst.ack).toBe(1001);
    expect(h.stack.tableSizes().heldSyns).toBe(0);
  });

  it('forgets a held SYN after synHoldTimeoutMs; a late decision is refused loudly', () => {
    const h = harness();
    h.stack.input([tcpFrame(GUEST, ipv4(198, 18, 0, 5), { srcPort: 40001, dstPort: 80, seq: 1, ack: 0, flags: TCP_SYN, window: 1000 })]);
    expect(h.stack.tableSizes().heldSyns).toBe(1);
    h.clock.advance(DEFAULT_STACK_CONFIG.tcp.synHoldTimeoutMs + 1);
    h.stack.advance();
    expect(h.stack.tableSizes().heldSyns).toBe(0);
    expect(() => h.syns[0]!.refuse()).toThrow(/already decided or expired/);
  });

  it('answers a segment for no connection with RST (RFC 9293 §3.10.7.1)', () => {
    const h = harness();
    h.stack.input([tcpFrame(GUEST, ipv4(198, 18, 0, 5), { srcPort: 40002, dstPort: 80, seq: 5, ack: 777, flags: TCP_ACK, window: 1000 })]);
    expect(h.out).toHaveLength(1);
    const { ip } = ipOf(h.out[0]!);
    const rst = parseTcp(ip.payload, ip.src, ip.dst);
    if (rst instanceof ParseError) throw new Error(rst.reason);
    expect(rst.flags & TCP_RST).toBe(TCP_RST);
    expect(rst.seq).toBe(777);
  });
});

describe('Stack: bad input', () => {
  it('drops and counts malformed frames by reason', () => {
    const h = harness();
    const good = icmpFrame(GUEST, GW_IP, ICMP_ECHO_REQUEST, 1, new Uint8Array(4));
    const badIpSum = good.slice();
    badIpSum[ETH_HEADER_LEN + 10]! ^= 0xff;
    const notForUs = good.slice();
    notForUs[0] = 0x02; // another unicast MAC
    h.stack.input([new Uint8Array(0), new Uint8Array(13), badIpSum, notForUs, good.subarray(0, 30)]);
    expect(h.stack.stats.drops).toMatchObject({
      'eth:truncated': 2,
      'ipv4:bad-checksum': 1,
      'eth:not-for-us': 1,
      'ipv4:truncated': 1,
    });
    expect(h.out).toHaveLength(0);
  });

  it('never throws on random and almost-valid frames, and leaves no state behind', () => {
    const h = harness({ onTcpSyn: (p) => p.refuse(), onUdp: () => {} });
    const templates = [
      arpFrame(ARP_REQUEST, GUEST_MAC, GUEST, GW_IP),
      icmpFrame(GUEST, GW_IP, ICMP_ECHO_REQUEST, 1, new Uint8Array(16)),
      udpFrame(GUEST, 1, GW_IP, 53, new Uint8Array(20)),
      tcpFrame(GUEST, ipv4(198, 18, 0, 1), { srcPort: 1, dstPort: 2, seq: 3, ack: 0, flags: TCP_SYN, window: 100, options: { mss: 1460, windowScale: 7, sackPermitted: true, timestamp: { value: 1, echo: 0 } } }),
    ];
    // Mutations keep checksums right, so that parsing reaches the deep layers.
    const fixChecksums = (f: Uint8Array) => {
      if (f.length < 34 || f[12] !== 0x08 || f[13] !== 0x00) return;
      const ihl = (f[14]! & 0x0f) * 4;
      if (ihl < 20 || 14 + ihl > f.length) return;
      f[24] = f[25] = 0;
      const s = finishChecksum(sumBytes(f, 14, ihl));
      f[24] = s >> 8;
      f[25] = s & 0xff;
      const l4 = 14 + ihl;
      const proto = f[23]!;
      const csumAt = proto === IPPROTO_TCP ? 16 : proto === IPPROTO_UDP ? 6 : 2;
      if (l4 + csumAt + 2 > f.length) return;
      f[l4 + csumAt] = f[l4 + csumAt + 1] = 0;
      const len = f.length - l4;
      const pseudo = proto === 1 ? 0 : sumPseudoHeader(
        ((f[26]! << 24) | (f[27]! << 16) | (f[28]! << 8) | f[29]!) >>> 0,
        ((f[30]! << 24) | (f[31]! << 16) | (f[32]! << 8) | f[33]!) >>> 0, proto, len);
      const c = finishChecksum(sumBytes(f, l4, len, pseudo));
      f[l4 + csumAt] = c >> 8;
      f[l4 + csumAt + 1] = c & 0xff;
    };
    const frame = fc.oneof(
      { weight: 1, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 200 }) },
      {
        weight: 3,
        arbitrary: fc
          .record({
            t: fc.integer({ min: 0, max: templates.length - 1 }),
            edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
            cut: fc.option(fc.nat(), { nil: undefined }),
            fix: fc.boolean(),
          })
          .map(({ t, edits, cut, fix }) => {
            let f = templates[t]!.slice();
            for (const [pos, val] of edits) f[pos % f.length] = val;
            if (cut !== undefined) f = f.subarray(0, cut % (f.length + 1));
            if (fix) fixChecksums(f);
            return f;
          }),
      },
    );
    let frames = 0;
    fc.assert(
      fc.property(fc.array(frame, { minLength: 8, maxLength: 20 }), (batch) => {
        frames += batch.length;
        h.stack.input(batch);
        h.runDeferred();
      }),
      { numRuns: 10_000, seed: Number(process.env.FUZZ_SEED ?? 42) },
    );
    expect(frames).toBeGreaterThanOrEqual(100_000);
    expect(h.stack.stats.drops['stack:internal-error']).toBeUndefined();
    // Whatever the fuzz left (fragments, held SYNs, connections) must time out.
    for (let i = 0; i < 200; i++) {
      h.clock.advance(1_000);
      h.stack.advance();
      h.runDeferred();
    }
    const t = h.stack.tableSizes();
    expect(t).toMatchObject({ connections: 0, heldSyns: 0, fragmentDatagrams: 0, fragmentBytes: 0 });
  });
});

describe('Stack: deferred output', () => {
  /** A guest connection to SERVER:80, accepted; returns its socket and how often the stack asked to be run later. */
  function connected() {
    let defers = 0;
    const deferred: (() => void)[] = [];
    const out: Uint8Array[] = [];
    const syns: PendingTcp[] = [];
    const stack = createStack(
      DEFAULT_STACK_CONFIG,
      { onTcpSyn: (p) => syns.push(p), onUdp: () => {}, onOutput: (b: OutputBatch) => b.forEachFrame((f) => out.push(f.slice())) },
      new ManualClock(0),
      (fn) => {
        defers++;
        deferred.push(fn);
      },
    );
    const server = ipv4(198, 18, 0, 5);
    const run = () => {
      while (deferred.length) deferred.shift()!();
    };
    stack.input([tcpFrame(GUEST, server, { srcPort: 40000, dstPort: 80, seq: 1000, ack: 0, flags: TCP_SYN, window: 65535 })]);
    const socket = syns[0]!.accept({ onData: () => {}, onEnd: () => {}, onDrain: () => {}, onClose: () => {} });
    run();
    const synAck = parseTcp(ipOf(out[out.length - 1]!).ip.payload, server, GUEST);
    if (synAck instanceof ParseError) throw new Error(synAck.reason);
    stack.input([tcpFrame(GUEST, server, { srcPort: 40000, dstPort: 80, seq: 1001, ack: synAck.seq + 1, flags: TCP_ACK, window: 65535 })]);
    run();
    out.length = 0;
    return { socket, out, run, defers: () => defers };
  }

  it("an owner's write outside input is sent by one deferred flush, which defers nothing more", () => {
    const c = connected();
    const before = c.defers();
    c.socket.write(new Uint8Array(64));
    expect(c.defers()).toBe(before + 1);
    c.run();
    expect(c.out).toHaveLength(1); // the 64 bytes, in one frame
    // The segment the flush transmitted is in that same batch: no second flush is asked for.
    expect(c.defers()).toBe(before + 1);
  });
});

describe('Stack: guest reset', () => {
  it('after resetGuest a guest with a new MAC is offered the configured guest address again', () => {
    const h = harness();
    const discover = (mac: number) =>
      encodeDhcp({
        op: 1, htype: 1, hlen: 6, hops: 0, xid: 7, secs: 0, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0,
        chaddr: chaddrFromMac(mac), sname: new Uint8Array(64), file: new Uint8Array(128),
        options: [{ code: Opt.MessageType, data: new Uint8Array([MsgType.Discover]) }],
      } as Parameters<typeof encodeDhcp>[0]);
    const offered = () => {
      const { ip } = ipOf(h.out.at(-1)!);
      const udp = parseUdp(ip.payload, ip.src, ip.dst);
      if (udp instanceof ParseError) throw new Error(udp.reason);
      const m = parseDhcp(udp.payload);
      if (m instanceof ParseError) throw new Error(m.reason);
      return m.yiaddr;
    };
    h.stack.input([udpFrame(0, 68, 0xffffffff, 67, discover(GUEST_MAC), MAC_BROADCAST)]);
    expect(offered()).toBe(GUEST);
    h.stack.resetGuest();
    const otherMac = 0x02aabbccdd99;
    h.stack.input([udpFrame(0, 68, 0xffffffff, 67, discover(otherMac), MAC_BROADCAST)]);
    expect(offered()).toBe(GUEST);
  });
});
