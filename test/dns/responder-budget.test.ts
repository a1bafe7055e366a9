/**
 * The responder's live lookups under a LiveLookupBudget (issue 14, finding
 * 1), and its HTTPS/SVCB answers (finding 7, the DNS half).
 */
import { describe, expect, it } from 'vitest';
import dnsPacket from 'dns-packet';
import { ManualClock } from '../../netstack/clock.js';
import { parseRules } from '../../dns/rules.js';
import { preresolve } from '../../dns/preresolve.js';
import { builtinHosts, hostsToResolve, ZoneTable } from '../../dns/zones.js';
import { DnsResponder, type DnsReply } from '../../dns/responder.js';
import { DEFAULT_LIVE_BUDGET, LiveLookupBudget } from '../../dns/live-budget.js';
import { emitSvcb, parseSvcb, SVC_KEY, type SvcbRecord } from '../../dns/svcb.js';
import { FakeResolver, VirtualTimers } from './fake-upstream.js';

type Decoded = dnsPacket.DecodedPacket & { rcode: string };
const builtins = builtinHosts({ gatewayIpv4: '192.168.127.1', hostAliasIpv4: '192.168.127.254' });
const OPT = { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0 } as dnsPacket.Answer] };

function query(name: string, type: string = 'A', extra: Partial<dnsPacket.Packet> = {}): Uint8Array {
  return dnsPacket.encode({ type: 'query', id: 0x4242, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: type as dnsPacket.RecordType, name, class: 'IN' }], ...extra });
}

function edeOf(msg: Decoded): { infoCode: number; text: string } | undefined {
  const o = (msg.additionals ?? []).find((a) => a.type === 'OPT') as { options?: { code: number; data?: Buffer }[] } | undefined;
  const ede = o?.options?.find((x) => x.code === 15);
  if (ede?.data === undefined) return undefined;
  return { infoCode: ede.data.readUInt16BE(0), text: ede.data.subarray(2).toString('utf8') };
}

interface Setup {
  responder: DnsResponder;
  resolver: FakeResolver;
  timers: VirtualTimers;
  clock: ManualClock;
  budget: LiveLookupBudget;
}

async function setup(
  rules: string[],
  upstream: (r: FakeResolver) => void,
  opts: { nameBurst?: number; enabled?: boolean; pinned?: (name: string) => readonly string[]; audit?: boolean } = {},
): Promise<Setup> {
  const timers = new VirtualTimers();
  const resolver = new FakeResolver(timers);
  upstream(resolver);
  const parsed = parseRules(rules);
  const records = await timers.run(preresolve(hostsToResolve(parsed, builtins), { resolver, timers, ipv6: false }));
  const table = ZoneTable.build(parsed, records, builtins, 'zero');
  const clock = new ManualClock();
  const budget = new LiveLookupBudget({
    ...DEFAULT_LIVE_BUDGET,
    ...(opts.nameBurst !== undefined ? { nameBurst: opts.nameBurst, namesPerSecond: 1 } : {}),
    ...(opts.enabled !== undefined ? { enabled: opts.enabled } : {}),
    now: () => clock.now(),
  });
  let n = 0;
  const responder = new DnsResponder({
    table,
    resolver,
    timers,
    ipv6: false,
    budget,
    decisionId: () => `d${++n}`,
    ...(opts.pinned ? { pinned: opts.pinned } : {}),
    ...(opts.audit ? { audit: true } : {}),
  });
  resolver.calls.length = 0;
  return { responder, resolver, timers, clock, budget };
}

async function ask(s: Setup, q: Uint8Array): Promise<{ reply: DnsReply; msg: Decoded }> {
  const reply = await s.timers.run(s.responder.respond(q, 'udp'));
  if (reply === null) throw new Error('dropped');
  return { reply, msg: dnsPacket.decode(Buffer.from(reply.bytes)) as Decoded };
}

function wildcardUpstream(r: FakeResolver): void {
  for (let i = 0; i < 10; i++) r.host(`h${i}.cdn.test`, [`198.51.100.${i + 1}`], [], 60);
}

describe('DnsResponder: the live-lookup budget', () => {
  it('over budget: SERVFAIL with EDE 15 naming the budget, nothing asked upstream, counted', async () => {
    const s = await setup(['*.cdn.test'], wildcardUpstream, { nameBurst: 2 });
    expect((await ask(s, query('h0.cdn.test', 'A', OPT))).msg.rcode).toBe('NOERROR');
    expect((await ask(s, query('h1.cdn.test', 'A', OPT))).msg.rcode).toBe('NOERROR');
    const { msg, reply } = await ask(s, query('h2.cdn.test', 'A', OPT));
    expect(msg.rcode).toBe('SERVFAIL');
    expect(msg.answers).toEqual([]);
    expect(edeOf(msg)).toEqual({ infoCode: 15, text: expect.stringContaining('live lookup budget exhausted (1 names/s, 1024 name bytes/s)') });
    expect(reply.decision).toMatchObject({ name: 'h2.cdn.test', outcome: 'live-budget', rcode: 'SERVFAIL', allowed: true });
    expect(s.resolver.callsFor('A', 'h2.cdn.test')).toBe(0);
    expect(s.responder.stats).toMatchObject({ liveOverBudget: 1, live: 2, upstreamFailed: 0 });
    // Without EDNS: the same SERVFAIL, no OPT.
    const plain = await ask(s, query('h3.cdn.test'));
    expect(plain.msg.rcode).toBe('SERVFAIL');
    expect(plain.msg.additionals ?? []).toEqual([]);
    // The bucket refills: a second later one more name goes through.
    s.clock.advance(1000);
    expect((await ask(s, query('h2.cdn.test'))).msg.rcode).toBe('NOERROR');
  });

  it('a name answered and within its TTL is free: repeats are answered while new names are refused', async () => {
    const s = await setup(['*.cdn.test'], wildcardUpstream, { nameBurst: 1 });
    expect((await ask(s, query('h0.cdn.test'))).msg.rcode).toBe('NOERROR');
    expect((await ask(s, query('h1.cdn.test'))).msg.rcode).toBe('SERVFAIL');
    for (let i = 0; i < 20; i++) expect((await ask(s, query('H0.cdn.test'))).msg.rcode).toBe('NOERROR');
    expect(s.budget.stats.free).toBe(20);
    // After the TTL (60 s; the bucket holds 1 name again by then) it costs once more.
    s.clock.advance(60_000);
    expect(s.budget.spend('h0.cdn.test')).toBe('spent');
  });

  it('NXDOMAIN answers are remembered for the minimum TTL: asking again is free', async () => {
    const s = await setup(['*.cdn.test'], wildcardUpstream, { nameBurst: 1 });
    expect((await ask(s, query('nope.cdn.test'))).msg.rcode).toBe('NXDOMAIN');
    expect((await ask(s, query('nope.cdn.test'))).msg.rcode).toBe('NXDOMAIN');
    expect(s.budget.stats).toMatchObject({ spent: 1, free: 1 });
  });

  it('names from the rules (pre-resolved) and sinkholed names never touch the budget', async () => {
    const s = await setup(['www.allowed.test', '*.cdn.test'], (r) => r.host('www.allowed.test', ['203.0.113.10']), { nameBurst: 1 });
    for (let i = 0; i < 5; i++) {
      expect((await ask(s, query('www.allowed.test'))).msg.rcode).toBe('NOERROR');
      await ask(s, query(`x${i}.blocked.test`));
    }
    expect(s.budget.stats).toMatchObject({ spent: 0, overBudget: 0, free: 0 });
  });

  it('audit-mode lookups of names outside the allowlist spend from the same budget', async () => {
    const s = await setup(['*.cdn.test'], (r) => r.host('a.other.test', ['198.51.100.40']).host('b.other.test', ['198.51.100.41']), { nameBurst: 1, audit: true });
    expect((await ask(s, query('a.other.test'))).reply.decision.outcome).toBe('audit-live');
    expect((await ask(s, query('b.other.test'))).reply.decision.outcome).toBe('live-budget');
  });

  it('live lookups off: a name below *.domain gets the sinkhole answer with an EDE saying why; nothing asked', async () => {
    const s = await setup(['www.cdn.test', '*.cdn.test'], (r) => r.host('www.cdn.test', ['203.0.113.11']).host('img.cdn.test', ['203.0.113.12']), { enabled: false });
    const { msg, reply } = await ask(s, query('img.cdn.test', 'A', OPT));
    expect(msg.rcode).toBe('NOERROR');
    expect((msg.answers ?? []).map((a) => String((a as { data: unknown }).data))).toEqual(['0.0.0.0']);
    expect(edeOf(msg)?.text).toContain('live lookups are off');
    expect(reply.decision).toMatchObject({ outcome: 'live-off', allowed: false, id: 'd1' });
    expect(s.resolver.calls).toEqual([]);
    expect(s.responder.stats.liveOff).toBe(1);
    // A host named by a rule is still answered from pre-resolution.
    const www = await ask(s, query('www.cdn.test'));
    expect((www.msg.answers ?? []).map((a) => String((a as { data: unknown }).data))).toEqual(['203.0.113.11']);
  });
});

// ------------------------------------------------------------------ HTTPS / SVCB

const b = (...xs: number[]): Uint8Array => Uint8Array.from(xs);
const label = (s: string): Uint8Array => new TextEncoder().encode(s);

/** ServiceMode, target ".", alpn=h2,h3, port 8443, ipv4hint (pinned + not), ech, ipv6hint, key 9 (unknown). */
function upstreamRecord(pinned: string, other: string): SvcbRecord {
  const v4 = (a: string): number[] => a.split('.').map(Number);
  return {
    priority: 1,
    target: [],
    params: [
      { key: SVC_KEY.alpn, value: b(2, 0x68, 0x32, 2, 0x68, 0x33) },
      { key: SVC_KEY.port, value: b(0x20, 0xfb) },
      { key: SVC_KEY.ipv4hint, value: b(...v4(pinned), ...v4(other)) },
      { key: SVC_KEY.ech, value: b(0, 4, 1, 2, 3, 4) },
      { key: SVC_KEY.ipv6hint, value: new Uint8Array(16).fill(1) },
      { key: 9, value: b(0xde, 0xad) },
    ],
  };
}

function servicesOf(msg: Decoded): SvcbRecord[] {
  return (msg.answers ?? []).map((a) => {
    const r = parseSvcb(new Uint8Array((a as { data: Buffer }).data));
    if (!('priority' in r)) throw new Error(r.reason);
    return r;
  });
}

describe('DnsResponder: HTTPS/SVCB answers', () => {
  it('an allowed name: asked upstream, ech, ipv6hint and unknown keys removed, ipv4hint cut to the pinned address; counted', async () => {
    const s = await setup(['www.allowed.test'], (r) =>
      r.host('www.allowed.test', ['203.0.113.10']).service('HTTPS', 'www.allowed.test', [emitSvcb(upstreamRecord('203.0.113.10', '198.51.100.99'))], 600),
    );
    const { msg, reply } = await ask(s, query('www.allowed.test', 'UNKNOWN_65'));
    expect(msg.rcode).toBe('NOERROR');
    expect(msg.answers?.[0]).toMatchObject({ type: 'UNKNOWN_65', name: 'www.allowed.test', ttl: 300 });
    const [rec] = servicesOf(msg);
    expect(rec!.params.map((p) => p.key)).toEqual([SVC_KEY.alpn, SVC_KEY.port, SVC_KEY.ipv4hint]);
    expect([...rec!.params[2]!.value]).toEqual([203, 0, 113, 10]);
    expect(reply.decision).toMatchObject({ type: 'HTTPS', outcome: 'allowed', allowed: true, addresses: [] });
    expect(s.responder.stats).toMatchObject({ service: 1, echRemoved: 1 });
    expect(s.budget.stats.spent).toBe(0); // a name from the rules
  });

  it('SVCB (type 64) is handled the same way; a hint with no pinned address is removed', async () => {
    const s = await setup(['www.allowed.test'], (r) =>
      r.host('www.allowed.test', ['203.0.113.10']).service('SVCB', 'www.allowed.test', [emitSvcb(upstreamRecord('198.51.100.98', '198.51.100.99'))]),
    );
    const { msg } = await ask(s, query('www.allowed.test', 'UNKNOWN_64'));
    const [rec] = servicesOf(msg);
    expect(rec!.params.map((p) => p.key)).toEqual([SVC_KEY.alpn, SVC_KEY.port]);
  });

  it('a record whose mandatory list names ech is dropped (a client could not use it without ech)', async () => {
    const mandatoryEch: SvcbRecord = { priority: 1, target: [], params: [{ key: SVC_KEY.mandatory, value: b(0, 5) }, { key: SVC_KEY.alpn, value: b(2, 0x68, 0x32) }, { key: SVC_KEY.ech, value: b(1) }] };
    const plain: SvcbRecord = { priority: 2, target: [label('alt'), label('allowed'), label('test')], params: [{ key: SVC_KEY.alpn, value: b(2, 0x68, 0x32) }] };
    const s = await setup(['www.allowed.test'], (r) => r.host('www.allowed.test', ['203.0.113.10']).service('HTTPS', 'www.allowed.test', [emitSvcb(mandatoryEch), emitSvcb(plain), b(0, 1, 0xc0, 12)]));
    const { msg } = await ask(s, query('www.allowed.test', 'UNKNOWN_65'));
    expect(servicesOf(msg)).toHaveLength(1); // the malformed third one is dropped too
    expect(servicesOf(msg)[0]!.priority).toBe(2);
  });

  it('ipv4hint follows the pin table when one is given (a live name pinned from its A answer)', async () => {
    const s = await setup(
      ['*.cdn.test'],
      (r) => r.service('HTTPS', 'img.cdn.test', [emitSvcb(upstreamRecord('198.51.100.7', '198.51.100.99'))]),
      { pinned: (n) => (n === 'img.cdn.test' ? ['198.51.100.7'] : []) },
    );
    const { msg, reply } = await ask(s, query('img.cdn.test', 'UNKNOWN_65'));
    expect([...servicesOf(msg)[0]!.params.find((p) => p.key === SVC_KEY.ipv4hint)!.value]).toEqual([198, 51, 100, 7]);
    expect(reply.decision.outcome).toBe('live');
  });

  it('below a wildcard, an HTTPS query of a new name spends from the budget; the same name after its A answer is free', async () => {
    const s = await setup(['*.cdn.test'], (r) => {
      wildcardUpstream(r);
      r.service('HTTPS', 'h0.cdn.test', [emitSvcb(upstreamRecord('198.51.100.1', '198.51.100.99'))], 60);
    }, { nameBurst: 1 });
    expect((await ask(s, query('h0.cdn.test'))).msg.rcode).toBe('NOERROR');
    expect((await ask(s, query('h0.cdn.test', 'UNKNOWN_65'))).msg.rcode).toBe('NOERROR');
    const over = await ask(s, query('h1.cdn.test', 'UNKNOWN_65', OPT));
    expect(over.msg.rcode).toBe('SERVFAIL');
    expect(edeOf(over.msg)?.text).toContain('live lookup budget');
    expect(s.resolver.calls).toEqual(['A h0.cdn.test', 'HTTPS h0.cdn.test']);
  });

  it('a repeat within the TTL is answered from the cache (filtered against the pins as they are now); after it, asked again', async () => {
    let pinned: string[] = [];
    const s = await setup(['www.allowed.test'], (r) =>
      r.host('www.allowed.test', ['203.0.113.10']).service('HTTPS', 'www.allowed.test', [emitSvcb(upstreamRecord('203.0.113.10', '198.51.100.99'))], 60),
      { pinned: () => pinned },
    );
    const hint = (msg: Decoded) => servicesOf(msg)[0]!.params.find((p) => p.key === SVC_KEY.ipv4hint);
    expect(hint((await ask(s, query('www.allowed.test', 'UNKNOWN_65'))).msg)).toBeUndefined();
    pinned = ['203.0.113.10'];
    for (let i = 0; i < 10; i++) expect(hint((await ask(s, query('www.allowed.test', 'UNKNOWN_65'))).msg)).toBeDefined();
    expect(s.resolver.calls).toEqual(['HTTPS www.allowed.test']);
    await s.timers.run(s.timers.sleep(60_000, new AbortController().signal));
    await ask(s, query('www.allowed.test', 'UNKNOWN_65'));
    expect(s.resolver.calls).toEqual(['HTTPS www.allowed.test', 'HTTPS www.allowed.test']);
  });

  it('sinkholed and built-in names get NODATA for HTTPS, nothing asked upstream', async () => {
    const s = await setup(['www.allowed.test'], (r) => r.host('www.allowed.test', ['203.0.113.10']).service('HTTPS', 'evil.test', [emitSvcb(upstreamRecord('1.2.3.4', '1.2.3.5'))]));
    for (const name of ['evil.test', 'gateway.containers.internal']) {
      const { msg } = await ask(s, query(name, 'UNKNOWN_65'));
      expect(msg.rcode).toBe('NOERROR');
      expect(msg.answers).toEqual([]);
    }
    expect(s.resolver.calls).toEqual([]);
  });

  it('NXDOMAIN upstream for HTTPS is NXDOMAIN; an upstream without resolveService gives NODATA', async () => {
    const s = await setup(['www.allowed.test'], (r) => r.host('www.allowed.test', ['203.0.113.10']));
    expect((await ask(s, query('www.allowed.test', 'UNKNOWN_65'))).msg.rcode).toBe('NXDOMAIN');
    const bare = new DnsResponder({ table: s.responder.zoneTable, resolver: { resolve4: s.resolver.resolve4.bind(s.resolver), resolve6: s.resolver.resolve6.bind(s.resolver) }, timers: s.timers, ipv6: false });
    const reply = await s.timers.run(bare.respond(query('www.allowed.test', 'UNKNOWN_65'), 'udp'));
    const msg = dnsPacket.decode(Buffer.from(reply!.bytes)) as Decoded;
    expect(msg.rcode).toBe('NOERROR');
    expect(msg.answers).toEqual([]);
  });
});
