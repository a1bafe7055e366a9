import { afterEach, describe, expect, it } from 'vitest';
import { createSocket } from 'node:dgram';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import dnsPacket from 'dns-packet';
import fc from 'fast-check';
import { ipv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DnsForwarder, FrameReader, dnsQuestionKey, parseResolvConf, servfailFor } from '../../src/dns-forward.js';
import { DEFAULT_NAT_OPTIONS, Nat } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, udpDatagram, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const GATEWAY = DEFAULT_NAT_OPTIONS.gatewayIp;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Answers for the tiny upstream: name -> A address or TXT size. "silent.*" names get no answer. */
function answerFor(query: Buffer): Buffer | undefined {
  const q = dnsPacket.decode(query);
  const question = q.questions![0]!;
  if (question.name.startsWith('silent.')) return undefined;
  const answers: dnsPacket.Answer[] =
    question.type === 'TXT'
      ? [{ type: 'TXT', name: question.name, ttl: 60, data: Array.from({ length: 40 }, (_, i) => 'x'.repeat(200) + i) }]
      : [{ type: 'A', name: question.name, ttl: 60, data: question.name === 'a.test' ? '10.0.0.1' : '10.0.0.2' }];
  return dnsPacket.encode({ id: q.id, type: 'response', flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE, questions: q.questions, answers });
}

/** A DNS server on 127.0.0.1 (UDP and TCP on the same port). `queries` counts what it received. */
async function tinyDns(opts: { udp?: boolean; tcp?: boolean; junkFirst?: boolean } = {}): Promise<{ port: number; queries: number[] }> {
  const queries: number[] = [];
  let udp = createSocket('udp4');
  const onMessage = (msg: Buffer, rinfo: { port: number; address: string }) => {
    queries.push(msg.readUInt16BE(0));
    if (opts.udp === false) return;
    const answer = answerFor(msg);
    if (answer === undefined) return;
    if (opts.junkFirst) {
      // Same ID, different question: must be ignored (RFC 5452 9.1).
      const junk = dnsPacket.encode({ id: msg.readUInt16BE(0), type: 'response', questions: [{ type: 'A', name: 'evil.test' }], answers: [{ type: 'A', name: 'evil.test', data: '6.6.6.6' }] });
      udp.send(junk, rinfo.port, rinfo.address);
    }
    udp.send(answer, rinfo.port, rinfo.address);
  };
  udp.on('message', onMessage);
  const conns = new Set<Socket>();
  const tcp = createServer((s) => {
    conns.add(s);
    s.on('error', () => {});
    const reader = new FrameReader(65535);
    s.on('data', (chunk) => {
      for (const m of reader.push(chunk) ?? []) {
        queries.push((m[0]! << 8) | m[1]!);
        if (opts.tcp === false) continue;
        const answer = answerFor(Buffer.from(m));
        if (answer === undefined) continue;
        const len = Buffer.alloc(2);
        len.writeUInt16BE(answer.length);
        s.write(Buffer.concat([len, answer]));
      }
    });
  });
  // UDP and TCP on one port number: take a free UDP port, then try TCP on it;
  // on a busy machine that TCP port may be taken, so try again (bounded).
  let port = 0;
  for (let attempt = 0; ; attempt++) {
    await new Promise<void>((r) => udp.bind(0, '127.0.0.1', r));
    port = (udp.address() as AddressInfo).port;
    const listened = await new Promise<boolean>((r, j) => {
      tcp.once('error', (e: NodeJS.ErrnoException) => (e.code === 'EADDRINUSE' && attempt < 20 ? r(false) : j(e)));
      tcp.listen(port, '127.0.0.1', () => r(true));
    });
    if (listened) break;
    await new Promise<void>((r) => udp.close(() => r()));
    udp = createSocket('udp4');
    udp.on('message', onMessage);
  }
  cleanups.push(async () => {
    for (const c of conns) c.destroy();
    await new Promise<void>((r) => tcp.close(() => r()));
    await new Promise<void>((r) => udp.close(() => r()));
  });
  return { port, queries };
}

function query(name: string, id: number, type: dnsPacket.RecordType = 'A'): Buffer {
  return dnsPacket.encode({ id, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] });
}

function forwarder(port: number, extra: Partial<ConstructorParameters<typeof DnsForwarder>[0]> = {}): DnsForwarder {
  const f = new DnsForwarder({ upstreams: [{ host: '127.0.0.1', port }], timeoutMs: 500, attemptTimeoutMs: 200, ...extra }, NULL_LOGGER);
  cleanups.push(() => f.close());
  return f;
}

describe('DNS forwarder', () => {
  it('parses nameservers from resolv.conf text', () => {
    const text = '# comment\nnameserver 10.0.0.53\nsearch example\nnameserver ::1 \nnameserver bogus\noptions ndots:1\nnameserver 127.0.0.53 # stub\n';
    expect(parseResolvConf(text)).toEqual([
      { host: '10.0.0.53', port: 53 },
      { host: '::1', port: 53 },
      { host: '127.0.0.53', port: 53 },
    ]);
  });

  it('builds SERVFAIL with the query ID and question', () => {
    const sf = servfailFor(query('x.test', 0x1234, 'MX'))!;
    const d = dnsPacket.decode(Buffer.from(sf));
    expect(d.id).toBe(0x1234);
    expect(d.type).toBe('response');
    expect(d.rcode).toBe('SERVFAIL');
    expect(d.questions).toEqual([{ name: 'x.test', type: 'MX', class: 'IN' }]);
    expect(d.answers).toEqual([]);
    expect(servfailFor(new Uint8Array(5))).toBeUndefined();
  });

  it('property: never throws on arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
        dnsQuestionKey(b);
        servfailFor(b);
        return true;
      }),
    );
  });

  it('forwards over UDP, restoring the guest ID, and keeps same-ID queries apart', async () => {
    const up = await tinyDns();
    const f = forwarder(up.port);
    const [a, b] = await Promise.all([f.resolve(query('a.test', 7), 'udp'), f.resolve(query('b.test', 7), 'udp')]);
    const da = dnsPacket.decode(Buffer.from(a!));
    const db = dnsPacket.decode(Buffer.from(b!));
    expect(da.id).toBe(7);
    expect(db.id).toBe(7);
    expect(da.answers![0]).toMatchObject({ name: 'a.test', data: '10.0.0.1' });
    expect(db.answers![0]).toMatchObject({ name: 'b.test', data: '10.0.0.2' });
    // Upstream saw distinct IDs, not the guest's.
    expect(new Set(up.queries).size).toBe(2);
    expect(f.stats().inFlight).toBe(0);
  });

  it('ignores a reply whose question does not match', async () => {
    const up = await tinyDns({ junkFirst: true });
    const f = forwarder(up.port);
    const answer = dnsPacket.decode(Buffer.from((await f.resolve(query('a.test', 9), 'udp'))!));
    expect(answer.answers![0]).toMatchObject({ name: 'a.test', data: '10.0.0.1' });
    await waitFor(() => f.stats().unmatchedReplies === 1, 'junk counted');
  });

  it('answers SERVFAIL when the upstream stays silent past the deadline', async () => {
    const up = await tinyDns({ udp: false, tcp: false });
    const f = forwarder(up.port, { timeoutMs: 300, attemptTimeoutMs: 100 });
    const t0 = Date.now();
    const [u, t] = await Promise.all([f.resolve(query('a.test', 11), 'udp'), f.resolve(query('a.test', 12), 'tcp')]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    for (const [msg, id] of [[u, 11], [t, 12]] as const) {
      const d = dnsPacket.decode(Buffer.from(msg!));
      expect(d.id).toBe(id);
      expect(d.rcode).toBe('SERVFAIL');
    }
    expect(up.queries.length).toBeGreaterThanOrEqual(3); // UDP retried
    expect(f.stats().timeouts).toBe(2);
  });

  it('retries the next upstream when the first is silent', async () => {
    const silent = await tinyDns({ udp: false });
    const good = await tinyDns();
    const f = new DnsForwarder(
      { upstreams: [{ host: '127.0.0.1', port: silent.port }, { host: '127.0.0.1', port: good.port }], timeoutMs: 2000, attemptTimeoutMs: 100 },
      NULL_LOGGER,
    );
    cleanups.push(() => f.close());
    const d = dnsPacket.decode(Buffer.from((await f.resolve(query('a.test', 3), 'udp'))!));
    expect(d.rcode).toBe('NOERROR');
    expect(d.answers![0]).toMatchObject({ data: '10.0.0.1' });
  });

  it('answers SERVFAIL at once beyond maxInFlight', async () => {
    const up = await tinyDns({ udp: false });
    const f = forwarder(up.port, { maxInFlight: 1, timeoutMs: 300 });
    const first = f.resolve(query('a.test', 1), 'udp');
    const t0 = Date.now();
    const second = dnsPacket.decode(Buffer.from((await f.resolve(query('b.test', 2), 'udp'))!));
    expect(Date.now() - t0).toBeLessThan(100);
    expect(second.rcode).toBe('SERVFAIL');
    expect(f.stats().overloaded).toBe(1);
    await first;
  });

  it('through the NAT: UDP to gateway:53 is answered from gateway:53', async () => {
    const up = await tinyDns();
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: up.port }] }, NULL_LOGGER);
    cleanups.push(() => nat.close());
    const stack = new FakeStack();
    nat.attach(stack);
    nat.onUdp(udpDatagram({ src: GUEST, srcPort: 33333, dst: GATEWAY, dstPort: 53 }, query('a.test', 0xbeef)));
    const [reply] = await stack.waitUdp(1);
    expect(reply).toMatchObject({ from: GATEWAY, fromPort: 53, to: GUEST, toPort: 33333 });
    const d = dnsPacket.decode(reply!.payload);
    expect(d.id).toBe(0xbeef);
    expect(d.answers![0]).toMatchObject({ data: '10.0.0.1' });
    expect(nat.stats().udpFlows).toBe(0); // DNS is not a NAT flow
  });

  it('through the NAT: TCP to gateway:53 with 2-byte framing, pipelined, large answers, FIN after the last answer', async () => {
    const up = await tinyDns();
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: up.port }] }, NULL_LOGGER);
    cleanups.push(() => nat.close());
    nat.attach(new FakeStack());
    const p = new FakePendingTcp({ src: GUEST, srcPort: 44444, dst: GATEWAY, dstPort: 53 }, { capacity: 1000, autoConsume: true });
    nat.onTcpSyn(p);
    const o = await p.decided;
    if (o.kind !== 'accepted') throw new Error(o.kind);
    const sock = o.socket;
    const frame = (m: Buffer): Buffer => Buffer.concat([Buffer.from([m.length >> 8, m.length & 0xff]), m]);
    const q1 = frame(query('a.test', 1));
    const q2 = frame(query('big.test', 2, 'TXT'));
    // Split across segments at awkward places.
    const all = Buffer.concat([q1, q2]);
    sock.guestSend(all.subarray(0, 1));
    sock.guestSend(all.subarray(1, q1.length + 3));
    sock.guestSend(all.subarray(q1.length + 3));
    sock.guestFin();
    await waitFor(() => sock.endCalled && sock.bufferedAmount === 0, 'answers and FIN');
    const frames = new FrameReader(65535).push(sock.receivedConcat())!;
    expect(frames).toHaveLength(2);
    const d1 = dnsPacket.decode(Buffer.from(frames[0]!));
    const d2 = dnsPacket.decode(Buffer.from(frames[1]!));
    expect(d1.id).toBe(1);
    expect(d1.answers![0]).toMatchObject({ data: '10.0.0.1' });
    expect(d2.id).toBe(2);
    expect(frames[1]!.length).toBeGreaterThan(1000); // larger than the fake send buffer: written across onDrain
    expect((d2.answers![0] as { data: Buffer[] }).data).toHaveLength(40);
  });
});
