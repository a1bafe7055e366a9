import { describe, it, expect } from 'vitest';
import {
  AttemptTimeoutError,
  DEFAULT_RETRY_POLICY,
  lookup,
  preresolve,
  PreresolveError,
  withRetry,
} from '../../dns/preresolve.js';
import { FakeResolver, nxdomain, realTimers, VirtualTimers } from './fake-upstream.js';

const servfail = (): Error => Object.assign(new Error('queryA ESERVFAIL'), { code: 'ESERVFAIL' });
const answer = (addresses: string[], ttl = 60) => ({ answer: { addresses, ttl } });

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

describe('withRetry / lookup (the retry policy)', () => {
  it('2 failures then success resolves with 3 calls, after 100 + 300 ms of backoff', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { fail: servfail() }, { fail: servfail() }, answer(['192.0.2.1']));
    const got = await timers.run(lookup(r, 'A', 'a.test', { timers }));
    expect(got.addresses).toEqual(['192.0.2.1']);
    expect(r.callsFor('A', 'a.test')).toBe(3);
    expect(timers.now()).toBe(400);
    expect(timers.pendingCount).toBe(0);
  });

  it('always failing gives the error after exactly 4 calls and 100/300/900 ms of backoff', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { fail: servfail() });
    const err = await timers.run(rejection(lookup(r, 'A', 'a.test', { timers })));
    expect((err as Error).message).toContain('ESERVFAIL');
    expect(r.callsFor('A', 'a.test')).toBe(4);
    expect(timers.now()).toBe(1300);
  });

  it('retries a resolver that throws TypeError like any other failure', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { fail: new TypeError('boom') }, answer(['192.0.2.9']));
    expect((await timers.run(lookup(r, 'A', 'a.test', { timers }))).addresses).toEqual(['192.0.2.9']);
    expect(r.callsFor('A', 'a.test')).toBe(2);
  });

  it('cuts a hanging resolver at the per-attempt deadline (4 x 2 s + 1.3 s backoff)', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { hang: true });
    const err = await timers.run(rejection(lookup(r, 'A', 'a.test', { timers })));
    expect(err).toBeInstanceOf(AttemptTimeoutError);
    expect(r.callsFor('A', 'a.test')).toBe(4);
    expect(timers.now()).toBe(4 * DEFAULT_RETRY_POLICY.attemptTimeoutMs + 1300);
  });

  it('a slow answer inside the deadline is taken on the first attempt', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { answer: { addresses: ['192.0.2.3'], ttl: 60 }, afterMs: 1_999 });
    expect((await timers.run(lookup(r, 'A', 'a.test', { timers }))).addresses).toEqual(['192.0.2.3']);
    expect(r.callsFor('A', 'a.test')).toBe(1);
    expect(timers.now()).toBe(1_999);
  });

  it('NXDOMAIN is an answer: no retry', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers);
    const err = await timers.run(rejection(lookup(r, 'A', 'nope.test', { timers })));
    expect((err as { code?: string }).code).toBe('ENOTFOUND');
    expect(r.callsFor('A', 'nope.test')).toBe(1);
    expect(timers.now()).toBe(0);
  });

  it('cancel during backoff ends the run at once (virtual time)', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { fail: servfail() });
    const ac = new AbortController();
    // Attempt 2 fails at t=100; its 300 ms backoff runs until t=400. Abort at t=150.
    void timers.sleep(150, new AbortController().signal).then(() => ac.abort(new Error('shutdown')));
    const err = await timers.run(rejection(withRetry((s) => r.resolve4('a.test', s), { timers, signal: ac.signal })));
    expect((err as Error).message).toBe('shutdown');
    expect(timers.now()).toBe(150);
    expect(r.callsFor('A', 'a.test')).toBe(2);
  });

  it('cancel during backoff returns within 100 ms (real timers, measured)', async () => {
    const r = new FakeResolver(realTimers).script('A', 'a.test', { fail: servfail() });
    const ac = new AbortController();
    const p = rejection(lookup(r, 'A', 'a.test', { timers: realTimers, signal: ac.signal }));
    // After 150 ms the run is in the 300 ms backoff that follows attempt 2.
    await new Promise((res) => setTimeout(res, 150));
    const abortedAt = performance.now();
    ac.abort(new Error('shutdown'));
    const err = await p;
    const took = performance.now() - abortedAt;
    expect((err as Error).message).toBe('shutdown');
    expect(r.callsFor('A', 'a.test')).toBe(2);
    expect(took).toBeLessThan(100);
  });

  it('cancel during a hanging attempt ends it at once', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { hang: true });
    const ac = new AbortController();
    void timers.sleep(500, new AbortController().signal).then(() => ac.abort(new Error('stop')));
    const err = await timers.run(rejection(lookup(r, 'A', 'a.test', { timers, signal: ac.signal })));
    expect((err as Error).message).toBe('stop');
    expect(timers.now()).toBe(500);
    expect(r.callsFor('A', 'a.test')).toBe(1);
  });

  it('drops unusable addresses (wrong family, unspecified) and duplicates', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers)
      .script('A', 'a.test', answer(['0.0.0.0', '192.0.2.1', '2001:db8::1', '192.0.2.1', 'junk']))
      .script('AAAA', 'a.test', answer(['::', '2001:DB8::1', '192.0.2.1']));
    expect((await timers.run(lookup(r, 'A', 'a.test', { timers }))).addresses).toEqual(['192.0.2.1']);
    expect((await timers.run(lookup(r, 'AAAA', 'a.test', { timers }))).addresses).toEqual(['2001:db8::1']);
  });
});

describe('preresolve (fail closed)', () => {
  it('resolves every host with its own records and a clamped TTL', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).host('a.test', ['192.0.2.1'], [], 3).host('b.test', ['192.0.2.2', '192.0.2.3'], [], 86_400);
    const table = await timers.run(preresolve(['a.test', 'b.test'], { resolver: r, timers, ipv6: false }));
    expect(table.get('a.test')).toEqual({ a: ['192.0.2.1'], aaaa: [], ttl: 5 });
    expect(table.get('b.test')).toEqual({ a: ['192.0.2.2', '192.0.2.3'], aaaa: [], ttl: 300 });
    // IPv4-only guest: AAAA is not asked when A answered.
    expect(r.callsFor('AAAA', 'a.test')).toBe(0);
  });

  it('one failing host among many fails the whole build and names it', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers);
    const hosts = Array.from({ length: 30 }, (_, i) => `h${i}.test`);
    hosts.forEach((h, i) => r.host(h, [`192.0.2.${i + 1}`]));
    r.script('A', 'h17.test', { fail: servfail() });
    const err = await timers.run(rejection(preresolve(hosts, { resolver: r, timers, ipv6: false })));
    expect(err).toBeInstanceOf(PreresolveError);
    expect((err as PreresolveError).failures).toEqual([
      { host: 'h17.test', reason: expect.stringContaining('A lookup failed after 4 attempts') },
    ]);
    expect((err as Error).message).toContain('h17.test');
  });

  it('names every failed host and why: error, NXDOMAIN, empty, IPv6-only', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers)
      .host('ok.test', ['192.0.2.1'])
      .script('A', 'dead.test', { hang: true })
      .host('empty.test', [], [])
      .host('v6only.test', [], ['2001:db8::6']);
    const err = (await timers.run(
      rejection(preresolve(['ok.test', 'dead.test', 'nx.test', 'empty.test', 'v6only.test'], { resolver: r, timers, ipv6: false })),
    )) as PreresolveError;
    expect(err.failures).toEqual([
      { host: 'dead.test', reason: 'A lookup failed after 4 attempts: ETIMEOUT timed out after 2000 ms' },
      { host: 'nx.test', reason: 'NXDOMAIN' },
      { host: 'empty.test', reason: 'no A address' },
      { host: 'v6only.test', reason: 'only AAAA records, and the guest network is IPv4-only' },
    ]);
  });

  it('an IPv6-only host is usable when the guest network has IPv6', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).host('v6only.test', [], ['2001:db8::6'], 120);
    const table = await timers.run(preresolve(['v6only.test'], { resolver: r, timers, ipv6: true }));
    expect(table.get('v6only.test')).toEqual({ a: [], aaaa: ['2001:db8::6'], ttl: 120 });
  });

  it('N dead hosts take as long as one (concurrent)', async () => {
    const elapsed = async (n: number): Promise<number> => {
      const timers = new VirtualTimers();
      const r = new FakeResolver(timers);
      const hosts = Array.from({ length: n }, (_, i) => `dead${i}.test`);
      for (const h of hosts) r.script('A', h, { hang: true });
      const err = (await timers.run(rejection(preresolve(hosts, { resolver: r, timers, ipv6: false })))) as PreresolveError;
      expect(err.failures.map((f) => f.host)).toEqual(hosts);
      expect(r.calls.length).toBe(4 * n);
      return timers.now();
    };
    const one = await elapsed(1);
    expect(one).toBe(9_300);
    expect(await elapsed(25)).toBe(one);
  });

  it('abort rejects with the abort reason, not a host failure', async () => {
    const timers = new VirtualTimers();
    const r = new FakeResolver(timers).script('A', 'a.test', { fail: servfail() }).host('b.test', ['192.0.2.2']);
    const ac = new AbortController();
    void timers.sleep(50, new AbortController().signal).then(() => ac.abort(new Error('SIGTERM')));
    const err = await timers.run(rejection(preresolve(['a.test', 'b.test'], { resolver: r, timers, ipv6: false, signal: ac.signal })));
    expect(err).not.toBeInstanceOf(PreresolveError);
    expect((err as Error).message).toBe('SIGTERM');
    expect(timers.now()).toBe(50);
  });

  it('resolves nothing for no hosts', async () => {
    const timers = new VirtualTimers();
    const table = await timers.run(preresolve([], { resolver: new FakeResolver(timers), timers, ipv6: false }));
    expect(table.size).toBe(0);
  });

  it('nxdomain helper carries the code the library checks', () => {
    expect((nxdomain() as { code?: string }).code).toBe('ENOTFOUND');
  });
});
