/**
 * `moat proxy`: an allowlist reload covers tunnels in flight (issue 14
 * finding 4). A CONNECT admitted under the old rules whose dial completes
 * after a reload is re-decided then: refused -> both sides closed, nothing
 * sent upstream, a decision record. An admission still resolving when the
 * rules change is decided again under the new ones.
 *
 * Unit level: a real Egress (AllowlistRuntime), the real Tunnel, client and
 * upstream sockets on loopback, and a dialer whose connect the test releases.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime } from '../../src/egress/allowlist-runtime.js';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { DEFAULT_EGRESS_OPTIONS } from '../../src/egress/egress.js';
import { NULL_LOGGER } from '../../src/log.js';
import { admit } from '../../src/proxy/targets.js';
import { Tunnel, type Dialer } from '../../src/proxy/tunnel.js';
import { waitFor } from './nat-fake-stack.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

class GatedResolver implements Resolver {
  /** While set, lookups wait for it. */
  gate: Promise<void> | undefined;
  constructor(private readonly a: Record<string, string[]>) {}
  async resolve4(name: string): Promise<ResolvedAddresses> {
    if (this.gate !== undefined) await this.gate;
    const addresses = this.a[name];
    if (addresses === undefined) throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
    return { addresses, ttl: 60 };
  }
  async resolve6(): Promise<ResolvedAddresses> {
    return { addresses: [], ttl: 60 };
  }
}

/** A loopback server; `received` holds what each accepted connection sent. */
async function listen(onConn?: (s: Socket) => void): Promise<{ port: number; received: Buffer[] }> {
  const received: Buffer[] = [];
  const conns = new Set<Socket>();
  const srv = createServer((s) => {
    conns.add(s);
    const i = received.push(Buffer.alloc(0)) - 1;
    s.on('error', () => {});
    s.on('data', (d) => (received[i] = Buffer.concat([received[i]!, d])));
    onConn?.(s);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return { port: (srv.address() as AddressInfo).port, received };
}

async function setup(rules: string[], resolver: GatedResolver, mode: 'enforce' | 'audit' = 'enforce', admitResolved: string[] = ['127.0.0.0/8']) {
  const runtime = await AllowlistRuntime.start(
    {
      rules: parseRules(rules),
      resolver,
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
      guestSubnet: { network: '192.168.127.0', prefix: 24 },
      admitResolved,
      hostAliasExempt: false,
      allowLinkLocal: false,
      egress: { ...DEFAULT_EGRESS_OPTIONS, mode },
      now: () => performance.now(),
    },
    NULL_LOGGER,
  );
  cleanups.push(() => runtime.close());
  const records: DecisionRecord[] = [];
  runtime.egress.decisions.subscribe((r) => records.push(r));
  return { runtime, egress: runtime.egress, records };
}

describe('moat proxy: reload while a tunnel is dialing', () => {
  it('the dial that completes after the target went away is closed; nothing reaches the upstream; recorded', async () => {
    const upstream = await listen();
    const resolver = new GatedResolver({ 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'] });
    const s = await setup([`www.t.test:${upstream.port}`, `api.t.test:${upstream.port}`], resolver);
    const a = await admit(s.egress, 'www.t.test', upstream.port, NULL_LOGGER);
    if (!a.ok) throw new Error(`admission refused: ${a.reason}`);

    let release!: () => void;
    const dialer: Dialer = {
      connectFirst: (addresses, port) =>
        new Promise((resolve, reject) => {
          release = () => {
            const up = connect({ host: addresses[0]!, port, allowHalfOpen: true });
            up.once('connect', () => resolve(up));
            up.once('error', reject);
          };
        }),
    };
    // The client side of the tunnel: a loopback pair.
    let clientSide!: Socket;
    const front = await listen((sock) => (clientSide = sock));
    const app = connect({ host: '127.0.0.1', port: front.port });
    app.on('error', () => {});
    await waitFor(() => clientSide !== undefined, 'the client connection');
    let done = false;
    const t = new Tunnel(clientSide, a, { egress: s.egress, dialer, log: NULL_LOGGER, serverFirstGraceMs: 50 }, () => (done = true));
    t.start();
    app.write(`GET / HTTP/1.1\r\nHost: www.t.test\r\n\r\n`);
    await waitFor(() => t.phase === 'dialing', 'the tunnel to dial');

    await s.runtime.reload([`api.t.test:${upstream.port}`]);
    release();
    await waitFor(() => done, 'the tunnel to close');
    await new Promise((r) => setTimeout(r, 50));
    expect(upstream.received.every((b) => b.length === 0)).toBe(true);
    expect(s.records.filter((r) => r.decision === 'blocked' && /allowlist changed/.test(r.detail ?? ''))).toMatchObject([
      { reason: 'name-not-allowed', name: 'www.t.test', dst: `www.t.test:${upstream.port}`, via: 'target' },
    ]);
    app.destroy();
  });

  it('a reload while the tunnel peeks refuses it before anything is dialed', async () => {
    const resolver = new GatedResolver({ 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'] });
    const s = await setup(['www.t.test', 'api.t.test'], resolver);
    const a = await admit(s.egress, 'www.t.test', 443, NULL_LOGGER);
    if (!a.ok) throw new Error(`admission refused: ${a.reason}`);
    let dialed = 0;
    const dialer: Dialer = { connectFirst: () => (dialed++, new Promise(() => {})) };
    let clientSide!: Socket;
    const front = await listen((sock) => (clientSide = sock));
    const app = connect({ host: '127.0.0.1', port: front.port });
    app.on('error', () => {});
    await waitFor(() => clientSide !== undefined, 'the client connection');
    let done = false;
    const t = new Tunnel(clientSide, a, { egress: s.egress, dialer, log: NULL_LOGGER, serverFirstGraceMs: 50 }, () => (done = true));
    t.start();
    await s.runtime.reload(['api.t.test']);
    // A ClientHello would do as well; the peeker takes an HTTP head on any port.
    app.write('GET / HTTP/1.1\r\nHost: www.t.test\r\n\r\n');
    await waitFor(() => done, 'the tunnel to close');
    expect(dialed).toBe(0);
    expect(s.records.filter((r) => r.decision === 'blocked' && r.detail === 'allowlist changed while peeking')).toHaveLength(1);
    app.destroy();
  });

  it('an admission still resolving when the rules change is decided again under the new rules', async () => {
    const resolver = new GatedResolver({ 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'], 'x.wild.test': ['127.0.0.1'] });
    const s = await setup(['www.t.test:8443', '*.wild.test:8443'], resolver);
    let open!: () => void;
    resolver.gate = new Promise((r) => (open = r));
    const pending = admit(s.egress, 'x.wild.test', 8443, NULL_LOGGER); // a live lookup: waits at the gate
    resolver.gate = undefined; // the reload's own lookups go through
    await s.runtime.reload(['www.t.test:8443']);
    open();
    const a = await pending;
    expect(a.ok).toBe(false);
    if (!a.ok) expect(a.reason).toBe('name-not-allowed');
  });
});

describe('moat proxy: an address target re-decided as it was first decided', () => {
  it('a tunnel to an address the new rules put behind the rebinding filter is refused at dial completion, with the reason admission gives now', async () => {
    const upstream = await listen();
    const resolver = new GatedResolver({});
    // No --admit-resolved: loopback is opened only by a rule inside 127/8.
    const s = await setup([`127.0.0.1:${upstream.port}`], resolver, 'enforce', []);
    const a = await admit(s.egress, '127.0.0.1', upstream.port, NULL_LOGGER);
    if (!a.ok) throw new Error(`admission refused: ${a.reason}`);

    let release!: () => void;
    const dialer: Dialer = {
      connectFirst: (addresses, port) =>
        new Promise((resolve, reject) => {
          release = () => {
            const up = connect({ host: addresses[0]!, port, allowHalfOpen: true });
            up.once('connect', () => resolve(up));
            up.once('error', reject);
          };
        }),
    };
    let clientSide!: Socket;
    const front = await listen((sock) => (clientSide = sock));
    const app = connect({ host: '127.0.0.1', port: front.port });
    app.on('error', () => {});
    await waitFor(() => clientSide !== undefined, 'the client connection');
    let done = false;
    const t = new Tunnel(clientSide, a, { egress: s.egress, dialer, log: NULL_LOGGER, serverFirstGraceMs: 50 }, () => (done = true));
    t.start(Buffer.from('hello'));
    await waitFor(() => t.phase === 'dialing', 'the tunnel to dial');

    // 0.0.0.0/0 contains 127.0.0.1 but does not lie inside 127/8: the rebinding filter refuses it.
    await s.runtime.reload([`0.0.0.0/0:${upstream.port}`]);
    const now = await admit(s.egress, '127.0.0.1', upstream.port, NULL_LOGGER);
    expect(now).toMatchObject({ ok: false, reason: 'rebinding' });
    release();
    await waitFor(() => done, 'the tunnel to close');
    await new Promise((r) => setTimeout(r, 50));
    expect(upstream.received.every((b) => b.length === 0)).toBe(true);
    const rechecked = s.records.filter((r) => r.decision === 'blocked' && r.detail?.startsWith('allowlist changed') === true);
    expect(rechecked).toMatchObject([{ reason: now.ok ? 'allowed' : now.reason, dst: `127.0.0.1:${upstream.port}`, via: 'target' }]);
    app.destroy();
  });
});

describe('moat proxy: reload with drop, tunnel by tunnel', () => {
  it('an open tunnel the new rules refuse is closed with one decision record; one they allow stays', async () => {
    const upstream = await listen();
    const resolver = new GatedResolver({ 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'] });
    const s = await setup([`www.t.test:${upstream.port}`, `api.t.test:${upstream.port}`], resolver);
    const dialer: Dialer = {
      connectFirst: (addresses, port) =>
        new Promise((resolve, reject) => {
          const up = connect({ host: addresses[0]!, port, allowHalfOpen: true });
          up.once('connect', () => resolve(up));
          up.once('error', reject);
        }),
    };
    const open = async (name: string): Promise<{ t: Tunnel; done: () => boolean }> => {
      const a = await admit(s.egress, name, upstream.port, NULL_LOGGER);
      if (!a.ok) throw new Error(`admission refused: ${a.reason}`);
      let clientSide: Socket | undefined;
      const front = await listen((sock) => (clientSide = sock));
      const app = connect({ host: '127.0.0.1', port: front.port });
      app.on('error', () => {});
      cleanups.push(() => void app.destroy());
      await waitFor(() => clientSide !== undefined, 'the client connection');
      let done = false;
      const t = new Tunnel(clientSide!, a, { egress: s.egress, dialer, log: NULL_LOGGER, serverFirstGraceMs: 50 }, () => (done = true));
      t.start();
      app.write(`GET / HTTP/1.1\r\nHost: ${name}\r\n\r\n`);
      await waitFor(() => t.phase === 'piped', 'the tunnel to open');
      return { t, done: () => done };
    };
    const www = await open('www.t.test');
    const api = await open('api.t.test');
    await s.runtime.reload([`api.t.test:${upstream.port}`]);
    expect(www.t.recheck()).toBe(false);
    expect(api.t.recheck()).toBe(true);
    expect(www.done()).toBe(true);
    expect(api.t.phase).toBe('piped');
    expect(s.records.filter((r) => r.decision === 'blocked' && r.detail?.startsWith('allowlist changed while open') === true)).toMatchObject([
      { reason: 'name-not-allowed', name: 'www.t.test', via: 'target' },
    ]);
    api.t.destroy();
  });
});

describe('moat proxy audit mode and metadata', () => {
  it('a target resolving into 169.254/16 is admitted to its other addresses only, whether the name is refused or rebinding', async () => {
    const resolver = new GatedResolver({ 'meta.t.test': ['169.254.169.254', '203.0.113.9'], 'only.t.test': ['169.254.169.254'], 'www.t.test': ['127.0.0.1'] });
    const s = await setup(['www.t.test', 'meta.t.test:8080'], resolver, 'audit');
    for (const [host, port] of [['meta.t.test', 443], ['meta.t.test', 8080], ['only.t.test', 443]] as const) {
      const a = await admit(s.egress, host, port, NULL_LOGGER);
      if (a.ok) expect(a.addresses).not.toContain('169.254.169.254');
    }
    const only = await admit(s.egress, 'only.t.test', 443, NULL_LOGGER);
    expect(only.ok).toBe(false);
  });
});
