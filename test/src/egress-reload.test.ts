/**
 * An allowlist reload covers every flow in flight (issue 14 finding 4): a
 * connection decided under the old rules that is still dialing (the NAT's
 * direct dial for an IP-rule flow, or a held connection dialing the name it
 * peeked) is re-decided when its dial completes, and is reset if the new
 * rules refuse it; `?drop=1` (Nat.dropRefusedFlows) resets and counts it at
 * once, and also resets held connections whose port no rule covers now.
 *
 * The guest is the fake stack; "the internet" is a server on 127.0.0.1
 * reached through the host alias (an exact alias rule) or by name. Every host
 * dial goes through a connectHost hook that refuses anything but loopback and
 * holds each connect until the test releases it: the moment the dial
 * completes is the test's to choose.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createSocket } from 'node:dgram';
import { createServer, Socket, type AddressInfo, type NetConnectOpts } from 'node:net';
import { ipv4, parseIPv4, type IPv4 } from '../../netstack/addr.js';
import { parseRules } from '../../dns/rules.js';
import type { ResolvedAddresses, Resolver } from '../../dns/preresolve.js';
import { AllowlistRuntime } from '../../src/egress/allowlist-runtime.js';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { DEFAULT_EGRESS_OPTIONS, type EgressMode, type InFlight } from '../../src/egress/egress.js';
import { createLogger } from '../../src/log.js';
import { Nat } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack, type FakeTcpSocket, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const ALIAS = '192.168.127.254';
/** A destination the guest "chooses" for name flows: never dialed. */
const FRONTED = '198.51.100.7';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

class MapResolver implements Resolver {
  /** While set, lookups of live.t.test wait for it. */
  gate: Promise<void> | undefined;
  constructor(private readonly a: Record<string, string[]>) {}
  async resolve4(name: string): Promise<ResolvedAddresses> {
    if (name === 'live.t.test' && this.gate !== undefined) await this.gate;
    const addresses = this.a[name];
    if (addresses === undefined) throw Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' });
    return { addresses, ttl: 60 };
  }
  async resolve6(): Promise<ResolvedAddresses> {
    return { addresses: [], ttl: 60 };
  }
}

interface Upstream {
  port: number;
  /** Connections the server accepted, and the bytes each received. */
  accepted: number;
  received: Buffer[];
}

async function upstream(): Promise<Upstream> {
  const u: Upstream = { port: 0, accepted: 0, received: [] };
  const conns = new Set<Socket>();
  const srv = createServer((s) => {
    conns.add(s);
    const i = u.accepted++;
    u.received.push(Buffer.alloc(0));
    s.on('error', () => {});
    s.on('data', (d) => (u.received[i] = Buffer.concat([u.received[i]!, d])));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  u.port = (srv.address() as AddressInfo).port;
  return u;
}

interface Setup {
  nat: Nat;
  runtime: AllowlistRuntime;
  records: DecisionRecord[];
  /** Dials asked for, in order; each connects only when released. */
  dials: { target: string; release: () => void }[];
  /** Every address Moat tried to dial, loopback or not. */
  attempted: string[];
  resolver: MapResolver;
}

async function setup(rules: string[], mode: EgressMode = 'enforce'): Promise<Setup> {
  const resolver = new MapResolver({ 'www.t.test': ['127.0.0.1'], 'api.t.test': ['127.0.0.1'], 'meta.t.test': ['169.254.169.254', '127.0.0.1'], 'live.t.test': ['127.0.0.1'] });
  const log = createLogger({ level: 'error', format: 'json', stream: { write: () => {} } });
  const runtime = await AllowlistRuntime.start(
    {
      rules: parseRules(rules),
      resolver,
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: ALIAS,
      sinkhole: 'zero',
      guestSubnet: { network: '192.168.127.0', prefix: 24 },
      admitResolved: ['127.0.0.0/8'],
      hostAliasExempt: false,
      allowLinkLocal: false,
      egress: { ...DEFAULT_EGRESS_OPTIONS, mode },
      now: () => performance.now(),
    },
    log,
  );
  const records: DecisionRecord[] = [];
  runtime.egress.decisions.subscribe((r) => records.push(r));
  const dials: Setup['dials'] = [];
  const attempted: string[] = [];
  const connectHost = (o: NetConnectOpts): Socket => {
    const host = (o as { host?: string }).host ?? '';
    attempted.push(host);
    // The safety net: nothing in this file may leave loopback.
    if (!host.startsWith('127.')) throw new Error(`test refused to dial ${host}`);
    const s = new Socket({ allowHalfOpen: true });
    dials.push({ target: `${host}:${(o as { port?: number }).port}`, release: () => void s.connect(o) });
    return s;
  };
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], connectHost }, log, runtime.dns, runtime.egress);
  nat.attach(new FakeStack());
  cleanups.push(async () => {
    await nat.close();
    await runtime.close();
  });
  return { nat, runtime, records, dials, attempted, resolver };
}

let nextPort = 43000;
function syn(dst: string, dstPort: number): FakePendingTcp {
  return new FakePendingTcp({ src: GUEST, srcPort: nextPort++, dst: parseIPv4(dst)! as IPv4, dstPort });
}

async function acceptedSocket(p: FakePendingTcp): Promise<FakeTcpSocket> {
  const o = await p.decided;
  if (o.kind !== 'accepted') throw new Error(`expected accept, got ${o.kind}`);
  return o.socket;
}

/** A guest connection held for its Host whose dial (by name, to 127.0.0.1) is now waiting for release. */
async function heldDialing(s: Setup, port: number, name: string): Promise<FakeTcpSocket> {
  const before = s.dials.length;
  const p = syn(FRONTED, port);
  s.nat.onTcpSyn(p);
  const sock = await acceptedSocket(p);
  sock.guestSend(Buffer.from(`GET / HTTP/1.1\r\nHost: ${name}\r\n\r\n`));
  await waitFor(() => s.dials.length > before, 'the held connection to dial');
  return sock;
}

const reloadRecords = (s: Setup): DecisionRecord[] => s.records.filter((r) => r.decision !== 'allowed' && /allowlist changed/.test(r.detail ?? ''));

describe('reload while a direct dial (IP-rule flow) is in flight', () => {
  it('without drop: the dial that completes after the rule went away is refused (RST), recorded, and the host socket closed', async () => {
    const up = await upstream();
    const s = await setup([`${ALIAS}:${up.port}`, `www.t.test:${up.port}`]);
    const p = syn(ALIAS, up.port);
    s.nat.onTcpSyn(p);
    expect(s.dials.map((d) => d.target)).toEqual([`127.0.0.1:${up.port}`]);
    await s.runtime.reload([`www.t.test:${up.port}`]);
    s.dials[0]!.release();
    expect((await p.decided).kind).toBe('refused');
    const r = reloadRecords(s);
    expect(r).toHaveLength(1);
    expect(r[0]).toMatchObject({ decision: 'blocked', reason: 'host-alias', proto: 'tcp', dst: `${ALIAS}:${up.port}` });
    expect(s.nat.stats().tcpFlows).toBe(0);
    // The server may have seen the TCP handshake, never a byte, and the socket is gone.
    expect(up.received.every((b) => b.length === 0)).toBe(true);
  });

  it('with drop: counted at once, the SYN refused, and the late connect does not open a flow', async () => {
    const up = await upstream();
    const s = await setup([`${ALIAS}:${up.port}`, `www.t.test:${up.port}`]);
    const p = syn(ALIAS, up.port);
    s.nat.onTcpSyn(p);
    await s.runtime.reload([`www.t.test:${up.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(1);
    expect((await p.decided).kind).toBe('refused');
    s.dials[0]!.release();
    await new Promise((r) => setTimeout(r, 50));
    expect(s.nat.stats().tcpFlows).toBe(0);
    expect(reloadRecords(s)).toHaveLength(1);
  });

  it('a reload that still allows the flow lets the dial complete (no over-blocking)', async () => {
    const up = await upstream();
    const s = await setup([`${ALIAS}:${up.port}`]);
    const p = syn(ALIAS, up.port);
    s.nat.onTcpSyn(p);
    await s.runtime.reload([`${ALIAS}:${up.port}`, `www.t.test:${up.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(0);
    s.dials[0]!.release();
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('hello'));
    await waitFor(() => up.received[0]?.toString() === 'hello', 'bytes to reach the server');
    expect(reloadRecords(s)).toEqual([]);
  });
});

describe('reload while a held connection dials the name it peeked', () => {
  it('without drop: the dial completing after the name went away resets the guest; nothing reaches the server', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`]);
    const sock = await heldDialing(s, up.port, 'www.t.test');
    await s.runtime.reload([`api.t.test:${up.port}`]);
    s.dials[0]!.release();
    await waitFor(() => sock.abortCalled, 'the guest to be reset');
    expect(reloadRecords(s)).toMatchObject([{ decision: 'blocked', reason: 'name-not-allowed', name: 'www.t.test', via: 'host' }]);
    await new Promise((r) => setTimeout(r, 50));
    expect(up.received.every((b) => b.length === 0)).toBe(true);
    expect(s.nat.stats().tcpFlows).toBe(0);
    expect(s.nat.stats().held).toBe(0);
  });

  it('a reload while the name is still being resolved refuses it before anything is dialed', async () => {
    const up = await upstream();
    const s = await setup([`*.t.test:${up.port}`, `api.t.test:${up.port}`]);
    let open!: () => void;
    s.resolver.gate = new Promise((r) => (open = r));
    const p = syn(FRONTED, up.port);
    s.nat.onTcpSyn(p);
    const sock = await acceptedSocket(p);
    sock.guestSend(Buffer.from('GET / HTTP/1.1\r\nHost: live.t.test\r\n\r\n'));
    await waitFor(() => s.records.some((r) => r.decision === 'allowed' && r.name === 'live.t.test'), 'the name to be allowed');
    await s.runtime.reload([`api.t.test:${up.port}`]);
    open();
    await waitFor(() => sock.abortCalled, 'the guest to be reset');
    expect(s.attempted).toEqual([]);
    expect(reloadRecords(s)).toMatchObject([{ decision: 'blocked', reason: 'name-not-allowed', name: 'live.t.test', detail: 'allowlist changed while resolving' }]);
  });

  it('with drop: counted at once and reset; the late connect is closed', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`]);
    const sock = await heldDialing(s, up.port, 'www.t.test');
    await s.runtime.reload([`api.t.test:${up.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(1);
    expect(sock.abortCalled).toBe(true);
    s.dials[0]!.release();
    await new Promise((r) => setTimeout(r, 50));
    expect(up.received.every((b) => b.length === 0)).toBe(true);
    expect(s.nat.stats().tcpFlows).toBe(0);
  });

  it('a name the new rules still allow is piped as usual', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`]);
    await heldDialing(s, up.port, 'www.t.test');
    await s.runtime.reload([`www.t.test:${up.port}`, `api.t.test:${up.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(0);
    s.dials[0]!.release();
    await waitFor(() => up.received[0]?.toString().startsWith('GET / HTTP/1.1') === true, 'the held head to reach the server');
    expect(reloadRecords(s)).toEqual([]);
  });

  it('audit mode: the refusal is recorded as would-block and the flow goes on', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`], 'audit');
    await heldDialing(s, up.port, 'www.t.test');
    await s.runtime.reload([`api.t.test:${up.port}`]);
    s.dials[0]!.release();
    await waitFor(() => up.received[0]?.toString().startsWith('GET / HTTP/1.1') === true, 'the held head to reach the server');
    expect(reloadRecords(s)).toMatchObject([{ decision: 'would-block', reason: 'name-not-allowed' }]);
  });
});

describe('audit mode and metadata', () => {
  it('a refused name resolving into 169.254/16 goes through audit to its other addresses only, never to metadata', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`], 'audit');
    await heldDialing(s, up.port, 'meta.t.test');
    s.dials[0]!.release();
    await waitFor(() => up.received[0]?.toString().startsWith('GET / HTTP/1.1') === true, 'the held head to reach the server');
    expect(s.attempted).toEqual(['127.0.0.1']);
  });
});

describe('reload with drop while connections are held for their name', () => {
  it('a held connection whose port no rule covers now is reset and counted; one still covered stays', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, 'api.t.test']);
    const p1 = syn(FRONTED, up.port);
    const p2 = syn(FRONTED, 443);
    s.nat.onTcpSyn(p1);
    s.nat.onTcpSyn(p2);
    const gone = await acceptedSocket(p1);
    const kept = await acceptedSocket(p2);
    expect(s.nat.stats().held).toBe(2);
    await s.runtime.reload(['api.t.test']);
    expect(s.nat.dropRefusedFlows()).toBe(1);
    expect(gone.abortCalled).toBe(true);
    expect(kept.abortCalled).toBe(false);
    expect(s.nat.stats().held).toBe(1);
  });

  it('an established flow is left alone without drop (the documented semantics), and reset with it', async () => {
    const up = await upstream();
    const s = await setup([`${ALIAS}:${up.port}`, `www.t.test:${up.port}`]);
    const p = syn(ALIAS, up.port);
    s.nat.onTcpSyn(p);
    s.dials[0]!.release();
    const sock = await acceptedSocket(p);
    await s.runtime.reload([`www.t.test:${up.port}`]);
    sock.guestSend(Buffer.from('still'));
    await waitFor(() => up.received[0]?.toString() === 'still', 'bytes on the established flow');
    expect(s.nat.dropRefusedFlows()).toBe(1);
    await waitFor(() => sock.abortCalled || sock.closedWith !== undefined, 'the flow to be reset');
    expect(s.records.filter((r) => r.detail === 'allowlist changed while open')).toMatchObject([{ decision: 'blocked', reason: 'host-alias', dst: `${ALIAS}:${up.port}` }]);
  });
});

describe('reload with drop: flows piped after their held connection (dialed by name)', () => {
  /** A held connection for `name`, dialed and piped: the server has its head. */
  async function piped(s: Setup, port: number, name: string, up: Upstream, i: number): Promise<FakeTcpSocket> {
    const sock = await heldDialing(s, port, name);
    s.dials[i]!.release();
    await waitFor(() => up.received[i]?.toString().startsWith('GET / HTTP/1.1') === true, 'the held head to reach the server');
    return sock;
  }

  it('one refused by the new rules is reset, counted, and recorded once (allowlist changed while open); one still allowed stays', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`]);
    const www = await piped(s, up.port, 'www.t.test', up, 0);
    const api = await piped(s, up.port, 'api.t.test', up, 1);
    expect(s.nat.stats().held).toBe(0);
    await s.runtime.reload([`api.t.test:${up.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(1);
    await waitFor(() => www.abortCalled || www.closedWith !== undefined, 'the refused flow to be reset');
    expect(api.abortCalled).toBe(false);
    expect(reloadRecords(s)).toMatchObject([
      { decision: 'blocked', reason: 'name-not-allowed', name: 'www.t.test', via: 'host', dst: `${FRONTED}:${up.port}`, detail: 'allowlist changed while open (connected to 127.0.0.1)' },
    ]);
    expect(reloadRecords(s)).toHaveLength(1);
  });

  it('audit mode: recorded as would-block and kept, as every other audit refusal', async () => {
    const up = await upstream();
    const s = await setup([`www.t.test:${up.port}`, `api.t.test:${up.port}`], 'audit');
    const www = await piped(s, up.port, 'www.t.test', up, 0);
    await s.runtime.reload([`api.t.test:${up.port}`]);
    expect(s.nat.dropRefusedFlows()).toBe(0);
    expect(www.abortCalled).toBe(false);
    expect(reloadRecords(s)).toMatchObject([{ decision: 'would-block', reason: 'name-not-allowed', name: 'www.t.test', detail: 'allowlist changed while open (connected to 127.0.0.1)' }]);
  });
});

describe('reload with drop: UDP flows', () => {
  it('a UDP flow the new rules refuse is closed, counted, and recorded once; audit mode keeps it as would-block', async () => {
    for (const mode of ['enforce', 'audit'] as const) {
      const sink = createSocket('udp4');
      await new Promise<void>((r) => sink.bind(0, '127.0.0.1', r));
      cleanups.push(() => new Promise<void>((r) => sink.close(() => r())));
      const port = (sink.address() as AddressInfo).port;
      const s = await setup([`${ALIAS}:${port}`, 'www.t.test'], mode);
      s.nat.onUdp({ src: GUEST, srcPort: 5000, dst: parseIPv4(ALIAS)! as IPv4, dstPort: port, payload: new Uint8Array(4) });
      expect(s.nat.stats().udpFlows).toBe(1);
      await s.runtime.reload(['www.t.test']);
      expect(s.nat.dropRefusedFlows()).toBe(mode === 'enforce' ? 1 : 0);
      expect(s.nat.stats().udpFlows).toBe(mode === 'enforce' ? 0 : 1);
      expect(reloadRecords(s)).toMatchObject([
        { decision: mode === 'enforce' ? 'blocked' : 'would-block', reason: 'host-alias', proto: 'udp', dst: `${ALIAS}:${port}`, detail: 'allowlist changed while open' },
      ]);
    }
  });
});

describe('reload warnings', () => {
  it('start-up and reload name each rule that contains the host alias or 169.254/16 without opening it', async () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ level: 'warn', format: 'json', stream: { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) } });
    const runtime = await AllowlistRuntime.start(
      {
        rules: parseRules(['192.168.0.0/16:18080', `${ALIAS}:22`, '169.254.169.254']),
        resolver: new MapResolver({}),
        gatewayIpv4: '192.168.127.1',
        hostAliasIpv4: ALIAS,
        sinkhole: 'zero',
        guestSubnet: { network: '192.168.127.0', prefix: 24 },
        admitResolved: [],
        hostAliasExempt: false,
        allowLinkLocal: false,
        egress: DEFAULT_EGRESS_OPTIONS,
        now: () => performance.now(),
      },
      log,
    );
    cleanups.push(() => runtime.close());
    const warned = (): unknown[] => lines.filter((l) => l['msg'] === 'allow rule contains a range it does not open').map((l) => [l['rule'], l['contains']]);
    expect(warned()).toEqual([['192.168.0.0/16:18080', 'host-alias']]);
    lines.length = 0;
    await runtime.reload(['0.0.0.0/0:80', '169.254.0.0/16']);
    expect(warned()).toEqual([
      ['0.0.0.0/0:80', 'host-alias'],
      ['0.0.0.0/0:80', 'link-local'],
    ]);
  });
});

describe('Egress.recheck', () => {
  async function runtimeWith(rules: string[]): Promise<AllowlistRuntime> {
    const runtime = await AllowlistRuntime.start(
      {
        rules: parseRules(rules),
        resolver: new MapResolver({ 'www.t.test': ['127.0.0.1'] }),
        gatewayIpv4: '192.168.127.1',
        hostAliasIpv4: ALIAS,
        sinkhole: 'zero',
        guestSubnet: { network: '192.168.127.0', prefix: 24 },
        admitResolved: [],
        hostAliasExempt: false,
        allowLinkLocal: false,
        egress: DEFAULT_EGRESS_OPTIONS,
        now: () => performance.now(),
      },
      createLogger({ level: 'error', format: 'json', stream: { write: () => {} } }),
    );
    cleanups.push(() => runtime.close());
    return runtime;
  }

  it('a flow let out by a live pin survives a reload that keeps its wildcard (the reload clears live pins), and not one that drops it', async () => {
    const runtime = await runtimeWith(['*.corp.test:5432', 'www.t.test']);
    const egress = runtime.egress;
    egress.pins.pin('db.corp.test', ['203.0.113.5'], 60_000); // as a live DNS answer would
    const flow = { proto: 'tcp' as const, dst: '203.0.113.5', port: 5432 };
    const d = egress.decide(flow);
    expect(d).toMatchObject({ verdict: 'allow', reason: 'pinned', name: 'db.corp.test' });
    if (d.verdict !== 'allow') return;
    const inFlight = (): InFlight => ({ version: egress.version, target: { kind: 'flow', flow }, dial: d.dial, via: 'pin', pinnedName: 'db.corp.test' });

    const kept = inFlight();
    await runtime.reload(['*.corp.test:5432', 'www.t.test', '198.51.100.1:1']);
    expect(egress.recheck(kept, 'while dialing')).toEqual({ keep: true });

    const dropped = inFlight();
    await runtime.reload(['www.t.test']);
    const r = egress.recheck(dropped, 'while dialing');
    expect(r.keep).toBe(false);
  });

  it('an unchanged version is kept without deciding again', async () => {
    const runtime = await runtimeWith(['www.t.test']);
    const f: InFlight = { version: runtime.egress.version, target: { kind: 'name', name: 'nothing.allowed.test', port: 443 }, dial: { kind: 'name', name: 'nothing.allowed.test' }, via: 'target' };
    expect(runtime.egress.recheck(f, 'while dialing')).toEqual({ keep: true });
  });
});
