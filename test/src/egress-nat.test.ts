/**
 * The NAT with an allowlist (src/egress/ wired into src/nat/): flows are put
 * to the policy, connections to :443/:80-style ports are held for their
 * SNI/Host and dialed by NAME to the addresses Moat resolved, refusals reach
 * the client in its own protocol with a decision id.
 *
 * The guest is the fake stack; "the internet" is a server on 127.0.0.1, and
 * every name resolves there. Host sockets are opened through a connectHost
 * hook that refuses anything but loopback, so a policy bug cannot make this
 * test send a packet anywhere else: the guest's destinations here are
 * TEST-NET addresses that must never be dialed.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { parseIPv4 } from '../../netstack/addr.js';
import { TLS_ACCESS_DENIED_ALERT } from '../../src/egress/refusals.js';
import { DEFAULT_LIVE_BUDGET } from '../../dns/live-budget.js';
import { type FakeTcpSocket, waitFor } from './nat-fake-stack.js';
import { acceptedSocket, decisions, FRONTED, GUEST, received, startEgressNat, syn, type EgressNat } from './egress-nat-support.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Server {
  port: number;
  /** Bytes each accepted connection received, in order of connection. */
  received: Buffer[];
}

/** Records what arrives and (if `answer`) answers "ok:" + the first line once a head is complete, then ends. */
async function server(answer = true): Promise<Server> {
  const received: Buffer[] = [];
  const conns = new Set<Socket>();
  const srv = createServer((s) => {
    conns.add(s);
    const i = received.length;
    received.push(Buffer.alloc(0));
    s.on('error', () => {});
    s.on('data', (d) => {
      received[i] = Buffer.concat([received[i]!, d]);
      if (answer && received[i]!.includes('\r\n\r\n')) s.end(`ok:${received[i]!.toString('latin1').split('\r\n')[0]}`);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as AddressInfo).port, received };
}

type Setup = EgressNat;

async function setup(rules: string[], opts: Parameters<typeof startEgressNat>[1] = {}): Promise<Setup> {
  const s = await startEgressNat(rules, { names: { 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'], 'deep.cdn.t.test': ['127.0.0.1'] }, ...opts });
  cleanups.push(() => s.close());
  return s;
}

const text = received;

describe('egress through the NAT', () => {
  it('holds a connection for its Host, then dials the NAME (not the guest\'s address) and replays the head', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`]);
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    expect(s.dialed).toEqual([]); // nothing dialed before the name is known
    // The head in three pieces: the peek must wait for all of it.
    sock.guestSend(Buffer.from('GET /x HTTP/1.1\r\nHo'));
    sock.guestSend(Buffer.from('st: WWW.T.TEST\r\n'));
    expect(s.dialed).toEqual([]);
    sock.guestSend(Buffer.from('\r\n'));
    await waitFor(() => text(sock).startsWith('ok:'), 3000);
    expect(text(sock)).toBe('ok:GET /x HTTP/1.1');
    expect(s.dialed).toEqual([`127.0.0.1:${srv.port}`]);
    expect(srv.received[0]!.toString('latin1')).toBe('GET /x HTTP/1.1\r\nHost: WWW.T.TEST\r\n\r\n');
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'allowed', reason: 'name-host', name: 'www.t.test' });
  });

  it('a Host outside the rules gets a 403 naming host, reason and decision id; nothing is dialed', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`]);
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: evil.t.test\r\n\r\n'));
    await waitFor(() => sock.endCalled, 3000);
    const reply = text(sock);
    expect(reply).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(reply).toContain('x-moat-reason: name-not-allowed');
    const id = /x-moat-decision: (\S+)\r\n/.exec(reply)?.[1];
    expect(id).toBeDefined();
    expect(reply).toContain('host evil.t.test is not allowed');
    expect(reply).toContain(`decision ${id}`);
    // The rules are not the guest's business (issue 14): they would show what else it may reach.
    expect(reply).not.toContain('www.t.test');
    expect(s.dialed).toEqual([]);
    expect(decisions(s).find((d) => d['id'] === id)).toMatchObject({ decision: 'blocked', reason: 'name-not-allowed', name: 'evil.t.test' });
  });

  it('--refusal-details: the 403 also lists the rules', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`], { egress: { refusalDetails: true } });
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: evil.t.test\r\n\r\n'));
    await waitFor(() => sock.endCalled, 3000);
    expect(text(sock)).toContain(`\nAllowed: www.t.test:${srv.port}\n`);
    expect(s.dialed).toEqual([]);
  });

  it('a ClientHello naming a host outside the rules gets a TLS access_denied alert', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`]);
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    // A real curl hello for www.example.org, one byte at a time.
    const hello = readFileSync(new URL('../fixtures/clienthello/curl.bin', import.meta.url));
    for (const b of hello) sock.guestSend(Uint8Array.of(b));
    await waitFor(() => sock.endCalled, 3000);
    sock.consume();
    expect([...sock.receivedConcat()]).toEqual([...TLS_ACCESS_DENIED_ALERT]);
    expect(s.dialed).toEqual([]);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'name-not-allowed', name: 'www.example.org', via: 'sni' });
  });

  it('a connection that names nothing is reset at the peek timeout', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`], { egress: { peekTimeoutMs: 300 } });
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    const started = performance.now();
    await waitFor(() => sock.abortCalled, 3000);
    expect(performance.now() - started).toBeGreaterThanOrEqual(250);
    expect(s.nat.stats().held).toBe(0);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'peek-timeout' });
  });

  it('answers resolving into a refused range are not dialed (rebinding) unless admitted', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`], { admit: [] });
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: www.t.test\r\n\r\n'));
    await waitFor(() => sock.endCalled, 3000);
    expect(text(sock)).toContain('x-moat-reason: rebinding');
    expect(s.dialed).toEqual([]);
    expect(decisions(s).at(-1)).toMatchObject({ reason: 'rebinding', detail: expect.stringContaining('127.0.0.1 (loopback)') });
  });

  it('a name below a wildcard is resolved live for the dial', async () => {
    const srv = await server();
    const s = await setup([`*.cdn.t.test:${srv.port}`]);
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.0\r\nHost: deep.cdn.t.test\r\n\r\n'));
    await waitFor(() => text(sock).startsWith('ok:'), 3000);
    expect(s.dialed).toEqual([`127.0.0.1:${srv.port}`]);
  });

  it('dial-by-name spends from the live-lookup budget: over it the connection is refused (live-budget), nothing resolved or dialed', async () => {
    const srv = await server();
    const names = Object.fromEntries(['a', 'b', 'c'].map((n) => [`${n}.cdn.t.test`, ['127.0.0.1']]));
    // One new name at once, none more for the test's life.
    const s = await setup([`*.cdn.t.test:${srv.port}`], { names, liveLookups: { ...DEFAULT_LIVE_BUDGET, nameBurst: 1, namesPerSecond: 0, enabled: true } });
    const open = async (host: string): Promise<FakeTcpSocket> => {
      const p = syn(FRONTED, srv.port);
      s.nat.onTcpSyn(p);
      const sock = await acceptedSocket(p);
      sock.guestSend(Buffer.from(`GET / HTTP/1.0\r\nHost: ${host}\r\n\r\n`));
      return sock;
    };
    const first = await open('a.cdn.t.test');
    await waitFor(() => text(first).startsWith('ok:'), 3000);
    const second = await open('b.cdn.t.test');
    await waitFor(() => second.endCalled, 3000);
    expect(text(second)).toContain('x-moat-reason: live-budget');
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'live-budget', name: 'b.cdn.t.test', detail: expect.stringContaining('live lookup budget exhausted') });
    // A name already resolved (pinned) is free: it still goes through.
    const again = await open('a.cdn.t.test');
    await waitFor(() => text(again).startsWith('ok:'), 3000);
    expect(s.dialed).toEqual([`127.0.0.1:${srv.port}`, `127.0.0.1:${srv.port}`]);
    expect(s.runtime.liveBudget.stats).toMatchObject({ spent: 1, overBudget: 1 });
    expect(s.runtime.dns.stats().liveBudget).toMatchObject({ enabled: true, overBudget: 1 });
  });

  it('with live lookups off a name below a wildcard is refused (live-off), a host the rules name still goes through', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`, `*.cdn.t.test:${srv.port}`], { liveLookups: { ...DEFAULT_LIVE_BUDGET, enabled: false } });
    // Start-up says which rules now reach only the hosts named exactly.
    expect(s.logLines.find((l) => String(l['msg']).startsWith('live lookups are off'))).toMatchObject({ rules: [`*.cdn.t.test:${srv.port}`] });
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.0\r\nHost: deep.cdn.t.test\r\n\r\n'));
    await waitFor(() => sock.endCalled, 3000);
    expect(text(sock)).toContain('x-moat-reason: live-off');
    const ok = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(ok);
    const okSock = await acceptedSocket(ok);
    okSock.guestSend(Buffer.from('GET / HTTP/1.0\r\nHost: www.t.test\r\n\r\n'));
    await waitFor(() => text(okSock).startsWith('ok:'), 3000);
    expect(s.dialed).toEqual([`127.0.0.1:${srv.port}`]);
  });

  it('SYNs to ports no rule covers are refused at once; UDP needs an IP rule', async () => {
    const s = await setup(['www.t.test']);
    const p = syn(FRONTED, 9999);
    s.nat.onTcpSyn(p);
    expect((await p.decided).kind).toBe('refused');
    s.nat.onUdp({ src: GUEST, srcPort: 5000, dst: parseIPv4(FRONTED)!, dstPort: 53, payload: new Uint8Array(4) });
    s.nat.onUdp({ src: GUEST, srcPort: 5000, dst: parseIPv4('169.254.169.254')!, dstPort: 80, payload: new Uint8Array(4) });
    const meta = syn('169.254.169.254', 80);
    s.nat.onTcpSyn(meta);
    expect((await meta.decided).kind).toBe('refused');
    expect(s.nat.stats().policyBlocked).toEqual({ tcp: 2, udp: 2 });
    expect(s.dialed).toEqual([]);
    expect(decisions(s).map((d) => d['reason'])).toEqual(['no-rule', 'udp-needs-ip-rule', 'link-local', 'link-local']);
  });

  it('an allowlist reload with drop resets the flows the new rules refuse', async () => {
    const srv = await server(false);
    const s = await setup([`www.t.test:${srv.port}`, `api.t.test:${srv.port}`]);
    const open = async (host: string): Promise<FakeTcpSocket> => {
      const p = syn(FRONTED, srv.port);
      s.nat.onTcpSyn(p);
      const sock = await acceptedSocket(p);
      sock.guestSend(Buffer.from(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
      return sock;
    };
    // The server never answers: both flows stay open until something closes them.
    const www = await open('www.t.test');
    const api = await open('api.t.test');
    await waitFor(() => s.nat.stats().tcpFlows === 2 && s.nat.stats().held === 0, 3000);
    await s.runtime.reload([`api.t.test:${srv.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(1);
    await waitFor(() => www.abortCalled || www.closedWith !== undefined, 3000);
    expect(api.abortCalled).toBe(false);
  });
});

describe('egress in audit mode', () => {
  it('lets a refused name through to its own addresses and records would-block', async () => {
    const srv = await server();
    const s = await setup([`www.t.test:${srv.port}`], { egress: { mode: 'audit' }, names: { 'www.t.test': ['127.0.0.9'], 'evil.t.test': ['127.0.0.1'] } });
    const p = syn(FRONTED, srv.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: evil.t.test\r\n\r\n'));
    await waitFor(() => text(sock).startsWith('ok:'), 3000);
    expect(s.dialed).toEqual([`127.0.0.1:${srv.port}`]); // evil.t.test's own address, not the guest's choice
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'would-block', reason: 'name-not-allowed', name: 'evil.t.test' });
  });

  it('lets a refused address through, but never cloud metadata', async () => {
    const srv = await server();
    const s = await setup(['www.t.test'], { egress: { mode: 'audit' } });
    const alias = syn('192.168.127.254', srv.port);
    s.nat.onTcpSyn(alias);
    const sock = await acceptedSocket(alias);
    sock.guestSend(Buffer.from('GET / HTTP/1.0\r\n\r\n'));
    await waitFor(() => text(sock).startsWith('ok:'), 3000);
    expect(s.dialed).toEqual([`127.0.0.1:${srv.port}`]);
    const meta = syn('169.254.169.254', 80);
    s.nat.onTcpSyn(meta);
    expect((await meta.decided).kind).toBe('refused');
    expect(decisions(s).map((d) => [d['decision'], d['reason']])).toEqual([
      ['would-block', 'host-alias'],
      ['would-block', 'link-local'],
    ]);
  });
});

describe('audit mode peeks web flows no hostname rule covers', () => {
  it('records the name (for moat learn) and lets the flow through to it', async () => {
    // Only an IP rule: nothing covers :80 by name, so enforce mode would refuse at SYN.
    const s = await setup(['10.0.0.0/8'], { egress: { mode: 'audit' }, names: { 'new.t.test': ['127.0.0.1'] } });
    const p = syn(FRONTED, 80);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: New.T.Test\r\n\r\n'));
    // Dialed to new.t.test's own (loopback) address on :80, whether or not anything listens there:
    // what matters is where it went and what was recorded.
    await waitFor(() => s.dialed.length > 0, 3000);
    expect(s.dialed).toEqual(['127.0.0.1:80']);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'would-block', reason: 'no-rule', name: 'new.t.test', via: 'host' });
  });
});
