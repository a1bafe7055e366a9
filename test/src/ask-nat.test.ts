/**
 * Ask mode in `moat serve`'s NAT and gateway DNS (--on-unlisted ask): a held
 * connection whose Host/SNI no rule covers, a QUIC flow whose Initial names
 * such a host, and a DNS query for one wait on the pending decision instead
 * of being refused. The guest is the fake stack, "the internet" 127.0.0.1
 * (egress-nat-support.ts: connectHost refuses anything else).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import dnsPacket from 'dns-packet';
import { parseIPv4, type IPv4 } from '../../netstack/addr.js';
import { DEFAULT_ASK_SETTINGS, type AskSettings } from '../../src/egress/ask-gate.js';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { TLS_ACCESS_DENIED_ALERT } from '../../src/egress/refusals.js';
import { waitFor } from './nat-fake-stack.js';
import { acceptedSocket, FRONTED, GUEST, received, startEgressNat, syn, type EgressNat } from './egress-nat-support.js';
import { buildClientHello } from '../sni/support/hello-builder.js';
import { flight, loadQuicFixtures } from '../sni/support/quic.js';

const chromium = loadQuicFixtures().find((f) => f.name === 'chromium')!;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function server(): Promise<{ port: number; accepted: number[] }> {
  const accepted = [0];
  const conns = new Set<Socket>();
  const srv = createServer((s) => {
    accepted[0]!++;
    conns.add(s);
    s.on('error', () => {});
    s.on('data', () => s.end('ok'));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as AddressInfo).port, accepted };
}

async function setup(rules: string[], ask: Partial<AskSettings> = {}): Promise<EgressNat & { records: DecisionRecord[] }> {
  const s = await startEgressNat(rules, { names: { 'www.t.test': ['127.0.0.1'], 'new.t.test': ['127.0.0.1'], 'www.example.org': ['127.0.0.1'] }, ask: { ...DEFAULT_ASK_SETTINGS, ...ask } });
  cleanups.push(() => s.close());
  const records: DecisionRecord[] = [];
  s.runtime.egress.decisions.subscribe((r) => records.push(r));
  return { ...s, records };
}

function connectWithHost(s: EgressNat, port: number, host: string) {
  const p = syn(FRONTED, port);
  s.nat.onTcpSyn(p);
  return acceptedSocket(p).then((sock) => {
    sock.guestSend(Buffer.from(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
    return sock;
  });
}

const ask = (s: EgressNat) => s.runtime.ask!;

describe('ask mode in the NAT and the gateway DNS', () => {
  it('a held connection naming an unlisted host waits; allow-name dials it and adds host:port; the next connection asks nothing', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`]);
    const sock = await connectWithHost(s, srv.port, 'new.t.test');
    await waitFor(() => ask(s).pending().length === 1, 3000);
    expect(ask(s).pending()[0]).toMatchObject({ name: 'new.t.test', proto: 'tcp', port: srv.port, dst: FRONTED, via: 'host', waiters: 1 });
    expect(s.dialed).toEqual([]);
    expect(sock.endCalled).toBe(false);
    const r = await ask(s).answer(ask(s).pending()[0]!.id, 'allow-name', 'api');
    expect(r).toMatchObject({ found: true, waiters: 1 });
    await waitFor(() => received(sock) === 'ok', 3000);
    expect(s.runtime.ruleTexts).toEqual([`www.t.test:${srv.port}`, `new.t.test:${srv.port}`]);
    const again = await connectWithHost(s, srv.port, 'new.t.test');
    await waitFor(() => received(again) === 'ok', 3000);
    expect(ask(s).stats()).toMatchObject({ asked: 1, allowedName: 1 });
    expect(s.records.filter((x) => x.name === 'new.t.test').map((x) => [x.decision, x.reason, x.asked ?? false, x.answeredBy ?? null])).toEqual([
      ['allowed', 'name-host', true, 'api'],
      ['allowed', 'name-host', false, null],
    ]);
  });

  it('deny: the waiting TLS connection gets the access_denied alert at once, HTTP the 403 naming ask-denied', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`]);
    const tls = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(tls);
    const tlsSock = await acceptedSocket(tls);
    tlsSock.guestSend(readFileSync(new URL('../fixtures/clienthello/curl.bin', import.meta.url))); // a real curl hello for www.example.org
    const http = await connectWithHost(s, srv.port, 'www.example.org');
    await waitFor(() => ask(s).pending()[0]?.waiters === 2, 3000);
    await ask(s).answer(ask(s).pending()[0]!.id, 'deny', 'api');
    await waitFor(() => tlsSock.endCalled && http.endCalled, 3000);
    tlsSock.consume();
    expect(tlsSock.receivedConcat()).toEqual(Buffer.from(TLS_ACCESS_DENIED_ALERT));
    expect(received(http)).toContain('x-moat-reason: ask-denied');
    expect(srv.accepted[0]).toBe(0);
  });

  it('many connections for one name are one decision; past maxWaitersPerName they are refused at once (ask-waiters-full)', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`], { maxWaitersPerName: 5 });
    const socks = await Promise.all(Array.from({ length: 7 }, () => connectWithHost(s, srv.port, 'new.t.test')));
    await waitFor(() => socks.filter((x) => x.endCalled).length === 2, 3000);
    expect(ask(s).pending()).toHaveLength(1);
    expect(ask(s).pending()[0]!.waiters).toBe(5);
    expect(socks.filter((x) => x.endCalled).map((x) => received(x).includes('x-moat-reason: ask-waiters-full'))).toEqual([true, true]);
    expect(ask(s).stats().refusedWaitersFull).toBe(2);
    await ask(s).answer(ask(s).pending()[0]!.id, 'allow-once', 'api');
    await waitFor(() => socks.filter((x) => !x.endCalled || received(x) === 'ok').every((x) => x.endCalled), 3000);
    expect(s.runtime.ruleTexts).toEqual([`www.t.test:${srv.port}`]); // allow-once adds nothing
  });

  it('past maxPending, a new unlisted name is refused at once (ask-pending-full)', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`], { maxPending: 2 });
    for (const n of ['a', 'b']) await connectWithHost(s, srv.port, `${n}.flood.test`);
    await waitFor(() => ask(s).pending().length === 2, 3000);
    const over = await connectWithHost(s, srv.port, 'c.flood.test');
    await waitFor(() => over.endCalled, 3000);
    expect(received(over)).toContain('x-moat-reason: ask-pending-full');
  });

  it('a guest that closes while asking leaves its place (its waiter goes, the decision stays)', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`]);
    const sock = await connectWithHost(s, srv.port, 'new.t.test');
    await waitFor(() => ask(s).pending()[0]?.waiters === 1, 3000);
    sock.guestReset();
    await waitFor(() => ask(s).pending()[0]?.waiters === 0, 3000);
  });

  it('a QUIC flow whose Initial names an unlisted host waits; allow-once lets its held datagrams out', async () => {
    const got: Buffer[] = [];
    const u: UdpSocket = createSocket('udp4');
    u.on('message', (m) => got.push(m));
    await new Promise<void>((r) => u.bind(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => u.close(() => r())));
    const port = u.address().port;
    const s = await setup([`www.t.test:${port}`]);
    for (const payload of chromium.datagrams) s.nat.onUdp({ src: GUEST, srcPort: 46001, dst: parseIPv4(FRONTED)! as IPv4, dstPort: port, payload });
    await waitFor(() => ask(s).pending().length === 1, 3000);
    expect(ask(s).pending()[0]).toMatchObject({ name: 'www.example.org', proto: 'quic', port, via: 'quic' });
    await new Promise((r) => setTimeout(r, 100));
    expect(got).toEqual([]);
    await ask(s).answer(ask(s).pending()[0]!.id, 'allow-once', 'api');
    await waitFor(() => got.length === 2, 3000);
    expect(s.records.at(-1)).toMatchObject({ decision: 'allowed', reason: 'asked-once', proto: 'quic', asked: true, answeredBy: 'api' });
    // deny on another flow: nothing leaves.
    const other = flight(buildClientHello({ sni: 'new.t.test', alpn: ['h3'] }), { dcid: Buffer.from('3333333333333333', 'hex') });
    for (const payload of other) s.nat.onUdp({ src: GUEST, srcPort: 46002, dst: parseIPv4(FRONTED)! as IPv4, dstPort: port, payload });
    await waitFor(() => ask(s).pending().length === 1, 3000);
    await ask(s).answer(ask(s).pending()[0]!.id, 'deny', 'api');
    await waitFor(() => s.records.at(-1)?.reason === 'ask-denied', 3000);
    expect(got).toHaveLength(2);
  });

  it('DNS: a query for an unlisted name waits; allow-name answers with the addresses Moat pinned; deny answers the sinkhole at once', async () => {
    const s = await setup(['www.t.test']);
    const query = (name: string, id: number) => dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
    const answerA = (bytes: Uint8Array | undefined) => (dnsPacket.decode(Buffer.from(bytes!)).answers ?? []).map((a) => (a as { data: string }).data);
    const first = s.runtime.dns.resolve(query('new.t.test', 1), 'udp');
    const retry = s.runtime.dns.resolve(query('new.t.test', 2), 'udp'); // the guest's retransmission joins the same decision
    await waitFor(() => ask(s).pending()[0]?.waiters === 2, 3000);
    expect(ask(s).pending()[0]).toMatchObject({ name: 'new.t.test', proto: 'dns', port: 53, via: 'dns' });
    await ask(s).answer(ask(s).pending()[0]!.id, 'allow-name', 'api');
    expect(answerA(await first)).toEqual(['127.0.0.1']);
    expect(answerA(await retry)).toEqual(['127.0.0.1']);
    expect(s.runtime.egress.pins.addressesFor('new.t.test')).toEqual(['127.0.0.1']);
    // The connection that follows needs no second ask: its name is a rule now.
    expect(s.runtime.egress.policy.decideName('tcp', 'new.t.test', 443).verdict).toBe('allow');
    expect(s.records.find((r) => r.proto === 'dns' && r.name === 'new.t.test')).toMatchObject({ decision: 'allowed', asked: true, answeredBy: 'api' });

    // allow-once: this query is answered (resolved upstream), no rule is added.
    const once = s.runtime.dns.resolve(query('www.example.org', 4), 'udp');
    await waitFor(() => ask(s).pending().length === 1, 3000);
    await ask(s).answer(ask(s).pending()[0]!.id, 'allow-once', 'api');
    expect(answerA(await once)).toEqual(['127.0.0.1']);
    expect(s.runtime.ruleTexts).toEqual(['www.t.test', 'new.t.test']);
    expect(s.records.find((r) => r.proto === 'dns' && r.name === 'www.example.org')).toMatchObject({ decision: 'allowed', reason: 'asked-once', asked: true });

    // A reverse lookup is sinkholed at once, never asked about.
    expect(answerA(await s.runtime.dns.resolve(query('7.100.51.198.in-addr.arpa', 5), 'udp'))).toEqual(['0.0.0.0']);
    expect(ask(s).pending()).toEqual([]);

    const denied = s.runtime.dns.resolve(query('evil.t.test', 3), 'udp');
    await waitFor(() => ask(s).pending().length === 1, 3000);
    await ask(s).answer(ask(s).pending()[0]!.id, 'deny', 'api');
    expect(answerA(await denied)).toEqual(['0.0.0.0']);
    expect(s.records.find((r) => r.proto === 'dns' && r.name === 'evil.t.test')).toMatchObject({ decision: 'blocked', reason: 'ask-denied', asked: true });
  });
});
