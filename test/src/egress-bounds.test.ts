/**
 * Bounds of the egress wall that a mutation pass showed no test drove:
 *  - connections held for their SNI/Host count against --max-tcp-flows
 *    (TcpFlowTable's `extraFlows`), so a guest cannot open unbounded flows by
 *    never naming a host;
 *  - maxPeekBytes in the NAT's held connection and in the proxy's tunnel: a
 *    client whose bytes never name a host is cut at the bound
 *    ('peek-too-large'), and the bytes held never exceed it.
 *
 * Which bound trips first: an endless HTTP head is cut by the head reader's
 * own 16 KiB bound (malformed, 403) long before maxPeekBytes (160 KiB). A TLS
 * ClientHello is bounded at 131,400 handshake bytes, but the bytes held are
 * the raw records: sent in 1-byte records (5 bytes of header each) a hello
 * that announces ~128 KiB costs ~768 KiB on the wire, so maxPeekBytes is the
 * bound such a client meets, with the default options.
 *
 * The guest is the fake stack, servers are on 127.0.0.1, and connectHost
 * refuses anything but loopback (nothing here may leave the machine).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect as netConnect, createServer, type AddressInfo, type NetConnectOpts, type Socket } from 'node:net';
import { ipv4, parseIPv4, type IPv4 } from '../../netstack/addr.js';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime } from '../../src/egress/allowlist-runtime.js';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { DEFAULT_EGRESS_OPTIONS, type EgressOptions } from '../../src/egress/egress.js';
import { NULL_LOGGER } from '../../src/log.js';
import { Nat, type NatOptions } from '../../src/nat/index.js';
import { Tunnel } from '../../src/proxy/tunnel.js';
import { FakePendingTcp, FakeStack, type FakeTcpSocket, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
/** The guest's chosen destination for held connections: never dialed. */
const FRONTED = '198.51.100.7';
const HOST_ALIAS = '192.168.127.254';
const MAX_PEEK = DEFAULT_EGRESS_OPTIONS.maxPeekBytes;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

class MapResolver implements Resolver {
  async resolve4(name: string): Promise<ResolvedAddresses> {
    if (name === 'www.t.test') return { addresses: ['127.0.0.1'], ttl: 60 };
    throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
  }
  async resolve6(): Promise<ResolvedAddresses> {
    return { addresses: [], ttl: 60 };
  }
}

/** A loopback server that counts the connections it accepted (none may arrive from a refused flow). */
async function server(): Promise<{ port: number; accepted: () => number }> {
  let accepted = 0;
  const conns = new Set<Socket>();
  const srv = createServer((s) => {
    accepted++;
    conns.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as AddressInfo).port, accepted: () => accepted };
}

interface World {
  runtime: AllowlistRuntime;
  decisions: DecisionRecord[];
  dialed: string[];
}

async function allowlist(rules: string[], egress: Partial<EgressOptions> = {}): Promise<World> {
  const runtime = await AllowlistRuntime.start(
    {
      rules: parseRules(rules),
      resolver: new MapResolver(),
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: HOST_ALIAS,
      sinkhole: 'zero',
      guestSubnet: { network: '192.168.127.0', prefix: 24 },
      admitResolved: ['127.0.0.0/8'],
      hostAliasExempt: false,
      allowLinkLocal: false,
      egress: { ...DEFAULT_EGRESS_OPTIONS, ...egress },
      now: () => performance.now(),
    },
    NULL_LOGGER,
  );
  cleanups.push(() => runtime.close());
  const decisions: DecisionRecord[] = [];
  runtime.egress.decisions.subscribe((r) => decisions.push(r));
  return { runtime, decisions, dialed: [] };
}

function natFor(w: World, opts: Partial<NatOptions> = {}): Nat {
  const connectHost = (o: NetConnectOpts): Socket => {
    const host = (o as { host?: string }).host ?? '';
    w.dialed.push(`${host}:${(o as { port?: number }).port}`);
    if (!host.startsWith('127.')) throw new Error(`test refused to dial ${host}`);
    return netConnect(o);
  };
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], connectHost, ...opts }, NULL_LOGGER, w.runtime.dns, w.runtime.egress);
  nat.attach(new FakeStack());
  cleanups.push(() => nat.close());
  return nat;
}

let nextPort = 43000;
function syn(dst: string, dstPort: number): FakePendingTcp {
  return new FakePendingTcp({ src: GUEST, srcPort: nextPort++, dst: parseIPv4(dst)! as IPv4, dstPort });
}

async function accepted(p: FakePendingTcp): Promise<FakeTcpSocket> {
  const o = await p.decided;
  if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
  return o.socket;
}

/**
 * A TLS stream that never completes its ClientHello: the first record opens
 * a hello announcing `announced` bytes of body, then every record carries one
 * byte of it. Each record is valid on its own (type handshake, version 3.1,
 * length 1), so only a bound on the raw bytes held ends it before the hello does.
 */
function oneByteRecords(records: number, first: boolean, announced = 131_000): Buffer {
  const out = Buffer.alloc(records * 6);
  for (let i = 0; i < records; i++) {
    out.set([0x16, 0x03, 0x01, 0x00, 0x01], i * 6);
    out[i * 6 + 5] = 0x41;
  }
  if (first) {
    // The hello's header as the first four one-byte records: client_hello, uint24 length.
    out[5] = 0x01;
    out[11] = (announced >> 16) & 0xff;
    out[17] = (announced >> 8) & 0xff;
    out[23] = announced & 0xff;
  }
  return out;
}
const RECORDS_PER_CHUNK = 1000; // 6,000 bytes: a few segments' worth per guest write

describe('held connections count against --max-tcp-flows', () => {
  it('held (peeking) connections fill the flow limit: the next SYN, held or dialed by address, is refused with RST and counted', async () => {
    const srv = await server();
    const w = await allowlist([`www.t.test:${srv.port}`, `${HOST_ALIAS}:${srv.port}`]);
    const limited: string[] = [];
    // maxHeld far above maxTcpFlows: only the flow limit can refuse here.
    const nat = natFor(w, { maxTcpFlows: 3, maxHeldConnections: 100, onLimit: (l) => limited.push(l) });

    const held = [syn(FRONTED, srv.port), syn(FRONTED, srv.port), syn(FRONTED, srv.port)];
    for (const p of held) nat.onTcpSyn(p);
    const sockets = await Promise.all(held.map(accepted));
    expect(nat.stats()).toMatchObject({ held: 3, tcpFlows: 0 });

    // A fourth connection that would be held, and one an IP rule allows (dialed at once): both over the limit.
    const peek = syn(FRONTED, srv.port);
    nat.onTcpSyn(peek);
    expect((await peek.decided).kind).toBe('refused');
    const byAddress = syn(HOST_ALIAS, srv.port);
    nat.onTcpSyn(byAddress);
    expect((await byAddress.decided).kind).toBe('refused');
    expect(limited).toEqual(['tcpFlows', 'tcpFlows']);
    expect(nat.stats().tcp).toMatchObject({ limitRefused: 2, refused: 2 });
    expect(nat.stats().held).toBe(3);
    expect(w.dialed).toEqual([]);
    expect(srv.accepted()).toBe(0);

    // A held connection that goes away frees its slot: the next SYN gets one.
    sockets[0]!.guestReset();
    await waitFor(() => nat.stats().held === 2, 'a held slot to free');
    const again = syn(FRONTED, srv.port);
    nat.onTcpSyn(again);
    expect((await again.decided).kind).toBe('accepted');
    expect(nat.stats().tcp.limitRefused).toBe(2);
  });
});

describe('maxPeekBytes: bytes that never name a host are cut at the bound', () => {
  it('held connection: a ClientHello in endless 1-byte records is reset at maxPeekBytes (peek-too-large), holding at most the bound', async () => {
    const srv = await server();
    const w = await allowlist([`www.t.test:${srv.port}`]);
    const nat = natFor(w);
    const p = syn(FRONTED, srv.port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);

    let sent = 0;
    let maxHeld = 0;
    for (let i = 0; !sock.abortCalled && sent < 4 * MAX_PEEK; i++) {
      const chunk = oneByteRecords(RECORDS_PER_CHUNK, i === 0);
      sock.guestSend(chunk);
      sent += chunk.length;
      maxHeld = Math.max(maxHeld, nat.stats().heldBytes);
    }
    expect(maxHeld, 'bytes held for the peek').toBeLessThanOrEqual(MAX_PEEK);
    expect(sock.abortCalled, 'reset by Moat').toBe(true);
    expect(sock.closedWith).toBe('aborted');
    // Cut by the first chunk that would have crossed the bound, not later.
    expect(sent).toBeGreaterThan(MAX_PEEK);
    expect(sent).toBeLessThanOrEqual(MAX_PEEK + RECORDS_PER_CHUNK * 6);
    expect(maxHeld).toBeGreaterThan(MAX_PEEK - RECORDS_PER_CHUNK * 6);
    expect(nat.stats()).toMatchObject({ held: 0, heldBytes: 0 });
    expect(w.decisions.at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-too-large', dst: `${FRONTED}:${srv.port}` });
    expect(w.dialed).toEqual([]);
    expect(srv.accepted()).toBe(0);
  });

  it('held connection: an endless HTTP head meets the head reader\'s 16 KiB bound first (403 malformed), long before maxPeekBytes', async () => {
    const srv = await server();
    const w = await allowlist([`www.t.test:${srv.port}`]);
    const nat = natFor(w);
    const p = syn(FRONTED, srv.port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\n'));
    let sent = 0;
    while (!sock.endCalled && !sock.abortCalled && sent < MAX_PEEK) {
      sock.guestSend(Buffer.from(`X-Pad: ${'a'.repeat(1000)}\r\n`));
      sent += 1010;
    }
    expect(sock.endCalled).toBe(true);
    expect(sent).toBeLessThanOrEqual(17 * 1024);
    sock.consume();
    expect(sock.receivedConcat().toString('latin1')).toMatch(/^HTTP\/1\.1 403/);
    expect(w.decisions.at(-1)).toMatchObject({ decision: 'blocked', reason: 'malformed', detail: 'http:head-too-long' });
    expect(w.dialed).toEqual([]);
  });

  it('held connection: with a small maxPeekBytes, an HTTP head is cut at that bound instead (peek-too-large, reset)', async () => {
    const srv = await server();
    const w = await allowlist([`www.t.test:${srv.port}`], { maxPeekBytes: 4096 });
    const nat = natFor(w);
    const p = syn(FRONTED, srv.port);
    nat.onTcpSyn(p);
    const sock = await accepted(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\n'));
    let sent = 16;
    let maxHeld = 0;
    while (!sock.abortCalled && sent < 64 * 1024) {
      sock.guestSend(Buffer.from(`X-Pad: ${'a'.repeat(490)}\r\n`));
      sent += 500;
      maxHeld = Math.max(maxHeld, nat.stats().heldBytes);
    }
    expect(maxHeld, 'bytes held for the peek').toBeLessThanOrEqual(4096);
    expect(sock.abortCalled, 'reset by Moat').toBe(true);
    expect(sent).toBeLessThanOrEqual(4096 + 500);
    expect(w.decisions.at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-too-large' });
    expect(w.dialed).toEqual([]);
  });

  it('proxy tunnel: a ClientHello in endless 1-byte records is closed at maxPeekBytes (peek-too-large), holding at most the bound, nothing dialed', async () => {
    const w = await allowlist(['www.t.test']);
    const dials: string[] = [];
    const dialer = {
      connectFirst: async (addresses: readonly string[], port: number): Promise<Socket> => {
        dials.push(`${addresses.join(',')}:${port}`);
        throw new Error('this test dials nothing');
      },
    };
    // The proxy's client side: a real loopback connection; the tunnel gets the accepted end.
    let tunnel: Tunnel | undefined;
    let maxHeld = 0;
    let done = false;
    const srv = createServer((client) => {
      tunnel = new Tunnel(
        client,
        { name: 'www.t.test', addresses: ['127.0.0.1'], port: 443, peek: 'required', dst: 'www.t.test:443' },
        { egress: w.runtime.egress, dialer, log: NULL_LOGGER, serverFirstGraceMs: 1000 },
        () => (done = true),
      );
      tunnel.start();
      // Registered after the tunnel's own listener: sees what it holds after each chunk.
      client.on('data', () => (maxHeld = Math.max(maxHeld, tunnel!.bufferedBytes)));
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => srv.close(() => r())));
    const c = netConnect((srv.address() as AddressInfo).port, '127.0.0.1');
    c.on('error', () => {});
    cleanups.push(() => void c.destroy());
    let closed = false;
    c.on('close', () => (closed = true));
    await new Promise<void>((r) => c.once('connect', () => r()));

    // Write until the tunnel gives up, with the writes paced by the socket (never more than ~4x the bound).
    let sent = 0;
    for (let i = 0; !closed && !done && sent < 4 * MAX_PEEK; i++) {
      const chunk = oneByteRecords(RECORDS_PER_CHUNK, i === 0);
      sent += chunk.length;
      if (!c.write(chunk)) await new Promise<void>((r) => c.once('drain', () => r()));
      await new Promise((r) => setImmediate(r));
    }
    expect(maxHeld, 'bytes held for the peek').toBeLessThanOrEqual(MAX_PEEK);
    expect(maxHeld).toBeGreaterThan(0);
    await waitFor(() => done && closed, 'the tunnel to close');
    expect(tunnel!.phase).toBe('closed');
    expect(tunnel!.bufferedBytes).toBe(0);
    expect(w.decisions.at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-too-large', name: 'www.t.test', dst: 'www.t.test:443' });
    expect(dials).toEqual([]);
  });
});
