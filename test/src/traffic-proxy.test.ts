/**
 * `moat proxy`: rate limits per client address and byte budgets per rule,
 * through CONNECT tunnels and absolute-form requests. Everything on
 * 127.0.0.1: the test's DNS server and counting servers.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { createServer as createHttpServer } from 'node:http';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { createLogger } from '../../src/log.js';
import { startTestUpstream } from './allowlist-upstream.js';
import { waitFor } from './nat-fake-stack.js';
import { proxy as embedProxy } from '../../src/embed.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function countingServer(): Promise<{ port: number; received: () => number; times: { t: number; total: number }[] }> {
  let total = 0;
  const times: { t: number; total: number }[] = [];
  const conns = new Set<Socket>();
  const server = createServer((s) => {
    conns.add(s);
    s.on('error', () => {});
    s.on('data', (c: Buffer) => {
      total += c.length;
      times.push({ t: performance.now(), total });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as AddressInfo).port, received: () => total, times };
}

/** A proxy over the test DNS server; `lines`: its log, as it grows. */
async function proxyWith(args: string[]): Promise<{ proxy: RunningProxy; lines: Record<string, unknown>[] }> {
  const dns = await startTestUpstream({ 'up.p.test': { a: ['127.0.0.1'] }, 'free.p.test': { a: ['127.0.0.1'] } });
  cleanups.push(() => dns.close());
  const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--resolver', `127.0.0.1:${dns.port}`, '--admit-resolved', '127.0.0.0/8', ...args]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'info', format: 'json', stream: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) } });
  const proxy = await startProxy(parsed.config, log);
  cleanups.push(() => proxy.close());
  return { proxy, lines };
}

/** CONNECT host:port; resolves with the socket and the proxy's answer head. */
function tunnel(proxy: RunningProxy, host: string, port: number): Promise<{ s: Socket; head: string }> {
  const [h, p] = proxy.http.split(':');
  return new Promise((resolve, reject) => {
    const s = connect(Number(p), h!, () => s.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`));
    let got = '';
    const onData = (d: Buffer): void => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) {
        s.off('data', onData);
        resolve({ s, head: got });
      }
    };
    s.on('data', onData);
    s.on('error', reject);
  });
}

/** Writes `data` with backpressure until done or the socket dies. */
async function send(s: Socket, data: Buffer): Promise<void> {
  for (let off = 0; off < data.length && !s.destroyed; off += 16 * KiB) {
    if (!s.write(data.subarray(off, off + 16 * KiB))) await new Promise<void>((r) => (s.once('drain', r), s.once('close', r)));
  }
}

const decisionsOf = (lines: Record<string, unknown>[]): Record<string, unknown>[] => lines.filter((l) => l['msg'] === 'egress decision');

describe('moat proxy: byte budgets per rule', () => {
  it('a tunnel past the budget is cut at it; the next CONNECT is refused 403 budget; another rule is unaffected', async () => {
    const srv = await countingServer();
    const rule = `up.p.test:${srv.port}`;
    const { proxy, lines } = await proxyWith(['--allow', rule, '--allow', `free.p.test:${srv.port}`, '--budget', `${rule}=64KiB`]);
    const t = await tunnel(proxy, 'up.p.test', srv.port);
    expect(t.head).toMatch(/^HTTP\/1\.1 200/);
    t.s.on('error', () => {});
    await send(t.s, randomBytes(512 * KiB));
    await waitFor(() => t.s.destroyed || t.s.readableEnded, 'the tunnel is cut');
    await new Promise((r) => setTimeout(r, 100));
    expect(srv.received()).toBeLessThanOrEqual(64 * KiB);
    expect(decisionsOf(lines).find((d) => d['reason'] === 'budget')).toMatchObject({ decision: 'blocked', rule });
    const again = await tunnel(proxy, 'up.p.test', srv.port);
    expect(again.head).toMatch(/^HTTP\/1\.1 403/);
    expect(again.head.toLowerCase()).toContain('x-moat-reason: budget');
    again.s.destroy();
    const free = await tunnel(proxy, 'free.p.test', srv.port);
    expect(free.head).toMatch(/^HTTP\/1\.1 200/);
    const before = srv.received();
    await send(free.s, randomBytes(256 * KiB));
    await waitFor(() => srv.received() - before === 256 * KiB, 'the other rule passes everything');
    free.s.destroy();
    expect((proxy.stats() as unknown as { budgets: unknown[] }).budgets).toEqual([expect.objectContaining({ rule, used: 64 * KiB, spent: true })]);
  }, 20_000);

  it('abuse: an absolute-form request body is charged too (no way around the budget by not tunnelling)', async () => {
    let got = 0;
    const http = createHttpServer((req, res) => {
      req.on('data', (c: Buffer) => (got += c.length));
      req.on('end', () => res.end('ok'));
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => (http.closeAllConnections(), http.close(() => r()))));
    const port = (http.address() as AddressInfo).port;
    const rule = `up.p.test:${port}`;
    const { proxy } = await proxyWith(['--allow', rule, '--budget', `${rule}=64KiB`]);
    const [h, p] = proxy.http.split(':');
    const s = connect(Number(p), h!);
    s.on('error', () => {});
    await new Promise((r) => s.once('connect', r));
    const body = randomBytes(512 * KiB);
    s.write(`POST http://up.p.test:${port}/up HTTP/1.1\r\nHost: up.p.test:${port}\r\nContent-Length: ${body.length}\r\n\r\n`);
    await send(s, body);
    await waitFor(() => s.destroyed || s.readableEnded, 'the client connection is cut');
    expect(got).toBeLessThanOrEqual(64 * KiB);
    // Spent: the next request is refused before anything is sent.
    const s2 = connect(Number(p), h!);
    const answer = await new Promise<string>((resolve) => {
      let a = '';
      s2.on('data', (d) => (a += d.toString('latin1')));
      s2.on('close', () => resolve(a));
      s2.on('error', () => resolve(a));
      s2.write(`GET http://up.p.test:${port}/again HTTP/1.1\r\nHost: up.p.test:${port}\r\nConnection: close\r\n\r\n`);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 403/);
    expect(answer.toLowerCase()).toContain('x-moat-reason: budget');
  }, 20_000);
});

describe('moat proxy: rate limits per client address', () => {
  it('a tunnel upload reaches the server no faster than rate x t + burst, every byte; stats count it', async () => {
    const srv = await countingServer();
    const rate = 2 * MiB;
    const burst = 64 * KiB;
    const { proxy } = await proxyWith(['--allow', `up.p.test:${srv.port}`, '--rate-egress', '2MiB/s', '--rate-egress-burst', '64KiB']);
    const t = await tunnel(proxy, 'up.p.test', srv.port);
    const t0 = performance.now();
    await send(t.s, randomBytes(MiB));
    await waitFor(() => srv.received() === MiB, 'every byte', 10_000);
    for (const x of srv.times) expect(x.total).toBeLessThanOrEqual((rate * (x.t - t0)) / 1000 + burst);
    expect(performance.now() - t0).toBeGreaterThan(400);
    expect((proxy.stats() as unknown as { rate: unknown }).rate).toMatchObject({ egress: { rate, burst }, clients: 1, bytesUp: MiB });
    t.s.destroy();
    await waitFor(() => (proxy.stats() as unknown as { rate: { clients: number } }).rate.clients === 0, 'the client address is forgotten with its last connection');
  }, 20_000);
});

describe('library: setAllowlist takes budgets', () => {
  it('sets, reports and refuses budgets as PUT /allowlist does', async () => {
    const dns = await startTestUpstream({ 'up.p.test': { a: ['127.0.0.1'] } });
    cleanups.push(() => dns.close());
    const p = await embedProxy(['--listen', '127.0.0.1:0', '--allow', 'up.p.test', '--resolver', `127.0.0.1:${dns.port}`, '--admit-resolved', '127.0.0.0/8']);
    cleanups.push(() => p.close());
    const r = await p.setAllowlist(['up.p.test'], { budgets: ['up.p.test=2MiB/1h'] });
    expect(r.budgets).toEqual([{ rule: 'up.p.test', bytes: 2 * MiB, periodMs: 3_600_000 }]);
    await expect(p.setAllowlist(['up.p.test'], { budgets: ['up.p.test=2Mb'] })).rejects.toThrow(/budgets: .*unit "Mb"/);
    await expect(p.setAllowlist(['up.p.test'], { budgets: ['gone.test=1MiB'] })).rejects.toThrow(/"gone.test"/);
    expect(p.rules()).toEqual(['up.p.test']);
  });
});
