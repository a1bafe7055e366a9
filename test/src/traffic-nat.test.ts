/**
 * Rate limits and byte budgets in the NAT of `moat serve`: the fake guest
 * (nat-fake-stack.ts) against real loopback servers.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat, type NatOptions } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, type FakeTcpSocket, waitFor } from './nat-fake-stack.js';
import { acceptedSocket, decisions, FRONTED, GUEST, received, startEgressNat, syn, type EgressNat } from './egress-nat-support.js';
import { decodeAnswer, dnsQuery } from './allowlist-upstream.js';
import { createSocket } from 'node:dgram';
import { ipv4, parseIPv4, type IPv4 } from '../../netstack/addr.js';
import { loadQuicFixtures } from '../sni/support/quic.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const ALIAS = '192.168.127.254';
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A loopback server that counts what each connection sent (and what it got at all), optionally answering `answer` bytes. */
async function countingServer(answer = 0): Promise<{ port: number; received: () => number; perConn: number[]; times: { t: number; total: number }[] }> {
  const perConn: number[] = [];
  const times: { t: number; total: number }[] = [];
  let total = 0;
  const conns = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    conns.add(s);
    const i = perConn.push(0) - 1;
    s.on('error', () => {});
    s.on('data', (c: Buffer) => {
      perConn[i]! += c.length;
      total += c.length;
      times.push({ t: performance.now(), total });
    });
    s.on('end', () => s.end());
    if (answer > 0) s.write(randomBytes(answer));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as AddressInfo).port, received: () => total, perConn, times };
}

/** Sends `data` as the guest, segment by segment, honouring pause(); stops when the socket is closed. */
async function guestSend(sock: FakeTcpSocket, data: Uint8Array, segment = 16 * KiB): Promise<void> {
  for (let off = 0; off < data.length && sock.closedWith === undefined; off += segment) {
    while (sock.paused && sock.closedWith === undefined) await new Promise((r) => setTimeout(r, 1));
    if (sock.closedWith !== undefined) return;
    sock.guestSend(data.subarray(off, off + segment));
    await new Promise((r) => setImmediate(r));
  }
}

function plainNat(opts: Partial<NatOptions>): Nat {
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], ...opts }, NULL_LOGGER);
  nat.attach(new FakeStack());
  cleanups.push(() => nat.close());
  return nat;
}

let nextPort = 45000;
function aliasSyn(port: number, socketOpts?: { capacity: number; autoConsume: boolean }): FakePendingTcp {
  return new FakePendingTcp({ src: ipv4(192, 168, 127, 2), srcPort: nextPort++, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: port }, socketOpts);
}

describe('rate limits (moat serve NAT)', () => {
  it('egress: bytes reach the host no faster than rate x t + burst, all of them, in order; the guest is paused, never dropped', async () => {
    const rate = 2 * MiB;
    const burst = 64 * KiB;
    const srv = await countingServer();
    const hash = createHash('sha256');
    const nat = plainNat({ rateEgress: { rate, burst } });
    const p = aliasSyn(srv.port);
    const t0 = performance.now();
    nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    const up = randomBytes(MiB);
    hash.update(up);
    await guestSend(sock, up);
    sock.guestFin();
    await waitFor(() => srv.received() === up.length, 'all bytes at the server', 10_000);
    const elapsed = performance.now() - t0;
    // The invariant, checked at every server read (a receive is later than the write it reflects).
    for (const s of srv.times) expect(s.total).toBeLessThanOrEqual((rate * (s.t - t0)) / 1000 + burst);
    expect(sock.pauseCount).toBeGreaterThan(0);
    expect(nat.stats().rate?.egress).toMatchObject({ rate, burst, bytes: up.length });
    expect(nat.stats().rate?.egress?.waits).toBeGreaterThan(0);
    // Generous sanity band only: (1 MiB - burst) / 2 MiB/s = 469 ms at the least.
    expect(elapsed).toBeGreaterThan(400);
  }, 20_000);

  it('egress: a guest FIN behind bytes the limit still holds reaches the host after them', async () => {
    const srv = await countingServer();
    let ended = false;
    const nat = plainNat({ rateEgress: { rate: 256 * KiB, burst: 16 * KiB } });
    const p = aliasSyn(srv.port);
    nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(randomBytes(100 * KiB)); // one chunk far over the burst: most of it waits in the pipe
    sock.guestFin();
    await waitFor(() => sock.endCalled, 'the server answered the FIN with its own', 10_000).then(() => (ended = true));
    expect(ended).toBe(true);
    expect(srv.received()).toBe(100 * KiB);
  }, 20_000);

  it('ingress: host bytes reach the guest no faster than the rate; the host socket is paused, nothing dropped', async () => {
    const rate = 2 * MiB;
    const burst = 64 * KiB;
    const srv = await countingServer(MiB);
    const nat = plainNat({ rateIngress: { rate, burst } });
    const p = aliasSyn(srv.port);
    const t0 = performance.now();
    nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    const seen: { t: number; n: number }[] = [];
    await waitFor(() => {
      seen.push({ t: performance.now(), n: sock.receivedBytes + sock.bufferedAmount });
      return sock.receivedBytes === MiB;
    }, 'all bytes at the guest', 10_000);
    for (const s of seen) expect(s.n).toBeLessThanOrEqual((rate * (s.t - t0)) / 1000 + burst);
    expect(nat.stats().rate?.ingress).toMatchObject({ bytes: MiB });
    expect(performance.now() - t0).toBeGreaterThan(400);
  }, 20_000);

  it('UDP over the rate is dropped and counted (a datagram cannot wait)', async () => {
    const nat = plainNat({ rateEgress: { rate: 10 * KiB, burst: 4 * KiB } });
    for (let i = 0; i < 10; i++) {
      nat.onUdp({ src: ipv4(192, 168, 127, 2), srcPort: 5000, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: 9, payload: new Uint8Array(1000) });
    }
    const s = nat.stats().rate!.egress!;
    expect(s.bytes).toBe(4000);
    expect(s.droppedDatagrams).toBe(6);
  });
});

describe('byte budgets (moat serve NAT)', () => {
  async function budgeted(rules: string[], budgets: { rule: string; bytes: number }[], extra: Parameters<typeof startEgressNat>[1] = {}): Promise<EgressNat> {
    const s = await startEgressNat(rules, { ...extra, budgets });
    cleanups.push(() => s.close());
    return s;
  }

  it('an upload past the budget is cut at the budget, the next connection refused (reason budget, rule named), other rules unaffected', async () => {
    const srv = await countingServer();
    const other = await countingServer();
    const rule = `${ALIAS}:${srv.port}`;
    const s = await budgeted([rule, `${ALIAS}:${other.port}`], [{ rule, bytes: 256 * KiB }]);
    const p = syn(ALIAS, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    await guestSend(sock, randomBytes(MiB));
    await waitFor(() => sock.closedWith !== undefined, 'the flow is reset');
    expect(sock.abortCalled).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    // Exactly the budget: what was charged reaches the server (then FIN), nothing more.
    await waitFor(() => srv.received() === 256 * KiB, 'the charged bytes reach the server');
    await new Promise((r) => setTimeout(r, 100));
    expect(srv.received()).toBe(256 * KiB);
    const cut = decisions(s).find((d) => d['reason'] === 'budget');
    expect(cut).toMatchObject({ decision: 'blocked', rule, detail: expect.stringMatching(/spent while open/) });

    const next = syn(ALIAS, srv.port);
    s.nat.onTcpSyn(next);
    expect((await next.decided).kind).toBe('refused');
    expect(decisions(s).filter((d) => d['reason'] === 'budget' && d['rule'] === rule).length).toBe(2);

    const o = syn(ALIAS, other.port);
    s.nat.onTcpSyn(o);
    const os = await acceptedSocket(o);
    await guestSend(os, randomBytes(512 * KiB));
    await waitFor(() => other.received() === 512 * KiB, 'the other rule is unaffected');
    expect(s.runtime.budgets.stats()[0]).toMatchObject({ rule, used: 256 * KiB, spent: true, refused: 1 });
  }, 20_000);

  it('abuse: an upload split across many connections (in turn and at once) is held to the one budget', async () => {
    const srv = await countingServer();
    const rule = `${ALIAS}:${srv.port}`;
    const s = await budgeted([rule], [{ rule, bytes: 100 * KiB }]);
    const socks: FakeTcpSocket[] = [];
    for (let i = 0; i < 4; i++) {
      const p = syn(ALIAS, srv.port);
      s.nat.onTcpSyn(p);
      socks.push(await acceptedSocket(p));
    }
    // Four at once, 40 KiB each: 160 KiB offered.
    await Promise.all(socks.map((k) => guestSend(k, randomBytes(40 * KiB), 4 * KiB)));
    await waitFor(() => socks.every((k) => k.closedWith !== undefined || k.queuedFromGuest === 0), 'settled');
    // Then one small connection after another.
    let refused = 0;
    for (let i = 0; i < 10; i++) {
      const p = syn(ALIAS, srv.port);
      s.nat.onTcpSyn(p);
      const o = await p.decided;
      if (o.kind === 'refused') refused++;
      else if (o.kind === 'accepted') await guestSend(o.socket, randomBytes(20 * KiB));
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(srv.received()).toBeLessThanOrEqual(100 * KiB);
    expect(refused).toBeGreaterThan(0);
    expect(socks.filter((k) => k.abortCalled).length).toBeGreaterThan(0);
  }, 20_000);

  it('abuse: a host two rules cover is charged to the rule that allowed it (the exact host); the wildcard does not take over when it is spent', async () => {
    const srv = await countingServer();
    const exact = `www.t.test:${srv.port}`;
    const s = await budgeted([exact, `*.t.test:${srv.port}`], [{ rule: exact, bytes: 32 * KiB }]);
    const post = (n: number, host = 'www.t.test'): Buffer => Buffer.concat([Buffer.from(`POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: ${n}\r\n\r\n`), randomBytes(n)]);
    const p = syn('203.0.113.9', srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    await guestSend(sock, post(100 * KiB));
    await waitFor(() => sock.closedWith !== undefined, 'cut');
    expect(srv.received()).toBeLessThanOrEqual(32 * KiB);
    // The same host again: refused by the exact rule's spent budget, not let out by the wildcard.
    const again = syn('203.0.113.9', srv.port);
    s.nat.onTcpSyn(again);
    const a = await acceptedSocket(again); // held for its Host
    a.guestSend(post(10));
    await waitFor(() => a.closedWith !== undefined || a.endCalled, 'refused');
    expect(received(a)).toMatch(/^HTTP\/1\.1 403/);
    expect(decisions(s).at(-1)).toMatchObject({ reason: 'budget', rule: exact, name: 'www.t.test' });
    // Another name under the wildcard is charged to the wildcard (no budget): it passes.
    const api = syn('203.0.113.9', srv.port);
    s.nat.onTcpSyn(api);
    const b = await acceptedSocket(api);
    const before = srv.received();
    await guestSend(b, post(64 * KiB, 'api.t.test'));
    await waitFor(() => srv.received() - before >= 64 * KiB, 'api.t.test passes');
  }, 20_000);

  it('direction both: bytes from the host count too', async () => {
    const srv = await countingServer(256 * KiB);
    const rule = `${ALIAS}:${srv.port}`;
    const s = await startEgressNat([rule], { budgets: [{ rule, bytes: 64 * KiB }], budgetDirection: 'both' });
    cleanups.push(() => s.close());
    const p = syn(ALIAS, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    await waitFor(() => sock.closedWith !== undefined, 'cut by the download');
    expect(sock.receivedBytes + sock.bufferedAmount).toBeLessThanOrEqual(64 * KiB);
  }, 20_000);

  it('direction both: a download through a small guest window is charged once per byte (held bytes are not charged twice)', async () => {
    const srv = await countingServer(256 * KiB);
    const rule = `${ALIAS}:${srv.port}`;
    const s = await startEgressNat([rule], { budgets: [{ rule, bytes: 10 * MiB }], budgetDirection: 'both' });
    cleanups.push(() => s.close());
    const p = aliasSyn(srv.port, { capacity: 8 * KiB, autoConsume: true });
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    await waitFor(() => sock.receivedBytes === 256 * KiB, 'the whole download', 10_000);
    expect(s.runtime.budgets.stats()[0]!.used).toBe(256 * KiB);
  }, 20_000);

  it('abuse: UDP to a budgeted rule is charged per datagram and its flow closed when spent; later datagrams refused (reason budget)', async () => {
    const rule = `${ALIAS}:9999`;
    const s = await budgeted([rule], [{ rule, bytes: 3000 }]);
    for (let i = 0; i < 5; i++) {
      s.nat.onUdp({ src: ipv4(192, 168, 127, 2), srcPort: 5001, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: 9999, payload: new Uint8Array(1000) });
    }
    await new Promise((r) => setTimeout(r, 20));
    expect(s.nat.stats().udp.datagramsToHost).toBe(3);
    expect(s.runtime.budgets.stats()[0]).toMatchObject({ used: 3000, spent: true });
    s.nat.onUdp({ src: ipv4(192, 168, 127, 2), srcPort: 5002, dst: DEFAULT_NAT_OPTIONS.hostIp, dstPort: 9999, payload: new Uint8Array(10) });
    expect(decisions(s).filter((d) => d['reason'] === 'budget' && d['proto'] === 'udp').length).toBeGreaterThan(0);
    expect(s.nat.stats().udp.datagramsToHost).toBe(3);
  });

  it('budget state after reload: use is kept (no fresh budget), a budget naming no rule is refused, a removed budget frees the rule', async () => {
    const srv = await countingServer();
    const rule = `${ALIAS}:${srv.port}`;
    const s = await budgeted([rule], [{ rule, bytes: 32 * KiB }]);
    const p = syn(ALIAS, srv.port);
    s.nat.onTcpSyn(p);
    await guestSend(await acceptedSocket(p), randomBytes(64 * KiB));
    await waitFor(() => s.runtime.budgets.stats()[0]!.spent, 'spent');
    await s.runtime.reload([rule]); // budgets kept
    expect(s.runtime.budgets.stats()[0]).toMatchObject({ used: 32 * KiB, spent: true });
    await expect(s.runtime.reload(['203.0.113.1:80'])).rejects.toThrow(/budget names no allow rule: "192.168.127.254:\d+"/);
    await expect(s.runtime.reload([rule], [{ rule: 'nowhere.test', bytes: 1 }])).rejects.toThrow(/"nowhere.test"/);
    expect(s.runtime.ruleTexts).toEqual([rule]); // nothing changed
    const refused = syn(ALIAS, srv.port);
    s.nat.onTcpSyn(refused);
    expect((await refused.decided).kind).toBe('refused');
    await s.runtime.reload([rule], [{ rule, bytes: 64 * KiB }]); // a larger size: the rest may pass
    expect(s.runtime.budgets.stats()[0]).toMatchObject({ used: 32 * KiB, remaining: 32 * KiB, spent: false });
    await s.runtime.reload([rule], []);
    const free = syn(ALIAS, srv.port);
    s.nat.onTcpSyn(free);
    expect((await free.decided).kind).toBe('accepted');
  }, 20_000);

  it('abuse: DNS for a name whose only rules are spent gets the refusal (sinkhole + EDE naming the budget); a name another rule still covers is answered', async () => {
    const s = await budgeted(['www.t.test', '*.t.test', 'blocked.test'], [{ rule: 'www.t.test', bytes: 1000 }, { rule: 'blocked.test', bytes: 1000 }]);
    const ask = async (name: string): Promise<ReturnType<typeof decodeAnswer>> => decodeAnswer((await s.runtime.dns.resolve(dnsQuery(name, 'A'), 'udp'))!);
    expect((await ask('blocked.test')).addresses).toEqual(['127.0.0.1']);
    s.runtime.budgets.open('blocked.test', () => {})!.charge(1000, 'egress');
    s.runtime.budgets.open('www.t.test', () => {})!.charge(1000, 'egress');
    expect((await ask('blocked.test')).addresses).toEqual(['0.0.0.0']);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'budget', rule: 'blocked.test', proto: 'dns', name: 'blocked.test' });
    // www.t.test is also covered by *.t.test (no budget): DNS still answers it; its flows are the policy's to refuse.
    expect((await ask('www.t.test')).addresses).toEqual(['127.0.0.1']);
  });

  it('a flow that closes leaves a flow line with its bytes, rule and name (what moat learn --budgets reads)', async () => {
    const srv = await countingServer(1000);
    const rule = `www.t.test:${srv.port}`;
    const s = await budgeted([rule], []);
    const p = syn('203.0.113.9', srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    const req = Buffer.from(`POST / HTTP/1.1\r\nHost: www.t.test\r\nContent-Length: 5000\r\n\r\n${'x'.repeat(5000)}`);
    sock.guestSend(req);
    await waitFor(() => srv.received() === req.length, 'sent');
    sock.guestFin();
    await waitFor(() => s.logLines.some((l) => l['msg'] === 'flow closed'), 'the flow line', 10_000);
    expect(s.logLines.find((l) => l['msg'] === 'flow closed')).toMatchObject({ decision: 'allowed', reason: 'flow-closed', proto: 'tcp', rule, name: 'www.t.test', bytesUp: req.length, bytesDown: 1000 });
  }, 20_000);

  it('abuse: QUIC to a budgeted name is charged to the rule its SNI was allowed by; past the budget the flow is closed and a new QUIC flow refused', async () => {
    const chromium = loadQuicFixtures().find((f) => f.name === 'chromium')!;
    const got: Buffer[] = [];
    const sock = createSocket('udp4');
    sock.on('message', (m) => got.push(m));
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => sock.close(() => r())));
    const port = sock.address().port;
    const rule = `www.example.org:${port}`;
    const flight = chromium.datagrams.reduce((n, d) => n + d.length, 0);
    const s = await startEgressNat([rule], { names: { 'www.example.org': ['127.0.0.1'] }, budgets: [{ rule, bytes: flight + 2500 }] });
    cleanups.push(() => s.close());
    const udp = (srcPort: number, payload: Uint8Array): void => s.nat.onUdp({ src: GUEST, srcPort, dst: parseIPv4(FRONTED)! as IPv4, dstPort: port, payload });
    for (const d of chromium.datagrams) udp(46001, d);
    await waitFor(() => got.length === chromium.datagrams.length, 'the flight passes');
    for (let i = 0; i < 10; i++) udp(46001, new Uint8Array(1000));
    await new Promise((r) => setTimeout(r, 100));
    const sent = got.reduce((n, b) => n + b.length, 0);
    expect(sent).toBeLessThanOrEqual(flight + 2500);
    expect(got.length).toBe(chromium.datagrams.length + 2);
    expect(decisions(s).find((d) => d['reason'] === 'budget')).toMatchObject({ rule });
    // A new QUIC flow to the same name: refused by the spent rule (recorded), nothing sent.
    for (const d of chromium.datagrams) udp(46002, d);
    await new Promise((r) => setTimeout(r, 100));
    expect(got.length).toBe(chromium.datagrams.length + 2);
    expect(decisions(s).filter((d) => d['reason'] === 'budget' && d['proto'] === 'quic').length).toBeGreaterThan(0);
  }, 20_000);
});
