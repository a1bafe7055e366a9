/**
 * `moat proxy` bounds, against the built CLI (node bin/moat.mjs proxy) so
 * the memory measured is the proxy's own process:
 *  - a tunnel that sends nothing after CONNECT is closed at the peek timeout
 *    and nothing is dialed;
 *  - 1,000 concurrent tunnels, each piped through to an upstream, stay
 *    within the documented memory bound (RSS growth under 64 MiB, i.e.
 *    < 64 KiB per tunnel; docs/proxy.md has the measured figure);
 *  - 1,000 concurrent idle tunnels (CONNECT answered, nothing sent) stay
 *    within the same bound and are all closed at the peek timeout, with no
 *    upstream contacted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { startProxyWorld, type ProxyWorld } from './proxy-support.js';

const PEEK_TIMEOUT_MS = 4000;
const TUNNELS = 1000;
/** The documented bound: RSS growth for 1,000 open tunnels. */
const RSS_BOUND_BYTES = 64 * 1024 * 1024;

let world: ProxyWorld;
let child: ChildProcess;
let proxyAddr: { host: string; port: number };
let stderr = '';

beforeAll(async () => {
  world = await startProxyWorld(2);
  child = spawn(process.execPath, [
    'bin/moat.mjs', 'proxy',
    '--listen', '127.0.0.1:0',
    '--allow', 'secure.test',
    '--allow', 'echo.test:7000',
    '--resolver', `127.0.0.1:${world.dns.port}`,
    '--admit-resolved', '127.0.0.0/8',
    '--peek-timeout-ms', String(PEEK_TIMEOUT_MS),
    '--max-connections', '2000',
    '--log-format', 'json',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr!.on('data', (c) => (stderr += String(c)));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c) => {
      out += String(c);
      const m = /export HTTPS_PROXY=http:\/\/(\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`moat proxy exited ${code}: ${stderr}`)));
  });
  const colon = line.lastIndexOf(':');
  proxyAddr = { host: line.slice(0, colon), port: Number(line.slice(colon + 1)) };
  expect(stderr).toContain('"msg":"moat proxy ready"');
});

afterAll(async () => {
  child?.kill('SIGTERM');
  await world?.close();
});

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

/** Opens a CONNECT tunnel and resolves with the socket once the 200 arrived. */
function openTunnel(target: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(proxyAddr.port, proxyAddr.host);
    let head = '';
    const onData = (c: Buffer): void => {
      head += c.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      s.off('data', onData);
      if (head.startsWith('HTTP/1.1 200')) resolve(s);
      else reject(new Error(`CONNECT ${target}: ${head.split('\r\n')[0]}`));
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  });
}

function echoOnce(s: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (c: Buffer): void => {
      got += c.toString();
      if (got.length >= text.length) {
        s.off('data', onData);
        resolve(got);
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(text);
  });
}

describe('moat proxy bounds', () => {
  it('a tunnel that sends nothing is closed at the peek timeout, and nothing is dialed', async () => {
    const before = world.accepted.secure;
    const s = await openTunnel('secure.test:443');
    const started = Date.now();
    await new Promise<void>((resolve) => s.once('close', () => resolve()));
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(PEEK_TIMEOUT_MS - 100);
    expect(elapsed).toBeLessThan(PEEK_TIMEOUT_MS + 1500);
    expect(world.accepted.secure).toBe(before);
    expect(stderr).toMatch(/"reason":"peek-timeout"/);
  });

  it(`${TUNNELS} idle tunnels stay within the bound and are all closed at the peek timeout`, async () => {
    const pid = child.pid!;
    const secureBefore = world.accepted.secure;
    const base = rssBytes(pid);
    const started = Date.now();
    const sockets: Socket[] = [];
    for (let i = 0; i < TUNNELS; i += 100) sockets.push(...(await Promise.all(Array.from({ length: 100 }, () => openTunnel('secure.test:443')))));
    const openedIn = Date.now() - started;
    const peak = rssBytes(pid);
    console.log(`moat proxy RSS: ${TUNNELS} idle (peeking) tunnels opened in ${openedIn} ms: base ${(base / 1048576).toFixed(1)} MiB, peak ${(peak / 1048576).toFixed(1)} MiB, growth ${((peak - base) / 1024 / TUNNELS).toFixed(1)} KiB/tunnel`);
    expect(peak - base).toBeLessThan(RSS_BOUND_BYTES);
    const closed = await Promise.all(sockets.map((s) => (s.destroyed ? Promise.resolve(Date.now()) : new Promise<number>((r) => s.once('close', () => r(Date.now()))))));
    const lastClose = Math.max(...closed);
    // The first tunnels close one peek timeout after they opened; the last within it after the last open.
    expect(Math.min(...closed) - started).toBeGreaterThanOrEqual(PEEK_TIMEOUT_MS - 200);
    expect(lastClose - started).toBeLessThan(openedIn + PEEK_TIMEOUT_MS + 2000);
    expect(world.accepted.secure).toBe(secureBefore);
  }, 120_000);

  it(`${TUNNELS} concurrent tunnels stay under ${RSS_BOUND_BYTES / 1024 / 1024} MiB of RSS growth`, async () => {
    const pid = child.pid!;
    const echoBefore = world.accepted.echo;
    // Warm up (first dial, lazy allocations) so the baseline is the idle proxy, not its start-up.
    const warm = await openTunnel('echo.test:7000');
    expect(await echoOnce(warm, 'warm')).toBe('warm');
    warm.destroy();
    await new Promise((r) => setTimeout(r, 200));
    const base = rssBytes(pid);
    const sockets: Socket[] = [];
    for (let i = 0; i < TUNNELS; i += 100) {
      const batch = await Promise.all(Array.from({ length: 100 }, () => openTunnel('echo.test:7000')));
      const echoed = await Promise.all(batch.map((s, j) => echoOnce(s, `ping-${i + j}`)));
      echoed.forEach((e, j) => expect(e).toBe(`ping-${i + j}`));
      sockets.push(...batch);
    }
    expect(world.accepted.echo - echoBefore).toBe(TUNNELS + 1);
    const peak = rssBytes(pid);
    const growth = peak - base;
    // The figure for the report: visible in the test output.
    console.log(`moat proxy RSS: base ${(base / 1048576).toFixed(1)} MiB, with ${TUNNELS} tunnels ${(peak / 1048576).toFixed(1)} MiB, growth ${(growth / 1024 / TUNNELS).toFixed(1)} KiB/tunnel`);
    expect(growth).toBeLessThan(RSS_BOUND_BYTES);
    // Every tunnel still works at full count.
    expect(await echoOnce(sockets[0]!, 'first')).toBe('first');
    expect(await echoOnce(sockets[TUNNELS - 1]!, 'last')).toBe('last');
    for (const s of sockets) s.destroy();
  }, 120_000);
});
