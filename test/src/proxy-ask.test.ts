/**
 * Ask mode through `moat proxy` (--on-unlisted ask) and its API: a CONNECT
 * (or SOCKS5 CONNECT) to a name no rule covers waits on a pending decision
 * that GET /decisions/pending lists and POST /decisions/{id} answers. All
 * on 127.0.0.1 and a unix socket: the test's DNS server names every host
 * 127.0.0.1; nothing is dialed (a 200 to CONNECT only opens the tunnel,
 * which then waits for its SNI).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import type { AskCallback } from '../../src/egress/ask-gate.js';
import { NULL_LOGGER } from '../../src/log.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';

let dns: TestUpstream;
const dir = mkdtempSync(join(tmpdir(), 'moat-ask-'));
const open: RunningProxy[] = [];

beforeAll(async () => {
  const names: Record<string, { a: string[] }> = { 'listed.test': { a: ['127.0.0.1'] }, 'unresolvable.test': { a: [] } };
  for (const n of ['new', 'deny', 'denyname', 'once', 'many', 'late', 'cb', 'socks', 'sse', 'gone', 'race', 'race2']) names[`${n}.test`] = { a: ['127.0.0.1'] };
  dns = await startTestUpstream(names);
});

afterEach(async () => {
  for (const p of open.splice(0)) await p.close();
});

afterAll(async () => {
  await dns?.close();
  rmSync(dir, { recursive: true, force: true });
});

let n = 0;
async function start(extra: string[] = [], ask?: AskCallback): Promise<{ proxy: RunningProxy; api: string; records: DecisionRecord[] }> {
  const api = join(dir, `api${n++}.sock`);
  const parsed = parseProxyArgs([
    '--listen', '127.0.0.1:0',
    '--allow', 'listed.test',
    '--resolver', `127.0.0.1:${dns.port}`,
    '--admit-resolved', '127.0.0.0/8',
    '--api', `unix://${api}`,
    '--on-unlisted', 'ask',
    ...extra,
  ]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  const proxy = await startProxy(parsed.config, NULL_LOGGER, {}, ask ? { ask } : {});
  open.push(proxy);
  const records: DecisionRecord[] = [];
  proxy.onDecision((r) => records.push(r));
  return { proxy, api, records };
}

function apiCall(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text === '' ? undefined : JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** The proxy's answer head to CONNECT host:port, and when it came. */
function connectHead(proxy: RunningProxy, host: string, port = 443): { head: Promise<string>; close: () => void } {
  const [h, p] = proxy.http.split(':');
  const s = connect(Number(p), h!, () => s.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`));
  const head = new Promise<string>((resolve, reject) => {
    let got = '';
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) resolve(got);
    });
    s.on('error', reject);
    s.on('close', () => resolve(got));
  });
  return { head, close: () => s.destroy() };
}

async function pendingFor(api: string, name: string, waiters = 1): Promise<{ id: string; name: string; waiters: number; [k: string]: unknown }> {
  for (let i = 0; i < 200; i++) {
    const r = await apiCall(api, 'GET', '/decisions/pending');
    const p = (r.body as { name: string; waiters: number }[]).find((x) => x.name === name && x.waiters >= waiters);
    if (p !== undefined) return p as never;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no pending decision for ${name}`);
}

async function waitForText(text: () => string, re: RegExp): Promise<void> {
  for (let i = 0; i < 200 && !re.test(text()); i++) await new Promise((r) => setTimeout(r, 10));
  expect(text()).toMatch(re);
}

const settled = async <T>(p: Promise<T>, ms = 150): Promise<boolean> => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

describe('moat proxy --on-unlisted ask', () => {
  it('a CONNECT to an unlisted name waits; pending lists it; allow-name lets it through and adds the rule, the next CONNECT asks nothing', async () => {
    const { proxy, api, records } = await start();
    const c = connectHead(proxy, 'new.test');
    const p = await pendingFor(api, 'new.test');
    expect(p).toMatchObject({ name: 'new.test', proto: 'proxy', port: 443, dst: 'new.test:443', via: 'target', waiters: 1 });
    expect(p.id).toMatch(/^[0-9a-f]{32}$/);
    expect(typeof p.since).toBe('string');
    expect(await settled(c.head)).toBe(false); // still waiting
    const answer = await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'allow-name' });
    expect(answer).toEqual({ status: 200, body: { id: p.id, name: 'new.test', verdict: 'allow-name', waiters: 1 } });
    expect(await c.head).toMatch(/^HTTP\/1\.1 200/);
    c.close();
    expect(proxy.allowlist.rules()).toEqual(['listed.test', 'new.test']);
    const again = connectHead(proxy, 'new.test');
    expect(await again.head).toMatch(/^HTTP\/1\.1 200/);
    again.close();
    expect(proxy.stats().ask).toMatchObject({ asked: 1, allowedName: 1, pending: 0 });
    const asked = records.filter((r) => r.asked === true);
    expect(asked).toHaveLength(1);
    expect(asked[0]).toMatchObject({ decision: 'allowed', name: 'new.test', answeredBy: 'api', askId: p.id, rule: 'new.test' });
    // The same id again: already answered.
    expect((await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'deny' })).status).toBe(404);
  });

  it('deny refuses the waiting CONNECT at once with 403 ask-denied; the name is asked again next time', async () => {
    const { proxy, api, records } = await start();
    const c = connectHead(proxy, 'deny.test');
    const p = await pendingFor(api, 'deny.test');
    expect((await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'deny' })).status).toBe(200);
    const head = await c.head;
    expect(head).toMatch(/^HTTP\/1\.1 403/);
    expect(head.toLowerCase()).toContain('x-moat-reason: ask-denied');
    expect(records.find((r) => r.name === 'deny.test')).toMatchObject({ decision: 'blocked', reason: 'ask-denied', asked: true, answeredBy: 'api' });
    const again = connectHead(proxy, 'deny.test');
    const p2 = await pendingFor(api, 'deny.test');
    expect(p2.id).not.toBe(p.id);
    again.close();
  });

  it('deny-name is remembered: the next CONNECT is refused at once without a pending decision', async () => {
    const { proxy, api } = await start();
    const c = connectHead(proxy, 'denyname.test');
    const p = await pendingFor(api, 'denyname.test');
    await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'deny-name' });
    expect(await c.head).toMatch(/^HTTP\/1\.1 403/);
    const again = await connectHead(proxy, 'denyname.test').head;
    expect(again.toLowerCase()).toContain('x-moat-reason: ask-denied-name');
    expect(proxy.stats().ask).toMatchObject({ asked: 1, deniedName: 1, refusedDeniedName: 1, deniedNames: 1 });
  });

  it('no answer: refused after --ask-timeout-ms with reason ask-timeout', async () => {
    const { proxy, records } = await start(['--ask-timeout-ms', '300']);
    const t0 = Date.now();
    const head = await connectHead(proxy, 'late.test').head;
    expect(head.toLowerCase()).toContain('x-moat-reason: ask-timeout');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(records.find((r) => r.name === 'late.test')).toMatchObject({ reason: 'ask-timeout', asked: true, answeredBy: 'timeout' });
  });

  it('100 waiting CONNECTs for one name are one pending decision; allow-once lets exactly those through and adds no rule', async () => {
    const { proxy, api } = await start();
    const conns = Array.from({ length: 100 }, () => connectHead(proxy, 'many.test'));
    const p = await pendingFor(api, 'many.test', 100);
    expect((await apiCall(api, 'GET', '/decisions/pending')).body).toHaveLength(1);
    const answer = await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'allow-once' });
    expect(answer.body.waiters).toBe(100);
    const heads = await Promise.all(conns.map((c) => c.head));
    for (const c of conns) c.close();
    expect(heads.filter((h) => !h.startsWith('HTTP/1.1 200'))).toEqual([]);
    expect(proxy.allowlist.rules()).toEqual(['listed.test']);
    // Only those: the next one asks again.
    const next = connectHead(proxy, 'many.test');
    await pendingFor(api, 'many.test');
    next.close();
  });

  it('bytes a CONNECT client sends while it waits reach the tunnel after allow-once', async () => {
    const { proxy, api } = await start();
    const [h, port] = proxy.http.split(':');
    const s = connect(Number(port), h!, () => s.write('CONNECT once.test:443 HTTP/1.1\r\nHost: once.test:443\r\n\r\n'));
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('error', () => {});
    const p = await pendingFor(api, 'once.test');
    s.write('GET / HTTP/1.1\r\nHost: once.test\r\n\r\n'); // early, before the 200: held for the tunnel's peek
    await new Promise((r) => setTimeout(r, 50));
    await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'allow-once' });
    // The tunnel peeks the early bytes: an HTTP Host on :443's tunnel names once.test (nothing listens: the dial fails, the peek passed).
    await waitForText(() => got, /^HTTP\/1\.1 200/);
    // Peeked at once (not left waiting for bytes that were lost): the tunnel is past its peek.
    for (let i = 0; i < 100 && proxy.stats().tunnels.peeking > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(proxy.stats().tunnels.peeking).toBe(0);
    s.destroy();
  });

  it('the ask callback answers (proxy({ ask })), recorded as answeredBy callback', async () => {
    const seen: string[] = [];
    const { proxy, records } = await start([], async (pending) => {
      seen.push(`${pending.name}:${pending.port}:${pending.proto}`);
      return 'allow-once';
    });
    expect(await connectHead(proxy, 'cb.test').head).toMatch(/^HTTP\/1\.1 200/);
    expect(seen).toEqual(['cb.test:443:proxy']);
    expect(records.find((r) => r.name === 'cb.test')).toMatchObject({ decision: 'allowed', reason: 'asked-once', asked: true, answeredBy: 'callback' });
  });

  it('a SOCKS5 CONNECT waits the same way (its handshake timeout does not cut the wait); deny answers SOCKS failure 0x02', async () => {
    const { proxy, api } = await start(['--socks', '127.0.0.1:0', '--peek-timeout-ms', '200']);
    const [h, port] = proxy.socks!.split(':');
    const s = connect(Number(port), h!);
    const got: Buffer[] = [];
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.on('data', (d) => got.push(d));
    s.on('error', () => {});
    s.write(Buffer.from([5, 1, 0]));
    const name = Buffer.from('socks.test');
    await new Promise((r) => setTimeout(r, 50));
    s.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([1, 187])]));
    const p = await pendingFor(api, 'socks.test');
    await new Promise((r) => setTimeout(r, 300)); // past the handshake timeout: still held
    expect(s.destroyed).toBe(false);
    await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'deny' });
    await closed;
    const all = Buffer.concat(got);
    expect([...all.subarray(0, 2)]).toEqual([5, 0]); // method: no auth
    expect(all[3]).toBe(0x02); // reply: connection not allowed by ruleset
  });

  it('API: 400 for a bad verdict, 404 for an unknown id, 409 without ask mode; a client gone leaves its waiter, the decision stays', async () => {
    const { proxy, api } = await start();
    const c = connectHead(proxy, 'gone.test');
    const p = await pendingFor(api, 'gone.test');
    expect((await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'allow-forever' })).status).toBe(400);
    expect((await apiCall(api, 'POST', `/decisions/${p.id}`, {})).status).toBe(400);
    expect((await apiCall(api, 'POST', '/decisions/0123456789abcdef0123456789abcdef', { verdict: 'deny' })).status).toBe(404);
    expect((await apiCall(api, 'GET', '/decisions/pending')).body).toHaveLength(1); // nothing above answered it
    c.close();
    // The client gone: its waiter leaves (the decision stays for others).
    await pendingFor(api, 'gone.test', 0);
    for (let i = 0; i < 100 && ((await apiCall(api, 'GET', '/decisions/pending')).body as { waiters: number }[])[0]!.waiters !== 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(((await apiCall(api, 'GET', '/decisions/pending')).body as { waiters: number }[])[0]!.waiters).toBe(0);
    expect((await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'deny' })).body.waiters).toBe(0);

    const api2 = join(dir, 'plain.sock');
    const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--allow', 'listed.test', '--resolver', `127.0.0.1:${dns.port}`, '--api', `unix://${api2}`]);
    if (parsed.kind !== 'config') throw new Error('config');
    open.push(await startProxy(parsed.config, NULL_LOGGER));
    expect((await apiCall(api2, 'GET', '/decisions/pending')).status).toBe(409);
  });

  it('allow-name of a name that does not resolve: 502, the waiter refused (ask-failed), the rules unchanged', async () => {
    const { proxy, api } = await start();
    const c = connectHead(proxy, 'unresolvable.test');
    const p = await pendingFor(api, 'unresolvable.test');
    const r = await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'allow-name' });
    expect(r.status).toBe(502);
    expect((await c.head).toLowerCase()).toContain('x-moat-reason: ask-failed');
    expect(proxy.allowlist.rules()).toEqual(['listed.test']);
  });

  it('allow-name racing a reload: serialised behind it, the add lands on the reloaded rules (no lost update)', async () => {
    const { proxy, api } = await start();
    const c = connectHead(proxy, 'race.test');
    const p = await pendingFor(api, 'race.test');
    // The reload is queued first; the verdict's add runs on the rules as the reload left them, not on a stale copy.
    const reloaded = proxy.allowlist.reload(['listed.test', 'race2.test'], false);
    const answered = apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'allow-name' });
    await reloaded;
    expect((await answered).status).toBe(200);
    expect(proxy.allowlist.rules()).toEqual(['listed.test', 'race2.test', 'race.test']);
    expect(await c.head).toMatch(/^HTTP\/1\.1 200/);
    c.close();
    // A reload after the add replaces the whole set, as PUT does: the asked name goes with it, and is asked again.
    await proxy.allowlist.reload(['listed.test'], false);
    const c2 = connectHead(proxy, 'race.test');
    await pendingFor(api, 'race.test');
    c2.close();
  });

  it('a reload whose rules come to cover a pending name releases its waiters (answered by reload)', async () => {
    const { proxy, api, records } = await start();
    const c = connectHead(proxy, 'race2.test');
    const other = connectHead(proxy, 'gone.test');
    await pendingFor(api, 'race2.test');
    await pendingFor(api, 'gone.test');
    await proxy.allowlist.reload(['listed.test', 'race2.test'], false);
    expect(await c.head).toMatch(/^HTTP\/1\.1 200/);
    c.close();
    expect(records.find((r) => r.name === 'race2.test')).toMatchObject({ decision: 'allowed', asked: true, answeredBy: 'reload' });
    // A name the new rules do not cover still waits.
    expect(((await apiCall(api, 'GET', '/decisions/pending')).body as { name: string }[]).map((p) => p.name)).toEqual(['gone.test']);
    other.close();
    expect(proxy.stats().ask).toMatchObject({ releasedByReload: 1 });
  });

  it('GET /decisions/events streams pending and decided events', async () => {
    const { proxy, api } = await start();
    const events: string[] = [];
    const req = request({ socketPath: api, method: 'GET', path: '/decisions/events' });
    const gotDecided = new Promise<void>((resolve) => {
      req.on('response', (res) => {
        expect(res.headers['content-type']).toBe('text/event-stream');
        res.on('data', (d) => {
          events.push(String(d));
          if (events.join('').includes('event: decided')) resolve();
        });
      });
    });
    req.end();
    await new Promise((r) => setTimeout(r, 100));
    const c = connectHead(proxy, 'sse.test');
    const p = await pendingFor(api, 'sse.test');
    await apiCall(api, 'POST', `/decisions/${p.id}`, { verdict: 'deny' });
    await gotDecided;
    c.close();
    req.destroy();
    const text = events.join('');
    const pending = /event: pending\ndata: (.*)\n/.exec(text);
    expect(JSON.parse(pending![1]!)).toMatchObject({ id: p.id, name: 'sse.test', proto: 'proxy' });
    const decided = /event: decided\ndata: (.*)\n/.exec(text);
    expect(JSON.parse(decided![1]!)).toMatchObject({ id: p.id, name: 'sse.test', verdict: 'deny', by: 'api', waiters: 1, reason: 'ask-denied' });
  });
});
