/**
 * One connection, one name, through the NAT (issue 14, findings 6 and 7):
 * after a flow was allowed by its first Host/SNI, a second request or a
 * second ClientHello naming another host is refused and never reaches the
 * server; TLS decisions record whether the hello carried ECH, and
 * `refuseEch` refuses such hellos.
 *
 * The guest is the fake stack; "the internet" is a server on 127.0.0.1 that
 * logs every request (every name resolves there, so the server sees what a
 * CDN's edge would see: one address, many virtual hosts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { parseServeArgs } from '../../src/config.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { TLS_ACCESS_DENIED_ALERT } from '../../src/egress/refusals.js';
import type { EgressOptions } from '../../src/egress/egress.js';
import { waitFor, type FakeTcpSocket } from './nat-fake-stack.js';
import { acceptedSocket, decisions, FRONTED, received, startEgressNat, syn, type EgressNat } from './egress-nat-support.js';
import { buildClientHello, buildServerHello, CHANGE_CIPHER_SPEC, concat, toRecords } from '../sni/support/hello-builder.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A keep-alive HTTP server with virtual hosts: logs "host url" for every request it handles. */
async function vhostServer(opts: { upgradeAnswer?: number } = {}): Promise<{ port: number; requests: string[] }> {
  const requests: string[] = [];
  const srv = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    requests.push(`${req.headers.host} ${req.url}`);
    req.resume();
    req.on('end', () => {
      const body = `vhost ${req.headers.host} ${req.url}\n`;
      res.writeHead(opts.upgradeAnswer ?? 200, { 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  srv.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  return { port: (srv.address() as AddressInfo).port, requests };
}

/** A fake TLS server: records every byte, answers the first bytes with a HelloRetryRequest (or a plain ServerHello). */
async function tlsServer(hrr: boolean): Promise<{ port: number; received: Buffer[] }> {
  const receivedBytes: Buffer[] = [];
  const conns = new Set<Socket>();
  const srv = createNetServer((s) => {
    conns.add(s);
    const i = receivedBytes.push(Buffer.alloc(0)) - 1;
    let answered = false;
    s.on('error', () => {});
    s.on('data', (d) => {
      receivedBytes[i] = Buffer.concat([receivedBytes[i]!, d]);
      if (!answered) {
        answered = true;
        s.write(toRecords(buildServerHello({ hrr }), [16_384], 0x0303));
      }
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as AddressInfo).port, received: receivedBytes };
}

async function nat(rules: string[], egress?: Partial<EgressOptions>): Promise<EgressNat> {
  const s = await startEgressNat(rules, egress === undefined ? {} : { egress });
  cleanups.push(() => s.close());
  return s;
}

async function open(s: EgressNat, port: number): Promise<FakeTcpSocket> {
  const p = syn(FRONTED, port);
  s.nat.onTcpSyn(p);
  return acceptedSocket(p);
}

const get = (host: string, path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`;
const hello = (sni: string, ech = false): Uint8Array => toRecords(buildClientHello({ sni, ech }));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('one connection, one name: plain HTTP through the NAT', () => {
  it('a kept-alive connection: a second request with Host: blocked.test gets a 403 and the blocked vhost sees nothing', async () => {
    const srv = await vhostServer();
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    sock.guestSend(Buffer.from(get('www.t.test', '/first')));
    await waitFor(() => received(sock).includes('vhost www.t.test /first'), 'the first answer');
    sock.guestSend(Buffer.from(get('blocked.test', '/second')));
    await waitFor(() => sock.endCalled, 'the refusal');
    const reply = received(sock);
    expect(reply).toMatch(/HTTP\/1\.1 403 Forbidden\r\n/);
    expect(reply).toContain('x-moat-reason: second-name');
    await sleep(100);
    expect(srv.requests).toEqual(['www.t.test /first']);
    const id = /x-moat-decision: (\S+)\r\n/.exec(reply)?.[1];
    expect(decisions(s).find((d) => d['id'] === id)).toMatchObject({
      decision: 'blocked',
      reason: 'second-name',
      name: 'blocked.test',
      via: 'host',
      detail: expect.stringContaining('www.t.test'),
    });
  });

  it('pipelined in one segment: the first request is answered, then the 403; the second never reaches the server', async () => {
    const srv = await vhostServer();
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    sock.guestSend(Buffer.from(get('www.t.test', '/one') + get('blocked.test', '/two')));
    await waitFor(() => sock.endCalled, 'the refusal');
    const reply = received(sock);
    const answer = reply.indexOf('vhost www.t.test /one');
    const refusal = reply.indexOf('403 Forbidden');
    expect(answer, reply).toBeGreaterThan(0);
    expect(refusal, reply).toBeGreaterThan(answer);
    await sleep(100);
    expect(srv.requests).toEqual(['www.t.test /one']);
  });

  it('more requests for the same host on one connection all pass', async () => {
    const srv = await vhostServer();
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    const body = 'x'.repeat(3000);
    sock.guestSend(Buffer.from(get('www.t.test', '/a') + `POST /b HTTP/1.1\r\nHost: WWW.T.TEST\r\nContent-Length: ${body.length}\r\n\r\n${body}` + get('www.t.test:80', '/c')));
    await waitFor(() => received(sock).includes('/c'), 'three answers');
    expect(srv.requests).toEqual(['www.t.test /a', 'WWW.T.TEST /b', 'www.t.test:80 /c']);
    expect(sock.endCalled).toBe(false);
  });

  it("the Upgrade attack: 'Upgrade: x' that the server ignores, then a request for blocked.test -> refused", async () => {
    const srv = await vhostServer();
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    sock.guestSend(Buffer.from(get('www.t.test', '/up', 'Connection: upgrade\r\nUpgrade: x\r\n') + get('blocked.test', '/smuggled')));
    await waitFor(() => sock.endCalled, 'the refusal');
    expect(received(sock)).toContain('x-moat-reason: second-name');
    await sleep(100);
    expect(srv.requests).toEqual(['www.t.test /up']);
  });
});

describe('one connection, one name: switching protocols, bounds and audit', () => {
  /** Answers an Upgrade with 101 and then echoes whatever comes (a stand-in for a WebSocket server). */
  async function upgradeServer(): Promise<{ port: number; requests: string[] }> {
    const requests: string[] = [];
    const srv = createHttpServer((req, res) => {
      requests.push(`${req.headers.host} ${req.url}`);
      res.end('plain\n');
    });
    srv.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      requests.push(`upgrade ${req.headers.host} ${req.url}`);
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n');
      if (head.length > 0) socket.write(head);
      socket.on('data', (d) => socket.write(d));
      socket.on('error', () => {});
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
    return { port: (srv.address() as AddressInfo).port, requests };
  }

  it('an Upgrade the server accepts (101): what the guest sent behind it waits, then flows unwatched both ways', async () => {
    const srv = await upgradeServer();
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    // The new protocol's first bytes come right behind the request (and look like a request for another host).
    sock.guestSend(Buffer.from(get('www.t.test', '/ws', 'Connection: upgrade\r\nUpgrade: x\r\n') + 'GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n'));
    await waitFor(() => received(sock).includes('Host: blocked.test'), 'the echo after the switch');
    expect(received(sock)).toMatch(/^HTTP\/1\.1 101 /);
    sock.guestSend(Buffer.from('\x81\x05hello'));
    await waitFor(() => received(sock).endsWith('\x81\x05hello'), 'the frame echoed');
    expect(sock.endCalled || sock.abortCalled).toBe(false);
    expect(srv.requests).toEqual(['upgrade www.t.test /ws']);
  });

  it('a server that does not close after the refused request: both sides reset after refusalLingerMs', async () => {
    // Answers every head it sees, keeps the connection open even after the client's FIN.
    const seen: string[] = [];
    const conns = new Set<Socket>();
    const srv = createNetServer({ allowHalfOpen: true }, (c) => {
      conns.add(c);
      c.on('error', () => {});
      c.on('data', (d) => {
        seen.push(d.toString('latin1'));
        c.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    cleanups.push(() => { for (const c of conns) c.destroy(); return new Promise<void>((r) => srv.close(() => r())); });
    const port = (srv.address() as AddressInfo).port;
    const s = await nat([`www.t.test:${port}`], { refusalLingerMs: 300 });
    const sock = await open(s, port);
    sock.guestSend(Buffer.from(get('www.t.test', '/one') + get('blocked.test', '/two')));
    await waitFor(() => sock.abortCalled, 'the reset at the linger bound', 3000);
    expect(seen.join('')).not.toContain('blocked.test');
    expect(received(sock)).toContain('ok');
  });

  it('audit mode: a second name is recorded as would-block and goes through', async () => {
    const srv = await vhostServer();
    const s = await nat([`www.t.test:${srv.port}`], { mode: 'audit' });
    const sock = await open(s, srv.port);
    sock.guestSend(Buffer.from(get('www.t.test', '/one') + get('blocked.test', '/two')));
    await waitFor(() => received(sock).includes('vhost blocked.test /two'), 'both answers');
    expect(srv.requests).toEqual(['www.t.test /one', 'blocked.test /two']);
    expect(decisions(s).find((d) => d['reason'] === 'second-name')).toMatchObject({ decision: 'would-block', name: 'blocked.test' });
  });
});

describe('one connection, one name: TLS through the NAT', () => {
  it('after a HelloRetryRequest, a second ClientHello naming another host resets both sides; the server never gets it', async () => {
    const srv = await tlsServer(true);
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    sock.guestSend(hello('www.t.test'));
    await waitFor(() => received(sock).length > 0, 'the HRR');
    sock.guestSend(concat([CHANGE_CIPHER_SPEC, hello('blocked.test')]));
    await waitFor(() => sock.abortCalled, 'the reset');
    await sleep(100);
    expect(Buffer.concat(srv.received).includes('blocked.test')).toBe(false);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'second-name', name: 'blocked.test', via: 'sni', ech: false });
  });

  it('after a HelloRetryRequest, a second ClientHello for the same host goes through', async () => {
    const srv = await tlsServer(true);
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    sock.guestSend(hello('www.t.test'));
    await waitFor(() => received(sock).length > 0, 'the HRR');
    const second = concat([CHANGE_CIPHER_SPEC, hello('www.t.test')]);
    sock.guestSend(second);
    await waitFor(() => Buffer.concat(srv.received).length === hello('www.t.test').length + second.length, 'the second hello at the server');
    expect(sock.abortCalled).toBe(false);
  });

  it('a second hello pipelined right behind the first (before any HRR) is checked too', async () => {
    const srv = await tlsServer(true);
    const s = await nat([`www.t.test:${srv.port}`]);
    const sock = await open(s, srv.port);
    sock.guestSend(concat([hello('www.t.test'), hello('blocked.test')]));
    await waitFor(() => sock.abortCalled, 'the reset');
    await sleep(100);
    expect(Buffer.concat(srv.received).includes('blocked.test')).toBe(false);
  });
});

describe('ECH is a decision', () => {
  it('TLS decisions record ech: true for a hello with encrypted_client_hello, false without', async () => {
    const srv = await tlsServer(false);
    const s = await nat([`www.t.test:${srv.port}`]);
    const a = await open(s, srv.port);
    a.guestSend(hello('www.t.test', true));
    await waitFor(() => srv.received.length === 1, 'the ECH hello at the server');
    const b = await open(s, srv.port);
    b.guestSend(hello('www.t.test', false));
    await waitFor(() => srv.received.length === 2, 'the plain hello at the server');
    const allowed = decisions(s).filter((d) => d['decision'] === 'allowed');
    expect(allowed.map((d) => d['ech'])).toEqual([true, false]);
  });

  it('refuseEch refuses a hello that carries ECH (reason ech), and lets one without it through', async () => {
    const srv = await tlsServer(false);
    const s = await nat([`www.t.test:${srv.port}`], { refuseEch: true });
    const a = await open(s, srv.port);
    a.guestSend(hello('www.t.test', true));
    await waitFor(() => a.endCalled, 'the alert');
    a.consume();
    expect([...a.receivedConcat()]).toEqual([...TLS_ACCESS_DENIED_ALERT]);
    expect(decisions(s).at(-1)).toMatchObject({ decision: 'blocked', reason: 'ech', name: 'www.t.test', ech: true });
    expect(s.dialed).toEqual([]);
    const b = await open(s, srv.port);
    b.guestSend(hello('www.t.test', false));
    await waitFor(() => srv.received.length === 1, 'the plain hello at the server');
  });
});

describe('--refuse-ech', () => {
  const io = { readFile: (): string => { throw new Error('no files'); }, readResolvConf: () => 'nameserver 10.0.0.53\n' };
  const serve = (args: string[]) => parseServeArgs(['--listen-qemu', 'unix:///tmp/moat.sock', ...args], io);

  it('serve: off by default, on with the flag, and refused without --allow (naming it)', () => {
    const off = serve(['--allow', 'a.test']);
    const on = serve(['--allow', 'a.test', '--refuse-ech']);
    expect(off.kind === 'config' && off.config.refuseEch).toBe(false);
    expect(on.kind === 'config' && on.config.refuseEch).toBe(true);
    expect(() => serve(['--refuse-ech'])).toThrow(/--refuse-ech: needs --allow/);
    expect(() => serve(['--allow', 'a.test', '--refuse-ech=maybe'])).toThrow(/refuse-ech/);
  });

  it('proxy: on with the flag', () => {
    const r = parseProxyArgs(['--allow', 'a.test', '--refuse-ech'], io);
    expect(r.kind === 'config' && r.config.refuseEch).toBe(true);
  });
});
