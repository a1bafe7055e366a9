/**
 * The node:dns adapter (src/allowlist/resolver.ts) against a real DNS server
 * on 127.0.0.1 run by the test: how c-ares' answers map onto dns/'s Resolver
 * contract, and fail-closed table building on top of it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { isNxdomain, PreresolveError } from '../../dns/preresolve.js';
import { formatZoneTable } from '../../dns/zones.js';
import { NodeDnsResolver, realTimers } from '../../src/allowlist/resolver.js';
import { buildAllowlistTable } from '../../src/allowlist/zones.js';
import { parseRules } from '../../dns/rules.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function upstream(zone: Parameters<typeof startTestUpstream>[0]): Promise<TestUpstream> {
  const u = await startTestUpstream(zone);
  cleanups.push(() => u.close());
  return u;
}

const never = new AbortController().signal;
const FAST_POLICY = { attempts: 2, firstBackoffMs: 10, factor: 3, attemptTimeoutMs: 300 };

describe('NodeDnsResolver', () => {
  it('returns the A and AAAA addresses with the smallest TTL, asking the configured server', async () => {
    const u = await upstream({ 'two.test': { a: ['192.0.2.1', '192.0.2.2'], aaaa: ['2001:db8::2'], ttl: 42 } });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]);
    expect(await r.resolve4('two.test', never)).toEqual({ addresses: ['192.0.2.1', '192.0.2.2'], ttl: 42 });
    expect(await r.resolve6('two.test', never)).toEqual({ addresses: ['2001:db8::2'], ttl: 42 });
    expect(u.queries).toEqual(['two.test A', 'two.test AAAA']);
  });

  it('maps NOERROR without records (ENODATA) to an empty answer', async () => {
    const u = await upstream({ 'v6only.test': { aaaa: ['2001:db8::6'] } });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]);
    expect(await r.resolve4('v6only.test', never)).toEqual({ addresses: [], ttl: 0 });
  });

  it('keeps NXDOMAIN as ENOTFOUND (what dns/ reads as "does not exist"), and SERVFAIL as a plain failure', async () => {
    const u = await upstream({ 'broken.test': 'servfail' });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]);
    const nx = await r.resolve4('missing.test', never).catch((e: unknown) => e);
    expect(isNxdomain(nx)).toBe(true);
    const sf = await r.resolve4('broken.test', never).catch((e: unknown) => e);
    expect(sf).toBeInstanceOf(Error);
    expect(isNxdomain(sf)).toBe(false);
    expect((sf as { code?: string }).code).toBe('ESERVFAIL');
  });

  it('a silent server times out after the c-ares timeout (one try), not later', async () => {
    const u = await upstream({ 'slow.test': 'hang' });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }], { timeout: 200, tries: 1 });
    const t0 = performance.now();
    const err = await r.resolve4('slow.test', never).catch((e: unknown) => e);
    const took = performance.now() - t0;
    expect((err as { code?: string }).code).toBe('ETIMEOUT');
    expect(took).toBeGreaterThanOrEqual(150);
    expect(took).toBeLessThan(1_500);
    expect(u.count('slow.test')).toBe(1);
  });

  it('an abort cancels that lookup at once and no other', async () => {
    const u = await upstream({ 'slow.test': 'hang', 'fast.test': { a: ['192.0.2.9'] } });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]);
    const ac = new AbortController();
    const slow = r.resolve4('slow.test', ac.signal).catch((e: unknown) => e);
    const other = r.resolve4('slow.test', never).catch((e: unknown) => e);
    await new Promise((res) => setTimeout(res, 50));
    const t0 = performance.now();
    ac.abort(new Error('stop'));
    const err = await slow;
    expect(performance.now() - t0).toBeLessThan(200);
    expect((err as { code?: string }).code).toBe('ECANCELLED');
    // The other lookup on the same adapter is still running: it ends by its own 2 s timeout.
    const raced = await Promise.race([other.then(() => 'settled'), new Promise((res) => setTimeout(() => res('pending'), 300))]);
    expect(raced).toBe('pending');
    expect(await r.resolve4('fast.test', never)).toEqual({ addresses: ['192.0.2.9'], ttl: 60 });
    await expect(r.resolve4('fast.test', ac.signal)).rejects.toThrow('stop');
  });

  it('refuses a server address node:dns cannot use, at construction', () => {
    expect(() => new NodeDnsResolver([{ host: 'not-an-ip', port: 53 }])).toThrow();
  });
});

describe('buildAllowlistTable (real adapter, fail closed)', () => {
  it('builds the table: built-ins first, longest suffix first, root last, with the server\'s records', async () => {
    const u = await upstream({
      'github.com': { a: ['192.0.2.10'], ttl: 120 },
      'api.github.com': { a: ['192.0.2.11'] },
    });
    const table = await buildAllowlistTable({
      rules: parseRules(['github.com', 'api.github.com', '*.githubusercontent.com']),
      resolver: new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]),
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
    });
    expect(formatZoneTable(table).split('\n')).toEqual([
      'gateway.containers.internal.  builtin  ttl 60  A 192.168.127.1',
      'host.containers.internal.  builtin  ttl 60  A 192.168.127.254',
      'api.github.com.  allowed  ttl 60  A 192.0.2.11',
      'githubusercontent.com.  allowed  apex sinkholed  subdomains resolved live',
      'github.com.  allowed  ttl 120  A 192.0.2.10',
      '.  root  sinkhole A 0.0.0.0, other types NODATA',
    ]);
    // Only the exact hosts were asked, once each (A only: the guest network is IPv4).
    expect([...u.queries].sort()).toEqual(['api.github.com A', 'github.com A']);
  });

  it('one dead host among good ones fails the whole build, naming every failed host and why', async () => {
    const u = await upstream({ 'good.test': { a: ['192.0.2.1'] }, 'broken.test': 'servfail', 'v6only.test': { aaaa: ['2001:db8::1'] } });
    const err = await buildAllowlistTable({
      rules: parseRules(['good.test', 'broken.test', 'missing.test', 'v6only.test']),
      resolver: new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]),
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
      policy: FAST_POLICY,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PreresolveError);
    const failures = (err as PreresolveError).failures;
    expect(failures.map((f) => f.host).sort()).toEqual(['broken.test', 'missing.test', 'v6only.test']);
    expect((err as Error).message).toContain('missing.test (NXDOMAIN)');
    expect((err as Error).message).toMatch(/broken\.test \(A lookup failed after 2 attempts: .*ESERVFAIL/);
    expect((err as Error).message).toContain('v6only.test (only AAAA records, and the guest network is IPv4-only)');
    // SERVFAIL was retried, NXDOMAIN was not.
    expect(u.count('broken.test')).toBe(2);
    expect(u.count('missing.test')).toBe(1);
  });

  it('an abort during pre-resolution of a hanging host ends it at once with the abort reason', async () => {
    const u = await upstream({ 'slow.test': 'hang' });
    const ac = new AbortController();
    const building = buildAllowlistTable({
      rules: parseRules(['slow.test']),
      resolver: new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]),
      gatewayIpv4: '192.168.127.1',
      hostAliasIpv4: '192.168.127.254',
      sinkhole: 'zero',
      signal: ac.signal,
      timers: realTimers,
    }).catch((e: unknown) => e);
    await new Promise((res) => setTimeout(res, 100));
    const t0 = performance.now();
    ac.abort(new Error('SIGTERM'));
    const err = await building;
    expect(performance.now() - t0).toBeLessThan(100);
    expect((err as Error).message).toBe('SIGTERM');
  });
});

describe('NodeDnsResolver.resolveService (HTTPS/SVCB over UDP; c-ares has no such query)', () => {
  const rdata = Uint8Array.from([0, 1, 0, 0, 1, 0, 3, 2, 0x68, 0x32, 0, 5, 0, 2, 0xab, 0xcd]);

  it('returns the records as raw RDATA with their TTL, asking the configured server', async () => {
    const u = await upstream({ 'svc.test': { a: ['192.0.2.1'], https: [rdata], ttl: 77 } });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }]);
    expect(await r.resolveService('svc.test', 'HTTPS', never)).toEqual({ records: [rdata], ttl: 77 });
    expect(u.queries).toEqual(['svc.test UNKNOWN_65']);
  });

  it('NODATA is an empty answer, NXDOMAIN is ENOTFOUND, SERVFAIL a plain failure, silence a timeout', async () => {
    const u = await upstream({ 'plain.test': { a: ['192.0.2.1'] }, 'broken.test': 'servfail', 'slow.test': 'hang' });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }], { timeout: 200, tries: 1 });
    expect(await r.resolveService('plain.test', 'HTTPS', never)).toEqual({ records: [], ttl: 0 });
    expect(isNxdomain(await r.resolveService('missing.test', 'HTTPS', never).catch((e: unknown) => e))).toBe(true);
    const sf = await r.resolveService('broken.test', 'HTTPS', never).catch((e: unknown) => e);
    expect((sf as { code?: string }).code).toBe('ESERVFAIL');
    const slow = await r.resolveService('slow.test', 'HTTPS', never).catch((e: unknown) => e);
    expect((slow as { code?: string }).code).toBe('ETIMEOUT');
  });

  it('an abort ends the query at once with the abort reason', async () => {
    const u = await upstream({ 'slow.test': 'hang' });
    const r = new NodeDnsResolver([{ host: '127.0.0.1', port: u.port }], { timeout: 10_000, tries: 1 });
    const ac = new AbortController();
    const pending = r.resolveService('slow.test', 'HTTPS', ac.signal).catch((e: unknown) => e);
    ac.abort(new Error('stop'));
    expect(((await pending) as Error).message).toBe('stop');
  });
});
