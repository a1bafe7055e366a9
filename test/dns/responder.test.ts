import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import dnsPacket from 'dns-packet';
import { parseRules } from '../../dns/rules.js';
import { preresolve } from '../../dns/preresolve.js';
import { builtinHosts, hostsToResolve, ZoneTable, type SinkholeMode } from '../../dns/zones.js';
import { DnsResponder, type DnsReply } from '../../dns/responder.js';
import { FakeResolver, VirtualTimers } from './fake-upstream.js';

const builtins = builtinHosts({ gatewayIpv4: '192.168.127.1', hostAliasIpv4: '192.168.127.254' });

/** dns-packet decodes these too; @types/dns-packet leaves them out. */
type Decoded = dnsPacket.DecodedPacket & { rcode: string; opcode: string };

interface Setup {
  responder: DnsResponder;
  resolver: FakeResolver;
  timers: VirtualTimers;
}

/** The whole library pipeline, as the service will run it: rules → pre-resolution → table → responder. */
async function setup(
  rules: string[],
  upstream: (r: FakeResolver) => void,
  opts: { sinkhole?: SinkholeMode; ipv6?: boolean } = {},
): Promise<Setup> {
  const timers = new VirtualTimers();
  const resolver = new FakeResolver(timers);
  upstream(resolver);
  const parsed = parseRules(rules);
  const ipv6 = opts.ipv6 ?? false;
  const records = await timers.run(preresolve(hostsToResolve(parsed, builtins), { resolver, timers, ipv6 }));
  const table = ZoneTable.build(parsed, records, builtins, opts.sinkhole ?? 'zero');
  return { responder: new DnsResponder({ table, resolver, timers, ipv6 }), resolver, timers };
}

function query(name: string, type: dnsPacket.RecordType = 'A', extra: Partial<dnsPacket.Packet> = {}): Uint8Array {
  return dnsPacket.encode({ type: 'query', id: 0x1234, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }], ...extra });
}

async function ask(s: Setup, q: Uint8Array, transport: 'udp' | 'tcp' = 'udp'): Promise<{ reply: DnsReply; msg: Decoded }> {
  const reply = await s.timers.run(s.responder.respond(q, transport));
  if (reply === null) throw new Error('dropped');
  return { reply, msg: dnsPacket.decode(Buffer.from(reply.bytes)) as Decoded };
}

function dataOf(msg: dnsPacket.DecodedPacket): string[] {
  return (msg.answers ?? []).map((a) => String((a as { data: unknown }).data));
}

const ISSUE_RULES = ['github.com', 'api.github.com', 'raw.githubusercontent.com', 'codeload.github.com', 'iapi.merck.com'];

function issueUpstream(r: FakeResolver): void {
  r.host('github.com', ['140.82.112.3'])
    .host('api.github.com', ['140.82.112.5', '140.82.112.6'])
    .host('raw.githubusercontent.com', ['185.199.108.133'])
    .host('codeload.github.com', ['140.82.112.9'])
    .host('iapi.merck.com', ['155.91.1.10'])
    // Present upstream, so a leak would show as a real answer and a call.
    .host('www.merck.com', ['155.91.1.20'])
    .host('example.com', ['93.184.215.14']);
}

describe('DnsResponder with the issue rule set', () => {
  it('answers every allowed name with its own records and sinkholes the rest without asking upstream', async () => {
    const s = await setup(ISSUE_RULES, issueUpstream);
    const expected: Record<string, string[]> = {
      'github.com': ['140.82.112.3'],
      'api.github.com': ['140.82.112.5', '140.82.112.6'],
      'raw.githubusercontent.com': ['185.199.108.133'],
      'codeload.github.com': ['140.82.112.9'],
      'iapi.merck.com': ['155.91.1.10'],
    };
    for (const [name, addrs] of Object.entries(expected)) {
      const { reply, msg } = await ask(s, query(name));
      expect(msg.rcode).toBe('NOERROR');
      expect(dataOf(msg)).toEqual(addrs);
      expect(reply.decision).toMatchObject({ name, zone: `${name}.`, allowed: true, outcome: 'allowed', addresses: addrs });
    }
    const callsAfterStartup = s.resolver.calls.length;
    for (const name of ['www.merck.com', 'example.com', 'x.github.com', 'merck.com']) {
      const { reply, msg } = await ask(s, query(name));
      expect(dataOf(msg)).toEqual(['0.0.0.0']);
      expect(reply.decision).toMatchObject({ name, allowed: false, outcome: 'sinkholed', addresses: [] });
    }
    expect(s.resolver.calls.length).toBe(callsAfterStartup);
    expect(s.responder.stats).toMatchObject({ answered: 5, sinkholed: 4 });
  });

  it('sinkhole: A → 0.0.0.0, other types NODATA; nxdomain mode → NXDOMAIN for all', async () => {
    const zero = await setup(ISSUE_RULES, issueUpstream);
    for (const type of ['AAAA', 'MX', 'TXT'] as const) {
      const { msg } = await ask(zero, query('example.com', type));
      expect(msg.rcode).toBe('NOERROR');
      expect(msg.answers).toEqual([]);
    }
    const nx = await setup(ISSUE_RULES, issueUpstream, { sinkhole: 'nxdomain' });
    for (const type of ['A', 'AAAA', 'MX'] as const) {
      const { msg } = await ask(nx, query('www.merck.com', type));
      expect(msg.rcode).toBe('NXDOMAIN');
      expect(msg.answers).toEqual([]);
    }
    expect((await ask(nx, query('github.com'))).msg.answers).toHaveLength(1);
  });

  it('an allowed host: AAAA is NODATA on an IPv4-only guest, served when IPv6 is on', async () => {
    const v4 = await setup(['dual.test'], (r) => r.host('dual.test', ['192.0.2.1'], ['2001:db8::1']));
    expect((await ask(v4, query('dual.test', 'AAAA'))).msg.answers).toEqual([]);
    const v6 = await setup(['dual.test'], (r) => r.host('dual.test', ['192.0.2.1'], ['2001:db8::1']), { ipv6: true });
    expect(dataOf((await ask(v6, query('dual.test', 'AAAA'))).msg)).toEqual(['2001:db8::1']);
  });

  it('IPv6 guest (issue 19): the sinkhole answers AAAA with :: as A with 0.0.0.0; other types NODATA; nxdomain mode unchanged', async () => {
    const s = await setup(ISSUE_RULES, issueUpstream, { ipv6: true });
    const aaaa = await ask(s, query('www.merck.com', 'AAAA'));
    expect(aaaa.msg.rcode).toBe('NOERROR');
    expect(aaaa.msg.flag_aa).toBe(true);
    expect(dataOf(aaaa.msg)).toEqual(['::']);
    expect(aaaa.msg.answers?.[0]).toMatchObject({ type: 'AAAA', ttl: 60 });
    expect(aaaa.reply.decision).toMatchObject({ outcome: 'sinkholed', allowed: false, addresses: [] });
    expect(dataOf((await ask(s, query('www.merck.com', 'A'))).msg)).toEqual(['0.0.0.0']);
    expect((await ask(s, query('www.merck.com', 'MX'))).msg.answers).toEqual([]);
    expect(s.resolver.callsFor('AAAA', 'www.merck.com')).toBe(0);
    const nx = await setup(ISSUE_RULES, issueUpstream, { ipv6: true, sinkhole: 'nxdomain' });
    expect((await ask(nx, query('www.merck.com', 'AAAA'))).msg.rcode).toBe('NXDOMAIN');
  });

  it('IPv6 guest: AAAA below a wildcard is looked up live and answered', async () => {
    const s = await setup(['*.example.org'], (r) => r.host('www.example.org', ['198.51.100.7'], ['2606:4700::7']), { ipv6: true });
    const { msg, reply } = await ask(s, query('www.example.org', 'AAAA'));
    expect(dataOf(msg)).toEqual(['2606:4700::7']);
    expect(reply.decision).toMatchObject({ outcome: 'live', addresses: ['2606:4700::7'] });
  });

  it('answers the built-in names locally', async () => {
    const s = await setup([], () => {});
    const { reply, msg } = await ask(s, query('Host.Containers.Internal'));
    expect(dataOf(msg)).toEqual(['192.168.127.254']);
    expect(msg.flag_aa).toBe(true);
    expect(reply.decision.outcome).toBe('builtin');
    expect(s.resolver.calls).toEqual([]);
  });
});

describe('DnsResponder: wildcard zones resolved live', () => {
  it('resolves below *.domain with the retry policy; TTL clamped; the apex stays sinkholed', async () => {
    const s = await setup(['*.example.org'], (r) =>
      r.script('A', 'www.example.org', { fail: new Error('ESERVFAIL') }, { fail: new Error('ESERVFAIL') }, { answer: { addresses: ['198.51.100.7'], ttl: 86_400 } }),
    );
    const { reply, msg } = await ask(s, query('WWW.Example.ORG'));
    expect(dataOf(msg)).toEqual(['198.51.100.7']);
    expect((msg.answers?.[0] as { ttl?: number }).ttl).toBe(300);
    expect(s.resolver.callsFor('A', 'www.example.org')).toBe(3);
    expect(reply.decision).toMatchObject({ name: 'www.example.org', zone: 'example.org.', outcome: 'live', addresses: ['198.51.100.7'], ttl: 300 });
    const apex = await ask(s, query('example.org'));
    expect(dataOf(apex.msg)).toEqual(['0.0.0.0']);
    expect(s.resolver.callsFor('A', 'example.org')).toBe(0);
  });

  it('a zone below a wildcard does not sinkhole the names the wildcard allows (below a host rule, a nested wildcard\'s apex)', async () => {
    const s = await setup(['*.example.org', 'api.example.org'], (r) => r.host('api.example.org', ['198.51.100.8']).host('x.api.example.org', ['198.51.100.9']));
    const { reply, msg } = await ask(s, query('x.api.example.org'));
    expect(dataOf(msg)).toEqual(['198.51.100.9']);
    expect(reply.decision).toMatchObject({ name: 'x.api.example.org', allowed: true, outcome: 'live' });
    expect(dataOf((await ask(s, query('api.example.org'))).msg)).toEqual(['198.51.100.8']);
    // A nested wildcard's apex is the upper wildcard's name to resolve.
    const nested = await setup(['*.example.org', '*.cdn.example.org'], (r) => r.host('cdn.example.org', ['198.51.100.10']));
    expect(dataOf((await ask(nested, query('cdn.example.org'))).msg)).toEqual(['198.51.100.10']);
  });

  it('NXDOMAIN upstream is NXDOMAIN; a dead upstream is SERVFAIL after 4 attempts', async () => {
    const s = await setup(['*.example.org'], (r) => r.script('A', 'dead.example.org', { fail: new Error('ETIMEOUT') }));
    const nx = await ask(s, query('nope.example.org'));
    expect(nx.msg.rcode).toBe('NXDOMAIN');
    expect(nx.reply.decision.outcome).toBe('upstream-nxdomain');
    const dead = await ask(s, query('dead.example.org'));
    expect(dead.msg.rcode).toBe('SERVFAIL');
    expect(s.resolver.callsFor('A', 'dead.example.org')).toBe(4);
  });

  it('bounds live lookups in flight: beyond the limit SERVFAIL at once, without asking upstream', async () => {
    const timers = new VirtualTimers();
    const resolver = new FakeResolver(timers);
    for (let i = 0; i < 3; i++) resolver.script('A', `h${i}.example.org`, { answer: { addresses: ['198.51.100.1'], ttl: 60 }, afterMs: 1000 });
    const table = ZoneTable.build(parseRules(['*.example.org']), new Map());
    const responder = new DnsResponder({ table, resolver, timers, ipv6: false, maxLiveLookups: 2 });
    const replies = await timers.run(Promise.all([0, 1, 2].map((i) => responder.respond(query(`h${i}.example.org`), 'udp'))));
    expect(replies.map((r) => r?.decision.rcode)).toEqual(['NOERROR', 'NOERROR', 'SERVFAIL']);
    expect(resolver.callsFor('A', 'h2.example.org')).toBe(0);
    expect(responder.stats.overloaded).toBe(1);
    // The slots are released: the same name now resolves.
    const again = await timers.run(responder.respond(query('h2.example.org'), 'udp'));
    expect(again?.decision.rcode).toBe('NOERROR');
  });

  it('asks nothing upstream for types other than A (and AAAA without IPv6)', async () => {
    const s = await setup(['*.example.org'], (r) => r.host('www.example.org', ['198.51.100.7'], ['2001:db8::7']));
    for (const type of ['AAAA', 'TXT', 'MX'] as const) {
      const { msg } = await ask(s, query('www.example.org', type));
      expect(msg.rcode).toBe('NOERROR');
      expect(msg.answers).toEqual([]);
    }
    expect(s.resolver.calls).toEqual([]);
  });
});

describe('DnsResponder: wire behaviour', () => {
  it('echoes the question byte for byte (0x20 case), answers point at it', async () => {
    const s = await setup(ISSUE_RULES, issueUpstream);
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ISSUE_RULES, 'www.merck.com'), fc.array(fc.boolean(), { minLength: 30, maxLength: 30 }), async (name, upper) => {
        const mixed = [...name].map((c, i) => (upper[i % upper.length] ? c.toUpperCase() : c)).join('');
        const q = query(mixed);
        const { reply, msg } = await ask(s, q);
        const qEnd = 12 + mixed.length + 2 + 4;
        expect(Buffer.from(reply.bytes.subarray(12, qEnd)).equals(Buffer.from(q.subarray(12, qEnd)))).toBe(true);
        expect(msg.id).toBe(0x1234);
        expect(msg.questions?.[0]?.name).toBe(mixed);
        expect(msg.answers?.[0]?.name).toBe(mixed);
        expect(msg.answers?.length).toBeGreaterThan(0);
      }),
      { numRuns: 50 },
    );
  });

  it('truncates at 512 without EDNS0, honours the EDNS0 size (up to its own), never truncates TCP', async () => {
    const many = Array.from({ length: 60 }, (_, i) => `10.1.${i >> 8}.${i & 255}`); // 60 x 16 B of answers
    const s = await setup(['big.test'], (r) => r.host('big.test', many));
    const plain = await ask(s, query('big.test'));
    expect(plain.reply.bytes.length).toBeLessThanOrEqual(512);
    expect(plain.msg.flag_tc).toBe(true);
    expect(plain.msg.answers).toEqual([]);

    const edns = await ask(s, query('big.test', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096, flags: 0 } as dnsPacket.Answer] }));
    expect(edns.msg.flag_tc).toBe(false);
    expect(dataOf(edns.msg)).toEqual(many);
    expect(edns.msg.additionals?.[0]).toMatchObject({ type: 'OPT', udpPayloadSize: 1232 });

    const tcp = await ask(s, query('big.test'), 'tcp');
    expect(tcp.msg.flag_tc).toBe(false);
    expect(dataOf(tcp.msg)).toHaveLength(60);

    const small = await ask(s, query('big.test', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 600, flags: 0 } as dnsPacket.Answer] }));
    expect(small.msg.flag_tc).toBe(true);
    expect(small.reply.bytes.length).toBeLessThanOrEqual(600);
    expect(s.responder.stats.truncated).toBe(2);
  });

  it('opcode other than QUERY → NOTIMP with the ID echoed', async () => {
    const s = await setup([], () => {});
    const q = query('example.com');
    q[2] = (q[2]! & 0x87) | (2 << 3); // opcode STATUS
    const { reply, msg } = await ask(s, q);
    expect(msg.rcode).toBe('NOTIMP');
    expect(msg.id).toBe(0x1234);
    expect(msg.opcode).toBe('STATUS');
    expect(reply.decision.outcome).toBe('notimp');
  });

  it('undecodable with a readable header → FORMERR; no header or a response → dropped and counted', async () => {
    const s = await setup([], () => {});
    const garbage = Uint8Array.from([0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, 0x41]);
    const { msg } = await ask(s, garbage);
    expect(msg.rcode).toBe('FORMERR');
    expect(msg.id).toBe(0xabcd);
    expect(msg.flag_rd).toBe(true);

    const twoQuestions = dnsPacket.encode({ type: 'query', id: 9, questions: [{ type: 'A', name: 'a.com' }, { type: 'A', name: 'b.com' }] });
    expect((await ask(s, twoQuestions)).msg.rcode).toBe('FORMERR');

    expect(await s.responder.respond(Uint8Array.from([1, 2, 3]), 'udp')).toBeNull();
    const response = query('example.com');
    response[2]! |= 0x80;
    expect(await s.responder.respond(response, 'udp')).toBeNull();
    expect(s.responder.stats).toMatchObject({ dropped: 2, formerr: 2 });
  });

  it('class other than IN → REFUSED; EDNS version other than 0 → BADVERS', async () => {
    const s = await setup(['github.com'], issueUpstream);
    const ch = dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'TXT', name: 'version.bind', class: 'CH' }] });
    expect((await ask(s, ch)).msg.rcode).toBe('REFUSED');
    const v1 = query('github.com', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, ednsVersion: 1 } as unknown as dnsPacket.Answer] });
    const { reply, msg } = await ask(s, v1);
    expect(reply.decision.rcode).toBe('BADVERS');
    // Header RCODE holds the low 4 bits (0); the OPT TTL the upper 8 (1).
    expect(msg.rcode).toBe('NOERROR');
    expect((msg.additionals?.[0] as { extendedRcode?: number }).extendedRcode).toBe(1);
    expect(msg.answers).toEqual([]);
  });

  it('a reload swaps the table for later queries', async () => {
    const s = await setup(['github.com'], issueUpstream);
    expect(dataOf((await ask(s, query('example.com'))).msg)).toEqual(['0.0.0.0']);
    const rules = parseRules(['example.com']);
    s.responder.setTable(ZoneTable.build(rules, new Map([['example.com', { a: ['93.184.215.14'], aaaa: [], ttl: 60 }]])));
    expect(dataOf((await ask(s, query('example.com'))).msg)).toEqual(['93.184.215.14']);
    expect(dataOf((await ask(s, query('github.com'))).msg)).toEqual(['0.0.0.0']);
  });
});

describe('Extended DNS Error on blocked answers (RFC 8914)', () => {
  const opt = { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0 } as dnsPacket.Answer] };

  async function withIds(): Promise<Setup & { ids: string[] }> {
    const s = await setup(ISSUE_RULES, issueUpstream);
    const ids: string[] = [];
    let n = 0;
    const responder = new DnsResponder({
      table: s.responder.zoneTable,
      resolver: s.resolver,
      timers: s.timers,
      ipv6: false,
      decisionId: () => {
        const id = `d${++n}`;
        ids.push(id);
        return id;
      },
    });
    return { ...s, responder, ids };
  }

  /** The EDNS options of the reply, raw: dns-packet leaves EDE undecoded (code 15, data buffer). */
  function edeOf(msg: Decoded): { infoCode: number; text: string } | undefined {
    const o = (msg.additionals ?? []).find((a) => a.type === 'OPT') as { options?: { code: number; data?: Buffer }[] } | undefined;
    const ede = o?.options?.find((x) => x.code === 15);
    if (ede?.data === undefined) return undefined;
    return { infoCode: ede.data.readUInt16BE(0), text: ede.data.subarray(2).toString('utf8') };
  }

  it('a sinkholed name with EDNS gets INFO-CODE 15 naming the name and the decision id', async () => {
    const s = await withIds();
    const { reply, msg } = await ask(s, query('www.merck.com', 'A', opt));
    expect(dataOf(msg)).toEqual(['0.0.0.0']);
    expect(reply.decision.id).toBe('d1');
    const ede = edeOf(msg);
    expect(ede?.infoCode).toBe(15);
    expect(ede?.text).toContain('www.merck.com');
    expect(ede?.text).toContain('decision d1');
  });

  it('no EDE without EDNS in the query, and none on allowed answers', async () => {
    const s = await withIds();
    const plain = await ask(s, query('www.merck.com'));
    expect(plain.msg.additionals ?? []).toEqual([]);
    expect(plain.reply.decision.id).toBe('d1'); // still named, for the log
    const allowed = await ask(s, query('github.com', 'A', opt));
    expect(edeOf(allowed.msg)).toBeUndefined();
    expect(allowed.reply.decision.id).toBeUndefined();
  });

  it('a blocked answer with EDE fits 512 bytes even for the longest name', async () => {
    const s = await withIds();
    const long = Array.from({ length: 4 }, () => 'a'.repeat(61)).join('.');
    const { msg, reply } = await ask(s, query(long, 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 512, flags: 0 } as dnsPacket.Answer] }));
    expect(reply.bytes.length).toBeLessThanOrEqual(512);
    expect(msg.flag_tc).toBe(false);
    expect(edeOf(msg)?.infoCode).toBe(15);
  });
});

describe('audit mode', () => {
  it('resolves names outside the allowlist upstream, names the decision, and adds no EDE', async () => {
    const s = await setup(ISSUE_RULES, issueUpstream);
    let n = 0;
    const responder = new DnsResponder({ table: s.responder.zoneTable, resolver: s.resolver, timers: s.timers, ipv6: false, audit: true, decisionId: () => `a${++n}` });
    const q = query('www.merck.com', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0 } as dnsPacket.Answer] });
    const reply = await s.timers.run(responder.respond(q, 'udp'));
    const msg = dnsPacket.decode(Buffer.from(reply!.bytes)) as Decoded;
    expect(dataOf(msg)).toEqual(['155.91.1.20']);
    expect(reply!.decision).toMatchObject({ outcome: 'audit-live', allowed: false, id: 'a1', addresses: ['155.91.1.20'] });
    const opt = (msg.additionals ?? []).find((a) => a.type === 'OPT') as { options?: unknown[] } | undefined;
    expect(opt?.options ?? []).toEqual([]);
    expect(responder.stats.audited).toBe(1);
    // Allowed names are unchanged.
    const ok = await s.timers.run(responder.respond(query('github.com'), 'udp'));
    expect(ok!.decision.outcome).toBe('allowed');
  });
});
