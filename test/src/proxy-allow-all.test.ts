/**
 * `moat proxy --allow-all` and IP-literal targets (issue 14, finding 8):
 * without rules every name is allowed, but a name resolving into loopback,
 * private or link-local space is refused (`rebinding`); an IP literal naming
 * the same address must be refused the same way, over HTTP CONNECT,
 * absolute-form requests, SOCKS5 CONNECT and SOCKS5 UDP.
 *
 * Every target here is a loopback address (127.66.15.0/24) with a server of
 * this test's own, which counts what reaches it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { rawExchange } from './proxy-raw-upstream.js';

const ECHO = '127.66.15.14';
const UDP_ECHO = '127.66.15.15';
const PORT = 7000;

let dns: TestUpstream;
let echo: Server;
let udp: UdpSocket;
const seen = { tcp: 0, udp: 0 };
let proxy: RunningProxy;

async function start(extra: string[] = []): Promise<RunningProxy> {
  const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--allow-all', '--resolver', `127.0.0.1:${dns.port}`, ...extra]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  return startProxy(parsed.config, NULL_LOGGER);
}

beforeAll(async () => {
  dns = await startTestUpstream({ 'echo.test': { a: [ECHO] } });
  echo = createServer((s: Socket) => {
    seen.tcp++;
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(PORT, ECHO, () => r()));
  udp = createSocket('udp4');
  udp.on('message', (m, from) => {
    seen.udp++;
    udp.send(m, from.port, from.address);
  });
  await new Promise<void>((r) => udp.bind(PORT, UDP_ECHO, () => r()));
  proxy = await start();
});

afterAll(async () => {
  await proxy?.close();
  echo?.close();
  udp?.close();
  await dns?.close();
});

/** SOCKS5 greeting (no auth) and CONNECT to an IPv4 address; resolves with the REP byte. */
function socksConnectIpv4(socks: string, address: string, port: number): Promise<number> {
  const colon = socks.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const s = connect(Number(socks.slice(colon + 1)), socks.slice(0, colon));
    let got = Buffer.alloc(0);
    s.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      if (got.length >= 2 + 4) {
        s.destroy();
        resolve(got[3]!);
      }
    });
    s.once('error', reject);
    s.write(Uint8Array.from([5, 1, 0, 5, 1, 0, 1, ...address.split('.').map(Number), port >> 8, port & 0xff]));
  });
}

describe('moat proxy --allow-all: IP literals get the rebinding guard names get', () => {
  it('by name, a loopback answer is refused (the reference behaviour)', async () => {
    const r = await rawExchange(proxy.http, `CONNECT echo.test:${PORT} HTTP/1.1\r\n\r\n`);
    expect(r).toMatch(/^HTTP\/1\.1 403 /);
    expect(r).toMatch(/x-moat-reason: rebinding/);
  });

  it('CONNECT to a loopback literal is refused the same way, and nothing is dialed', async () => {
    const before = seen.tcp;
    const r = await rawExchange(proxy.http, `CONNECT ${ECHO}:${PORT} HTTP/1.1\r\n\r\n`);
    expect(r).toMatch(/^HTTP\/1\.1 403 /);
    expect(r).toMatch(/x-moat-reason: rebinding/);
    expect(seen.tcp).toBe(before);
  });

  it('an absolute-form request to a loopback literal is refused', async () => {
    const before = seen.tcp;
    const r = await rawExchange(proxy.http, `GET http://${ECHO}:${PORT}/ HTTP/1.1\r\nHost: ${ECHO}\r\n\r\n`);
    expect(r).toMatch(/^HTTP\/1\.1 403 /);
    expect(r).toMatch(/x-moat-reason: rebinding/);
    expect(seen.tcp).toBe(before);
  });

  it('SOCKS5 CONNECT to a loopback literal gets 0x02', async () => {
    const before = seen.tcp;
    expect(await socksConnectIpv4(proxy.socks!, ECHO, PORT)).toBe(0x02);
    expect(seen.tcp).toBe(before);
  });

  it('SOCKS5 UDP to a loopback literal is dropped', async () => {
    const before = seen.udp;
    const colon = proxy.socks!.lastIndexOf(':');
    const control = connect(Number(proxy.socks!.slice(colon + 1)), '127.0.0.1');
    const client = createSocket('udp4');
    try {
      const bound = await new Promise<{ address: string; port: number }>((resolve, reject) => {
        let got = Buffer.alloc(0);
        control.on('data', (c: Buffer) => {
          got = Buffer.concat([got, c]);
          if (got.length >= 12) resolve({ address: `${got[6]}.${got[7]}.${got[8]}.${got[9]}`, port: got.readUInt16BE(10) });
        });
        control.once('error', reject);
        control.write(Uint8Array.from([5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]));
      });
      await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
      const droppedBefore = proxy.stats().udpDropped;
      client.send(Buffer.concat([Buffer.from([0, 0, 0, 1, ...UDP_ECHO.split('.').map(Number), PORT >> 8, PORT & 0xff]), Buffer.from('x')]), bound.port, bound.address);
      const until = Date.now() + 3000;
      while (proxy.stats().udpDropped === droppedBefore && proxy.stats().udpOut === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 100));
      expect(proxy.stats().udpDropped).toBe(droppedBefore + 1);
      expect(proxy.stats().udpOut).toBe(0);
      expect(seen.udp).toBe(before);
    } finally {
      control.destroy();
      client.close();
    }
  });

  it('--admit-resolved admits a literal exactly as it admits a name resolving there', async () => {
    const p = await start(['--admit-resolved', '127.66.15.0/24']);
    try {
      const before = seen.tcp;
      const byName = await rawExchange(p.http, `CONNECT echo.test:${PORT} HTTP/1.1\r\n\r\n`, 2000);
      const byAddress = await rawExchange(p.http, `CONNECT ${ECHO}:${PORT} HTTP/1.1\r\n\r\n`, 2000);
      expect(byName).toMatch(/^HTTP\/1\.1 200 /);
      expect(byAddress).toMatch(/^HTTP\/1\.1 200 /);
      // The tunnel by address dials at once (no name to peek); the one by name waits for its grace period.
      const until = Date.now() + 3000;
      while (seen.tcp < before + 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      expect(seen.tcp).toBeGreaterThanOrEqual(before + 1);
    } finally {
      await p.close();
    }
  });
});
