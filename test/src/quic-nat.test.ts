/**
 * The NAT's QUIC gate (src/nat/quic-flows.ts): guest UDP to a port a
 * hostname rule covers is held until its QUIC Initial names a host, then
 * NATed to an address Moat resolved for that name — never the guest's
 * destination (a TEST-NET address here, which nothing listens on; the
 * "internet" is a UDP server on 127.0.0.1 that every name resolves to).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { DEFAULT_LIVE_BUDGET } from '../../dns/live-budget.js';
import { parseIPv4, parseIPv6, type IPv4 } from '../../netstack/addr.js';
import { waitFor } from './nat-fake-stack.js';
import { decisions, FRONTED, GUEST, startEgressNat, type EgressNat } from './egress-nat-support.js';
import { buildClientHello } from '../sni/support/hello-builder.js';
import { flight, loadQuicFixtures } from '../sni/support/quic.js';
import { longHeaderDcid } from '../../sni/quic-initial.js';

const chromium = loadQuicFixtures().find((f) => f.name === 'chromium')!;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A UDP server on loopback that keeps every datagram. */
async function udpServer(): Promise<{ port: number; got: Buffer[] }> {
  const got: Buffer[] = [];
  const sock: UdpSocket = createSocket('udp4');
  sock.on('message', (m) => got.push(m));
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => sock.close(() => r())));
  return { port: sock.address().port, got };
}

type Setup = EgressNat;

async function setup(rules: string[], opts: Parameters<typeof startEgressNat>[1] = {}): Promise<Setup> {
  const s = await startEgressNat(rules, { names: { 'www.example.org': ['127.0.0.1'], 'other.example.org': ['127.0.0.1'] }, ...opts });
  cleanups.push(() => s.close());
  return s;
}

let nextPort = 45000;
function send(s: Setup, port: number, datagrams: readonly Uint8Array[], srcPort = nextPort++, dst = FRONTED): number {
  for (const payload of datagrams) s.nat.onUdp({ src: GUEST, srcPort, dst: parseIPv4(dst)! as IPv4, dstPort: port, payload });
  return srcPort;
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('QUIC by name through the NAT', () => {
  it('a real 2-packet chromium flight to an allowed name reaches the name\'s address, whatever the guest sent to', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`]);
    send(s, srv.port, chromium.datagrams);
    await waitFor(() => srv.got.length === 2, 3000);
    expect(srv.got.map((b) => b.toString('hex'))).toEqual(chromium.datagrams.map((b) => b.toString('hex')));
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'allowed', reason: 'name-quic', proto: 'quic', name: 'www.example.org', via: 'quic', dst: `${FRONTED}:${srv.port}` });
    // Later datagrams pass without inspection.
    const srcPort = nextPort - 1;
    send(s, srv.port, [Buffer.from('short header bytes')], srcPort);
    await waitFor(() => srv.got.length === 3, 3000);
  });

  it('the same flight one packet per datagram in reverse order is recognised', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`]);
    send(s, srv.port, [...chromium.datagrams].reverse());
    await waitFor(() => srv.got.length === 2, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ reason: 'name-quic', name: 'www.example.org' });
  });

  it('a refused name reaches nobody and is recorded with proto quic, the name and the reason', async () => {
    const srv = await udpServer();
    const s = await setup([`other.example.org:${srv.port}`]);
    send(s, srv.port, chromium.datagrams);
    await waitFor(() => decisions(s).length > 0, 3000);
    await sleep(100);
    expect(srv.got).toEqual([]);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'name-not-allowed', proto: 'quic', name: 'www.example.org' });
    expect(s.nat.stats().udpFlows).toBe(0);
  });

  it('bytes that are not QUIC on a covered port are refused not-quic', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`]);
    send(s, srv.port, [Buffer.from('hello?')]);
    await waitFor(() => decisions(s).length > 0, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'not-quic', proto: 'quic' });
    expect(srv.got).toEqual([]);
  });

  it('a new Initial with another name on an allowed flow is refused and ends the flow', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`, `other.example.org:${srv.port}`]);
    const srcPort = send(s, srv.port, chromium.datagrams);
    await waitFor(() => srv.got.length === 2, 3000);
    const other = flight(buildClientHello({ sni: 'other.example.org', alpn: ['h3'] }), { dcid: Buffer.from('1111111111111111', 'hex') });
    send(s, srv.port, other, srcPort);
    await waitFor(() => decisions(s).some((d) => d['reason'] === 'name-changed'), 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'name-changed', proto: 'quic', name: 'other.example.org' });
    expect(srv.got.length).toBe(2);
    expect(s.nat.stats().udpFlows).toBe(0);
    // And nothing more of that flow leaves while it is refused.
    send(s, srv.port, [Buffer.from('more')], srcPort);
    await sleep(100);
    expect(srv.got.length).toBe(2);
  });

  it('the same name in a new Initial on the flow passes', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`]);
    const srcPort = send(s, srv.port, chromium.datagrams);
    await waitFor(() => srv.got.length === 2, 3000);
    send(s, srv.port, flight(buildClientHello({ sni: 'WWW.example.org', alpn: ['h3'] }), { dcid: Buffer.from('2222222222222222', 'hex') }), srcPort);
    await waitFor(() => srv.got.length === 3, 3000);
  });

  it('the hold table is bounded: flows beyond maxHeld are dropped and counted', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`], { quic: { maxHeld: 3 } });
    for (let i = 0; i < 10; i++) send(s, srv.port, [chromium.datagrams[0]!]); // half a hello each: all stay held
    expect(s.nat.stats().quic).toMatchObject({ held: 3, heldRefused: 7 });
    expect(s.nat.stats().quic!.heldBytes).toBeLessThanOrEqual(3 * 32 * 1024);
    expect(srv.got).toEqual([]);
  });

  it('a flow is bounded in datagrams held: one more without a name is refused peek-too-large', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`], { quic: { holdDatagrams: 3 } });
    send(s, srv.port, [chromium.datagrams[0]!, chromium.datagrams[0]!, chromium.datagrams[0]!, chromium.datagrams[1]!]);
    await waitFor(() => decisions(s).length > 0, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-too-large', proto: 'quic' });
    await sleep(100);
    expect(srv.got).toEqual([]);
  });

  it('a flow is bounded in bytes held: a datagram past holdBytes without a name is refused peek-too-large', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`], { quic: { holdBytes: 2000 } });
    send(s, srv.port, chromium.datagrams); // 2 x 1250 bytes: the second does not fit
    await waitFor(() => decisions(s).length > 0, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-too-large', proto: 'quic' });
    expect(s.nat.stats().quic!.heldBytes).toBe(0);
    await sleep(100);
    expect(srv.got).toEqual([]);
  });

  it('a flow that never names a host is refused peek-timeout', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`], { quic: { holdMs: 100 } });
    send(s, srv.port, [chromium.datagrams[0]!]);
    await waitFor(() => decisions(s).length > 0, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-timeout', proto: 'quic' });
    expect(s.nat.stats().quic!.held).toBe(0);
  });

  it('audit mode: a refused QUIC name is recorded would-block (with its name, for moat learn) and goes through', async () => {
    const srv = await udpServer();
    const s = await setup([`other.example.org:${srv.port}`], { egress: { mode: 'audit' } });
    send(s, srv.port, chromium.datagrams);
    await waitFor(() => srv.got.length === 2, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'would-block', reason: 'name-not-allowed', proto: 'quic', name: 'www.example.org' });
  });

  it('a reload with drop closes a QUIC flow whose name the new rules refuse, and keeps one they allow', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`, `other.example.org:${srv.port}`]);
    send(s, srv.port, chromium.datagrams);
    send(s, srv.port, flight(buildClientHello({ sni: 'other.example.org', alpn: ['h3'] })));
    await waitFor(() => srv.got.length === 3, 3000);
    expect(s.nat.stats().udpFlows).toBe(2);
    await s.runtime.reload([`other.example.org:${srv.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(1);
    expect(s.nat.stats().udpFlows).toBe(1);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', proto: 'quic', name: 'www.example.org' });
  });

  it('a wildcard name Moat must look up live spends from the live budget: with live lookups off it is refused live-off', async () => {
    const srv = await udpServer();
    const s = await setup([`*.example.org:${srv.port}`], { liveLookups: { ...DEFAULT_LIVE_BUDGET, enabled: false } });
    send(s, srv.port, chromium.datagrams);
    await waitFor(() => decisions(s).some((d) => d['decision'] === 'blocked'), 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'live-off', proto: 'quic', name: 'www.example.org' });
    await sleep(100);
    expect(srv.got).toEqual([]);
  });

  it('moat proxy is unchanged: a SOCKS5 UDP datagram to 443 under a hostname rule is still refused udp-needs-ip-rule (no QUIC reader there)', async () => {
    const s = await setup(['www.example.org']);
    expect(s.runtime.egress.decideAddress('udp', FRONTED, 443)).toMatchObject({ verdict: 'block', reason: 'udp-needs-ip-rule' });
  });

  it('a second hello on the flow\'s own DCID (the same keys) is refused and ends the flow', async () => {
    const srv = await udpServer();
    const s = await setup([`www.example.org:${srv.port}`, `other.example.org:${srv.port}`]);
    const srcPort = send(s, srv.port, chromium.datagrams);
    await waitFor(() => srv.got.length === 2, 3000);
    // A retransmission of its own first packet passes.
    send(s, srv.port, [chromium.datagrams[0]!], srcPort);
    await waitFor(() => srv.got.length === 3, 3000);
    const dcid = longHeaderDcid(chromium.datagrams[0]!)!;
    const forged = flight(buildClientHello({ sni: 'other.example.org', alpn: ['h3'] }), { dcid });
    send(s, srv.port, forged, srcPort);
    await waitFor(() => decisions(s).some((d) => d['reason'] === 'name-changed'), 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'name-changed', proto: 'quic', name: 'www.example.org' });
    await sleep(100);
    expect(srv.got.length).toBe(3);
    expect(s.nat.stats().udpFlows).toBe(0);
  });

  it('audit mode: QUIC to 443 that no hostname rule covers is still read, so its would-block record carries the name (moat learn)', async () => {
    const s = await setup(['other.example.org:1234'], { egress: { mode: 'audit' } });
    send(s, 443, chromium.datagrams); // let through to www.example.org's address (127.0.0.1:443 here, loopback)
    await waitFor(() => decisions(s).length > 0, 3000);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'would-block', reason: 'udp-needs-ip-rule', proto: 'quic', name: 'www.example.org' });
  });
});

describe('QUIC by name over IPv6 (issue 19)', () => {
  it('an IPv6 flow is held for its QUIC name and sent to the name\'s IPv6 address first; an IPv4 flow to the same name over IPv4', async () => {
    const got: { from: string; bytes: number }[] = [];
    const sock: UdpSocket = createSocket({ type: 'udp6', ipv6Only: false });
    sock.on('message', (m, r) => got.push({ from: r.address, bytes: m.length }));
    await new Promise<void>((r) => sock.bind(0, '::', r));
    cleanups.push(() => new Promise<void>((r) => sock.close(() => r())));
    const port = sock.address().port;
    const P6 = (t: string) => parseIPv6(t)!;
    const s = await setup([`www.example.org:${port}`], {
      names: { 'www.example.org': ['127.0.0.1'], 'v4only.example.org': ['127.0.0.1'] },
      names6: { 'www.example.org': ['::1'] },
      admit: ['127.0.0.0/8', '::1/128'],
      ipv6: { guestPrefix: { network: 'fd6d:6f61:7400::', prefix: 64 }, gatewayIpv6: 'fd6d:6f61:7400::1', hostAliasIpv6: 'fd6d:6f61:7400::fe' },
      nat: { ipv6: { gatewayIp: P6('fd6d:6f61:7400::1'), hostIp: P6('fd6d:6f61:7400::fe'), prefix: P6('fd6d:6f61:7400::'), hostLoopback: '::1' } },
    });
    const guest6 = P6('fd6d:6f61:7400::2');
    // 2001:db8::7 is what the guest chose: never sent to (the name decides where the flow goes).
    for (const payload of chromium.datagrams) s.nat.onUdp({ src: guest6, srcPort: 46000, dst: P6('2001:db8::7'), dstPort: port, payload });
    await waitFor(() => got.length === 2, 3000);
    expect(got.map((g) => g.from)).toEqual(['::1', '::1']);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'allowed', reason: 'name-quic', proto: 'quic', name: 'www.example.org', dst: `2001:db8::7:${port}` });
    send(s, port, chromium.datagrams);
    await waitFor(() => got.length === 4, 3000);
    expect(got.slice(2).map((g) => g.from)).toEqual(['::ffff:127.0.0.1', '::ffff:127.0.0.1']);
    expect(s.dialed).toEqual([]); // UDP opens no TCP dial
  });
});
