/**
 * Allowlist mode behind the NAT: gateway:53 (UDP and TCP) is answered by
 * AllowlistDns, with a real node:dns adapter pointed at a DNS server the
 * test runs on 127.0.0.1 that counts every question it receives. The guest
 * side is the fake stack (nat-fake-stack.ts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ipv4 } from '../../netstack/addr.js';
import { parseRules } from '../../dns/rules.js';
import { AllowlistDns } from '../../src/allowlist/dns.js';
import { NodeDnsResolver } from '../../src/allowlist/resolver.js';
import { buildAllowlistTable } from '../../src/allowlist/zones.js';
import type { Logger } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, Nat } from '../../src/nat/index.js';
import { decodeAnswer, dnsQuery, startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { FakePendingTcp, FakeStack, udpDatagram, waitFor } from './nat-fake-stack.js';

const GUEST = ipv4(192, 168, 127, 2);
const GATEWAY = DEFAULT_NAT_OPTIONS.gatewayIp;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A logger that keeps its lines. */
function recordingLogger(lines: { msg: string; fields: Record<string, unknown> }[]): Logger {
  const log: Logger = {
    debug: () => {},
    info: (msg, fields) => lines.push({ msg, fields: fields ?? {} }),
    warn: () => {},
    error: () => {},
    child: () => log,
    enabled: () => true,
  };
  return log;
}

interface Setup {
  nat: Nat;
  stack: FakeStack;
  upstream: TestUpstream;
  dns: AllowlistDns;
  log: { msg: string; fields: Record<string, unknown> }[];
}

async function setup(rules: string[], sinkhole: 'zero' | 'nxdomain' = 'zero'): Promise<Setup> {
  const upstream = await startTestUpstream({
    'github.com': { a: ['192.0.2.10', '192.0.2.12'], ttl: 100 },
    'api.github.com': { a: ['192.0.2.11'] },
    'raw.githubusercontent.com': { a: ['192.0.2.20'] },
    'media.githubusercontent.com': { a: ['192.0.2.21'] },
    'www.merck.com': { a: ['192.0.2.30'] },
    'example.com': { a: ['192.0.2.40'] },
  });
  cleanups.push(() => upstream.close());
  const resolver = new NodeDnsResolver([{ host: '127.0.0.1', port: upstream.port }]);
  const table = await buildAllowlistTable({
    rules: parseRules(rules),
    resolver,
    gatewayIpv4: '192.168.127.1',
    hostAliasIpv4: '192.168.127.254',
    sinkhole,
  });
  const log: Setup['log'] = [];
  const dns = new AllowlistDns({ table, resolver }, recordingLogger(log));
  // A forwarder would send to this port: nothing listens there, and the test upstream would count nothing.
  const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }] }, recordingLogger([]), dns);
  const stack = new FakeStack();
  nat.attach(stack);
  cleanups.push(() => nat.close());
  return { nat, stack, upstream, dns, log };
}

async function askUdp(s: Setup, name: string, type: 'A' | 'AAAA' | 'TXT' | 'MX', srcPort = 40000) {
  const before = s.stack.udpSent.length;
  s.nat.onUdp(udpDatagram({ src: GUEST, srcPort, dst: GATEWAY, dstPort: 53 }, dnsQuery(name, type, srcPort)));
  const sent = await s.stack.waitUdp(before + 1);
  const reply = sent[before]!;
  expect(reply.from).toBe(GATEWAY);
  expect(reply.fromPort).toBe(53);
  expect(reply.to).toBe(GUEST);
  expect(reply.toPort).toBe(srcPort);
  const a = decodeAnswer(reply.payload);
  expect(a.id).toBe(srcPort);
  return a;
}

describe('gateway:53 in allowlist mode', () => {
  it('answers allowed names with their pre-resolved records and sinkholes the rest; no query for a sinkholed name leaves the host', async () => {
    const s = await setup(['github.com', 'api.github.com']);
    const afterPreresolve = s.upstream.queries.length;
    expect(afterPreresolve).toBe(2);

    expect(await askUdp(s, 'github.com', 'A')).toMatchObject({ rcode: 'NOERROR', addresses: ['192.0.2.10', '192.0.2.12'] });
    expect(await askUdp(s, 'API.GitHub.com', 'A')).toMatchObject({ rcode: 'NOERROR', addresses: ['192.0.2.11'] });
    expect(await askUdp(s, 'gateway.containers.internal', 'A')).toMatchObject({ addresses: ['192.168.127.1'] });
    for (const name of ['www.merck.com', 'example.com', 'raw.githubusercontent.com', 'notgithub.com', 'x.github.com']) {
      expect(await askUdp(s, name, 'A')).toMatchObject({ rcode: 'NOERROR', addresses: ['0.0.0.0'] });
      expect(await askUdp(s, name, 'TXT')).toMatchObject({ rcode: 'NOERROR', addresses: [], types: [] });
    }
    // The upstream saw the two pre-resolution lookups and nothing else.
    expect(s.upstream.queries.length).toBe(afterPreresolve);
    expect(s.upstream.count('www.merck.com') + s.upstream.count('example.com') + s.upstream.count('notgithub.com')).toBe(0);
    expect(s.nat.stats().dns).toMatchObject({ mode: 'allowlist', sinkholed: 10 });
  });

  it('resolves names below *.domain live (counted upstream), NXDOMAIN upstream stays NXDOMAIN, the apex is sinkholed', async () => {
    const s = await setup(['*.githubusercontent.com']);
    expect(s.upstream.queries.length).toBe(0);
    expect(await askUdp(s, 'raw.githubusercontent.com', 'A')).toMatchObject({ rcode: 'NOERROR', addresses: ['192.0.2.20'] });
    expect(await askUdp(s, 'nope.githubusercontent.com', 'A')).toMatchObject({ rcode: 'NXDOMAIN', addresses: [] });
    expect(await askUdp(s, 'githubusercontent.com', 'A')).toMatchObject({ addresses: ['0.0.0.0'] });
    expect(await askUdp(s, 'example.com', 'A')).toMatchObject({ addresses: ['0.0.0.0'] });
    expect(s.upstream.queries).toEqual(['raw.githubusercontent.com A', 'nope.githubusercontent.com A']);
  });

  it('--sinkhole nxdomain answers every other name NXDOMAIN', async () => {
    const s = await setup(['github.com'], 'nxdomain');
    expect(await askUdp(s, 'example.com', 'A')).toMatchObject({ rcode: 'NXDOMAIN', addresses: [] });
    expect(await askUdp(s, 'github.com', 'A')).toMatchObject({ rcode: 'NOERROR', addresses: ['192.0.2.10', '192.0.2.12'] });
  });

  it('logs one structured line per decision: allowed or sinkholed, name, type, zone', async () => {
    const s = await setup(['github.com']);
    await askUdp(s, 'github.com', 'A');
    await askUdp(s, 'evil.example', 'TXT');
    const lines = s.log.filter((l) => l.msg === 'dns decision');
    expect(lines).toHaveLength(2);
    expect(lines[0]!.fields).toMatchObject({ decision: 'allowed', name: 'github.com', type: 'A', zone: 'github.com.', via: 'udp', addresses: ['192.0.2.10', '192.0.2.12'] });
    expect(lines[1]!.fields).toMatchObject({ decision: 'sinkholed', name: 'evil.example', type: 'TXT', zone: '.', via: 'udp' });
  });

  it('a name asked in a loop logs a few lines, then says how many it suppressed', async () => {
    const s = await setup(['github.com']);
    for (let i = 0; i < 12; i++) await askUdp(s, 'loop.example', 'A');
    await askUdp(s, 'other.example', 'A');
    const lines = s.log.filter((l) => l.msg === 'dns decision');
    expect(lines.filter((l) => l.fields.name === 'loop.example')).toHaveLength(5);
    expect(lines.filter((l) => l.fields.name === 'other.example')).toHaveLength(1);
  });

  it('serves DNS over TCP: 2-byte framing, several queries on one connection, answers in query order', async () => {
    const s = await setup(['github.com', '*.githubusercontent.com']);
    const pending = new FakePendingTcp({ src: GUEST, srcPort: 41000, dst: GATEWAY, dstPort: 53 });
    s.nat.onTcpSyn(pending);
    const outcome = await pending.decided;
    if (outcome.kind !== 'accepted') throw new Error(`gateway:53 TCP was ${outcome.kind}`);
    const sock = outcome.socket;
    // The live lookup comes first and is the slowest: later answers must still wait for it.
    const names: [string, 'A' | 'TXT'][] = [
      ['media.githubusercontent.com', 'A'],
      ['github.com', 'A'],
      ['example.com', 'A'],
      ['github.com', 'TXT'],
    ];
    const frames = names.map(([n, t], i) => {
      const q = dnsQuery(n, t, 100 + i);
      const f = new Uint8Array(2 + q.length);
      f[0] = q.length >> 8;
      f[1] = q.length & 0xff;
      f.set(q, 2);
      return f;
    });
    // All in one segment, the last split across two.
    const all = Buffer.concat(frames);
    sock.guestSend(all.subarray(0, all.length - 5));
    sock.guestSend(all.subarray(all.length - 5));
    const answers: ReturnType<typeof decodeAnswer>[] = [];
    await waitFor(() => {
      const buf = sock.receivedConcat();
      answers.length = 0;
      let off = 0;
      while (off + 2 <= buf.length) {
        const len = buf.readUInt16BE(off);
        if (off + 2 + len > buf.length) break;
        answers.push(decodeAnswer(buf.subarray(off + 2, off + 2 + len)));
        off += 2 + len;
      }
      return answers.length === names.length;
    }, 'four framed answers');
    expect(answers.map((a) => a.id)).toEqual([100, 101, 102, 103]);
    expect(answers.map((a) => a.addresses)).toEqual([['192.0.2.21'], ['192.0.2.10', '192.0.2.12'], ['0.0.0.0'], []]);
    sock.guestFin();
    await waitFor(() => sock.endCalled, 'the gateway to close its side after the last answer');
    expect(s.log.filter((l) => l.msg === 'dns decision').every((l) => l.fields.via === 'tcp')).toBe(true);
    expect(s.upstream.count('example.com')).toBe(0);
  });

  it('the rule set of the issue: each allowed name gets its own records, www.merck.com and example.com are sinkholed', async () => {
    const s = await setup(['github.com', 'api.github.com', 'raw.githubusercontent.com']);
    expect(await askUdp(s, 'raw.githubusercontent.com', 'A')).toMatchObject({ addresses: ['192.0.2.20'] });
    expect(await askUdp(s, 'api.github.com', 'A')).toMatchObject({ addresses: ['192.0.2.11'] });
    expect(await askUdp(s, 'www.merck.com', 'A')).toMatchObject({ addresses: ['0.0.0.0'] });
    expect(s.upstream.count('www.merck.com')).toBe(0);
  });
});
