import { afterEach, describe, expect, it } from 'vitest';
import { createServer, Socket, type AddressInfo, type NetConnectOpts, type Server } from 'node:net';
import { createSocket } from 'node:dgram';
import { formatIPv6, parseIPv6, type IPv6 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { classifyDestination, DEFAULT_NAT_OPTIONS, Nat, type NatOptions } from '../../src/nat/index.js';
import { ipv6HostLoopback } from '../../src/host-loopback.js';
import { RANGES_CACHE_MAX, rangesCacheSize } from '../../src/nat/destination.js';
import { ConfigError, parseIpv6Flags, parseServeArgs } from '../../src/config.js';
import { FakePendingTcp, FakeStack, waitFor, type FakeTcpSocket } from './nat-fake-stack.js';
import { acceptedSocket, received, startEgressNat, syn } from './egress-nat-support.js';

const P = (t: string): IPv6 => parseIPv6(t)!;
const PREFIX = P('fd6d:6f61:7400::');
const GW6 = P('fd6d:6f61:7400::1');
const HOST6 = P('fd6d:6f61:7400::fe');
const GUEST6 = P('fd6d:6f61:7400:0:aa:bbff:fecc:ddee');
const IPV6_RULES = { gatewayIp: GW6, hostIp: HOST6, prefix: PREFIX, hostLoopback: '::1' };

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function makeNat(opts: Partial<NatOptions> = {}): { nat: Nat; stack: FakeStack } {
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], ipv6: IPV6_RULES, ...opts }, NULL_LOGGER);
  const stack = new FakeStack();
  nat.attach(stack);
  cleanups.push(() => nat.close());
  return { nat, stack };
}

async function listen6(onConn: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, '::1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { server, port: (server.address() as AddressInfo).port };
}

let nextPort = 41000;
const syn6 = (dst: IPv6, dstPort: number) => new FakePendingTcp({ src: GUEST6, srcPort: nextPort++, dst, dstPort });

describe('NAT destinations over IPv6', () => {
  const rules = { ...DEFAULT_NAT_OPTIONS, ipv6: IPV6_RULES };
  it.each([
    ['fd6d:6f61:7400::1', 'gateway'],
    ['fd6d:6f61:7400::fe', 'host ::1'],
    ['2001:db8::5', 'host 2001:db8::5'],
    ['2a00:1450:4001:81c::200e', 'host 2a00:1450:4001:81c::200e'],
    ['::', 'refused unspecified'],
    ['::1', 'refused loopback'],
    ['::ffff:127.0.0.1', 'refused ipv4-mapped'],
    ['::ffff:169.254.169.254', 'refused ipv4-mapped'],
    ['::127.0.0.1', 'refused ipv4-mapped'],
    ['64:ff9b::7f00:1', 'refused nat64'],
    ['ff02::1', 'refused multicast'],
    ['fe80::1', 'refused link-local'],
    ['fd6d:6f61:7400::77', 'refused virtual-network'],
  ])('%s -> %s', (text, expected) => {
    const d = classifyDestination(P(text), rules);
    const got = d.kind === 'gateway' ? 'gateway' : d.kind === 'host' ? `host ${d.address}` : `refused ${d.reason}`;
    expect(got).toBe(expected);
  });

  it('refuses every IPv6 destination when the NAT has no IPv6 side', () => {
    expect(classifyDestination(P('2001:db8::5'), DEFAULT_NAT_OPTIONS)).toEqual({ kind: 'refused', reason: 'ipv6-off' });
  });

  it.each([
    ['::ffff:0:7f00:1', 'refused ipv4-mapped'], // SIIT: IS 127.0.0.1
    ['64:ff9b:1::7f00:1', 'refused nat64'], // RFC 8215 local-use NAT64
    ['2002:a9fe:a9fe::1', 'refused link-local'], // 6to4 through 169.254.169.254
    ['2002:7f00:1::1', 'refused special-range'], // 6to4 through 127.0.0.1
    ['2001:0:7f00:1::1', 'refused special-range'], // Teredo server 127.0.0.1
    ['fd00:ec2::254', 'refused link-local'], // cloud metadata, as 169.254.169.254
    ['2002:808:808::1', 'host 2002:808:808::1'], // 6to4 through an ordinary relay
    ['fd12:3456::1', 'host fd12:3456::1'], // another ULA: reachable as RFC 1918 is over IPv4
  ])('the ranges of sni/ranges6.ts refused whatever the rules: %s -> %s', (text, expected) => {
    const d = classifyDestination(P(text), rules);
    expect(d.kind === 'host' ? `host ${d.address}` : d.kind === 'refused' ? `refused ${d.reason}` : d.kind).toBe(expected);
  });

  it('the per-address range cache is bounded: driven past RANGES_CACHE_MAX it stays within it and still answers right', () => {
    for (let i = 0; i < RANGES_CACHE_MAX + 100; i++) {
      expect(classifyDestination(P(`2a00:1450::${i.toString(16)}`), rules).kind).toBe('host');
      expect(rangesCacheSize()).toBeLessThanOrEqual(RANGES_CACHE_MAX);
    }
    expect(classifyDestination(P('fd00:ec2::254'), rules)).toEqual({ kind: 'refused', reason: 'link-local' });
    expect(classifyDestination(P('2002:7f00:1::1'), rules)).toEqual({ kind: 'refused', reason: 'special-range' });
  });

  it('the metadata prefix follows allowLinkLocal as 169.254/16 does (with an egress policy the policy decides it)', () => {
    expect(classifyDestination(P('fd00:ec2::254'), { ...rules, allowLinkLocal: true })).toEqual({ kind: 'host', address: 'fd00:ec2::254' });
    expect(classifyDestination(P('2002:a9fe:a9fe::1'), { ...rules, allowLinkLocal: true }).kind).toBe('refused');
  });

  it("maps the host alias to ::1 when the host's loopback has it, else to 127.0.0.1", () => {
    const lo = (family: 'IPv4' | 'IPv6', address: string) => ({ address, family, internal: true, netmask: '', mac: '', cidr: null, scopeid: 0 });
    expect(ipv6HostLoopback({ lo: [lo('IPv4', '127.0.0.1'), lo('IPv6', '::1')] } as never)).toBe('::1');
    expect(ipv6HostLoopback({ lo: [lo('IPv4', '127.0.0.1')] } as never)).toBe('127.0.0.1');
  });
});

describe('NAT over IPv6', () => {
  it("dials the host alias's IPv6 flows to ::1 and relays bytes both ways", async () => {
    let got = '';
    const { port } = await listen6((s) => {
      s.on('data', (c) => (got += c.toString()));
      s.on('end', () => s.end('pong'));
    });
    const { nat } = makeNat();
    const p = syn6(HOST6, port);
    nat.onTcpSyn(p);
    const o = await p.decided;
    expect(o.kind).toBe('accepted');
    const sock = (o as { socket: FakeTcpSocket }).socket;
    sock.guestSend(new TextEncoder().encode('ping'));
    sock.guestFin();
    await waitFor(() => sock.receivedBytes === 4, 'the reply');
    expect(got).toBe('ping');
    expect(Buffer.concat(sock.received).toString()).toBe('pong');
  });

  it('dials an IPv6 destination over IPv6 (the address the guest chose, as text)', async () => {
    const dialed: NetConnectOpts[] = [];
    const { nat } = makeNat({
      connectHost: (opts) => {
        dialed.push(opts);
        const s = new Socket();
        setImmediate(() => s.destroy(new Error('test: not dialed')));
        return s;
      },
    });
    const p = syn6(P('2001:db8::5'), 443);
    nat.onTcpSyn(p);
    await p.decided;
    expect(dialed).toHaveLength(1);
    expect(dialed[0]).toMatchObject({ host: '2001:db8::5', port: 443 });
  });

  it('refuses (RST) an IPv4-mapped destination and dials nothing', async () => {
    const dialed: NetConnectOpts[] = [];
    const { nat } = makeNat({ connectHost: (opts) => (dialed.push(opts), new Socket()) });
    const p = syn6(P('::ffff:127.0.0.1'), 22);
    nat.onTcpSyn(p);
    expect((await p.decided).kind).toBe('refused');
    expect(dialed).toHaveLength(0);
  });

  it('relays UDP to the host alias over a udp6 socket, replies back to the guest from the alias', async () => {
    const server = createSocket('udp6');
    await new Promise<void>((r) => server.bind(0, '::1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    server.on('message', (m, rinfo) => server.send(Buffer.concat([Buffer.from('re:'), m]), rinfo.port, rinfo.address));
    const { nat, stack } = makeNat();
    nat.onUdp({ src: GUEST6, srcPort: 5353, dst: HOST6, dstPort: server.address().port, payload: new TextEncoder().encode('hi') });
    await waitFor(() => stack.udpSent.length === 1, 'the UDP reply');
    expect(stack.udpSent[0]).toMatchObject({ from: HOST6, to: GUEST6, toPort: 5353 });
    expect(stack.udpSent[0]!.payload.toString()).toBe('re:hi');
  });
});

/** The runtime's IPv6 side, as src/network.ts passes it for --ipv6 on. */
const RUNTIME_IPV6 = { guestPrefix: { network: 'fd6d:6f61:7400::', prefix: 64 }, gatewayIpv6: 'fd6d:6f61:7400::1', hostAliasIpv6: 'fd6d:6f61:7400::fe' };

async function egress6(rules: string[], opts: Parameters<typeof startEgressNat>[1] = {}) {
  const s = await startEgressNat(rules, {
    names: { 'www.t.test': ['127.0.0.1'], 'v4only.t.test': ['127.0.0.1'] },
    names6: { 'www.t.test': ['::1'] },
    admit: ['127.0.0.0/8', '::1/128'],
    ipv6: RUNTIME_IPV6,
    ...opts,
    nat: { ipv6: IPV6_RULES, ...opts.nat },
  });
  cleanups.push(() => s.close());
  return s;
}

/** A dual-stack server on [::] (so both 127.0.0.1 and ::1 reach it): answers "ok" to a complete head. */
async function dualServer(): Promise<number> {
  const { port } = await listen('::', (s) => s.on('data', (d) => (d.includes('\r\n\r\n') ? s.end('ok') : undefined)));
  return port;
}

async function listen(host: string, onConn: (s: Socket) => void): Promise<{ port: number }> {
  const conns = new Set<Socket>();
  const server = createServer((s) => {
    conns.add(s);
    s.on('error', () => {});
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as AddressInfo).port };
}

const headFor = (name: string) => Buffer.from(`GET / HTTP/1.1\r\nHost: ${name}\r\n\r\n`);
const egressDecisions = (s: { logLines: Record<string, unknown>[] }) => s.logLines.filter((l) => l['msg'] === 'egress decision');

describe('NAT over IPv6 under an allowlist (issue 19: the same policy for both families)', () => {
  it('holds an IPv6 flow for its Host and dials the NAME, the flow\'s own family first; an IPv4-only name from an IPv6 flow over IPv4', async () => {
    const port = await dualServer();
    const s = await egress6([`www.t.test:${port}`, `v4only.t.test:${port}`]);
    // The guest's address is never dialed: 2001:db8::5 would leave the test (connectHost refuses it).
    for (const [name, dst, want] of [
      ['www.t.test', P('2001:db8::5'), `::1:${port}`],
      ['v4only.t.test', P('2001:db8::6'), `127.0.0.1:${port}`],
    ] as const) {
      const p = syn6(dst, port);
      s.nat.onTcpSyn(p);
      const o = await p.decided;
      expect(o.kind, name).toBe('accepted');
      const sock = (o as { socket: FakeTcpSocket }).socket;
      sock.guestSend(headFor(name));
      await waitFor(() => sock.receivedBytes === 2, `the reply through ${name}`);
      expect(s.dialed.at(-1)).toBe(want);
      expect(egressDecisions(s).at(-1)).toMatchObject({ decision: 'allowed', reason: 'name-host', name, dst: `${formatIPv6(dst)}:${port}` });
    }
    // The IPv4 flow to the same dual-stack name is dialed over IPv4.
    const p4 = syn('198.51.100.7', port);
    s.nat.onTcpSyn(p4);
    const sock4 = await acceptedSocket(p4);
    sock4.guestSend(headFor('www.t.test'));
    await waitFor(() => sock4.receivedBytes === 2, 'the IPv4 reply');
    expect(s.dialed.at(-1)).toBe(`127.0.0.1:${port}`);
  });

  it('a Host outside the rules over IPv6 gets the same 403 as over IPv4; nothing is dialed', async () => {
    const port = await dualServer();
    const s = await egress6([`www.t.test:${port}`]);
    const p = syn6(P('2001:db8::5'), port);
    s.nat.onTcpSyn(p);
    const o = await p.decided;
    const sock = (o as { socket: FakeTcpSocket }).socket;
    sock.guestSend(headFor('evil.t.test'));
    await waitFor(() => sock.endCalled, 'the refusal');
    expect(received(sock)).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n[^]*x-moat-reason: name-not-allowed/);
    expect(s.dialed).toEqual([]);
  });

  it('an IPv4 rule opens no IPv6 destination; the IPv6 host alias needs its own exact rule, then leads to ::1', async () => {
    const { port } = await listen('::1', (c) => c.end('hi'));
    const s = await egress6(['0.0.0.0/0:8443', `[fd6d:6f61:7400::fe]:${port}`]);
    const refusedFlows: [IPv6, number, string][] = [
      [P('2a00:1450:4001:81c::200e'), 8443, 'no-rule'],
      [HOST6, 8443, 'host-alias'],
    ];
    for (const [dst, dport, reason] of refusedFlows) {
      const p = syn6(dst, dport);
      s.nat.onTcpSyn(p);
      expect((await p.decided).kind, formatIPv6(dst)).toBe('refused');
      expect(egressDecisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason, dst: `${formatIPv6(dst)}:${dport}` });
    }
    const p = syn6(HOST6, port);
    s.nat.onTcpSyn(p);
    expect((await p.decided).kind).toBe('accepted');
    expect(s.dialed).toEqual([`::1:${port}`]);
    expect(s.nat.stats().policyBlocked.tcp).toBe(2);
  });

  it('UDP over IPv6 by IP rule only: the alias with its exact rule is relayed to ::1, without one it is dropped and counted', async () => {
    const server = createSocket('udp6');
    await new Promise<void>((r) => server.bind(0, '::1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    server.on('message', (m, rinfo) => server.send(Buffer.concat([Buffer.from('re:'), m]), rinfo.port, rinfo.address));
    const uport = server.address().port;
    const s = await egress6([`[fd6d:6f61:7400::fe]:${uport}`, 'www.t.test']);
    s.nat.onUdp({ src: GUEST6, srcPort: 5353, dst: HOST6, dstPort: uport, payload: new TextEncoder().encode('hi') });
    await waitFor(() => s.stack.udpSent.length === 1, 'the UDP reply');
    expect(s.stack.udpSent[0]).toMatchObject({ from: HOST6, to: GUEST6, toPort: 5353 });
    s.nat.onUdp({ src: GUEST6, srcPort: 5354, dst: HOST6, dstPort: uport + 1 === 65536 ? 1 : uport + 1, payload: new Uint8Array(4) });
    s.nat.onUdp({ src: GUEST6, srcPort: 5355, dst: P('2001:db8::5'), dstPort: 53, payload: new Uint8Array(4) });
    expect(s.nat.stats().policyBlocked.udp).toBe(2);
    expect(s.nat.stats().udpFlows).toBe(1);
  });

  it('metadata, the IPv4 forms (mapped, SIIT, NAT64) and 6to4/Teredo through special relays are refused under ::/0 and 0.0.0.0/0, even in audit mode', async () => {
    for (const mode of ['enforce', 'audit'] as const) {
      const s = await egress6(['::/0', '0.0.0.0/0'], { egress: { mode } });
      for (const text of ['fd00:ec2::254', '::ffff:169.254.169.254', '::ffff:0:7f00:1', '64:ff9b::a9fe:a9fe', '64:ff9b:1::7f00:1', '2002:a9fe:a9fe::1', '2002:7f00:1::1', '2001:0:7f00:1::1']) {
        const p = syn6(P(text), 80);
        s.nat.onTcpSyn(p);
        expect((await p.decided).kind, `${mode} ${text}`).toBe('refused');
        s.nat.onUdp({ src: GUEST6, srcPort: 5000, dst: P(text), dstPort: 80, payload: new Uint8Array(4) });
      }
      expect(s.dialed, mode).toEqual([]);
      expect(s.nat.stats().udpFlows, mode).toBe(0);
    }
  });
});

describe('--ipv6 and --ipv6-prefix', () => {
  const io = { readFile: () => { throw new Error('no file'); }, readResolvConf: () => 'nameserver 127.0.0.53\n' };
  const cfg = (...args: string[]) => {
    const r = parseServeArgs(['--listen-qemu', 'unix:///tmp/x.sock', ...args], io);
    if (r.kind !== 'config') throw new Error('help');
    return r.config;
  };

  it('is on by default with the ULA fd6d:6f61:7400::/64, gateway ::1 and host alias ::fe', () => {
    const c = cfg();
    expect(c.ipv6).toEqual({ prefix: PREFIX, gatewayIp: GW6, hostIp: HOST6 });
  });

  it('takes another /64, and off', () => {
    expect(cfg('--ipv6-prefix', 'fd12:3456:789a:1::/64').ipv6?.gatewayIp).toBe(P('fd12:3456:789a:1::1'));
    expect(cfg('--ipv6', 'off').ipv6).toBeUndefined();
  });

  it('names the flag for a bad value, a prefix that is not a unicast /64, and --ipv6 on below MTU 1280', () => {
    const label = (text: string, l: string) => ({ text, label: l });
    expect(() => parseIpv6Flags(label('yes', '--ipv6'), undefined, 1500)).toThrow(/--ipv6: must be on or off/);
    for (const bad of ['fd00::/48', 'fd00::', 'nonsense/64', 'fe80::/64', 'ff02::/64', '::ffff:0:0/64']) {
      expect(() => parseIpv6Flags(undefined, label(bad, '--ipv6-prefix'), 1500), bad).toThrow(ConfigError);
      expect(() => parseIpv6Flags(undefined, label(bad, '--ipv6-prefix'), 1500), bad).toThrow(/--ipv6-prefix/);
    }
    expect(() => parseIpv6Flags(label('on', '--ipv6'), undefined, 1000)).toThrow(/--ipv6: IPv6 needs --mtu 1280/);
    expect(parseIpv6Flags(undefined, undefined, 1000)).toBeUndefined();
  });
});

describe('port forwards to the guest IPv6 address', () => {
  it('a host connection becomes connectTcp from the gateway ::1 to the guest address; UDP peers likewise', async () => {
    const { PortForwarder } = await import('../../src/forwarder.js');
    const { nat, stack } = makeNat();
    const fwd = new PortForwarder({ gatewayIp: DEFAULT_NAT_OPTIONS.gatewayIp, gatewayIp6: GW6, firstPort: 50000, lastPort: 50010 }, NULL_LOGGER, nat);
    fwd.attach(stack);
    cleanups.push(() => fwd.close());
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    await fwd.expose({ local: `127.0.0.1:${port}`, remote: `[${'fd6d:6f61:7400::2'}]:22`, protocol: 'tcp' });
    const c = new Socket();
    c.on('error', () => {});
    c.connect(port, '127.0.0.1');
    cleanups.push(() => void c.destroy());
    await waitFor(() => stack.connects.length === 1, 'connectTcp');
    expect(stack.connects[0]!.endpoints).toMatchObject({ from: GW6, to: P('fd6d:6f61:7400::2'), toPort: 22 });
  });

  it('an IPv6 forward is refused when IPv6 is off, and --forward checks the address is in the prefix', async () => {
    const { PortForwarder } = await import('../../src/forwarder.js');
    const { nat, stack } = makeNat();
    const fwd = new PortForwarder({ gatewayIp: DEFAULT_NAT_OPTIONS.gatewayIp, firstPort: 50000, lastPort: 50010 }, NULL_LOGGER, nat);
    fwd.attach(stack);
    cleanups.push(() => fwd.close());
    await expect(fwd.expose({ local: '127.0.0.1:1', remote: '[fd6d:6f61:7400::2]:22', protocol: 'tcp' })).rejects.toThrow(/IPv6 is off/);
    const io = { readFile: () => { throw new Error('no file'); }, readResolvConf: () => 'nameserver 127.0.0.53\n' };
    const parse = (...a: string[]) => parseServeArgs(['--listen-qemu', 'unix:///tmp/x.sock', ...a], io);
    expect(parse('--forward', '127.0.0.1:2222=[fd6d:6f61:7400::2]:22').kind).toBe('config');
    expect(() => parse('--forward', '127.0.0.1:2222=[2001:db8::2]:22')).toThrow(/--forward: guest address \[2001:db8::2\] is not a guest address in --ipv6-prefix/);
    expect(() => parse('--forward', '127.0.0.1:2222=[fd6d:6f61:7400::1]:22')).toThrow(/not a guest address/);
    expect(() => parse('--ipv6', 'off', '--forward', '127.0.0.1:2222=[fd6d:6f61:7400::2]:22')).toThrow(/needs IPv6 on/);
  });
});
