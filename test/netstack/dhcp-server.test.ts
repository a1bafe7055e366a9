import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { IPV4_BROADCAST, MAC_BROADCAST, inSubnet, ipv4, parseMac, prefixMask, readIPv4, type IPv4, type Mac } from '../../netstack/addr.js';
import { ManualClock } from '../../netstack/clock.js';
import { ParseError } from '../../netstack/errors.js';
import {
  BOOTREPLY,
  FLAG_BROADCAST,
  MsgType,
  Opt,
  chaddrFromMac,
  decodeDomainSearch,
  encodeDhcp,
  findOption,
  ipListOption,
  ipOption,
  messageTypeOf,
  parseDhcp,
  textOption,
  textOptionOf,
  u16Option,
  u16OptionOf,
  u32Option,
  u8Option,
  type DhcpMessage,
  type DhcpOption,
} from '../../netstack/dhcp.js';
import { DhcpServer, type DhcpReply, type DhcpServerConfig } from '../../netstack/dhcp-server.js';

const GATEWAY = ipv4(192, 168, 127, 1);
const GUEST = ipv4(192, 168, 127, 2);
const HOST_ALIAS = ipv4(192, 168, 127, 254);
const OTHER_SERVER = ipv4(192, 168, 127, 250);
const MAC_A = parseMac('52:54:00:00:00:0a')!;
const MAC_B = parseMac('52:54:00:00:00:0b')!;
const MAC_C = parseMac('52:54:00:00:00:0c')!;

function config(over: Partial<DhcpServerConfig> = {}): DhcpServerConfig {
  return {
    serverIp: GATEWAY,
    network: ipv4(192, 168, 127, 0),
    prefix: 24,
    dnsServers: [GATEWAY],
    domainName: 'moat.internal',
    searchDomains: ['moat.internal', 'corp.moat.internal'],
    mtu: 1500,
    reserved: [HOST_ALIAS],
    preferredFirst: GUEST,
    ...over,
  };
}

// ---------------------------------------------------------------- clients, as real ones build their messages

interface ClientFields {
  xid?: number;
  flags?: number;
  ciaddr?: IPv4;
  options: DhcpOption[];
}

function request(mac: Mac, f: ClientFields): Uint8Array {
  const m: DhcpMessage = {
    op: 1,
    htype: 1,
    hlen: 6,
    hops: 0,
    xid: f.xid ?? 0x1234abcd,
    secs: 0,
    flags: f.flags ?? 0,
    ciaddr: f.ciaddr ?? 0,
    yiaddr: 0,
    siaddr: 0,
    giaddr: 0,
    chaddr: chaddrFromMac(mac),
    sname: new Uint8Array(0),
    file: new Uint8Array(0),
    options: f.options,
  };
  return encodeDhcp(m);
}

const ip = (code: number, addr: IPv4) => ipListOption(code, [addr]);
const clientId = (mac: Mac) => ({ code: Opt.ClientId, data: Uint8Array.of(1, ...chaddrFromMac(mac).subarray(0, 6)) });

/** busybox udhcpc 1.35: 53, 61, 57=576, 55 [1 3 6 12 15 28 42], 12, 60 (see the captured fixture). */
const udhcpc = {
  prl: { code: Opt.ParameterRequestList, data: Uint8Array.of(1, 3, 6, 12, 15, 28, 42) },
  discover(mac: Mac, extra: DhcpOption[] = []): Uint8Array {
    return request(mac, {
      options: [u8Option(Opt.MessageType, MsgType.Discover), clientId(mac), u16OptionOf(Opt.MaxMessageSize, 576), this.prl, textOptionOf(Opt.Hostname, 'guest'), textOptionOf(Opt.VendorClass, 'udhcp 1.35.0'), ...extra],
    });
  },
  select(mac: Mac, addr: IPv4, server: IPv4): Uint8Array {
    return request(mac, {
      options: [u8Option(Opt.MessageType, MsgType.Request), clientId(mac), ip(Opt.RequestedIp, addr), ip(Opt.ServerId, server), u16OptionOf(Opt.MaxMessageSize, 576), this.prl, textOptionOf(Opt.Hostname, 'guest')],
    });
  },
  renew(mac: Mac, addr: IPv4): Uint8Array {
    return request(mac, { ciaddr: addr, options: [u8Option(Opt.MessageType, MsgType.Request), clientId(mac), this.prl, textOptionOf(Opt.Hostname, 'guest')] });
  },
  release(mac: Mac, addr: IPv4, server = GATEWAY): Uint8Array {
    return request(mac, { ciaddr: addr, options: [u8Option(Opt.MessageType, MsgType.Release), clientId(mac), ip(Opt.ServerId, server)] });
  },
};

/** ISC dhclient 4.4: 53, 50 (its previous address), 12, 55 [1 28 2 3 15 6 119 12 44 47 26 121 42]; no 61. */
const dhclient = {
  prl: { code: Opt.ParameterRequestList, data: Uint8Array.of(1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42) },
  discover(mac: Mac, previous?: IPv4): Uint8Array {
    const opts: DhcpOption[] = [u8Option(Opt.MessageType, MsgType.Discover)];
    if (previous !== undefined) opts.push(ip(Opt.RequestedIp, previous));
    opts.push(textOptionOf(Opt.Hostname, 'dhclient-host'), this.prl);
    return request(mac, { options: opts });
  },
  initReboot(mac: Mac, addr: IPv4): Uint8Array {
    return request(mac, { options: [u8Option(Opt.MessageType, MsgType.Request), ip(Opt.RequestedIp, addr), textOptionOf(Opt.Hostname, 'dhclient-host'), this.prl] });
  },
  decline(mac: Mac, addr: IPv4): Uint8Array {
    return request(mac, { options: [u8Option(Opt.MessageType, MsgType.Decline), ip(Opt.RequestedIp, addr), ip(Opt.ServerId, GATEWAY)] });
  },
  inform(mac: Mac, addr: IPv4): Uint8Array {
    return request(mac, { ciaddr: addr, options: [u8Option(Opt.MessageType, MsgType.Inform), this.prl] });
  },
};

function decode(reply: DhcpReply | null): DhcpMessage {
  expect(reply).not.toBeNull();
  const m = parseDhcp(reply!.message);
  if (m instanceof ParseError) throw new Error(m.reason);
  expect(m.op).toBe(BOOTREPLY);
  expect(messageTypeOf(m)).toBe(reply!.type);
  return m;
}

function ips(m: DhcpMessage, code: number): IPv4[] {
  const d = findOption(m, code)!;
  return Array.from({ length: d.length / 4 }, (_, k) => readIPv4(d, k * 4));
}

/** DISCOVER + REQUEST: the address ACKed. */
function lease(server: DhcpServer, mac: Mac): IPv4 {
  const offer = decode(server.handle(udhcpc.discover(mac), mac));
  const ack = decode(server.handle(udhcpc.select(mac, offer.yiaddr, GATEWAY), mac));
  expect(messageTypeOf(ack)).toBe(MsgType.Ack);
  return ack.yiaddr;
}

// ---------------------------------------------------------------- tests

describe('DhcpServer: DISCOVER / OFFER / REQUEST / ACK', () => {
  it('answers the real udhcpc DISCOVER with an OFFER of the guest address, unicast to chaddr', () => {
    const server = new DhcpServer(config(), new ManualClock(5000));
    const bytes = new Uint8Array(readFileSync(new URL('../fixtures/dhcp/udhcpc-discover.bin', import.meta.url)));
    const mac = parseMac('52:54:00:12:34:56')!;
    const reply = server.handle(bytes, mac)!;
    const offer = decode(reply);
    expect(reply.type).toBe(MsgType.Offer);
    expect(offer.yiaddr).toBe(GUEST);
    expect(offer.xid).toBe(parsedXid(bytes));
    expect({ dstIp: reply.dstIp, dstPort: reply.dstPort, dstMac: reply.dstMac }).toEqual({ dstIp: GUEST, dstPort: 68, dstMac: mac });
    expect(server.leases()).toEqual([]); // an offer is not a lease
  });

  it('completes a full exchange with every required option, in the client’s 55 order', () => {
    const clock = new ManualClock(1_000);
    const server = new DhcpServer(config({ leaseTimeSec: 7200 }), clock);
    const offer = decode(server.handle(udhcpc.discover(MAC_A), MAC_A));
    expect(offer.yiaddr).toBe(GUEST);
    expect(offer.ciaddr).toBe(0);
    expect([...offer.chaddr.subarray(0, 6)]).toEqual([...chaddrFromMac(MAC_A).subarray(0, 6)]);
    // 53, 54, then lease times, then what udhcpc asked (1 3 6 15 28; 12 and 42 we do not have), then the rest.
    expect(offer.options.map((o) => o.code)).toEqual([53, 54, 51, 58, 59, 1, 3, 6, 15, 28, 26, 119]);
    expect(ipOption(offer, Opt.ServerId)).toBe(GATEWAY);
    expect(u32Option(offer, Opt.SubnetMask)).toBe(prefixMask(24));
    expect(ips(offer, Opt.Router)).toEqual([GATEWAY]);
    expect(ips(offer, Opt.DnsServers)).toEqual([GATEWAY]);
    expect(textOption(offer, Opt.DomainName)).toBe('moat.internal');
    expect(u16Option(offer, Opt.InterfaceMtu)).toBe(1500);
    expect(u32Option(offer, Opt.LeaseTime)).toBe(7200);
    expect(u32Option(offer, Opt.RenewalTime)).toBe(3600);
    expect(u32Option(offer, Opt.RebindingTime)).toBe(6300);
    expect(decodeDomainSearch(findOption(offer, Opt.DomainSearch)!)).toEqual(['moat.internal', 'corp.moat.internal']);
    expect(ipOption(offer, Opt.BroadcastAddress)).toBe(ipv4(192, 168, 127, 255));

    const reply = server.handle(udhcpc.select(MAC_A, GUEST, GATEWAY), MAC_A)!;
    const ack = decode(reply);
    expect(reply.type).toBe(MsgType.Ack);
    expect(ack.yiaddr).toBe(GUEST);
    expect(u32Option(ack, Opt.LeaseTime)).toBe(7200);
    expect(reply.dstIp).toBe(GUEST);
    expect(server.leases()).toEqual([{ mac: MAC_A, ip: GUEST, expiresAt: 1_000 + 7_200_000, hostname: 'guest' }]);
    expect(server.stats).toMatchObject({ discovers: 1, offers: 1, requests: 1, acks: 1, naks: 0 });
  });

  it('always includes the required options even when the client asks for none (dhclient order honoured)', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const offer = decode(server.handle(dhclient.discover(MAC_A), MAC_A));
    // dhclient asks 1 28 2 3 15 6 119 12 44 47 26 121 42: ours in that order.
    expect(offer.options.map((o) => o.code)).toEqual([53, 54, 51, 58, 59, 1, 28, 3, 15, 6, 119, 26]);
    const bare = request(MAC_B, { options: [u8Option(Opt.MessageType, MsgType.Discover)] });
    const offer2 = decode(server.handle(bare, MAC_B));
    expect(offer2.options.map((o) => o.code).sort((a, b) => a - b)).toEqual([1, 3, 6, 15, 26, 51, 53, 54, 58, 59, 119]);
  });

  it('broadcasts when the client sets the broadcast flag, and copies the flag', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const msg = request(MAC_A, { flags: FLAG_BROADCAST, options: [u8Option(Opt.MessageType, MsgType.Discover)] });
    const reply = server.handle(msg, MAC_A)!;
    expect({ dstIp: reply.dstIp, dstMac: reply.dstMac, dstPort: reply.dstPort }).toEqual({ dstIp: IPV4_BROADCAST, dstMac: MAC_BROADCAST, dstPort: 68 });
    expect(decode(reply).flags).toBe(FLAG_BROADCAST);
  });

  it('gives successive clients distinct addresses, the first one the preferred guest address', () => {
    const server = new DhcpServer(config({ preferredFirst: ipv4(192, 168, 127, 100) }), new ManualClock());
    expect(lease(server, MAC_A)).toBe(ipv4(192, 168, 127, 100));
    expect(lease(server, MAC_B)).toBe(ipv4(192, 168, 127, 2)); // lowest free after .1 (gateway)
    expect(lease(server, MAC_C)).toBe(ipv4(192, 168, 127, 3));
    expect(new Set(server.leases().map((l) => l.ip)).size).toBe(3);
  });

  it('offers the address a dhclient asks for (50) when it is free, and holds an offer for its client', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const wanted = ipv4(192, 168, 127, 77);
    expect(decode(server.handle(dhclient.discover(MAC_A, wanted), MAC_A)).yiaddr).toBe(wanted);
    // MAC_B asks for the same one while it is on offer to A: it gets another.
    const other = decode(server.handle(dhclient.discover(MAC_B, wanted), MAC_B)).yiaddr;
    expect(other).not.toBe(wanted);
    // Reserved or outside the subnet: not honoured.
    expect(decode(server.handle(dhclient.discover(MAC_C, HOST_ALIAS), MAC_C)).yiaddr).not.toBe(HOST_ALIAS);
  });

  it('re-offers a client its existing lease', () => {
    const server = new DhcpServer(config(), new ManualClock());
    lease(server, MAC_A);
    const b = lease(server, MAC_B);
    expect(decode(server.handle(udhcpc.discover(MAC_B), MAC_B)).yiaddr).toBe(b);
    expect(server.leases().find((l) => l.mac === MAC_B)?.ip).toBe(b); // still bound after the OFFER
  });
});

describe('DhcpServer: RENEW, REBIND, INIT-REBOOT and NAKs (RFC 2131 §4.3.2)', () => {
  it('renews: ACK unicast to ciaddr, lease extended from now', () => {
    const clock = new ManualClock();
    const server = new DhcpServer(config(), clock);
    const addr = lease(server, MAC_A);
    clock.advance(1_800_000);
    const reply = server.handle(udhcpc.renew(MAC_A, addr), MAC_A)!;
    const ack = decode(reply);
    expect(reply.type).toBe(MsgType.Ack);
    expect(ack.yiaddr).toBe(addr);
    expect(ack.ciaddr).toBe(addr);
    expect({ dstIp: reply.dstIp, dstMac: reply.dstMac }).toEqual({ dstIp: addr, dstMac: MAC_A });
    expect(server.leases()[0]!.expiresAt).toBe(1_800_000 + 3_600_000);
  });

  it('ACKs a rebinding or init-reboot client it has no record of (authoritative, e.g. after a restart)', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const addr = ipv4(192, 168, 127, 42);
    expect(server.handle(udhcpc.renew(MAC_A, addr), MAC_A)!.type).toBe(MsgType.Ack);
    expect(server.handle(dhclient.initReboot(MAC_B, ipv4(192, 168, 127, 43)), MAC_B)!.type).toBe(MsgType.Ack);
    expect(server.leases().map((l) => l.ip).sort()).toEqual([addr, ipv4(192, 168, 127, 43)]);
  });

  it('NAKs (broadcast) a wrong network, an address of another client, a reserved address', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const a = lease(server, MAC_A);
    for (const wrong of [ipv4(10, 0, 2, 15), a, HOST_ALIAS, GATEWAY, ipv4(192, 168, 127, 0), ipv4(192, 168, 127, 255)]) {
      const reply = server.handle(dhclient.initReboot(MAC_B, wrong), MAC_B)!;
      expect(reply.type).toBe(MsgType.Nak);
      const nak = decode(reply);
      expect(nak.yiaddr).toBe(0);
      expect(ipOption(nak, Opt.ServerId)).toBe(GATEWAY);
      expect(findOption(nak, Opt.LeaseTime)).toBeUndefined();
      expect({ dstIp: reply.dstIp, dstMac: reply.dstMac }).toEqual({ dstIp: IPV4_BROADCAST, dstMac: MAC_BROADCAST });
    }
    // Renewing someone else's address also NAKs, broadcast even though ciaddr is set (RFC 2131 §4.1).
    const renewNak = server.handle(udhcpc.renew(MAC_B, a), MAC_B)!;
    expect(renewNak.type).toBe(MsgType.Nak);
    expect({ dstIp: renewNak.dstIp, dstMac: renewNak.dstMac }).toEqual({ dstIp: IPV4_BROADCAST, dstMac: MAC_BROADCAST });
    expect(decode(renewNak).ciaddr).toBe(0);
    expect(server.stats.naks).toBe(7);
    expect(server.leases()).toEqual([expect.objectContaining({ mac: MAC_A, ip: a })]);
  });

  it('NAKs a SELECTING request for an address taken by another client', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const a = lease(server, MAC_A);
    expect(server.handle(udhcpc.select(MAC_B, a, GATEWAY), MAC_B)!.type).toBe(MsgType.Nak);
  });

  it('ignores requests naming another server, and frees the offer it made', () => {
    const server = new DhcpServer(config({ poolStart: GUEST, poolEnd: GUEST }), new ManualClock());
    expect(decode(server.handle(udhcpc.discover(MAC_A), MAC_A)).yiaddr).toBe(GUEST);
    // Pool of one, offered to A: B gets nothing.
    expect(server.handle(udhcpc.discover(MAC_B), MAC_B)).toBeNull();
    // A picks the other server's offer: silent, and our offer is withdrawn.
    expect(server.handle(udhcpc.select(MAC_A, GUEST, OTHER_SERVER), MAC_A)).toBeNull();
    expect(server.stats.ignored['dhcp-server:other-server']).toBe(1);
    expect(decode(server.handle(udhcpc.discover(MAC_B), MAC_B)).yiaddr).toBe(GUEST);
    // RELEASE / DECLINE naming another server change nothing.
    lease(server, MAC_B);
    expect(server.handle(udhcpc.release(MAC_B, GUEST, OTHER_SERVER), MAC_B)).toBeNull();
    expect(server.leases()).toHaveLength(1);
  });

  it('ignores REQUESTs with neither ciaddr nor option 50, relayed messages, BOOTREPLYs, plain BOOTP', () => {
    const server = new DhcpServer(config(), new ManualClock());
    expect(server.handle(request(MAC_A, { options: [u8Option(Opt.MessageType, MsgType.Request)] }), MAC_A)).toBeNull();
    const relayed = udhcpc.discover(MAC_A);
    relayed[24] = 10; // giaddr 10.0.0.0
    expect(server.handle(relayed, MAC_A)).toBeNull();
    const reply = udhcpc.discover(MAC_A);
    reply[0] = 2;
    expect(server.handle(reply, MAC_A)).toBeNull();
    expect(server.handle(request(MAC_A, { options: [] }), MAC_A)).toBeNull();
    expect(server.stats.ignored).toMatchObject({
      'dhcp-server:request-without-address': 1,
      'dhcp-server:relayed': 1,
      'dhcp-server:not-request': 1,
      'dhcp-server:no-message-type': 1,
    });
    expect(server.stats.offers + server.stats.acks + server.stats.naks).toBe(0);
  });
});

describe('DhcpServer: RELEASE, DECLINE, INFORM', () => {
  it('RELEASE frees the lease and the address goes to the next client', () => {
    const server = new DhcpServer(config(), new ManualClock());
    expect(lease(server, MAC_A)).toBe(GUEST);
    expect(server.handle(udhcpc.release(MAC_A, GUEST), MAC_A)).toBeNull();
    expect(server.leases()).toEqual([]);
    expect(lease(server, MAC_B)).toBe(GUEST);
  });

  it('released and declined-then-expired addresses all come back to a small pool', () => {
    const clock = new ManualClock();
    const server = new DhcpServer(config({ poolStart: ipv4(192, 168, 127, 2), poolEnd: ipv4(192, 168, 127, 3), declineHoldSec: 60 }), clock);
    for (let round = 0; round < 3; round++) {
      const a = lease(server, MAC_A);
      const b = lease(server, MAC_B);
      server.handle(udhcpc.release(MAC_A, a), MAC_A);
      server.handle(dhclient.decline(MAC_B, b), MAC_B);
      clock.advance(60_000);
    }
    expect(lease(server, MAC_C)).toBeDefined();
    expect(lease(server, MAC_A)).toBeDefined();
    expect(server.stats.poolExhausted).toBe(0);
  });

  it('RELEASE by a MAC that does not hold the address is ignored', () => {
    const server = new DhcpServer(config(), new ManualClock());
    lease(server, MAC_A);
    server.handle(udhcpc.release(MAC_B, GUEST), MAC_B);
    expect(server.leases()).toHaveLength(1);
  });

  it('DECLINE keeps the address out of the pool for declineHoldSec', () => {
    const clock = new ManualClock();
    const server = new DhcpServer(config({ declineHoldSec: 100 }), clock);
    expect(lease(server, MAC_A)).toBe(GUEST);
    expect(server.handle(dhclient.decline(MAC_A, GUEST), MAC_A)).toBeNull();
    expect(server.leases()).toEqual([]);
    expect(decode(server.handle(udhcpc.discover(MAC_A), MAC_A)).yiaddr).not.toBe(GUEST);
    expect(server.handle(dhclient.initReboot(MAC_B, GUEST), MAC_B)!.type).toBe(MsgType.Nak);
    clock.advance(100_000);
    expect(decode(server.handle(udhcpc.discover(MAC_C), MAC_C)).yiaddr).toBe(GUEST);
  });

  it('INFORM: ACK with configuration but no lease, unicast to ciaddr (RFC 2131 §4.3.5)', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const addr = ipv4(192, 168, 127, 200);
    const reply = server.handle(dhclient.inform(MAC_A, addr), MAC_A)!;
    const ack = decode(reply);
    expect(reply.type).toBe(MsgType.Ack);
    expect(ack.yiaddr).toBe(0);
    expect(ack.ciaddr).toBe(addr);
    for (const code of [Opt.LeaseTime, Opt.RenewalTime, Opt.RebindingTime]) expect(findOption(ack, code)).toBeUndefined();
    expect(ips(ack, Opt.Router)).toEqual([GATEWAY]);
    expect(ips(ack, Opt.DnsServers)).toEqual([GATEWAY]);
    expect(ipOption(ack, Opt.ServerId)).toBe(GATEWAY);
    expect({ dstIp: reply.dstIp, dstMac: reply.dstMac }).toEqual({ dstIp: addr, dstMac: MAC_A });
    expect(server.leases()).toEqual([]);
  });
});

describe('DhcpServer: the guest leaves (guestLeft)', () => {
  it('keeps listing a bound lease after its guest disconnects, until it expires (as gvproxy does)', () => {
    const clock = new ManualClock(1_000);
    const server = new DhcpServer(config(), clock);
    lease(server, MAC_A);
    server.guestLeft();
    expect(server.leases()).toEqual([expect.objectContaining({ mac: MAC_A, ip: GUEST })]);
    // The same guest back (a reconnecting shim) gets the same address.
    expect(decode(server.handle(udhcpc.discover(MAC_A), MAC_A)).yiaddr).toBe(GUEST);
    clock.advance(7_200_000);
    expect(server.leases()).toEqual([]);
  });

  it('a new guest with another MAC still gets the preferred address, and its lease replaces the old one', () => {
    const server = new DhcpServer(config(), new ManualClock(1_000));
    lease(server, MAC_A);
    server.guestLeft();
    expect(lease(server, MAC_B)).toBe(GUEST);
    expect(server.leases()).toEqual([expect.objectContaining({ mac: MAC_B, ip: GUEST })]);
  });

  it('forgets offers in flight (an offer is not a lease)', () => {
    const server = new DhcpServer(config(), new ManualClock(1_000));
    server.handle(udhcpc.discover(MAC_A), MAC_A);
    server.guestLeft();
    expect(decode(server.handle(udhcpc.discover(MAC_B), MAC_B)).yiaddr).toBe(GUEST);
  });
});

describe('DhcpServer: static leases, reserved addresses, exhaustion, expiry', () => {
  it('gives a static MAC its address whatever it asks, NAKs anything else, never gives it to others', () => {
    const fixed = ipv4(192, 168, 127, 2);
    const server = new DhcpServer(config({ staticLeases: new Map([[MAC_A, fixed]]) }), new ManualClock());
    // B comes first and would otherwise get preferredFirst (.2).
    expect(lease(server, MAC_B)).not.toBe(fixed);
    expect(decode(server.handle(dhclient.discover(MAC_A, ipv4(192, 168, 127, 50)), MAC_A)).yiaddr).toBe(fixed);
    expect(server.handle(dhclient.initReboot(MAC_A, ipv4(192, 168, 127, 50)), MAC_A)!.type).toBe(MsgType.Nak);
    expect(server.handle(dhclient.initReboot(MAC_C, fixed), MAC_C)!.type).toBe(MsgType.Nak);
    expect(lease(server, MAC_A)).toBe(fixed);
  });

  it('accepts static leases as an array, outside the pool', () => {
    const fixed = ipv4(192, 168, 127, 220);
    const server = new DhcpServer(config({ poolStart: ipv4(192, 168, 127, 2), poolEnd: ipv4(192, 168, 127, 9), staticLeases: [{ mac: MAC_C, ip: fixed }] }), new ManualClock());
    expect(lease(server, MAC_C)).toBe(fixed);
  });

  it('rejects bad configuration at construction', () => {
    const clock = new ManualClock();
    expect(() => new DhcpServer(config({ staticLeases: [{ mac: MAC_A, ip: HOST_ALIAS }] }), clock)).toThrow(RangeError);
    expect(() => new DhcpServer(config({ staticLeases: [{ mac: MAC_A, ip: ipv4(10, 0, 0, 1) }] }), clock)).toThrow(RangeError);
    expect(() => new DhcpServer(config({ poolStart: ipv4(192, 168, 127, 0) }), clock)).toThrow(RangeError);
    expect(() => new DhcpServer(config({ poolStart: ipv4(192, 168, 127, 9), poolEnd: ipv4(192, 168, 127, 8) }), clock)).toThrow(RangeError);
    expect(() => new DhcpServer(config({ prefix: 31 }), clock)).toThrow(RangeError);
    expect(() => new DhcpServer(config({ searchDomains: ['bad..name'] }), clock)).toThrow(RangeError);
    expect(() => new DhcpServer(config({ mtu: 20 }), clock)).toThrow(RangeError);
  });

  it('pool exhaustion: no offer and a counter; an expired lease is then reclaimed', () => {
    const clock = new ManualClock();
    // .1 gateway, .2 .3 .4 pool, minus .3 reserved: two addresses.
    const server = new DhcpServer(config({ poolStart: ipv4(192, 168, 127, 2), poolEnd: ipv4(192, 168, 127, 4), reserved: [ipv4(192, 168, 127, 3)] }), clock);
    const a = lease(server, MAC_A);
    clock.advance(1_000_000);
    const b = lease(server, MAC_B);
    expect([a, b].sort()).toEqual([ipv4(192, 168, 127, 2), ipv4(192, 168, 127, 4)]);
    expect(server.handle(udhcpc.discover(MAC_C), MAC_C)).toBeNull();
    expect(server.stats.poolExhausted).toBe(1);
    clock.advance(2_600_000); // A's lease (3600 s from t=0) has ended, B's has not
    expect(server.leases().map((l) => l.mac)).toEqual([MAC_B]);
    expect(lease(server, MAC_C)).toBe(a);
    // A comes back: nothing left.
    expect(server.handle(udhcpc.discover(MAC_A), MAC_A)).toBeNull();
    expect(server.stats.poolExhausted).toBe(2);
  });

  it('an expired lease disappears from leases() but its client gets the same address back', () => {
    const clock = new ManualClock();
    const server = new DhcpServer(config(), clock);
    lease(server, MAC_A);
    const b = lease(server, MAC_B);
    clock.advance(3_600_000);
    expect(server.leases()).toEqual([]);
    lease(server, MAC_C);
    expect(lease(server, MAC_B)).toBe(b);
  });

  it('an offer not taken up is released after offerHoldSec', () => {
    const clock = new ManualClock();
    const server = new DhcpServer(config({ poolStart: GUEST, poolEnd: GUEST, offerHoldSec: 30 }), clock);
    expect(decode(server.handle(udhcpc.discover(MAC_A), MAC_A)).yiaddr).toBe(GUEST);
    expect(server.handle(udhcpc.discover(MAC_B), MAC_B)).toBeNull();
    clock.advance(30_000);
    expect(lease(server, MAC_B)).toBe(GUEST);
  });

  it('drops option 119 then 15 to fit the client’s maximum message size (57)', () => {
    const long = Array.from({ length: 12 }, (_, k) => `d${k}-${'x'.repeat(40)}.example${k}.org`);
    const server = new DhcpServer(config({ searchDomains: long }), new ManualClock());
    const small = server.handle(udhcpc.discover(MAC_A), MAC_A)!; // 57 = 576
    expect(small.message.length).toBeLessThanOrEqual(576 - 28);
    expect(findOption(decode(small), Opt.DomainSearch)).toBeUndefined();
    expect(findOption(decode(small), Opt.DomainName)).toBeDefined();
    const big = server.handle(udhcpc.discover(MAC_B, [u16OptionOf(Opt.MaxMessageSize, 1500)]), MAC_B)!;
    // Duplicated 57 concatenates to 4 bytes (576, 1500) and is then ignored as malformed: the 576 default holds.
    expect(findOption(decode(big), Opt.DomainSearch)).toBeUndefined();
    const roomy = request(MAC_C, { options: [u8Option(Opt.MessageType, MsgType.Discover), u16OptionOf(Opt.MaxMessageSize, 1500)] });
    expect(decodeDomainSearch(findOption(decode(server.handle(roomy, MAC_C)), Opt.DomainSearch)!)).toEqual(long);
  });
});

describe('DhcpServer: properties', () => {
  const macArb = fc.integer({ min: 1, max: 12 }).map((k) => 0x525400000000 + k);
  const opArb = fc.oneof(
    fc.record({ kind: fc.constant('lease' as const), mac: macArb }),
    fc.record({ kind: fc.constant('discover' as const), mac: macArb, want: fc.integer({ min: 0, max: 40 }) }),
    fc.record({ kind: fc.constant('reboot' as const), mac: macArb, want: fc.integer({ min: 0, max: 40 }) }),
    fc.record({ kind: fc.constant('release' as const), mac: macArb }),
    fc.record({ kind: fc.constant('decline' as const), mac: macArb }),
    fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 4_000_000 }) }),
  );
  const configArb = fc
    .record({
      prefix: fc.integer({ min: 26, max: 30 }),
      serverHost: fc.integer({ min: 1, max: 2 }),
      reservedHosts: fc.uniqueArray(fc.integer({ min: 0, max: 63 }), { maxLength: 6 }),
      preferred: fc.integer({ min: 0, max: 63 }),
    })
    .map((c) => {
      const network = ipv4(10, 9, 8, 0);
      const size = 2 ** (32 - c.prefix);
      const inNet = (h: number) => network + (h % size);
      return { network, size, conf: config({ network, prefix: c.prefix, serverIp: inNet(c.serverHost), dnsServers: [inNet(c.serverHost)], reserved: c.reservedHosts.map(inNet), preferredFirst: inNet(c.preferred) }) };
    });

  it('never hands out reserved, gateway, network or broadcast addresses; never the same address twice; table bounded', () => {
    fc.assert(
      fc.property(configArb, fc.array(opArb, { maxLength: 60 }), ({ network, size, conf }, ops) => {
        const clock = new ManualClock();
        const server = new DhcpServer(conf, clock);
        const forbidden = new Set([network, network + size - 1, conf.serverIp, ...(conf.reserved ?? [])]);
        const held = new Map<Mac, IPv4>();
        const check = (reply: DhcpReply | null) => {
          if (reply === null || reply.type === MsgType.Nak) return;
          const m = decode(reply);
          expect(forbidden.has(m.yiaddr)).toBe(false);
          expect(inSubnet(m.yiaddr, network, conf.prefix)).toBe(true);
        };
        for (const op of ops) {
          if (op.kind === 'advance') clock.advance(op.ms);
          else if (op.kind === 'lease') {
            const offer = server.handle(udhcpc.discover(op.mac), op.mac);
            check(offer);
            if (offer !== null) {
              const ack = server.handle(udhcpc.select(op.mac, decode(offer).yiaddr, conf.serverIp), op.mac);
              check(ack);
              if (ack?.type === MsgType.Ack) held.set(op.mac, decode(ack).yiaddr);
            }
          } else if (op.kind === 'discover') check(server.handle(dhclient.discover(op.mac, network + op.want), op.mac));
          else if (op.kind === 'reboot') check(server.handle(dhclient.initReboot(op.mac, network + op.want), op.mac));
          else if (op.kind === 'release') server.handle(udhcpc.release(op.mac, held.get(op.mac) ?? 0, conf.serverIp), op.mac);
          else server.handle(dhclient.decline(op.mac, held.get(op.mac) ?? 0), op.mac);
          const active = server.leases();
          expect(new Set(active.map((l) => l.ip)).size).toBe(active.length);
          expect(new Set(active.map((l) => l.mac)).size).toBe(active.length);
          expect(active.length).toBeLessThanOrEqual(size - 2);
          for (const l of active) expect(forbidden.has(l.ip)).toBe(false);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('handle() never throws on random bytes or mutated real messages', () => {
    const server = new DhcpServer(config(), new ManualClock());
    const seeds = [udhcpc.discover(MAC_A), udhcpc.select(MAC_A, GUEST, GATEWAY), dhclient.inform(MAC_A, GUEST), dhclient.decline(MAC_A, GUEST)];
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 600 }),
          fc.tuple(fc.constantFrom(...seeds), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 })).map(([seed, edits]) => {
            const b = seed.slice();
            for (const [at, v] of edits) b[at % b.length] = v;
            return b;
          }),
        ),
        (bytes) => {
          const reply = server.handle(bytes, MAC_A);
          if (reply !== null) expect(parseDhcp(reply.message)).not.toBeInstanceOf(ParseError);
        },
      ),
      { numRuns: 3000 },
    );
    expect(server.stats.received).toBe(3000);
  });
});

function parsedXid(bytes: Uint8Array): number {
  return readIPv4(bytes, 4);
}
