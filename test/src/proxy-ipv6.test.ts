/**
 * `moat proxy` and IPv6 targets (issue 19: no family may become the
 * bypass): HTTP CONNECT `[v6]:port`, absolute-form `http://[v6]/`, SOCKS5
 * ATYP 4, decided by the same policy as IPv4. Every IPv6 spelling of a
 * refused IPv4 address (IPv4-mapped, NAT64, upper case, zero-padded) is
 * refused as that address, the IPv6 metadata address fd00:ec2::254 like
 * 169.254.169.254 (also in audit mode), a zone id is never an address.
 *
 * Targets are this test's own servers on the host's loopback (::1 and
 * 127.66.19.1), which count what reaches them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { DecisionRecord } from '../../src/egress/decision-log.js';
import { NULL_LOGGER } from '../../src/log.js';
import { parseProxyArgs } from '../../src/proxy/config.js';
import { startProxy, type RunningProxy } from '../../src/proxy/index.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';
import { rawExchange } from './proxy-raw-upstream.js';
import { parseRules } from '../../dns/rules.js';
import { AllowlistRuntime } from '../../src/egress/allowlist-runtime.js';
import { DEFAULT_EGRESS_OPTIONS } from '../../src/egress/egress.js';
import { AuthFailureLog } from '../../src/proxy/auth.js';
import { createSocks5Server } from '../../src/proxy/socks5.js';
import { Tunnel } from '../../src/proxy/tunnel.js';

const V4 = '127.66.19.1';
const PORT = 7019;
let dns: TestUpstream;
const servers: Server[] = [];
const seen = { v4: 0, v6: 0 };

async function start(args: string[]): Promise<{ p: RunningProxy; decisions: DecisionRecord[] }> {
  const parsed = parseProxyArgs(['--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--resolver', `127.0.0.1:${dns.port}`, ...args]);
  if (parsed.kind !== 'config') throw new Error('expected a config');
  const p = await startProxy(parsed.config, NULL_LOGGER);
  const decisions: DecisionRecord[] = [];
  p.onDecision((r) => decisions.push(r));
  return { p, decisions };
}

beforeAll(async () => {
  dns = await startTestUpstream({ 'echo.test': { a: [V4] } });
  for (const [address, key] of [[V4, 'v4'], ['::1', 'v6']] as const) {
    const s = createServer((c: Socket) => {
      seen[key]++;
      c.on('error', () => c.destroy());
      c.pipe(c);
    });
    await new Promise<void>((r) => s.listen(PORT, address, () => r()));
    servers.push(s);
  }
});

afterAll(async () => {
  for (const s of servers) s.close();
  await dns?.close();
});

/** SOCKS5 CONNECT to an IPv6 address (ATYP 4); resolves with the REP byte, and the echo of `payload` if it succeeded. */
function socksConnectIpv6(socks: string, bytes: readonly number[], port: number, payload = ''): Promise<{ rep: number; echo: string }> {
  const colon = socks.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const s = connect(Number(socks.slice(colon + 1)), socks.slice(0, colon));
    let got = Buffer.alloc(0);
    let replied = false;
    const timer = setTimeout(() => finish(), 3000);
    const finish = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ rep: got[3] ?? -1, echo: got.subarray(2 + 10).toString() });
    };
    s.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      if (!replied && got.length >= 2 + 10) {
        replied = true;
        if (got[3] !== 0 || payload === '') return finish();
        s.write(payload);
      }
      if (replied && got.length >= 2 + 10 + payload.length) finish();
    });
    s.once('error', reject);
    s.on('close', finish);
    s.write(Uint8Array.from([5, 1, 0, 5, 1, 0, 4, ...bytes, port >> 8, port & 0xff]));
  });
}

const bytesOf = (groups: number[]): number[] => groups.flatMap((g) => [g >> 8, g & 0xff]);
const LOOPBACK6 = bytesOf([0, 0, 0, 0, 0, 0, 0, 1]);
const MAPPED_V4 = bytesOf([0, 0, 0, 0, 0, 0xffff, 0x7f42, 0x1301]); // ::ffff:127.66.19.1
const METADATA6 = bytesOf([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]);

async function waitFor(check: () => boolean): Promise<void> {
  const until = Date.now() + 3000;
  while (!check() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
}

describe('moat proxy --allow-all: IPv6 literals get the IPv4 rebinding guard', () => {
  let p: RunningProxy;
  let decisions: DecisionRecord[];
  beforeAll(async () => ({ p, decisions } = await start(['--allow-all'])));
  afterAll(async () => p?.close());

  it.each([
    ['::1', 'rebinding'],
    ['0:0:0:0:0:0:0:1', 'rebinding'],
    ['0000:0000:0000:0000:0000:0000:0000:0001', 'rebinding'],
    ['::ffff:127.66.19.1', 'rebinding'],
    ['::FFFF:7F42:1301', 'rebinding'],
    ['::ffff:0:127.66.19.1', 'rebinding'], // SIIT ::ffff:0:0:0/96
    ['64:ff9b::127.66.19.1', 'rebinding'],
    ['64:ff9b:1::7f42:1301', 'rebinding'],
    ['2002:7f42:1301::1', 'special-range'],
    ['fd00:ec2::254', 'link-local'],
    ['::ffff:169.254.169.254', 'link-local'],
    ['fe80::1', 'link-local'],
    ['fe80::1%lo', 'ip-literal-name'],
    ['fe80::1%251', 'ip-literal-name'],
  ])('CONNECT [%s] is refused (%s) and reaches nobody', async (address, reason) => {
    const before = { ...seen };
    const r = await rawExchange(p.http, `CONNECT [${address}]:${PORT} HTTP/1.1\r\n\r\n`);
    expect(r).toMatch(/^HTTP\/1\.1 403 /);
    expect(r).toContain(`x-moat-reason: ${reason}`);
    await new Promise((res) => setTimeout(res, 50));
    expect(seen).toEqual(before);
  });

  it('an absolute-form request to an IPv4-mapped loopback literal is refused', async () => {
    const before = { ...seen };
    const r = await rawExchange(p.http, `GET http://[::ffff:127.66.19.1]:${PORT}/ HTTP/1.1\r\nHost: [::ffff:127.66.19.1]:${PORT}\r\n\r\n`);
    expect(r).toMatch(/^HTTP\/1\.1 403 /);
    expect(r).toContain('x-moat-reason: rebinding');
    expect(seen).toEqual(before);
  });

  it('SOCKS5 ATYP 4 is decided, not refused as unsupported: ::1, mapped loopback and metadata get 0x02', async () => {
    const before = { ...seen };
    for (const b of [LOOPBACK6, MAPPED_V4, METADATA6]) expect((await socksConnectIpv6(p.socks!, b, PORT)).rep).toBe(0x02);
    expect(seen).toEqual(before);
    expect(decisions.filter((d) => d.decision === 'blocked').map((d) => [d.dst, d.reason]).slice(-3)).toEqual([
      [`[::1]:${PORT}`, 'rebinding'],
      [`[::ffff:127.66.19.1]:${PORT}`, 'rebinding'],
      [`[fd00:ec2::254]:${PORT}`, 'link-local'],
    ]);
  });
});

describe('moat proxy: IPv6 targets that the rules allow', () => {
  it('--admit-resolved ::1 admits [::1] over CONNECT and SOCKS5 ATYP 4, dialed over IPv6', async () => {
    const { p } = await start(['--allow-all', '--admit-resolved', '::1']);
    try {
      const before = seen.v6;
      const r = await rawExchange(p.http, `CONNECT [::1]:${PORT} HTTP/1.1\r\n\r\n`, 2000);
      expect(r).toMatch(/^HTTP\/1\.1 200 /);
      await waitFor(() => seen.v6 > before);
      expect(seen.v6).toBe(before + 1);
      const s = await socksConnectIpv6(p.socks!, LOOPBACK6, PORT, 'ping6');
      expect(s).toEqual({ rep: 0, echo: 'ping6' });
    } finally {
      await p.close();
    }
  });

  it('an IPv6 rule allows its address; an IPv4 rule allows the IPv4-mapped and NAT64 forms, dialed at IPv4', async () => {
    const { p, decisions } = await start(['--allow', `[::1]:${PORT}`, '--allow', `${V4}:${PORT}`]);
    try {
      const before = { ...seen };
      expect(await rawExchange(p.http, `CONNECT [::1]:${PORT} HTTP/1.1\r\n\r\n`, 2000)).toMatch(/^HTTP\/1\.1 200 /);
      expect(await rawExchange(p.http, `CONNECT [::ffff:${V4}]:${PORT} HTTP/1.1\r\n\r\n`, 2000)).toMatch(/^HTTP\/1\.1 200 /);
      expect(await rawExchange(p.http, `CONNECT [64:ff9b::7f42:1301]:${PORT} HTTP/1.1\r\n\r\n`, 2000)).toMatch(/^HTTP\/1\.1 200 /);
      await waitFor(() => seen.v6 > before.v6 && seen.v4 >= before.v4 + 2);
      expect(seen).toEqual({ v6: before.v6 + 1, v4: before.v4 + 2 });
      expect(decisions.map((d) => [d.decision, d.rule])).toEqual([
        ['allowed', `[::1]:${PORT}`],
        ['allowed', `${V4}:${PORT}`],
        ['allowed', `${V4}:${PORT}`],
      ]);
      // Another port, or another address: refused.
      expect(await rawExchange(p.http, `CONNECT [::1]:${PORT + 1} HTTP/1.1\r\n\r\n`, 2000)).toMatch(/^HTTP\/1\.1 403 /);
      expect(await rawExchange(p.http, `CONNECT [::2]:${PORT} HTTP/1.1\r\n\r\n`, 2000)).toMatch(/^HTTP\/1\.1 403 /);
    } finally {
      await p.close();
    }
  });
});

describe('moat proxy --mode audit: IPv6 metadata stays refused', () => {
  it.each(['fd00:ec2::254', 'FD00:0EC2:0:0::254', '::ffff:169.254.169.254', '64:ff9b::a9fe:a9fe', '2002:a9fe:a9fe::1', 'fe80::1'])('[%s] -> 403 link-local', async (address) => {
    const { p, decisions } = await start(['--allow', 'echo.test', '--mode', 'audit']);
    try {
      const r = await rawExchange(p.http, `CONNECT [${address}]:80 HTTP/1.1\r\n\r\n`, 2000);
      expect(r).toMatch(/^HTTP\/1\.1 403 /);
      expect(r).toContain('x-moat-reason: link-local');
      expect(decisions.at(-1)).toMatchObject({ decision: 'would-block', reason: 'link-local' });
    } finally {
      await p.close();
    }
  });

  it('audit lets [::1] through as it lets 127.0.0.1 (recorded would-block)', async () => {
    const { p, decisions } = await start(['--allow', 'echo.test', '--mode', 'audit']);
    try {
      const before = seen.v6;
      expect(await rawExchange(p.http, `CONNECT [::1]:${PORT} HTTP/1.1\r\n\r\n`, 2000)).toMatch(/^HTTP\/1\.1 200 /);
      await waitFor(() => seen.v6 > before);
      expect(seen.v6).toBe(before + 1);
      expect(decisions.at(-1)).toMatchObject({ decision: 'would-block', dst: `[::1]:${PORT}` });
    } finally {
      await p.close();
    }
  });
});

describe('SOCKS5: bytes the client sends while an address target is still being dialed', () => {
  // Found by test/e2e/proxy-ipv6.test.ts: curl's request, sent on the SOCKS5 reply, was lost when the
  // upstream connect took longer than the client (IPv4 and IPv6 alike): the listener resumed the
  // client socket after handing it to a tunnel that had paused it for its dial.
  it('reach the upstream once it connects (a dialer that takes 150 ms)', async () => {
    const runtime = await AllowlistRuntime.start(
      {
        rules: parseRules([`${V4}:${PORT}`, `[::1]:${PORT}`]),
        resolver: { resolve4: async () => ({ addresses: [], ttl: 1 }), resolve6: async () => ({ addresses: [], ttl: 1 }) },
        gatewayIpv4: '192.168.127.1',
        hostAliasIpv4: '192.168.127.254',
        sinkhole: 'zero',
        guestSubnet: { network: '192.168.127.0', prefix: 24 },
        admitResolved: [],
        hostAliasExempt: false,
        allowLinkLocal: false,
        egress: DEFAULT_EGRESS_OPTIONS,
        now: () => performance.now(),
      },
      NULL_LOGGER,
    );
    const slow = {
      connectFirst: async (addresses: readonly string[], port: number): Promise<Socket> => {
        await new Promise((r) => setTimeout(r, 150));
        const s = connect({ host: addresses[0]!, port, allowHalfOpen: true });
        await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
        return s;
      },
    };
    const counters = { socksConnects: 0, refused: 0, udpAssociations: 0, udpDropped: 0, udpIn: 0, udpOut: 0, authFailures: 0 };
    const server = createSocks5Server(
      {
        egress: () => runtime.egress,
        log: NULL_LOGGER,
        openTunnel: (client, a, head) => new Tunnel(client, a, { egress: runtime.egress, dialer: slow, log: NULL_LOGGER, serverFirstGraceMs: 1000 }, () => {}).start(head),
        auth: undefined,
        authFailures: new AuthFailureLog(counters, NULL_LOGGER),
        counters,
      },
      { maxConnections: 16, handshakeTimeoutMs: 5000 },
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const at = `127.0.0.1:${(server.address() as { port: number }).port}`;
      expect(await socksConnectIpv6(at, LOOPBACK6, PORT, 'sent-while-dialing')).toEqual({ rep: 0, echo: 'sent-while-dialing' });
    } finally {
      server.close();
      await runtime.close();
    }
  });
});
