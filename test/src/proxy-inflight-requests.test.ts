/**
 * `moat proxy` absolute-form requests (`GET http://host/`) and an allowlist
 * reload (issue 14 finding 4): a request admitted under the old rules is
 * re-decided when its upstream connection is handed to it, whether that
 * connection was just dialed or comes from the keep-alive pool. Refused ->
 * 403 naming the decision, nothing written upstream, one decision record.
 * `?drop=1` closes the pooled connections to hosts the new rules refuse.
 *
 * Unit level: a real Egress (AllowlistRuntime), the real HTTP proxy
 * listener on loopback, an upstream node:http server on loopback, and a
 * dialer whose connects the test may hold.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime } from '../../src/egress/allowlist-runtime.js';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { DEFAULT_EGRESS_OPTIONS } from '../../src/egress/egress.js';
import { NULL_LOGGER } from '../../src/log.js';
import { AuthFailureLog } from '../../src/proxy/auth.js';
import { createHttpProxy, type ProxyAgents } from '../../src/proxy/http-proxy.js';
import type { Dialer } from '../../src/proxy/tunnel.js';
import { waitFor } from './nat-fake-stack.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

class MapResolver implements Resolver {
  async resolve4(name: string): Promise<ResolvedAddresses> {
    if (!name.endsWith('.t.test')) throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
    return { addresses: ['127.0.0.1'], ttl: 60 };
  }
  async resolve6(): Promise<ResolvedAddresses> {
    return { addresses: [], ttl: 60 };
  }
}

interface Upstream {
  port: number;
  /** "host path" of every request the server read. */
  requests: string[];
  /** Connections the server accepted, and those still open. */
  accepted: number;
  open: Set<Socket>;
  /** While set, the request for this path waits for it before being answered. */
  hold: { path: string; gate: Promise<void> } | undefined;
}

async function upstream(): Promise<Upstream> {
  const u: Upstream = { port: 0, requests: [], accepted: 0, open: new Set(), hold: undefined };
  const srv: Server = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    u.requests.push(`${req.headers.host} ${req.url}`);
    const answer = (): void => void res.end('ok\n');
    if (u.hold !== undefined && u.hold.path === req.url) void u.hold.gate.then(answer);
    else answer();
  });
  srv.keepAliveTimeout = 60_000;
  srv.on('connection', (s: Socket) => {
    u.accepted++;
    u.open.add(s);
    s.once('close', () => u.open.delete(s));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    srv.closeAllConnections();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  u.port = (srv.address() as AddressInfo).port;
  return u;
}

interface Setup {
  runtime: AllowlistRuntime;
  records: DecisionRecord[];
  agents: ProxyAgents;
  /** The proxy's port on 127.0.0.1. */
  port: number;
  /** Connects asked of the dialer; each goes ahead only when released (unless `gated` is false). */
  dials: { release: () => void }[];
}

async function setup(rules: string[], opts: { gated: boolean; maxUpstream?: number }): Promise<Setup> {
  const runtime = await AllowlistRuntime.start(
    {
      rules: parseRules(rules),
      resolver: new MapResolver(),
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
      guestSubnet: { network: '192.168.127.0', prefix: 24 },
      admitResolved: ['127.0.0.0/8'],
      hostAliasExempt: false,
      allowLinkLocal: false,
      egress: DEFAULT_EGRESS_OPTIONS,
      now: () => performance.now(),
    },
    NULL_LOGGER,
  );
  cleanups.push(() => runtime.close());
  const records: DecisionRecord[] = [];
  runtime.egress.decisions.subscribe((r) => records.push(r));
  const dials: Setup['dials'] = [];
  const dialer: Dialer = {
    connectFirst: (addresses, port) =>
      new Promise((resolve, reject) => {
        // The safety net: nothing in this file may leave loopback.
        if (!addresses[0]!.startsWith('127.')) throw new Error(`test refused to dial ${addresses[0]}`);
        const go = (): void => {
          const up = connect({ host: addresses[0]!, port, allowHalfOpen: true });
          up.once('connect', () => resolve(up));
          up.once('error', reject);
        };
        dials.push({ release: go });
        if (!opts.gated) go();
      }),
  };
  const counters = { requests: 0, connects: 0, refused: 0, authFailures: 0 };
  const host = {
    egress: () => runtime.egress,
    dialer,
    log: NULL_LOGGER,
    openTunnel: () => {
      throw new Error('no CONNECT in this file');
    },
    auth: undefined,
    authFailures: new AuthFailureLog(counters, NULL_LOGGER),
    counters,
  };
  const { server, agents } = createHttpProxy(host, { maxConnections: opts.maxUpstream ?? 64, headersTimeoutMs: 5_000 });
  // maxConnections bounds the upstream pool too; the clients here are a handful.
  server.maxConnections = 64;
  const clients = new Set<Socket>();
  server.on('connection', (s: Socket) => clients.add(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    agents.destroy();
    for (const c of clients) c.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { runtime, records, agents, port: (server.address() as AddressInfo).port, dials };
}

/** Sends one absolute-form GET (or POST with `body`) through the proxy; resolves with the whole response text once the proxy closes or answers `ok`. */
function get(s: Setup, target: string, body?: string): { response: Promise<string>; socket: Socket } {
  const socket = connect({ host: '127.0.0.1', port: s.port });
  socket.on('error', () => {});
  cleanups.push(() => void socket.destroy());
  let text = '';
  const response = new Promise<string>((resolve) => {
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (/\r\n\r\n(ok\n|[\s\S]*decision)/.test(text) && /\r\n\r\n[\s\S]+/.test(text)) resolve(text);
    });
    socket.on('close', () => resolve(text));
  });
  if (body === undefined) socket.write(`GET ${target} HTTP/1.1\r\nHost: ignored.t.test\r\n\r\n`);
  else socket.write(`POST ${target} HTTP/1.1\r\nHost: ignored.t.test\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  return { response, socket };
}

const reloadRecords = (s: Setup): DecisionRecord[] => s.records.filter((r) => r.decision !== 'allowed' && /allowlist changed/.test(r.detail ?? ''));

describe('moat proxy: absolute-form requests and a reload', () => {
  it('a request whose upstream connect completes after a reload removed its host gets 403; nothing reaches the upstream; recorded', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`], { gated: true });
    const { response } = get(s, `http://www.t.test:${up.port}/late`);
    await waitFor(() => s.dials.length === 1, 'the upstream dial', 2000);
    await s.runtime.reload([`api.t.test:${up.port}`]);
    s.dials[0]!.release();
    const text = await response;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    const r = reloadRecords(s);
    expect(r).toMatchObject([{ decision: 'blocked', reason: 'name-not-allowed', name: 'www.t.test', dst: `www.t.test:${up.port}`, via: 'target' }]);
    expect(r[0]!.detail).toMatch(/^allowlist changed while dialing/);
    expect(text).toContain(`x-moat-decision: ${r[0]!.id}`);
    await new Promise((res) => setTimeout(res, 50));
    expect(up.requests).toEqual([]);
  });

  it('the same for a POST whose body arrived while the dial was held: no byte of it reaches the upstream', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`], { gated: true });
    const { response } = get(s, `http://www.t.test:${up.port}/upload`, 'x'.repeat(1000));
    await waitFor(() => s.dials.length === 1, 'the upstream dial', 2000);
    await new Promise((res) => setTimeout(res, 20)); // the body is read and queued for the upstream meanwhile
    await s.runtime.reload([`api.t.test:${up.port}`]);
    s.dials[0]!.release();
    expect(await response).toMatch(/^HTTP\/1\.1 403 /);
    await new Promise((res) => setTimeout(res, 50));
    expect(up.requests).toEqual([]);
    expect(reloadRecords(s)).toHaveLength(1);
  });

  it('a request still allowed after the reload goes through (no over-blocking)', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`], { gated: true });
    const { response } = get(s, `http://www.t.test:${up.port}/kept`);
    await waitFor(() => s.dials.length === 1, 'the upstream dial', 2000);
    await s.runtime.reload([`www.t.test:${up.port}`, `api.t.test:${up.port}`]);
    s.dials[0]!.release();
    expect(await response).toMatch(/^HTTP\/1\.1 200 [\s\S]*ok\n$/);
    expect(up.requests).toEqual([`www.t.test:${up.port} /kept`]);
    expect(reloadRecords(s)).toEqual([]);
  });

  it('a request admitted before the reload, waiting for a pooled connection to a host the new rules refuse, is not carried by it', async () => {
    const up = await upstream();
    // One upstream connection in all: the second request waits for the first's.
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`], { gated: false, maxUpstream: 1 });
    let open!: () => void;
    up.hold = { path: '/first', gate: new Promise<void>((r) => (open = r)) };
    const first = get(s, `http://www.t.test:${up.port}/first`);
    await waitFor(() => up.requests.length === 1, 'the first request upstream', 2000);
    const second = get(s, `http://www.t.test:${up.port}/second`);
    await waitFor(() => s.records.filter((r) => r.decision === 'allowed' && r.name === 'www.t.test').length === 2, 'the second request to be admitted', 2000);
    await s.runtime.reload([`api.t.test:${up.port}`]);
    open();
    expect(await first.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(await second.response).toMatch(/^HTTP\/1\.1 403 /);
    await new Promise((res) => setTimeout(res, 50));
    expect(up.requests).toEqual([`www.t.test:${up.port} /first`]);
    expect(reloadRecords(s)).toMatchObject([{ decision: 'blocked', reason: 'name-not-allowed', name: 'www.t.test' }]);
    expect(s.dials).toHaveLength(1);
  });

  it('on drop, idle pooled connections to hosts the new rules refuse are closed, counted and recorded; the others stay', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`], { gated: false });
    for (const host of ['www', 'api']) expect(await get(s, `http://${host}.t.test:${up.port}/`).response).toMatch(/^HTTP\/1\.1 200 /);
    await waitFor(() => up.open.size === 2, 'two pooled upstream connections', 2000);
    await s.runtime.reload([`api.t.test:${up.port}`]);
    expect(s.agents.dropRefused()).toBe(1);
    await waitFor(() => up.open.size === 1, 'the refused host\'s connection to close', 2000);
    expect(reloadRecords(s)).toMatchObject([{ decision: 'blocked', reason: 'name-not-allowed', name: 'www.t.test', detail: expect.stringMatching(/^allowlist changed while open/) }]);
    // The kept one still carries requests.
    expect(await get(s, `http://api.t.test:${up.port}/again`).response).toMatch(/^HTTP\/1\.1 200 /);
    expect(up.accepted).toBe(2);
  });
});
