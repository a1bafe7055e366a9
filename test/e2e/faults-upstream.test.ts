/**
 * Faults around a running `moat serve` (forwarding mode), from the guest
 * namespace through moat-shim:
 *  - the DNS upstream hangs (a UDP socket we run that never answers): every
 *    query is answered SERVFAIL within --dns-timeout-ms, queries beyond
 *    --dns-max-in-flight at once; nothing hangs;
 *  - the host side resets mid-flow: the guest gets a RST (ECONNRESET);
 *  - the guest disconnects mid-transfer (shim killed): every host socket of
 *    that guest is closed (the server sees it), the flow tables are empty,
 *    and the next shim is served;
 *  - SIGTERM with flows open: Moat closes them and exits 0 within 5 s.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, e2eGate, waitFor } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, HTTP_SERVER_JS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import {
  GUEST_DNS_BURST_JS,
  GUEST_READ_ALL_JS,
  GUEST_STALLED_READERS_JS,
  TCP_STREAM_JS,
  limits,
  natTables,
  openConnections,
  readyPort,
  resultOf,
} from './limits-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig']);

/** A UDP "resolver" that reads every query and never answers; prints "ready PORT" then "query" per datagram. */
const SILENT_UDP_JS = `
const s = require('node:dgram').createSocket('udp4');
const [addr, port] = process.argv.slice(1);
s.on('message', () => console.log('query'));
s.bind(Number(port), addr, () => console.log('ready ' + s.address().port));
`;

const DNS_TIMEOUT_MS = 1500;

describe.skipIf(gate.skip)('moat serve e2e: faults (hung resolver, host reset, guest gone, SIGTERM)', () => {
  let fx: MoatFixture;
  let target: string;
  let silent: { stdout(): string };
  let httpPort: number;

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mz9l-',
      // No DNS server from the fixture: its --dns-upstream (remote:53) is where our silent socket listens.
      dns: false,
      extraMoatArgs: ['--dns-timeout-ms', String(DNS_TIMEOUT_MS), '--dns-max-in-flight', '4'],
    });
    target = fx.topo.internetAddrs[0]!;
    silent = await fx.startNodeServer(fx.remoteNs, SILENT_UDP_JS, [fx.topo.remoteAddr, '53']);
    httpPort = readyPort((await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [target, '0', 'remote'])).stdout());
  });

  afterAll(async () => {
    if (fx) await fx.stop();
    cleanupAll();
  });

  it('a resolver that never answers: the guest gets SERVFAIL within --dns-timeout-ms, not a hang', async () => {
    const started = Date.now();
    const r = await fx.guestRun('dig', ['+tries=1', '+time=10', `@${GATEWAY_IP}`, 'hang.example.test', 'A'], { timeoutMs: 15_000 });
    const ms = Date.now() - started;
    expect(r.stdout).toMatch(/status: SERVFAIL/);
    expect(ms).toBeLessThan(DNS_TIMEOUT_MS + 1500);
    expect(silent.stdout()).toMatch(/^query$/m); // it was asked, and said nothing
  });

  it('--dns-max-in-flight 4: 20 queries at once -> 16 SERVFAIL at once, 4 SERVFAIL at the deadline', async () => {
    const r = await fx.guestRun(process.execPath, ['-e', GUEST_DNS_BURST_JS, GATEWAY_IP, '20', 'burst.example.test', '8000'], { timeoutMs: 15_000 });
    const res = resultOf<{ answers: number; rcodes: Record<string, number>; maxMs: number }>(r.stdout);
    expect(res.answers).toBe(20);
    expect(res.rcodes).toEqual({ '2': 20 });
    expect(res.maxMs).toBeLessThan(DNS_TIMEOUT_MS + 1500);
    const l = await limits(fx);
    expect(l['dnsInFlight']).toMatchObject({ max: 4, current: 0 });
    expect(l['dnsInFlight']!.refused).toBeGreaterThanOrEqual(16);
  });

  it('a host socket reset mid-flow reaches the guest as a reset (ECONNRESET), after the bytes sent before it', async () => {
    const port = readyPort((await fx.startNodeServer(fx.remoteNs, TCP_STREAM_JS, [target, '0', 'reset-after=100000'])).stdout());
    const r = await fx.guestRun(process.execPath, ['-e', GUEST_READ_ALL_JS, target, String(port), '8000'], { timeoutMs: 15_000 });
    expect(r.stdout).toMatch(/^got 100000$/m);
    expect(r.stdout).toMatch(/^error ECONNRESET$/m);
    await waitFor('flow to leave the table', async () => (await natTables(fx)).tcpFlows === 0, { timeoutMs: 5_000, intervalMs: 100 });
  });

  it('the guest vanishing mid-transfer closes every host socket of it; the next shim is served', async () => {
    const server = await fx.startNodeServer(fx.remoteNs, TCP_STREAM_JS, [target, '0']);
    const port = readyPort(server.stdout());
    const readers = fx.guestSpawn(process.execPath, ['-e', GUEST_STALLED_READERS_JS, target, String(port), '5']);
    await waitFor('5 connections at the server', async () => openConnections(server.stdout()) === 5, { timeoutMs: 10_000, intervalMs: 100 });
    expect((await natTables(fx)).tcpFlows).toBe(5);
    // Also a UDP flow, which must go too.
    await fx.guestRun('dig', ['+tries=1', '+time=1', `@${target}`, '-p', '9', 'x.test'], { timeoutMs: 5_000 }).catch(() => undefined);
    expect((await natTables(fx)).udpFlows).toBe(1);

    await fx.restartShim();
    await waitFor('the server to see every connection closed', async () => openConnections(server.stdout()) === 0, { timeoutMs: 5_000, intervalMs: 100 });
    const t = await natTables(fx);
    expect(t).toEqual({ tcpFlows: 0, udpFlows: 0, held: 0 });
    readers.child.kill('SIGKILL');

    const r = await fx.guestRun('curl', ['-sS', '--max-time', '10', `http://${target}:${httpPort}/after-restart`], { timeoutMs: 15_000 });
    expect(r.stdout).toMatch(/^remote \/after-restart/);
  });

  it('SIGTERM with flows open: every flow is closed and Moat exits 0 within 5 s', async () => {
    const server = await fx.startNodeServer(fx.remoteNs, TCP_STREAM_JS, [target, '0']);
    const port = readyPort(server.stdout());
    const readers = fx.guestSpawn(process.execPath, ['-e', GUEST_STALLED_READERS_JS, target, String(port), '3']);
    await waitFor('3 connections at the server', async () => openConnections(server.stdout()) === 3, { timeoutMs: 10_000, intervalMs: 100 });

    const started = Date.now();
    fx.moat.child.kill('SIGTERM');
    const exit = await fx.moat.exited;
    const ms = Date.now() - started;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(ms).toBeLessThan(5_000);
    await waitFor('the server to see every connection closed', async () => openConnections(server.stdout()) === 0, { timeoutMs: 3_000, intervalMs: 100 });
    expect(fx.moatLog()).toMatch(/"msg":"moat stopped"/);
    readers.child.kill('SIGKILL');
    process.stdout.write(`faults-upstream: SIGTERM to exit with 3 flows open: ${ms} ms\n`);
  });
});
