import { afterEach, describe, expect, it } from 'vitest';
import { createServer, Socket, type AddressInfo, type NetConnectOpts, type Server } from 'node:net';
import { createSocket } from 'node:dgram';
import { parseIPv6, type IPv6 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { classifyDestination, DEFAULT_NAT_OPTIONS, Nat, type NatOptions } from '../../src/nat/index.js';
import { ipv6HostLoopback } from '../../src/network.js';
import { ConfigError, parseIpv6Flags, parseServeArgs } from '../../src/config.js';
import { FakePendingTcp, FakeStack, waitFor, type FakeTcpSocket } from './nat-fake-stack.js';
import { startEgressNat } from './egress-nat-support.js';

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

  it('refuses every IPv6 destination when the NAT has no IPv6 side, and asks the special-range hook', () => {
    expect(classifyDestination(P('2001:db8::5'), DEFAULT_NAT_OPTIONS)).toEqual({ kind: 'refused', reason: 'ipv6-off' });
    const hooked = { ...rules, ipv6: { ...IPV6_RULES, specialRange6: (d: IPv6) => (d === P('2001:db8::5') ? 'documentation' : undefined) } };
    expect(classifyDestination(P('2001:db8::5'), hooked)).toEqual({ kind: 'refused', reason: 'special-range' });
    expect(classifyDestination(P('2001:db8::6'), hooked).kind).toBe('host');
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

describe('NAT over IPv6 under an allowlist (until the policy decides IPv6)', () => {
  it('refuses every IPv6 flow, even to a destination an IPv4 rule of the same form would allow, and dials nothing', async () => {
    const s = await startEgressNat(['*.t.test', '0.0.0.0/0:443'], { nat: { ipv6: IPV6_RULES } });
    cleanups.push(() => s.close());
    for (const dst of [HOST6, P('2001:db8::5'), P('2a00:1450:4001:81c::200e')]) {
      const p = syn6(dst, 443);
      s.nat.onTcpSyn(p);
      expect((await p.decided).kind, String(dst)).toBe('refused');
      s.nat.onUdp({ src: GUEST6, srcPort: 5000, dst, dstPort: 443, payload: new Uint8Array(1200) });
    }
    expect(s.dialed).toEqual([]);
    expect(s.nat.stats().policyBlocked).toEqual({ tcp: 3, udp: 3 });
    expect(s.nat.stats().udpFlows).toBe(0);
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
